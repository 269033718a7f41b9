"""Where layer 2 keeps answers: a size-bounded diskcache with counted evictions.

diskcache culls silently once past its size limit (1 GB by default). Here automatic
culling is off (`cull_limit=0`) and the store evicts the oldest entries after each write
itself, so every eviction is counted. Reads never write (least-recently-stored policy),
which keeps a hit to one SQLite read on the event loop.
"""

from __future__ import annotations

import logging
import sqlite3
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import diskcache

from cachelayer.files import ensure_private_dir
from cachelayer.protocol.chat import ChatResult

log = logging.getLogger(__name__)
_HEADER = struct.Struct("<d")  # stored_at, then the result's bytes


@dataclass(frozen=True)
class StoredAnswer:
    """A stored result and when it was stored."""

    result: ChatResult
    stored_at: float

    def age(self, now: float) -> float:
        """Seconds since it was stored."""
        return max(0.0, now - self.stored_at)


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
    ) -> None:
        self.directory = directory
        self.size_limit = size_limit
        self.ttl_s = ttl_s
        self.entry_max_bytes = entry_max_bytes
        self.degraded: str | None = None
        # Answers on their way to disk: a repeat that arrives before the write lands
        # must still be a hit (agents re-send at once).
        self._staged: dict[str, StoredAnswer] = {}
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
        return StoredAnswer(result, stored_at)

    def stage(self, key: str, result: ChatResult, *, now: float | None = None) -> None:
        """Make an answer visible to get() at once; put() then writes it to disk."""
        self._staged[key] = StoredAnswer(result, time.time() if now is None else now)

    def put(self, key: str, result: ChatResult, *, now: float | None = None) -> PutOutcome:
        """Store an answer (blocking: call it off the event loop) and cull past the limit."""
        staged = self._staged.get(key)
        stored_at = staged.stored_at if staged else (time.time() if now is None else now)
        try:
            return self._write(key, _HEADER.pack(stored_at) + result.to_bytes())
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
            evicted += int(self._cache.delete(oldest))
        return evicted

    def delete(self, key: str) -> None:
        """Remove one entry if present."""
        if self._cache is None:
            return
        try:
            self._cache.delete(key)
        except (sqlite3.Error, OSError) as exc:
            log.warning("response store delete failed: %s", exc)

    def clear(self) -> int:
        """Remove every entry; returns how many were removed."""
        self._staged.clear()
        return int(self._cache.clear()) if self._cache is not None else 0

    def __len__(self) -> int:
        return len(self._cache) if self._cache is not None else 0

    def volume(self) -> int:
        """Bytes on disk, as diskcache estimates them."""
        return int(self._cache.volume()) if self._cache is not None else 0

    def close(self) -> None:
        """Close the underlying database connections."""
        if self._cache is not None:
            self._cache.close()
