"""The ledger's shared half in Redis: counters and per-prefix records summed over proxies.

Each proxy keeps counting locally as before (its own totals, in its data dir). Every
delta its ledger flushes is also queued here and pushed to Redis in one Lua script that
applies a whole batch atomically, once: the script first claims the batch's random id
(SET NX), so a batch re-sent after a lost reply is not counted twice. Counters are
HINCRBY on one hash; a prefix record is a hash whose counts are HINCRBY, whose first
sighting and shortest prompt take the minimum and whose last sighting the maximum.
While Redis is down the queue keeps growing and is pushed when it returns: N proxies'
counts add up exactly. (What is still queued when a proxy stops during an outage is
lost to the shared totals; its own totals keep it.)
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections import Counter
from dataclasses import fields
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cachelayer.proxy.prefix.ledger import PrefixRecord

log = logging.getLogger(__name__)
BATCH_MARK_TTL_S = 7 * 24 * 3600
MAX_PREFIXES_READ = 5000

# KEYS: batch mark, counters hash, prefix-id set. ARGV: payload, prefix-hash key prefix, ttl.
_APPLY = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[3])) then return 0 end
local batch = cjson.decode(ARGV[1])
for name, n in pairs(batch.c) do redis.call('HINCRBY', KEYS[2], name, n) end
for id, r in pairs(batch.p) do
  local key = ARGV[2] .. id
  redis.call('SADD', KEYS[3], id)
  for f, n in pairs(r.inc) do redis.call('HINCRBY', key, f, n) end
  for f, v in pairs(r.set) do redis.call('HSET', key, f, v) end
  for f, v in pairs(r.min) do
    local cur = tonumber(redis.call('HGET', key, f))
    if (not cur) or cur == 0 or (v ~= 0 and v < cur) then redis.call('HSET', key, f, v) end
  end
  for f, v in pairs(r.max) do
    local cur = tonumber(redis.call('HGET', key, f))
    if (not cur) or v > cur then redis.call('HSET', key, f, v) end
  end
end
return 1
"""
_MIN_FIELDS = ("first_seen", "min_prompt_tokens")
_MAX_FIELDS = ("last_seen",)
_SET_FIELDS = ("tools",)


def record_ops(record: PrefixRecord) -> dict[str, dict[str, Any]]:
    """How one prefix delta is applied: counts added, extremes kept, labels replaced."""
    ops: dict[str, dict[str, Any]] = {"inc": {}, "set": {}, "min": {}, "max": {}}
    for f in fields(record):
        value = getattr(record, f.name)
        if value is None:
            continue
        if f.name in _MIN_FIELDS:
            ops["min"][f.name] = value
        elif f.name in _MAX_FIELDS:
            ops["max"][f.name] = value
        elif f.name in _SET_FIELDS or not isinstance(value, int) or isinstance(value, bool):
            ops["set"][f.name] = value if isinstance(value, (int, float)) else str(value)
        elif value:
            ops["inc"][f.name] = value
    return ops


def record_from_hash(raw: dict[bytes, bytes]) -> PrefixRecord:
    """A PrefixRecord from its Redis hash; unknown fields ignored, bad values zeroed."""
    record = PrefixRecord()
    for f in fields(record):
        value = raw.get(f.name.encode())
        if value is None:
            continue
        default = getattr(record, f.name)
        text = value.decode("utf-8", "replace")
        try:
            parsed: Any = (int(float(text)) if isinstance(default, int)
                           else float(text) if isinstance(default, float) else text)
        except ValueError:
            continue
        setattr(record, f.name, parsed)
    return record


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class SharedLedger:
    """The queue of deltas not yet in Redis, and the last totals read back from it."""

    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self.client = client
        self.counters_key = f"{namespace}:counters"
        self.prefix_set = f"{namespace}:prefixes"
        self.prefix_key = f"{namespace}:prefix:"
        self.mark_key = f"{namespace}:batch:"
        self._apply = client.register_script(_APPLY)
        self._lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self._prefixes: dict[str, PrefixRecord] = {}
        self._inflight: tuple[str, Counter[str], dict[str, PrefixRecord]] | None = None
        self._totals: dict[str, int] = {}
        self._records: dict[str, PrefixRecord] = {}
        self.error: str | None = None

    def take_counters(self, delta: Counter[str]) -> None:
        """Queue counter deltas the local ledger just flushed (any thread)."""
        with self._lock:
            self._counters.update(delta)

    def take_prefixes(self, delta: dict[str, PrefixRecord]) -> None:
        """Queue prefix records the local ledger just flushed (any thread)."""
        with self._lock:
            for prefix_id, record in delta.items():
                self._prefixes.setdefault(prefix_id, PrefixRecord()).merge(record)

    def _next_batch(self) -> tuple[str, Counter[str], dict[str, PrefixRecord]] | None:
        # A batch whose reply was lost is re-sent under the same id before any new one.
        with self._lock:
            if self._inflight is None and (self._counters or self._prefixes):
                self._inflight = (secrets.token_hex(12), self._counters, self._prefixes)
                self._counters, self._prefixes = Counter(), {}
            return self._inflight

    async def push(self) -> bool:
        """Send what is queued as one atomic, idempotent batch; False if Redis refused."""
        batch = self._next_batch()
        if batch is None:
            return True
        batch_id, counters, prefixes = batch
        payload = json.dumps({"c": dict(counters),
                              "p": {pid: record_ops(r) for pid, r in prefixes.items()}})
        try:
            await self._apply(keys=[self.mark_key + batch_id, self.counters_key,
                                    self.prefix_set],
                              args=[payload, self.prefix_key, BATCH_MARK_TTL_S])
        except (RedisError, OSError) as exc:
            self.error = f"shared ledger not updated: {exc or type(exc).__name__}"
            return False
        with self._lock:
            self._inflight = None
        self.error = None
        return True

    async def refresh(self) -> bool:
        """Read the shared totals and prefix records back; False if Redis refused."""
        try:
            raw = await self.client.hgetall(self.counters_key)
            ids = sorted(await self.client.smembers(self.prefix_set))[:MAX_PREFIXES_READ]
            pipe = self.client.pipeline(transaction=False)
            for prefix_id in ids:
                pipe.hgetall(self.prefix_key + _text(prefix_id))
            hashes = await pipe.execute() if ids else []
        except (RedisError, OSError) as exc:
            self.error = f"shared ledger not read: {exc or type(exc).__name__}"
            return False
        totals: dict[str, int] = {}
        for name, value in raw.items():
            try:
                totals[_text(name)] = int(value)
            except ValueError:
                continue  # not ours: ignored, never a crash
        self._totals = totals
        self._records = {_text(pid): record_from_hash(h) for pid, h in zip(ids, hashes,
                                                                             strict=True)}
        return True

    async def sync(self) -> None:
        """Push what is queued, then read the totals back."""
        if await self.push():
            await self.refresh()

    def totals(self) -> dict[str, int]:
        """The shared counters as last read, plus what this proxy has not pushed yet."""
        out = Counter(self._totals)
        with self._lock:
            out.update(self._counters)
            if self._inflight is not None:
                out.update(self._inflight[1])
        return dict(out)

    def records(self) -> dict[str, PrefixRecord]:
        """The shared prefix records as last read."""
        return dict(self._records)

    async def clear(self) -> None:
        """Forget the shared counters and prefix records (every proxy's)."""
        ids = await self.client.smembers(self.prefix_set)
        names = [self.counters_key, self.prefix_set,
                 *(self.prefix_key + _text(i) for i in ids)]
        await self.client.unlink(*names)
        with self._lock:
            self._counters.clear()
            self._prefixes.clear()
        self._totals, self._records = {}, {}
