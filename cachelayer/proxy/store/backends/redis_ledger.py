"""The ledger's shared half in Redis: counters and per-prefix records summed over proxies.

Each proxy keeps counting locally as before (its own totals, in its data dir). Every
delta its ledger flushes is also queued here and pushed to Redis once, exactly:

- counters: one Lua script adds the whole batch with HINCRBY to one hash, after first
  claiming the batch's random id with SET NX, so a batch re-sent after a lost reply is
  not counted twice;
- prefix records: each is JSON under its own key, merged with `PrefixRecord.merge` (the
  prefix layer's own rule, whatever fields it grows) in an optimistic transaction
  (WATCH the records and the batch's mark, MULTI, EXEC; retried if another proxy wrote
  in between), which also sets the batch's mark.

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
from dataclasses import asdict

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from cachelayer.telemetry.prefix_records import PrefixRecord

log = logging.getLogger(__name__)
BATCH_MARK_TTL_S = 7 * 24 * 3600
MAX_PREFIXES_READ = 5000
MAX_WATCH_RETRIES = 20

# KEYS: batch mark, counters hash. ARGV: the counters as JSON, the mark's ttl.
_ADD_COUNTERS = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[2])) then return 0 end
for name, n in pairs(cjson.decode(ARGV[1])) do redis.call('HINCRBY', KEYS[2], name, n) end
return 1
"""


def encode_record(record: PrefixRecord) -> bytes:
    """A prefix record as stored in Redis."""
    return json.dumps(asdict(record), sort_keys=True).encode()


def decode_record(raw: object) -> PrefixRecord | None:
    """A stored prefix record, or None for anything that is not one."""
    if not isinstance(raw, (bytes, str)):
        return None
    try:
        data = json.loads(raw)
        return PrefixRecord.from_dict(data) if isinstance(data, dict) else None
    except (ValueError, TypeError):
        return None


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
        self._add_counters = client.register_script(_ADD_COUNTERS)
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
        """Send what is queued, each part once; False if Redis refused (kept for later)."""
        batch = self._next_batch()
        if batch is None:
            return True
        batch_id, counters, prefixes = batch
        try:
            if counters:
                await self._add_counters(keys=[self.mark_key + batch_id + ":c",
                                               self.counters_key],
                                         args=[json.dumps(dict(counters)), BATCH_MARK_TTL_S])
            if prefixes:
                await self._merge_prefixes(self.mark_key + batch_id + ":p", prefixes)
        except (RedisError, OSError) as exc:
            self.error = f"shared ledger not updated: {exc or type(exc).__name__}"
            return False
        with self._lock:
            self._inflight = None
        self.error = None
        return True

    async def _merge_prefixes(self, mark: str, prefixes: dict[str, PrefixRecord]) -> None:
        keys = [self.prefix_key + prefix_id for prefix_id in prefixes]
        async with self.client.pipeline(transaction=True) as pipe:
            for _ in range(MAX_WATCH_RETRIES):
                try:
                    await pipe.watch(mark, *keys)
                    if await pipe.exists(mark):  # this batch already landed
                        await pipe.unwatch()
                        return
                    stored = await pipe.mget(keys)
                    pipe.multi()
                    for key, raw, delta in zip(keys, stored, prefixes.values(), strict=True):
                        record = decode_record(raw) or PrefixRecord()
                        record.merge(delta)
                        pipe.set(key, encode_record(record))
                    pipe.sadd(self.prefix_set, *prefixes)
                    pipe.set(mark, 1, ex=BATCH_MARK_TTL_S)
                    await pipe.execute()
                    return
                except WatchError:
                    continue  # another proxy merged the same prefix meanwhile: again
        raise RedisError("prefix records kept changing under the merge; retrying later")

    async def refresh(self) -> bool:
        """Read the shared totals and prefix records back; False if Redis refused."""
        try:
            raw = await self.client.hgetall(self.counters_key)
            ids = sorted(_text(i) for i in await self.client.smembers(self.prefix_set))
            ids = ids[:MAX_PREFIXES_READ]
            stored = await self.client.mget([self.prefix_key + i for i in ids]) if ids else []
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
        records = {}
        for prefix_id, blob in zip(ids, stored, strict=True):
            record = decode_record(blob)
            if record is not None:
                records[prefix_id] = record
        self._records = records
        return True

    async def sync(self) -> None:
        """Push what is queued, then read the totals back; never raises (the metrics
        export that calls it must keep running)."""
        try:
            if await self.push():
                await self.refresh()
        except Exception as exc:
            self.error = f"shared ledger failed: {exc or type(exc).__name__}"
            log.warning("%s", self.error)

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
