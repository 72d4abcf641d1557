"""The app as offload's child, for ``offload [options] -- COMMAND ...``: shared fate on a VM, in a
plain container or in development. offload starts the app, passes SIGTERM on to it, stops
when it exits (with its failure status), and the app dies with offload even on a hard kill."""

from __future__ import annotations

import asyncio
import ctypes
import signal
import sys
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1  # Linux prctl: the kernel signals the child when its parent dies


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Supervisor:
    """One child process and its fate, tied to offload's."""

    def __init__(self, command: Sequence[str], *, stop_timeout_seconds: float) -> None:
        self.command = list(command)
        self.stop_timeout_seconds = stop_timeout_seconds
        self.process: asyncio.subprocess.Process | None = None
        self._asked = False

    async def start(self) -> None:
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.command, preexec_fn=_die_with_parent
            )
        except OSError as error:
            raise RuntimeError(f"cannot start {self.command[0]!r}: {error}") from error

    async def wait(self) -> int:
        """The child's exit status, once it exits."""
        assert self.process is not None
        return await self.process.wait()

    def terminate(self) -> None:
        """Ask the app to stop (SIGTERM), once."""
        if self.process is not None and self.process.returncode is None and not self._asked:
            self._asked = True
            self.process.terminate()

    async def stop(self) -> int | None:
        """SIGTERM unless already sent, then SIGKILL after the timeout; the exit status."""
        if self.process is None:
            return None
        self.terminate()
        if self.process.returncode is None:
            try:
                async with asyncio.timeout(self.stop_timeout_seconds):
                    return await self.process.wait()
            except TimeoutError:
                self.process.kill()
        return await self.process.wait()
