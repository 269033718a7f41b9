"""The Redis (or Valkey) cold tier: answers shared by every proxy pointed at one server.

An entry is one string key, `<ns>:r:<response key>`, holding a magic tag, the time it
was stored and the answer's bytes; Redis's own expiry (PX) is the TTL, and Redis's
maxmemory policy bounds the size (its evictions are read from INFO and reported).

The front (front.py) keeps the hot tier, staging and write queue in front of it, as for
diskcache. A `clear` on any proxy (or from the CLI) increments `<ns>:generation`; every
proxy polls that counter four times a second and its front empties the hot tier when it
moves, so a clear reaches every proxy within a second, and a Redis that restarted empty
(the counter gone) does too. Coalescing across proxies is redis_fleet.py's.

Redis down, at start or mid-run: lookups and writes are skipped (the proxy is a
pass-through), `degraded` says why, and the same poll notices when Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from cachelayer.config import Settings, check_store_url, redact_url
from cachelayer.errors import StoreUnavailable
from cachelayer.periodic import Periodic
from cachelayer.protocol.chat import ChatResult
from cachelayer.proxy.memo import Memo
from cachelayer.proxy.store.backends.base import PutOutcome, StoredAnswer
from cachelayer.proxy.store.backends.redis_ledger import SharedLedger
from cachelayer.proxy.store.backends.redis_pipe import RedisPipe, ReplyError
from cachelayer.telemetry.prefix_records import PrefixRecord

log = logging.getLogger(__name__)
MAGIC = b"CLR1"  # a value without it was not written by cachelayer: a miss, never parsed
_HEADER = struct.Struct("<4sd")  # magic, stored_at; then the result's bytes
_LAST_HEADER_BYTE = str(_HEADER.size - 1).encode()
# Decoded entries by (name, header): as many as the render memo keeps rendered answers.
DECODED_ENTRIES = 256
WATCH_EVERY_S = 0.25
STATS_EVERY_S = 2.0
_SCAN_BATCH = 500


def connect(settings: Settings) -> aioredis.Redis:
    """A client for --store; it connects lazily, so a Redis that is down does not stop
    the proxy from starting. No retries inside the client: a failed call is a miss."""
    assert settings.store_url is not None
    return aioredis.Redis.from_url(
        settings.store_url, password=settings.store_password or None,
        socket_connect_timeout=0.5, socket_timeout=2.0, retry=Retry(NoBackoff(), 0),
        client_name="cachelayer", decode_responses=False)


def encode(result: ChatResult, stored_at: float) -> bytes:
    """The bytes of one entry."""
    return _HEADER.pack(MAGIC, stored_at) + result.to_bytes()


def decode(raw: object) -> StoredAnswer | None:
    """The entry's answer, or None for anything cachelayer did not write."""
    if not isinstance(raw, bytes) or len(raw) <= _HEADER.size or not raw.startswith(MAGIC):
        return None
    try:
        _, stored_at = _HEADER.unpack_from(raw)
        return StoredAnswer(ChatResult.from_bytes(raw[_HEADER.size:]), stored_at)
    except (ValueError, TypeError, KeyError, struct.error):
        return None


class RedisTier:
    """Answers in Redis under `<ns>:r:<key>`; a pass-through while Redis is down."""

    kind = "redis"

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self.pipe = RedisPipe(client)  # the hit path's reads; redis-py for the rest
        self._decoded: Memo[tuple[StoredAnswer, int]] = Memo(DECODED_ENTRIES)
        self.label = settings.store_label
        self.size_limit = 0  # Redis's maxmemory bounds the size; read from INFO
        self.degraded: str | None = "not connected yet"
        self.prefix = f"{settings.store_namespace}:r:"
        self.generation_key = f"{settings.store_namespace}:generation"
        self._generation: bytes | None = None
        self._stats: dict[str, Any] = {}
        self._foreign = 0
        self._watcher = Periodic(self._watch, WATCH_EVERY_S, name="redis watch")
        self._last_stats = 0.0

    async def start(self) -> None:
        """Check Redis once (a failure only marks the tier degraded) and start watching."""
        await self.poll()
        await self.refresh_stats()
        self._last_stats = time.monotonic()
        self._watcher.start()

    def _down(self, exc: BaseException) -> None:
        reason = f"redis at {self.label} unavailable: {exc or type(exc).__name__}"
        if self.degraded is None or self.degraded == "not connected yet":
            log.error("%s; serving as a pass-through until it is back", reason)
        self.degraded = reason

    def generation(self) -> object:
        """The shared counter as last polled: it moves on a clear anywhere, and a Redis
        that restarted empty gets a new one."""
        return self._generation

    async def poll(self) -> None:
        """Read the generation: proves Redis answers, and tells the front to forget its
        hot tier after a clear anywhere (or after Redis lost its data)."""
        try:
            generation = await self.client.get(self.generation_key)
            if generation is None:
                # A new or restarted-empty Redis: the first proxy to look names this
                # generation, so every proxy sees it change and drops what it remembers.
                await self.client.set(self.generation_key, secrets.randbelow(1 << 62),
                                      nx=True)
                generation = await self.client.get(self.generation_key)
        except (RedisError, OSError) as exc:
            self._down(exc)
            return
        if self.degraded is not None:
            if self.degraded != "not connected yet":
                log.warning("redis at %s is back; using the shared store again", self.label)
            self.degraded = None
        if isinstance(generation, str):
            generation = generation.encode()
        self._generation = generation

    async def refresh_stats(self) -> None:
        """Memory, limit, policy and evictions from INFO; keys from DBSIZE."""
        if self.degraded is not None:
            return
        try:
            memory = await self.client.info("memory")
            stats = await self.client.info("stats")
            keys = await self.client.dbsize()
        except (RedisError, OSError) as exc:
            self._down(exc)
            return
        self._stats = {
            "keys": int(keys), "bytes": int(memory.get("used_memory", 0)),
            "limitBytes": int(memory.get("maxmemory", 0)),
            "evictionPolicy": str(memory.get("maxmemory_policy", "?")),
            "evictedKeys": int(stats.get("evicted_keys", 0)),
            "expiredKeys": int(stats.get("expired_keys", 0)),
        }
        self.size_limit = self._stats["limitBytes"]

    async def _watch(self) -> None:
        try:
            await self.poll()
            if time.monotonic() - self._last_stats >= STATS_EVERY_S:
                self._last_stats = time.monotonic()
                await self.refresh_stats()
        except Exception as exc:  # the watch is what brings the tier back: never die
            self._down(exc)

    async def read(self, key: str) -> tuple[StoredAnswer, int] | None:
        """The entry as Redis holds it now; anything unreadable or foreign is a miss.

        Every read asks Redis, so an entry deleted, replaced or expired anywhere is a
        miss at once. But an entry's bytes never change under one header (magic and
        stored_at), so the header is read first (GETRANGE, 12 bytes) and the whole entry
        only when this proxy has not decoded that version of it yet.
        """
        if self.degraded is not None:
            return None
        name = (self.prefix + key).encode()
        try:
            header = await self.pipe.call(b"GETRANGE", name, b"0", _LAST_HEADER_BYTE)
            if not isinstance(header, bytes) or not header:
                return None
            known = self._decoded.get((name, header))
            if known is not None:
                return known
            raw = (await self.pipe.call(b"GET", name) if header.startswith(MAGIC)
                   else header)  # foreign: decode() refuses it without the rest
        except ReplyError as exc:  # WRONGTYPE: someone else's hash or list under our key
            self._foreign += 1
            log.warning("redis entry for a key is not ours (%s): a miss", exc)
            return None
        except OSError as exc:
            self._down(exc)
            return None
        if raw is None:
            return None
        answer = decode(raw)
        if answer is None:
            self._foreign += 1
            log.warning("redis entry for a key is not a cachelayer answer: a miss")
            return None
        assert isinstance(raw, bytes)
        return self._decoded.put((name, raw[:_HEADER.size]), (answer, len(raw)))

    async def write(self, key: str, answer: StoredAnswer, body: bytes,
                    ttl_left_s: float) -> PutOutcome:
        """SET with Redis's own expiry (what is left of the TTL); a Redis that is down
        stores nothing."""
        remaining_ms = int(ttl_left_s * 1000)
        if self.degraded is not None or remaining_ms <= 0:
            return PutOutcome(stored=False)
        payload = _HEADER.pack(MAGIC, answer.stored_at) + body
        try:
            await self.client.set(self.prefix + key, payload, px=remaining_ms)
        except (RedisError, OSError) as exc:
            self._down(exc)
            return PutOutcome(stored=False)
        return PutOutcome(stored=True, nbytes=len(payload))

    async def clear(self) -> int:
        """Remove every answer and move the generation (every proxy's hot tier follows)."""
        try:
            removed = await wipe_answers(self.client, self.prefix, self.generation_key)
        except (RedisError, OSError) as exc:
            self._down(exc)
            raise StoreUnavailable(f"cannot clear: {self.degraded}") from exc
        await self.poll()
        return removed

    def snapshot(self) -> dict[str, Any]:
        """The last INFO numbers (refreshed every few seconds), never a network call."""
        generation = self._generation.decode(errors="replace") if self._generation else None
        return {"backend": self.kind, "url": self.label, "entries": self._stats.get("keys"),
                **self._stats, "foreignEntries": self._foreign, "degraded": self.degraded,
                "generation": generation}

    def __len__(self) -> int:
        return int(self._stats.get("keys", 0))

    async def aclose(self) -> None:
        """Stop watching and close the connection pool (the front closes this tier
        last: the fleet and the shared ledger use the same client)."""
        await self._watcher.stop()
        self.pipe.close()
        await self.client.aclose()


async def wipe_answers(client: aioredis.Redis, prefix: str, generation_key: str) -> int:
    """Delete every answer under prefix, then move the generation (UNLINK: freed off
    Redis's main thread). Used by the admin route and by `cachelayer clear --store`."""
    removed = 0
    batch: list[bytes] = []
    async for name in client.scan_iter(match=prefix + "*", count=_SCAN_BATCH):
        batch.append(name)
        if len(batch) >= _SCAN_BATCH:
            removed += int(await client.unlink(*batch))
            batch = []
    if batch:
        removed += int(await client.unlink(*batch))
    await client.incr(generation_key)
    return removed


async def _clear_shared(settings: Settings, what: Sequence[str]) -> list[str]:
    client = connect(settings)
    lines: list[str] = []
    try:
        if "responses" in what:
            ns = settings.store_namespace
            removed = await wipe_answers(client, f"{ns}:r:", f"{ns}:generation")
            lines.append(f"responses: removed {removed} stored answers from "
                         f"{settings.store_label} (every proxy's memory follows within a "
                         "second)")
        if "ledger" in what:
            await SharedLedger(client, settings.store_namespace).clear()
            lines.append(f"ledger: shared counters and prefix records reset in "
                         f"{settings.store_label}")
    finally:
        await client.aclose()
    return lines


def clear_shared(url: str, password: str | None, what: Sequence[str]) -> list[str]:
    """Clear answers and/or the shared ledger in Redis; ValueError (password-free) if the
    URL is wrong or Redis does not answer."""
    settings = Settings(store_url=check_store_url(url), store_password=password)
    try:
        return asyncio.run(_clear_shared(settings, what))
    except (RedisError, OSError) as exc:
        raise ValueError(f"redis at {redact_url(url)} did not answer: {exc}") from None


async def _read_shared(settings: Settings) -> tuple[dict[str, int], dict[str, PrefixRecord],
                                                    dict[str, Any]]:
    client = connect(settings)
    try:
        ledger = SharedLedger(client, settings.store_namespace)
        if not await ledger.refresh():
            raise ValueError(ledger.error or "no answer")
        tier = RedisTier(client, settings)
        await tier.poll()
        await tier.refresh_stats()
        return ledger.totals(), ledger.records(), tier.snapshot()
    finally:
        await client.aclose()


def read_shared(url: str, password: str | None) -> tuple[dict[str, int],
                                                          dict[str, PrefixRecord],
                                                          dict[str, Any]]:
    """Every proxy's shared totals, prefix records and the store's numbers, read from
    Redis (`cachelayer stats --store`); ValueError (password-free) if it does not answer."""
    settings = Settings(store_url=check_store_url(url), store_password=password)
    try:
        return asyncio.run(_read_shared(settings))
    except (RedisError, OSError) as exc:
        raise ValueError(f"redis at {redact_url(url)} did not answer: {exc}") from None
