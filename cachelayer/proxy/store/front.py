"""The store's front, written once for every cold tier (requests-cache's BaseCache is the
model): what callers see of layer 2's store, whichever tier holds the answers.

- **Staging**: an answer on its way to the cold tier is visible to lookup() at once
  (agents re-send at once; a repeat must not miss because the write is in flight).
- **Hot tier**: recent answers in memory (hot.py), so a repeat costs no I/O; emptied when
  the cold tier's generation moves (a clear anywhere).
- **Write queue**: writes run off the request path, at most `max_pending_writes` at
  once; past that a request waits for its own write (backpressure, and the bound on what
  a crash can lose).
- **Fleet** (Redis only): the in-flight marker that makes an identical request at
  another proxy wait for this one's answer; released only once the answer's write has
  landed, so the answer is a hit everywhere from the moment any client has it.

`open_store` puts the front over the tier the settings name (diskcache, or Redis with
the fleet's markers and the ledger's shared half on the same connection pool).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from cachelayer.config import Settings
from cachelayer.protocol.chat import ChatResult
from cachelayer.proxy.store.backends import redis as redis_tier
from cachelayer.proxy.store.backends.base import (
    AnswerStore,
    Claim,
    ColdTier,
    Fleet,
    PutOutcome,
    StoredAnswer,
)
from cachelayer.proxy.store.backends.disk import DiskTier
from cachelayer.proxy.store.backends.redis_fleet import RedisFleet
from cachelayer.proxy.store.backends.redis_ledger import SharedLedger
from cachelayer.proxy.store.hot import DEFAULT_HOT_BYTES, HotAnswers


class StoreFront:
    """Staging, hot tier, bounded write queue and fleet marker in front of a cold tier
    (the one `AnswerStore`)."""

    def __init__(self, cold: ColdTier, *, ttl_s: float, entry_max_bytes: int,
                 hot_bytes: int = DEFAULT_HOT_BYTES, max_pending_writes: int = 64,
                 fleet: Fleet | None = None, fleet_wait_s: float = 300.0) -> None:
        self.cold = cold
        self.ttl_s = ttl_s
        self.entry_max_bytes = entry_max_bytes
        self.max_pending_writes = max_pending_writes
        self.fleet = fleet
        self.fleet_wait_s = fleet_wait_s
        self.hot = HotAnswers(hot_bytes)
        self._staged: dict[str, StoredAnswer] = {}
        self._generation = cold.generation()
        self._writes: set[asyncio.Task[None]] = set()
        self.fleet_hits = 0

    @property
    def kind(self) -> str:
        """The cold tier's name: diskcache or redis."""
        return self.cold.kind

    @property
    def size_limit(self) -> int:
        """The cold tier's size limit in bytes (0: unknown)."""
        return self.cold.size_limit

    @property
    def fleet_wide(self) -> bool:
        """Whether identical requests at other proxies wait for this one's answer."""
        return self.fleet is not None

    @property
    def degraded(self) -> str | None:
        """Why the cold tier is not being used right now, or None."""
        return self.cold.degraded

    async def start(self) -> None:
        """Start the cold tier and the fleet's lease renewal and listener."""
        await self.cold.start()
        self._generation = self.cold.generation()
        if self.fleet is not None:
            await self.fleet.start()

    def _fresh(self, answer: StoredAnswer) -> bool:
        return time.time() - answer.stored_at <= self.ttl_s

    async def lookup(self, key: str) -> StoredAnswer | None:
        """Staged, then memory, then the cold tier; unreadable, foreign or expired is a
        miss. An answer read from the cold tier is remembered in memory."""
        staged = self._staged.get(key)
        if staged is not None:
            return staged
        generation = self.cold.generation()
        if generation != self._generation:
            self._generation = generation
            self.hot.forget_all()
        hot = self.hot.get(key)
        if hot is not None:
            if self._fresh(hot):
                return hot
            self.hot.discard(key)
        found = await self.cold.read(key)
        if found is None:
            return None
        answer, nbytes = found
        if not self._fresh(answer):
            return None  # the tier expires by write time; the answer's own age decides
        self.hot.put(key, answer, nbytes)
        return answer

    def stage(self, key: str, result: ChatResult) -> None:
        """Visible to this proxy's lookup() at once; to others once the write lands."""
        self._staged[key] = StoredAnswer(result, time.time())

    async def save(self, key: str, result: ChatResult) -> PutOutcome:
        """Write now: the cold tier, then memory; then release this proxy's marker, so
        a proxy that waited on it finds the answer."""
        staged = self._staged.get(key)
        answer = staged if staged is not None else StoredAnswer(result, time.time())
        try:
            body = result.to_bytes()
            ttl_left = self.ttl_s - (time.time() - answer.stored_at)
            if len(body) > self.entry_max_bytes or ttl_left <= 0:
                return PutOutcome(stored=False)
            outcome = await self.cold.write(key, answer, body, ttl_left)
            for evicted in outcome.evicted_keys:
                self.hot.discard(evicted)
            if outcome.stored:
                self.hot.put(key, answer, outcome.nbytes)
            return outcome
        finally:
            if self._staged.get(key) is staged:
                self._staged.pop(key, None)
            if self.fleet is not None and self.fleet.holds(key):
                await self.fleet.release(key)

    async def keep(self, key: str, result: ChatResult,
                   done: Callable[[PutOutcome], None]) -> bool:
        """Stage and queue the write; with `max_pending_writes` already queued, write it
        here and now instead (True: the caller waited for its own write)."""
        self.stage(key, result)
        if len(self._writes) < self.max_pending_writes:
            self._spawn(self._save_then(key, result, done))
            return False
        done(await self.save(key, result))
        return True

    async def _save_then(self, key: str, result: ChatResult,
                         done: Callable[[PutOutcome], None]) -> None:
        done(await self.save(key, result))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    @property
    def pending_writes(self) -> int:
        """Writes (and marker releases) queued and not yet landed."""
        return len(self._writes)

    async def await_fleet(self, key: str) -> StoredAnswer | None:
        """Take the fleet's marker for key, or wait for the proxy holding it and return
        its answer. None means compute here: with the marker when it could be taken,
        without when the fleet is down or the wait passed `fleet_wait_s`."""
        fleet = self.fleet
        if fleet is None or self.cold.degraded is not None:
            return None  # no fleet, or its Redis is down: no round trip to fail
        deadline = time.monotonic() + self.fleet_wait_s
        while True:
            claim = await fleet.claim(key)
            if claim in (Claim.MINE, Claim.DOWN):
                return None
            if claim is Claim.OTHER:
                left = deadline - time.monotonic()
                if left <= 0 or not await fleet.wait(key, left):
                    return None  # waited long enough: compute without the marker
            found = await self.lookup(key)
            if found is not None:
                self.fleet_hits += 1
                return found
            if claim is Claim.ANSWERED:
                return None  # an entry there, but not one this proxy can use
            # The holder stored nothing (it failed, or the answer was not storable),
            # or died and its lease ran out: take the marker and compute.

    def release(self, key: str) -> None:
        """This proxy computed key but stores nothing: release its marker (queued)."""
        if self.fleet is not None and self.fleet.holds(key):
            self._spawn(self.fleet.release(key))

    async def wipe(self) -> int:
        """Remove every answer, here and in every process sharing the cold tier, those
        whose writes were on their way included."""
        # A write queued before the clear would otherwise land after it and bring its
        # answer back; writes queued meanwhile are newer than the clear and may stay.
        await asyncio.gather(*list(self._writes), return_exceptions=True)
        self._staged.clear()
        self.hot.forget_all()
        removed = await self.cold.clear()
        self._generation = self.cold.generation()
        return removed

    def snapshot(self) -> dict[str, Any]:
        """The cold tier's numbers, the hot tier's and the queue's (and the fleet's)."""
        out = {**self.cold.snapshot(), "hotEntries": len(self.hot), "hotBytes": self.hot.nbytes,
               "pendingWrites": self.pending_writes}
        if self.fleet is not None:
            out |= {**self.fleet.snapshot(), "fleetHits": self.fleet_hits}
        return out

    def __len__(self) -> int:
        return len(self.cold)

    async def drain(self) -> None:
        """Wait for every queued write and release to land."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def aclose(self) -> None:
        """Drain, release the fleet's markers, close the cold tier."""
        await self.drain()
        if self.fleet is not None:
            await self.fleet.aclose()
        await self.cold.aclose()


def open_store(settings: Settings) -> tuple[AnswerStore, SharedLedger | None]:
    """The store for --store (Redis, with the ledger's shared half) or diskcache."""
    cold: ColdTier
    fleet = shared = None
    if settings.store_url:
        client = redis_tier.connect(settings)
        cold = redis_tier.RedisTier(client, settings)
        fleet = RedisFleet(client, settings.store_namespace, lease_s=settings.fleet_lease_s)
        shared = SharedLedger(client, settings.store_namespace)
    else:
        cold = DiskTier(settings.responses_dir, size_limit=settings.response_max_bytes)
    front = StoreFront(cold, ttl_s=settings.response_ttl_s,
                       entry_max_bytes=settings.entry_max_bytes,
                       hot_bytes=settings.hot_tier_bytes,
                       max_pending_writes=settings.max_pending_writes,
                       fleet=fleet, fleet_wait_s=settings.fleet_wait_s)
    return front, shared
