"""The per-prefix half of the token-savings ledger: how each request used its prefix.

Records (telemetry/prefix_records.py) are kept per prefix id, merged in memory and
written with the counters (one transaction every few seconds), so two proxies sharing a
data dir add up. Reuse is measured from the backend's `cached_tokens`; where a backend
reports nothing, an estimate is kept apart and marked as one.

Each answered request is one of: a hit (the backend reused at least the prefix's length
in tokens, and the prefix was answered before), partial (fewer tokens reused), a miss
(none), or a store replay (the backend was not asked). Partial and miss carry a reason.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass

import diskcache

from cachelayer.protocol.chat import Usage
from cachelayer.proxy.state import PrefixIds
from cachelayer.telemetry.counters import MissReason
from cachelayer.telemetry.prefix_records import PrefixRecord

log = logging.getLogger(__name__)
PREFIX_KEY = "p:"
MAX_CLIENTS = 4096
MAX_KNOWN = 4096
# The backend counts a prefix as tools + system rendered with the chat template's closing
# and generation header; its own checkpoint at the system's end stops before those few
# tokens, so a reuse that falls short of the count by at most this much covers the prefix.
PREFIX_SLACK_TOKENS = 8
# What one answered request was, for the prefix it carried.
HIT = "hit"          # the backend reused at least the whole stable prefix, seen before
PARTIAL = "partial"  # it reused some tokens, fewer than the prefix (or a first request)
MISS = "miss"        # it reused nothing
REPLAYED = "store"   # layer 2 replayed a stored answer; the backend was not asked


@dataclass(frozen=True)
class Outcome:
    """How one request used its prefix, and why it was not a hit (None for hits)."""

    category: str
    reason: MissReason | None = None


def change_reason(previous: tuple[str, str] | None, ids: PrefixIds) -> MissReason:
    """What changed from the client's previous prefix, for a prefix seen the first time."""
    if previous is None:
        return MissReason.NEW_SESSION
    tools_changed = previous[0] != ids.tools_hash
    system_changed = previous[1] != ids.system_hash
    if tools_changed and system_changed:
        return MissReason.BOTH_CHANGED
    if tools_changed:
        return MissReason.TOOLS_CHANGED
    return MissReason.SYSTEM_CHANGED


def classify(reused: int, prefix_tokens: int, seen_before: bool) -> str:
    """hit, partial or miss for a measured reuse (pure: the accounting rule itself).

    A hit needs a prefix seen before and a reuse of at least its length: the first
    request of a prefix is never a hit, whatever the backend shared with another one.
    """
    if seen_before and prefix_tokens and reused >= prefix_tokens - PREFIX_SLACK_TOKENS:
        return HIT
    return PARTIAL if reused > 0 else MISS


class PrefixLedger:
    """Per-prefix records, prefix sizes, and each client's last prefix (for the reason)."""

    def __init__(self, cache: diskcache.Cache, io_lock: threading.RLock | None = None) -> None:
        self._cache = cache
        # Held from taking pending records until they are stored, and by records(): a
        # read in between would miss them (see ledger.py).
        self._io = io_lock or threading.RLock()
        self._pending: dict[str, PrefixRecord] = {}
        self._clients: OrderedDict[str, tuple[str, str]] = OrderedDict()
        # Prefixes known to have been answered before, with their measured size (0: none).
        self._known: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        # Also handed every flushed batch of records (the shared ledger in Redis).
        self.on_flush: Callable[[dict[str, PrefixRecord]], None] | None = None
        # The backend's --kv-min-tokens, as its exported stats say (0: unknown): a prompt
        # below it was never on disk, so losing it is no eviction.
        self.persist_min_tokens = 0

    def measured_size(self, prefix_id: str) -> int | None:
        """The backend-counted size of a prefix in tokens, if one is known in memory."""
        with self._lock:
            return self._known.get(prefix_id) or None

    def set_size(self, prefix_id: str, tokens: int) -> None:
        """Remember a prefix's size as the backend counted it (kept in its record too)."""
        with self._lock:
            if prefix_id in self._known:
                self._known[prefix_id] = tokens
            record = self._pending.setdefault(prefix_id, PrefixRecord())
            record.merge(PrefixRecord(prefix_tokens=tokens, prefix_tokens_estimated=False))

    def _seen_before(self, prefix_id: str) -> bool:
        # Called under the lock. The stored record is read once per prefix per process.
        if prefix_id in self._known:
            self._known.move_to_end(prefix_id)
            return True
        pending = self._pending.get(prefix_id)
        stored = PrefixRecord.from_dict(self._cache.get(PREFIX_KEY + prefix_id))
        if pending is not None:
            stored.merge(pending)
        size = 0 if stored.prefix_tokens_estimated else stored.prefix_tokens
        self._known[prefix_id] = size
        while len(self._known) > MAX_KNOWN:
            self._known.popitem(last=False)
        return stored.requests > 0

    def record(self, ids: PrefixIds, usage: Usage | None, *, from_store: bool,
               client: str, estimate: Callable[[], int] | None = None,
               now: float | None = None, times: int = 1) -> Outcome:
        """Account one answered request; `estimate` sizes the prefix when nothing measured it.

        `times`: that many identical store replays at once (the fast path's batches).
        """
        if times != 1 and not from_store:
            raise ValueError("only store replays are accounted several at once")
        now = time.time() if now is None else now
        with self._lock:
            seen = self._seen_before(ids.prefix_id)
            previous = self._clients.pop(client, None)
            self._clients[client] = (ids.tools_hash, ids.system_hash)
            while len(self._clients) > MAX_CLIENTS:
                self._clients.popitem(last=False)
            delta = PrefixRecord(tools=ids.tools, first_seen=now, last_seen=now,
                                 requests=times)
            prompt = usage.prompt_tokens if usage else 0
            delta.prompt_tokens = prompt * times
            delta.min_prompt_tokens = prompt
            size = self._known.get(ids.prefix_id) or 0
            if size:
                delta.prefix_tokens, delta.prefix_tokens_estimated = size, False
            elif estimate is not None and usage is not None and not from_store:
                # Only a backend answer is classified against the prefix's size; a store
                # replay needs none, and estimating costs two serialisations of the body.
                delta.prefix_tokens = size = estimate()
            if from_store:
                delta.store_hits = times
                delta.store_tokens_saved = times * (
                    prompt + (usage.completion_tokens if usage else 0))
                outcome = Outcome(REPLAYED)
            else:
                if usage is not None and usage.cached_tokens is not None:
                    delta.reused_tokens = usage.cached_tokens
                    category = classify(usage.cached_tokens, size, seen)
                else:
                    # Nothing measured: a prefix seen before is taken to share at least its
                    # shortest prompt, counted apart as an estimate.
                    known = self._known_min_prompt(ids.prefix_id) if seen else 0
                    delta.estimated_reused_tokens = min(known, prompt) if known else 0
                    category = HIT if known else MISS
                reason = None
                if category != HIT:
                    reason = (self._lost_reason(ids.prefix_id, prompt) if seen
                              else change_reason(previous, ids))
                    delta.reasons = {reason.value: 1}
                    delta.last_miss_reason = reason.value
                outcome = Outcome(category, reason)
                delta.hits = int(category == HIT)
                delta.partial = int(category == PARTIAL)
                delta.misses = int(category == MISS)
            self._pending.setdefault(ids.prefix_id, PrefixRecord()).merge(delta)
        return outcome

    def _lost_reason(self, prefix_id: str, prompt: int) -> MissReason:
        # Called under the lock, for a prefix seen before that the backend did not reuse.
        shortest = self._known_min_prompt(prefix_id) or prompt
        if 0 < min(shortest, prompt) < self.persist_min_tokens:
            return MissReason.TOO_SHORT
        return MissReason.EVICTED

    def _known_min_prompt(self, prefix_id: str) -> int:
        pending = self._pending.get(prefix_id)
        if pending is not None and pending.min_prompt_tokens:
            return pending.min_prompt_tokens
        stored = PrefixRecord.from_dict(self._cache.get(PREFIX_KEY + prefix_id))
        return stored.min_prompt_tokens

    def flush(self) -> None:
        """Merge pending records into the stored ones in one transaction (blocking)."""
        with self._io:
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending:
                return
            if self.on_flush is not None:
                self.on_flush(pending)
            try:
                with self._cache.transact():
                    for prefix_id, delta in pending.items():
                        record = PrefixRecord.from_dict(self._cache.get(PREFIX_KEY + prefix_id))
                        record.merge(delta)
                        self._cache.set(PREFIX_KEY + prefix_id, asdict(record))
            except (sqlite3.Error, OSError) as exc:
                log.error("prefix ledger flush failed, keeping records in memory: %s", exc)
                with self._lock:
                    for prefix_id, delta in pending.items():
                        newer = self._pending.pop(prefix_id, None)
                        if newer is not None:
                            delta.merge(newer)
                        self._pending[prefix_id] = delta

    def records(self) -> dict[str, PrefixRecord]:
        """Every prefix: stored records plus what is pending."""
        with self._io:
            out: dict[str, PrefixRecord] = {}
            try:
                for key in self._cache.iterkeys():
                    if isinstance(key, str) and key.startswith(PREFIX_KEY):
                        out[key[len(PREFIX_KEY):]] = PrefixRecord.from_dict(self._cache.get(key))
            except (sqlite3.Error, OSError) as exc:
                log.warning("prefix ledger read failed: %s", exc)
            with self._lock:
                for prefix_id, delta in self._pending.items():
                    out.setdefault(prefix_id, PrefixRecord()).merge(delta)
            return out

    def clear(self) -> None:
        """Forget pending records and client history (stored ones go with the cache)."""
        with self._lock:
            self._pending.clear()
            self._clients.clear()
            self._known.clear()


