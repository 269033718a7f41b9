"""Request coalescing: identical concurrent misses make one upstream call.

The first miss for a key leads: it forwards and, when done, settles a future with its
complete answer (or None if it failed). Misses for the same key that arrive meanwhile
follow: they wait for that future and replay the answer. A follower whose leader failed
forwards on its own, so one failure never fails the others.

This is one proxy's half. Across proxies on one Redis, the leader also takes the
fleet's in-flight marker (front.py, backends/redis_fleet.py), and the leader at another
proxy waits on that; a streamed follower hears keep-alives either way (waiters.py).
"""

from __future__ import annotations

import asyncio

from cachelayer.protocol.chat import ChatResult


class Coalescer:
    """The misses in flight, by response key (which includes the tenant)."""

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[ChatResult | None]] = {}

    def leading(self, key: str) -> asyncio.Future[ChatResult | None] | None:
        """The future of the miss already in flight for key, if any."""
        return self._inflight.get(key)

    def lead(self, key: str) -> None:
        """Register this request as the one that forwards for key."""
        self._inflight[key] = asyncio.get_running_loop().create_future()

    def settle(self, key: str, result: ChatResult | None) -> None:
        """Hand the leader's answer (None: it failed) to every follower."""
        future = self._inflight.pop(key, None)
        if future is not None and not future.done():
            future.set_result(result)

    async def follow(self, future: asyncio.Future[ChatResult | None]) -> ChatResult | None:
        """Wait for a leader's answer; a follower that goes away does not cancel it."""
        return await asyncio.shield(future)

    def __len__(self) -> int:
        return len(self._inflight)
