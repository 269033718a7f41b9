"""Background loops: a coroutine run every few seconds until the proxy stops.

The metrics export, the Redis store's watch and the upstream health checks each run one.
They are not stopped with `task.cancel()`, for two reasons seen in this proxy:

- A tick cancelled half-way leaves work behind. The export awaits the ledger's flush in
  an executor thread; cancelling the await does not stop the thread, whose counts then
  reached the shared ledger after the final export had pushed, so they never did (a
  three-proxy run counted 67 of 70 requests in Redis).
- A library a tick awaits may swallow the CancelledError. redis-py's asyncio client does,
  now and then, when the cancel lands mid-command (redis/redis-py#2028; on this machine
  about 1 cancel in 80 on `GET`, 1 in 9 on a WATCH/MULTI pipeline). The loop then slept on
  and held the shutdown until the supervisor's SIGKILL.

So `stop()` wakes the loop from its wait and lets a running tick finish; only a tick still
running after a grace period is cancelled, and the wait for it is bounded too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """Run `tick` every `interval_s` seconds in its own task, until stop()."""

    def __init__(self, tick: Callable[[], Awaitable[None]], interval_s: float, *, name: str,
                 immediately: bool = False) -> None:
        self.tick = tick
        self.interval_s = interval_s
        self.name = name
        self.immediately = immediately
        self._stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop on the running event loop."""
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        if self.immediately:
            await self._tick_once()
        while not self._stopping:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            if self._stopping:
                return
            await self._tick_once()

    async def _tick_once(self) -> None:
        try:
            await self.tick()
        except Exception:  # one bad tick must not end the loop for the proxy's life
            log.exception("%s: a background tick failed; trying again next time", self.name)

    async def stop(self, grace_s: float = 5.0) -> None:
        """End the loop: wake it, let a running tick finish for up to grace_s, then
        cancel it; never waits much longer than grace_s."""
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is None or task.done():
            return
        # asyncio.wait, not `await task`: it neither re-raises how the task ended nor
        # waits past its timeout.
        await asyncio.wait({task}, timeout=grace_s)
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        if not task.done():
            log.warning("%s did not stop within %.1f s; the event loop's shutdown ends it",
                        self.name, grace_s)

    @property
    def running(self) -> bool:
        """True while the loop's task has not ended."""
        return self._task is not None and not self._task.done()
