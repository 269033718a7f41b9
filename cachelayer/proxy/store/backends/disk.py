"""The diskcache cold tier: answers in one size-bounded SQLite database, evictions counted.

diskcache culls silently once past its size limit (1 GB by default). Here automatic
culling is off (`cull_limit=0`) and the tier evicts the oldest entries after each write
itself, so every eviction is counted. Reads never write (least-recently-stored policy),
which keeps a read to one SQLite read: cheaper on the loop than a hop to a thread, so
`read` runs there, while writes and clears go to a thread.

A `cachelayer clear` in another process rewrites the generation marker file; the front
compares `generation()` (a stat, at most every CHECK_EVERY_S) and forgets its hot tier.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import struct
import time
from pathlib import Path
from typing import Any

import diskcache

from cachelayer.fs import ensure_private_dir, write_atomic
from cachelayer.protocol.chat import ChatResult
from cachelayer.proxy.store.backends.base import PutOutcome, StoredAnswer

log = logging.getLogger(__name__)
_HEADER = struct.Struct("<d")  # stored_at, then the result's bytes
GENERATION_MARKER = "generation"
CHECK_EVERY_S = 0.25  # how soon a `cachelayer clear` from another process takes effect


class DiskTier:
    """Answers in a diskcache directory, with a total size limit; degraded (a pass-through)
    when the directory cannot be opened or written."""

    kind = "diskcache"

    def __init__(self, directory: Path, *, size_limit: int) -> None:
        self.directory = directory
        self.size_limit = size_limit
        self.degraded: str | None = None
        self.marker = directory / GENERATION_MARKER
        self._generation = (0, 0)
        self._checked_at = -CHECK_EVERY_S
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

    def generation(self) -> object:
        """The marker file's identity; a stat per hit costs a twentieth of the hit, so
        look at most every CHECK_EVERY_S."""
        now = time.monotonic()
        if now - self._checked_at < CHECK_EVERY_S:
            return self._generation
        self._checked_at = now
        try:
            st = os.stat(self.marker)
            self._generation = (st.st_ino, st.st_mtime_ns)
        except OSError:
            self._generation = (0, 0)
        return self._generation

    def read_now(self, key: str) -> tuple[StoredAnswer, int] | None:
        """The stored answer and its size, or None; an unreadable entry is dropped."""
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
            result = ChatResult.from_bytes(raw[_HEADER.size:])
        except (ValueError, struct.error) as exc:
            log.warning("dropping unreadable response entry: %s", exc)
            self.delete(key)
            return None
        return StoredAnswer(result, stored_at), len(raw)

    def write_now(self, key: str, answer: StoredAnswer, body: bytes | None = None,
                  ttl_left_s: float | None = None) -> PutOutcome:
        """Store an answer (blocking) and evict the oldest past the size limit."""
        if self._cache is None:
            return PutOutcome(stored=False)
        body = answer.result.to_bytes() if body is None else body
        payload = _HEADER.pack(answer.stored_at) + body
        try:
            self._cache.set(key, payload, expire=ttl_left_s)
            expired = 0
            evicted: tuple[str, ...] = ()
            if self._cache.volume() > self.size_limit:
                expired = self._cache.expire()
                evicted = self._evict_to_limit(keep=key)
        except (sqlite3.Error, OSError) as exc:
            # A full or read-only disk must not take the proxy down: serve as a pass-through.
            self.degraded = f"response store write failed: {exc}"
            log.error("%s; serving without storing", self.degraded)
            return PutOutcome(stored=False)
        self.degraded = None
        return PutOutcome(stored=True, nbytes=len(payload), evicted=len(evicted),
                          expired=expired, evicted_keys=evicted)

    def _evict_to_limit(self, keep: str) -> tuple[str, ...]:
        assert self._cache is not None
        # diskcache's own cull() deletes in batches of ten, which empties a small store;
        # evict the oldest entries one by one instead (iteration order is insertion order).
        evicted: list[str] = []
        while self._cache.volume() > self.size_limit:
            oldest = next(iter(self._cache), None)
            if oldest is None or oldest == keep:
                break
            if self._cache.delete(oldest):
                evicted.append(oldest)
        return tuple(evicted)

    def delete(self, key: str) -> None:
        """Remove one entry if present."""
        if self._cache is None:
            return
        try:
            self._cache.delete(key)
        except (sqlite3.Error, OSError) as exc:
            log.warning("response store delete failed: %s", exc)

    def clear_now(self) -> int:
        """Remove every entry and move the generation marker, so every process sharing
        the directory forgets what it holds in memory (blocking)."""
        removed = int(self._cache.clear()) if self._cache is not None else 0
        try:
            write_atomic(self.marker, str(time.time_ns()).encode())
        except OSError as exc:
            log.warning("could not mark the store as cleared: %s", exc)
        self._checked_at = -CHECK_EVERY_S
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

    # The cold tier's async face (backends/base.py's ColdTier).

    async def start(self) -> None:
        """Nothing to connect to: diskcache opened in the constructor."""

    async def read(self, key: str) -> tuple[StoredAnswer, int] | None:
        """read_now(), on the loop (one SQLite read)."""
        return self.read_now(key)

    async def write(self, key: str, answer: StoredAnswer, body: bytes,
                    ttl_left_s: float) -> PutOutcome:
        """write_now(), off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(
            None, self.write_now, key, answer, body, ttl_left_s)

    async def clear(self) -> int:
        """clear_now(), off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.clear_now)

    def snapshot(self) -> dict[str, Any]:
        """Live numbers for the metrics (blocking: counts in SQLite)."""
        return {"backend": self.kind, "entries": len(self), "bytes": self.volume(),
                "limitBytes": self.size_limit, "degraded": self.degraded}

    async def aclose(self) -> None:
        """close(), as the interface spells it."""
        self.close()
