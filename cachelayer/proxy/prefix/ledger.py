"""The token-savings ledger: persistent counters (what every layer did), per-prefix and
per-conversation records, surviving restarts and shared by processes.

It is layer 1's state (the prefix layer opens and closes it); the other layers count into
it through the `LEDGER` key with the names in telemetry/counters.py.

Counting on the hot path only touches a dict; `flush()` (run off the event loop every
few seconds and at shutdown) adds the pending deltas to a diskcache in one transaction
with `incr`, so two proxies sharing a data dir add up instead of overwriting each other.
"""

from __future__ import annotations

import logging
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import diskcache
from aiohttp import web

from cachelayer.fs import ensure_private_dir
from cachelayer.protocol.chat import Usage
from cachelayer.proxy.prefix.prefixes import PrefixLedger
from cachelayer.telemetry import counters as c
from cachelayer.telemetry.sessions import SessionLedger

log = logging.getLogger(__name__)
_COUNTER_PREFIX = "c:"
_CREATED_KEY = "meta:created"


def _open(directory: Path) -> diskcache.Cache:
    return diskcache.Cache(str(directory), size_limit=2**40, cull_limit=0)


class Ledger:
    """Counters by dotted name (`response.hits`, `tokens.reused`, ...)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.open_error: str | None = None
        # The last flush's failure (None once a flush succeeds again): /health shows it.
        self.flush_error: str | None = None
        try:
            self._cache = _open(ensure_private_dir(directory))
        except (OSError, sqlite3.Error) as exc:
            # Keep counting for this process (a temporary dir) rather than refuse to start.
            self.open_error = f"cannot open the ledger in {directory}: {exc}"
            log.error("%s; counting in a temporary directory until restart", self.open_error)
            self._cache = _open(Path(tempfile.mkdtemp(prefix="cachelayer-ledger-")))
        self._pending: Counter[str] = Counter()
        self._unsaved: Counter[str] = Counter()  # taken once, waiting for a working disk
        # Also handed every flushed delta exactly once (the shared ledger in Redis).
        self.on_flush: Callable[[Counter[str]], None] | None = None
        self._lock = threading.Lock()
        # Held by a flush from taking the pending deltas until they are on disk, and by a
        # read of the totals: a read between the two would miss them (live stats that
        # dip by a request's counts, then come back).
        self._io = threading.RLock()
        self._cache.add(_CREATED_KEY, time.time())
        self.prefixes = PrefixLedger(self._cache, self._io)
        self.sessions = SessionLedger(self._cache, self._io)

    @property
    def degraded(self) -> str | None:
        """Why the counters are not safe on disk right now, or None."""
        return self.open_error or self.flush_error

    def count(self, name: str, n: int = 1) -> None:
        """Add n to a counter (in memory until the next flush)."""
        if n:
            with self._lock:
                self._pending[name] += n

    def count_many(self, counts: Iterable[tuple[str, int]]) -> None:
        """Add to several counters under one lock (an answered request counts five)."""
        with self._lock:
            pending = self._pending
            for name, n in counts:
                if n:
                    pending[name] += n

    def flush(self) -> bool:
        """Write pending deltas to disk atomically; blocking. False if the disk refused."""
        with self._io:
            self.prefixes.flush()
            self.sessions.flush()
            with self._lock:
                fresh, self._pending = self._pending, Counter()
                pending, self._unsaved = self._unsaved + fresh, Counter()
            if fresh and self.on_flush is not None:
                self.on_flush(fresh)
            if not pending:
                return True
            try:
                with self._cache.transact():
                    for name, delta in pending.items():
                        self._cache.incr(_COUNTER_PREFIX + name, delta, default=0)
            except (sqlite3.Error, OSError) as exc:
                log.error("ledger flush failed, keeping counts in memory: %s", exc)
                self.flush_error = f"ledger flush failed, counts kept in memory: {exc}"
                with self._lock:
                    self._unsaved.update(pending)
                return False
            self.flush_error = None
            return True

    def persisted(self) -> dict[str, int]:
        """The counters as stored on disk."""
        out: dict[str, int] = {}
        try:
            for key in self._cache.iterkeys():
                if isinstance(key, str) and key.startswith(_COUNTER_PREFIX):
                    value = self._cache.get(key)
                    if isinstance(value, int):
                        out[key[len(_COUNTER_PREFIX) :]] = value
        except (sqlite3.Error, OSError) as exc:
            log.warning("ledger read failed: %s", exc)
        return out

    def totals(self) -> dict[str, int]:
        """Stored counters plus what this process has not flushed yet."""
        with self._io:
            totals = Counter(self.persisted())
            with self._lock:
                totals.update(self._pending)
                totals.update(self._unsaved)
            return dict(totals)

    def clear(self) -> None:
        """Forget every counter and record."""
        with self._lock:
            self._pending.clear()
            self._unsaved.clear()
        self.prefixes.clear()
        self.sessions.clear()
        self._cache.clear()
        self._cache.add(_CREATED_KEY, time.time())

    def close(self) -> None:
        """Flush and close."""
        self.flush()
        self._cache.close()


LEDGER = web.AppKey("ledger", Ledger)


def count_usage(ledger: Ledger, usage: Usage | None, *, from_store: bool,
                times: int = 1) -> None:
    """Account an answered request's tokens (`times` identical ones at once), measured
    where the backend measured them.

    The backend's `usage.prompt_tokens_details.cached_tokens` says what it reused; a
    stored answer recomputes nothing at all. Estimates never enter these counters.
    """
    if usage is None:
        ledger.count(c.REQUESTS, times)
        return
    counts = [(c.REQUESTS, 1), (c.TOKENS_INPUT, usage.prompt_tokens)]
    if from_store:
        # A stored answer recomputes nothing: its whole prompt and completion are saved.
        counts += [(c.TOKENS_READ, usage.prompt_tokens),
                   (c.RESPONSE_TOKENS_SAVED, usage.prompt_tokens + usage.completion_tokens)]
    else:
        cached = usage.cached_tokens or 0
        counts += [(c.TOKENS_READ, cached), (c.TOKENS_REUSED, cached),
                   (c.TOKENS_CREATED, max(0, usage.prompt_tokens - cached))]
        if usage.cached_tokens is None:
            counts.append((c.KV_UNREPORTED, 1))
    # kv.hits is layer 1's call: a hit is a reuse of the whole stable prefix, not of any
    # token at all (middleware.py).
    ledger.count_many(counts if times == 1 else [(name, n * times) for name, n in counts])
