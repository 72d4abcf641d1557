"""Protection of the app from offload's own traffic: the circuit breaker, which stops sending
requests to an app that keeps failing, and the concurrency cap, which stops requests piling up on
a slow one. Both answer at once with 503 and ``Retry-After`` (HTTP.md: local overload), without
touching the app; static files never pass through either."""

from __future__ import annotations

import asyncio
import collections
import enum
import math
import time


class Admission(enum.Enum):
    """The breaker's answer to one request."""

    REFUSED = "refused"
    PASSED = "passed"
    PROBE = "probe"  # the one request let through a half-open breaker


class Breaker:
    """Closed, open or half-open, counted in consecutive failures.

    - Closed: every request goes through; ``failures`` failures in a row open it.
    - Open: nothing goes through for ``cooldown_seconds``.
    - Half-open: one request, the probe, goes through; the rest are refused until it ends,
      or for one more cooldown at most (a probe may be a slow upload: then another may go).
      Its success closes the breaker, its failure opens it for another cooldown.

    A request asks `admit` first; if admitted, it `settle`s once with its outcome. A success of
    any request closes the breaker (the app answered); a failure of a request let in before the
    breaker opened does not extend the cooldown; a client that left before the app answered
    proves nothing either way.

    What counts is what the app does, not what clients can make happen (`HttpProxy` decides):
    a refused connection (unless offload's watchdog is restarting the app), a reset, or a
    malformed answer is a failure; a timeout is no verdict, since any client can ask for a
    slow endpoint; the app's own 5xx counts only with ``--breaker-on-5xx``. The breaker
    answers for the proxy alone: readiness does not follow it.
    """

    def __init__(self, failures: int, cooldown_seconds: float) -> None:
        self.failures = failures
        self.cooldown_seconds = cooldown_seconds
        self.trips = 0  # times it opened
        self._consecutive = 0
        self._opened_at: float | None = None  # None: closed
        self._probe_since: float | None = None  # None: no probe at the app

    @property
    def is_open(self) -> bool:
        """Open or half-open: not every request may reach the app."""
        return self._opened_at is not None

    def admits_a_probe(self) -> bool:
        """Closed, or open with the cooldown over and no probe at the app for as long: a
        request would be let through now."""
        if self._opened_at is None:
            return True
        since = self._opened_at if self._probe_since is None else self._probe_since
        return time.monotonic() >= since + self.cooldown_seconds

    def admit(self) -> Admission:
        if self._opened_at is None:
            return Admission.PASSED
        if not self.admits_a_probe():
            return Admission.REFUSED
        self._probe_since = time.monotonic()
        return Admission.PROBE

    def settle(self, admission: Admission, *, failed: bool | None) -> None:
        """The outcome of an admitted request: the app failed, it answered, or unknown
        (``None``)."""
        probe = admission is Admission.PROBE
        if failed is None:
            if probe:
                self._probe_since = None  # the next request may probe at once
        elif not failed:
            self._consecutive = 0
            self._opened_at = self._probe_since = None
        else:
            self._consecutive += 1
            if probe or (self._opened_at is None and self._consecutive >= self.failures):
                self._opened_at = time.monotonic()
                self._probe_since = None
                self.trips += 1

    def retry_after_seconds(self) -> int:
        """What ``Retry-After`` says while open: the rest of the cooldown, at least 1 s."""
        if self._opened_at is None:
            return 1
        left = self._opened_at + self.cooldown_seconds - time.monotonic()
        return max(1, math.ceil(left))


class ConcurrencyCap:
    """At most ``limit`` requests at the app at once. When all slots are taken, up to ``limit``
    more wait in line, first come first served, each for at most ``wait_seconds``; past that, or
    with the line full, the request is refused. A line no longer than the cap keeps a request's
    wait short: it waits for at most one round of requests ahead of it."""

    def __init__(self, limit: int, wait_seconds: float) -> None:
        self.limit = limit
        self.wait_seconds = wait_seconds
        self.active = 0
        self._line: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._line)

    async def acquire(self) -> bool:
        """Take a slot, waiting in line if need be; ``False`` when refused."""
        if self.active < self.limit and not self._line:
            self.active += 1
            return True
        if len(self._line) >= self.limit:
            return False
        turn = asyncio.get_running_loop().create_future()
        self._line.append(turn)
        try:
            async with asyncio.timeout(self.wait_seconds):
                await turn
        except TimeoutError:
            return self._handed(turn)
        except BaseException:
            if self._handed(turn):
                self.release()  # cancelled as a slot came: pass it on
            raise
        return True

    def _handed(self, turn: asyncio.Future[None]) -> bool:
        """After a wait cut short: whether a slot came all the same; if not, leave the line."""
        if turn.done() and not turn.cancelled():
            return True
        if turn in self._line:
            self._line.remove(turn)
        return False

    def release(self) -> None:
        """Give the slot back: to the first in line, else to the pool."""
        while self._line:
            turn = self._line.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes on: `active` is unchanged
                return
        self.active -= 1
