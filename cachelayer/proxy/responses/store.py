"""Stored responses: each stored response's conversation and object, per tenant.

`store: true` (the Responses API's default) keeps, under the response's id, the chat
messages of its whole conversation (without the request's instructions, which the API
does not carry over) and the response object `GET /v1/responses/{id}` returns. A
request naming it as `previous_response_id` is that conversation plus its new input,
so it has the same prefix, and the backend reuses the same KV.

Entries are keyed by tenant and id: another tenant's id is simply not there (404). A
diskcache under the data dir holds them (size-bounded, oldest dropped first, kept for
`TTL_S`); writes go to memory at once, so a chained request right after a stream finds
its predecessor, and to disk in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache
import orjson

from cachelayer.fs import ensure_private_dir

log = logging.getLogger(__name__)
TTL_S = 30 * 24 * 3600
SIZE_LIMIT = 512 * 1024 * 1024
ENTRY_LIMIT = 16 * 1024 * 1024
# Entries kept in memory when the disk refuses writes (full, read-only), newest kept.
MEMORY_ENTRIES = 1024


@dataclass(frozen=True)
class StoredResponse:
    """One stored response: its conversation as chat messages, and its object."""

    messages: list[dict[str, Any]]
    response: dict[str, Any]

    def to_bytes(self) -> bytes:
        """Serialise for the store."""
        return orjson.dumps({"messages": self.messages, "response": self.response})

    @classmethod
    def from_bytes(cls, data: bytes) -> StoredResponse | None:
        """Rebuild an entry; None (logged) when it is unreadable."""
        try:
            raw = orjson.loads(data)
            return cls(list(raw["messages"]), dict(raw["response"]))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("dropping an unreadable stored response: %s", exc)
            return None


def _key(tenant: str, response_id: str) -> str:
    return f"{tenant}\x00{response_id}"


class ResponseStates:
    """Stored responses by (tenant, id), on disk with the latest writes in memory."""

    def __init__(self, directory: Path) -> None:
        self.degraded: str | None = None
        try:
            self._cache = self._open(ensure_private_dir(directory))
        except (OSError, sqlite3.Error) as exc:
            # A read-only data dir must not stop the proxy: keep this process's responses.
            self.degraded = f"cannot open the stored responses in {directory}: {exc}"
            log.error("%s; keeping them in a temporary directory until restart",
                      self.degraded)
            self._cache = self._open(Path(tempfile.mkdtemp(prefix="cachelayer-responses-")))
        self._staged: dict[str, bytes] = {}
        self._lock = threading.Lock()  # _staged is also changed by the writer threads
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def _open(directory: Path) -> diskcache.Cache:
        return diskcache.Cache(str(directory), size_limit=SIZE_LIMIT,
                               eviction_policy="least-recently-stored")

    def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        """The stored response, or None (unknown, deleted, expired or another tenant's)."""
        key = _key(tenant, response_id)
        data = self._staged.get(key)
        if data is None:
            value = self._cache.get(key)
            data = value if isinstance(value, bytes) else None
        return StoredResponse.from_bytes(data) if data is not None else None

    def put(self, tenant: str, response_id: str, entry: StoredResponse) -> bool:
        """Keep an entry: visible at once, on disk shortly. False when it is too large."""
        data = entry.to_bytes()
        if len(data) > ENTRY_LIMIT:
            return False
        key = _key(tenant, response_id)
        with self._lock:
            self._staged[key] = data
        task = asyncio.ensure_future(asyncio.to_thread(self._write, key, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _write(self, key: str, data: bytes) -> None:
        try:
            self._cache.set(key, data, expire=TTL_S)
        except (OSError, sqlite3.Error) as exc:
            # Stays in memory (the newest MEMORY_ENTRIES) so chaining still works here.
            log.warning("cannot write a stored response to disk: %s", exc)
            with self._lock:
                while len(self._staged) > MEMORY_ENTRIES:
                    self._staged.pop(next(iter(self._staged)))
            return
        with self._lock:
            if self._staged.get(key) is data:
                del self._staged[key]

    async def delete(self, tenant: str, response_id: str) -> bool:
        """Forget an entry (after any write of it still running); False when none."""
        key = _key(tenant, response_id)
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        with self._lock:
            staged = self._staged.pop(key, None) is not None
        return bool(await asyncio.to_thread(self._cache.delete, key)) or staged

    def pending(self) -> int:
        """Writes still running in their threads."""
        return len(self._tasks)

    def __len__(self) -> int:
        """Entries kept (those still being written count once they land)."""
        with self._lock:
            staged = list(self._staged)
        return len(self._cache) + sum(1 for key in staged if key not in self._cache)

    async def aclose(self) -> None:
        """Wait for pending writes, then close the cache."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._cache.close()
