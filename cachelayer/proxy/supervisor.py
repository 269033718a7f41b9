"""The embedded backend, supervised: restarted when it dies, its state on /health.

`cachelayer serve` without --upstream runs `cachelayer backend` as a child. If that child
dies (a crash, the OOM killer, kill -9), the supervisor logs its exit status with the last
lines it wrote to stderr, and starts it again after a backoff that doubles from
RESTART_MIN_S up to RESTART_MAX_S (back to the minimum once a backend has stayed up for
STABLE_S). While it is down, /health answers 503 `"status": "degraded"` saying why, and
requests that need it get a 503 in their API's shape with `Retry-After`. Known prefixes
come back from the KV directory after the restart, as after any start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from cachelayer.errors import BackendUnavailable

log = logging.getLogger(__name__)

RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
STABLE_S = 60.0
STDERR_LINES = 20

Process = asyncio.subprocess.Process
WaitReady = Callable[[str, Process], Awaitable[None]]
Stop = Callable[[Process], Awaitable[None]]


class Supervisor:
    """Runs one child command, restarts it on death, and says whether it is up."""

    def __init__(self, argv: Sequence[str], url: str, wait_ready: WaitReady, stop: Stop) -> None:
        """Supervise `argv`, ready once `wait_ready(url, process)` returns."""
        self.argv = list(argv)
        self.url = url
        self._wait_ready = wait_ready
        self._stop = stop
        self.process: Process | None = None
        self.up = False
        self.restarts = 0
        self.last_exit: int | None = None
        self.reason: str | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._backoff = RESTART_MIN_S
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._readers: set[asyncio.Task[None]] = set()

    @property
    def retry_after_s(self) -> int:
        """What a client should wait before trying again: the backoff, rounded up."""
        return max(1, int(self._backoff + 0.999))

    def status(self) -> dict[str, Any]:
        """The backend's part of /health."""
        return {"embedded": True, "up": self.up, "restarts": self.restarts,
                "last_exit": self.last_exit, "reason": self.reason,
                "pid": self.process.pid if self.process is not None else None}

    async def _spawn(self) -> Process:
        process = await asyncio.create_subprocess_exec(*self.argv, stderr=asyncio.subprocess.PIPE)
        reader = asyncio.ensure_future(self._pump(process))
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        self.process = process
        return process

    async def _pump(self, process: Process) -> None:
        """Pass the child's stderr through to ours, keeping its last lines."""
        assert process.stderr is not None
        while line := await process.stderr.readline():
            text = line.decode("utf-8", "replace").rstrip("\n")
            self.stderr_tail.append(text)
            print(text, file=sys.stderr, flush=True)

    async def start(self) -> None:
        """Start the child and wait until it is ready (raising if it cannot start)."""
        process = await self._spawn()
        try:
            await self._wait_ready(self.url, process)
        except BaseException:
            await self._stop(process)
            raise
        self._mark_up()
        self._task = asyncio.ensure_future(self._watch())

    def _mark_up(self) -> None:
        self.up, self.reason = True, None
        self._up_since = time.monotonic()

    async def _watch(self) -> None:
        """Wait for the child to die; restart it with a bounded backoff until stopped."""
        while not self._stopping.is_set():
            assert self.process is not None
            code = await self.process.wait()
            if self._stopping.is_set():
                return
            await asyncio.sleep(0)  # let the stderr reader take the last lines
            self.up = False
            self.last_exit = code
            self.restarts += 1
            if time.monotonic() - self._up_since >= STABLE_S:
                self._backoff = RESTART_MIN_S
            self.reason = (f"the embedded backend exited with status {code}; restart "
                           f"{self.restarts} in {self._backoff:.1f}s")
            log.error("%s; its last stderr lines:\n%s", self.reason,
                      "\n".join(self.stderr_tail) or "(none)")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._backoff)
                return
            self._backoff = min(self._backoff * 2, RESTART_MAX_S)
            try:
                process = await self._spawn()
                await self._wait_ready(self.url, process)
            except RuntimeError as exc:
                self.reason = f"the embedded backend did not come back: {exc}"
                log.error("%s", self.reason)
                await self._stop(process)
                continue  # process.wait() returns at once: counted, next backoff
            self._mark_up()
            log.warning("the embedded backend is back (restart %d, pid %d)", self.restarts,
                        process.pid)

    async def close(self) -> None:
        """Stop supervising and stop the child."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.process is not None:
            await self._stop(self.process)
        for reader in list(self._readers):
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(reader, 2.0)
        self.up = False


SUPERVISOR = web.AppKey("backend_supervisor", Supervisor)


def unavailable(supervisor: Supervisor) -> BackendUnavailable:
    """The 503 a request that needs the backend gets while it is down."""
    why = supervisor.reason or "the embedded backend is not answering"
    return BackendUnavailable(f"{why}; retry shortly",
                              retry_after_s=supervisor.retry_after_s)
