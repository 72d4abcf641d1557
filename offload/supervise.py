"""The app as offload's child, for ``offload [options] -- COMMAND ...``: offload starts the app,
passes SIGTERM on to it, restarts it when it exits if ``--app-restart`` says so (and otherwise
stops with it), and the app dies with offload even on a hard kill. Every start, exit and
restart is one log line on the ``offload.app`` logger."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import sys
import time
from collections.abc import Sequence

from offload.applog import relay_output

PR_SET_PDEATHSIG = 1  # Linux prctl: the kernel signals the child when its parent dies
RESTART_FIRST_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
# An app that stayed up this long was healthy: its next restart waits the least again
# (supervisord's startsecs), so one crash a day never waits 30 s.
STEADY_SECONDS = 10.0
# After the app exits, how long its last output may take to arrive: a grandchild that
# inherited the pipes could otherwise hold them open for ever.
OUTPUT_GRACE_SECONDS = 1.0

logger = logging.getLogger("offload.app")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def should_restart(policy: str, status: int) -> bool:
    """``--app-restart``: ``never``; ``on-failure`` (a non-zero status or a signal); ``always``."""
    return policy == "always" or (policy == "on-failure" and status != 0)


class Backoff:
    """The waits between restarts: 0.5 s, doubling up to 30 s, and 0.5 s again once the app
    has stayed up for `STEADY_SECONDS`.

    >>> backoff = Backoff()
    >>> [backoff.next_seconds(uptime_seconds=1) for _ in range(3)]
    [0.5, 1.0, 2.0]
    >>> backoff.next_seconds(uptime_seconds=60), backoff.attempt
    (0.5, 1)
    """

    def __init__(self) -> None:
        self.attempt = 0  # restarts since the app was last steady

    def next_seconds(self, uptime_seconds: float) -> float:
        if uptime_seconds >= STEADY_SECONDS:
            self.attempt = 0
        self.attempt += 1
        doublings = min(self.attempt - 1, 16)  # past the cap already; no float overflow
        return min(RESTART_FIRST_SECONDS * 2.0**doublings, RESTART_MAX_SECONDS)


def describe_exit(status: int) -> tuple[str, dict[str, object]]:
    """How an exit status reads in the log: the message and its fields (``exit_code``, or
    ``signal`` by name for a process killed by one; asyncio gives those as ``-signum``)."""
    if status >= 0:
        return f"the app exited with status {status}", {"exit_code": status}
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    return f"the app was killed by {name}", {"signal": name}


class Supervisor:
    """One child process and its fate, tied to offload's: what the watchdog knows of the app
    (running, restarting, its restarts and last exit status) is read here by readiness and
    by the vital-sign metrics."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        stop_timeout_seconds: float,
        restart: str = "never",
        json_output: bool = False,
    ) -> None:
        self.command = list(command)
        self.stop_timeout_seconds = stop_timeout_seconds
        self.restart = restart
        self.json_output = json_output  # --app-log json: the app's output through pipes
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.last_exit_code: int | None = None  # -N: killed by signal N
        self.restarting = False  # waiting out the backoff
        self.stopping = False  # offload is stopping: no more restarts
        self._terminating = False  # ... and the app is to get SIGTERM
        self._signalled: asyncio.subprocess.Process | None = None  # the one SIGTERM went to
        self._stop_asked = asyncio.Event()
        self._started_at = 0.0
        self._output: list[asyncio.Task[None]] = []
        self._watching: asyncio.Task[int] | None = None

    async def start(self) -> None:
        """Start the app and watch over it; `RuntimeError` if its command cannot start."""
        await self._spawn()
        self._watching = asyncio.create_task(self._watch())

    async def wait(self) -> int:
        """The app's last exit status, once it has exited for good: by itself when the restart
        policy lets it go, or because offload stopped it."""
        assert self._watching is not None
        return await asyncio.shield(self._watching)

    def is_running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def not_ready_because(self) -> str | None:
        """Why the app is not there to take traffic, or ``None``. While offload stops, its
        own drain is the reason, not the app it is stopping."""
        if self.stopping:
            return None
        if self.restarting:
            return "the app is restarting"
        if not self.is_running():
            return "the app has exited"
        return None

    def begin_shutdown(self) -> None:
        """offload is stopping: no more restarts, and a restart waiting for its backoff is
        called off. The app itself keeps running until `terminate`."""
        self.stopping = True
        self._stop_asked.set()

    def terminate(self) -> None:
        """Ask the app to stop (SIGTERM), once, and never restart it."""
        self.begin_shutdown()
        self._terminating = True
        self._send_sigterm()

    async def stop(self) -> int | None:
        """SIGTERM unless already sent, then SIGKILL after the timeout; the exit status."""
        if self._watching is None:
            return None
        self.terminate()
        try:
            async with asyncio.timeout(self.stop_timeout_seconds):
                return await asyncio.shield(self._watching)
        except TimeoutError:
            if self.process is not None and self.is_running():
                self.process.kill()
        return await self._watching

    def _send_sigterm(self) -> None:
        process = self.process
        if process is not None and process.returncode is None and process is not self._signalled:
            self._signalled = process
            process.terminate()

    async def _spawn(self) -> None:
        pipe = asyncio.subprocess.PIPE if self.json_output else None
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command, stdout=pipe, stderr=pipe, preexec_fn=_die_with_parent
            )
        except OSError as error:
            raise RuntimeError(f"cannot start {self.command[0]!r}: {error}") from error
        self.process = process
        self._started_at = time.monotonic()
        if process.stdout is not None and process.stderr is not None:
            self._output = [
                asyncio.create_task(relay_output(process.stdout, "stdout")),
                asyncio.create_task(relay_output(process.stderr, "stderr")),
            ]
        logger.info("the app started", extra={"fields": {"pid": process.pid}})

    async def _watch(self) -> int:
        """Wait for the app to exit, and restart it for as long as the policy asks and offload
        is not stopping; the last exit status."""
        backoff = Backoff()
        status, uptime = await self._exited()
        while not self.stopping and should_restart(self.restart, status):
            seconds = backoff.next_seconds(uptime)
            self.restarting = True
            logger.warning(
                "restarting the app in %s s (attempt %d)",
                seconds,
                backoff.attempt,
                extra={"fields": {"attempt": backoff.attempt, "backoff_seconds": seconds}},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_asked.wait(), seconds)
            if self.stopping:
                break
            try:
                await self._spawn()
            except RuntimeError as error:  # the binary gone, out of processes: try again later
                logger.error("%s", error)
                uptime = 0.0
                continue
            finally:
                self.restarting = False
            self.restarts += 1
            if self._terminating:  # the stop signal came while the new app was starting
                self._send_sigterm()
            status, uptime = await self._exited()
        self.restarting = False
        return status

    async def _exited(self) -> tuple[int, float]:
        """Wait for the running app to exit and log it: (its status, how long it was up)."""
        assert self.process is not None
        status = await self.process.wait()
        uptime = time.monotonic() - self._started_at
        if self._output:  # the output it wrote last, before the line that says it is gone
            await asyncio.wait(self._output, timeout=OUTPUT_GRACE_SECONDS)
            for task in self._output:
                task.cancel()
            self._output = []
        self.last_exit_code = status
        message, fields = describe_exit(status)
        level = logging.INFO if status == 0 or self.stopping else logging.WARNING
        fields = {"pid": self.process.pid, **fields, "uptime_seconds": round(uptime, 3)}
        logger.log(level, message, extra={"fields": fields})
        return status, uptime
