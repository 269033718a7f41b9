"""Where layer 2 keeps answers: a size-bounded diskcache with counted evictions.

diskcache culls silently once past its size limit (1 GB by default). Here automatic
culling is off (`cull_limit=0`) and the store evicts the oldest entries after each write
itself, so every eviction is counted. Reads never write (least-recently-stored policy),
which keeps a hit to one SQLite read on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache

from cachelayer.fs import ensure_private_dir, write_atomic
from cachelayer.protocol.chat import ChatResult

log = logging.getLogger(__name__)
_HEADER = struct.Struct("<d")  # stored_at, then the result's bytes
GENERATION_MARKER = "generation"
CHECK_EVERY_S = 0.25  # how soon a `cachelayer clear` from another process takes effect


@dataclass(frozen=True)
class StoredAnswer:
    """A stored result and when it was stored."""

    result: ChatResult
    stored_at: float

    def age(self, now: float) -> float:
        """Seconds since it was stored."""
        return max(0.0, now - self.stored_at)


class HotAnswers:
    """The most recently used answers in memory, bounded in bytes (thread-safe).

    A hit from memory skips SQLite. Another process (`cachelayer clear`) can empty the
    store underneath; it rewrites the store's generation marker, and a changed marker
    empties this memory before the next lookup.
    """

    def __init__(self, marker: Path | None, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.marker = marker
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[StoredAnswer, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._generation = (0, 0)
        self._checked_at = -CHECK_EVERY_S
        self._generation = self._read_generation()

    def _read_generation(self) -> tuple[int, int]:
        # A stat per hit costs a twentieth of the hit: look at most every CHECK_EVERY_S.
        now = time.monotonic()
        if self.marker is None or now - self._checked_at < CHECK_EVERY_S:
            return self._generation
        self._checked_at = now
        try:
            st = os.stat(self.marker)
        except OSError:
            return (0, 0)
        return (st.st_ino, st.st_mtime_ns)

    def get(self, key: str) -> StoredAnswer | None:
        """The remembered answer, unless the store was cleared since."""
        generation = self._read_generation()
        with self._lock:
            if generation != self._generation:
                self._generation = generation
                self._entries.clear()
                self._bytes = 0
                return None
            found = self._entries.get(key)
            if found is None:
                return None
            self._entries.move_to_end(key)
            return found[0]

    def put(self, key: str, answer: StoredAnswer, nbytes: int) -> None:
        """Remember an answer, forgetting the least recently used past the byte budget."""
        if nbytes > self.max_bytes // 8:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            self._bytes += nbytes - (old[1] if old else 0)
            self._entries[key] = (answer, nbytes)
            while self._bytes > self.max_bytes:
                _, (_, size) = self._entries.popitem(last=False)
                self._bytes -= size

    def discard(self, key: str) -> None:
        """Forget one answer."""
        with self._lock:
            old = self._entries.pop(key, None)
            if old:
                self._bytes -= old[1]

    def forget_all(self) -> None:
        """Forget every answer (the shared store was cleared elsewhere)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def bump_generation(self) -> None:
        """Tell every process's memory that the store was cleared."""
        if self.marker is not None:
            write_atomic(self.marker, str(time.time_ns()).encode())
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self._checked_at = -CHECK_EVERY_S
            self._generation = self._read_generation()


@dataclass(frozen=True)
class PutOutcome:
    """What one write did to the store."""

    stored: bool
    nbytes: int = 0
    evicted: int = 0
    expired: int = 0


class ResponseStore:
    """Complete answers by key, with a TTL, a total size limit and a per-entry cap."""

    def __init__(
        self,
        directory: Path,
        *,
        size_limit: int,
        ttl_s: float,
        entry_max_bytes: int,
        hot_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.directory = directory
        self.size_limit = size_limit
        self.ttl_s = ttl_s
        self.entry_max_bytes = entry_max_bytes
        self.degraded: str | None = None
        # Answers on their way to disk: a repeat that arrives before the write lands
        # must still be a hit (agents re-send at once).
        self._staged: dict[str, StoredAnswer] = {}
        self._hot = HotAnswers(directory / GENERATION_MARKER, hot_bytes)
        self._cache: diskcache.Cache | None = None
        try:
            self._cache = diskcache.Cache(
                str(ensure_private_dir(directory)),
                size_limit=size_limit,
                cull_limit=0,
                eviction_policy="least-recently-stored",
                statistics=False,
            )
        except (OSError, sqlite3.Error) as exc:
            # A read-only or full data dir: serve as a pass-through rather than not at all.
            self.degraded = f"cannot open the response store in {directory}: {exc}"
            log.error("%s; serving without a response store", self.degraded)

    def get(self, key: str) -> StoredAnswer | None:
        """The stored answer for key, or None; an unreadable entry is dropped as a miss."""
        staged = self._staged.get(key)
        if staged is not None:
            return staged
        hot = self._hot.get(key)
        if hot is not None:
            if time.time() - hot.stored_at <= self.ttl_s:
                return hot
            self._hot.discard(key)
        if self._cache is None:
            return None
        try:
            raw = self._cache.get(key)
        except (sqlite3.Error, OSError) as exc:
            log.warning("response store read failed: %s", exc)
            return None
        if not isinstance(raw, bytes) or len(raw) <= _HEADER.size:
            return None
        try:
            (stored_at,) = _HEADER.unpack_from(raw)
            result = ChatResult.from_bytes(raw[_HEADER.size :])
        except (ValueError, struct.error) as exc:
            log.warning("dropping unreadable response entry: %s", exc)
            self.delete(key)
            return None
        answer = StoredAnswer(result, stored_at)
        if time.time() - stored_at > self.ttl_s:
            return None  # diskcache expires by write time; the answer's own age decides
        self._hot.put(key, answer, len(raw))
        return answer

    def stage(self, key: str, result: ChatResult, *, now: float | None = None) -> None:
        """Make an answer visible to get() at once; put() then writes it to disk."""
        self._staged[key] = StoredAnswer(result, time.time() if now is None else now)

    def put(self, key: str, result: ChatResult, *, now: float | None = None) -> PutOutcome:
        """Store an answer (blocking: call it off the event loop) and cull past the limit."""
        staged = self._staged.get(key)
        stored_at = staged.stored_at if staged else (time.time() if now is None else now)
        payload = _HEADER.pack(stored_at) + result.to_bytes()
        try:
            outcome = self._write(key, payload)
            if outcome.stored:
                self._hot.put(key, StoredAnswer(result, stored_at), len(payload))
            return outcome
        finally:
            self._staged.pop(key, None)

    def _write(self, key: str, payload: bytes) -> PutOutcome:
        if len(payload) > self.entry_max_bytes or self._cache is None:
            return PutOutcome(stored=False)
        try:
            self._cache.set(key, payload, expire=self.ttl_s)
            expired = evicted = 0
            if self._cache.volume() > self.size_limit:
                expired = self._cache.expire()
                evicted = self._evict_to_limit(keep=key)
        except (sqlite3.Error, OSError) as exc:
            # A full or read-only disk must not take the proxy down: serve as a pass-through.
            self.degraded = f"response store write failed: {exc}"
            log.error("%s; serving without storing", self.degraded)
            return PutOutcome(stored=False)
        self.degraded = None
        return PutOutcome(stored=True, nbytes=len(payload), evicted=evicted, expired=expired)

    def _evict_to_limit(self, keep: str) -> int:
        assert self._cache is not None
        # diskcache's own cull() deletes in batches of ten, which empties a small store;
        # evict the oldest entries one by one instead (iteration order is insertion order).
        evicted = 0
        while self._cache.volume() > self.size_limit:
            oldest = next(iter(self._cache), None)
            if oldest is None or oldest == keep:
                break
            self._hot.discard(oldest)
            evicted += int(self._cache.delete(oldest))
        return evicted

    def delete(self, key: str) -> None:
        """Remove one entry if present."""
        self._hot.discard(key)
        if self._cache is None:
            return
        try:
            self._cache.delete(key)
        except (sqlite3.Error, OSError) as exc:
            log.warning("response store delete failed: %s", exc)

    def clear(self) -> int:
        """Remove every entry, here and in every process sharing the directory."""
        self._staged.clear()
        removed = int(self._cache.clear()) if self._cache is not None else 0
        try:
            self._hot.bump_generation()
        except OSError as exc:
            log.warning("could not mark the store as cleared: %s", exc)
        return removed

    def __len__(self) -> int:
        return len(self._cache) if self._cache is not None else 0

    def volume(self) -> int:
        """Bytes on disk, as diskcache estimates them."""
        return int(self._cache.volume()) if self._cache is not None else 0

    def close(self) -> None:
        """Close the underlying database connections."""
        if self._cache is not None:
            self._cache.close()

    # The async face every store backend shares (backends/base.py's AnswerStore). A hit
    # stays one SQLite read on the loop, as before; writes and clears go off the loop.
    kind = "diskcache"

    async def lookup(self, key: str) -> StoredAnswer | None:
        """get(), as the shared interface spells it."""
        return self.get(key)

    async def save(self, key: str, result: ChatResult) -> PutOutcome:
        """put(), off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.put, key, result)

    async def wipe(self) -> int:
        """clear(), off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.clear)

    def snapshot(self) -> dict[str, Any]:
        """Live numbers for the metrics (blocking: counts in SQLite)."""
        return {"backend": self.kind, "entries": len(self), "bytes": self.volume(),
                "limitBytes": self.size_limit, "degraded": self.degraded}

    async def start(self) -> None:
        """Nothing to connect to: diskcache opened in the constructor."""

    async def aclose(self) -> None:
        """close(), as the shared interface spells it."""
        self.close()
