"""The token-savings ledger per stable prefix: what each prefix cost and what reuse saved.

Records are kept per prefix id, merged in memory and written with the counters (one
transaction every few seconds), so two proxies sharing a data dir add up. Reuse is
measured from the backend's `cached_tokens`; where a backend reports nothing, an
estimate is kept apart and marked as one.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import diskcache

from cachelayer.protocol.chat import Usage
from cachelayer.proxy.prefix.stabilize import PrefixIds
from cachelayer.telemetry.counters import MissReason

log = logging.getLogger(__name__)
PREFIX_KEY = "p:"
MAX_CLIENTS = 4096


@dataclass
class PrefixRecord:
    """Everything the ledger knows about one prefix id."""

    tools: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    requests: int = 0
    hits: int = 0
    misses: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    estimated_reused_tokens: int = 0
    store_hits: int = 0
    store_tokens_saved: int = 0
    min_prompt_tokens: int = 0
    last_miss_reason: str | None = None

    def merge(self, other: PrefixRecord) -> None:
        """Add another record's counts into this one (other is the newer)."""
        for name in ("requests", "hits", "misses", "prompt_tokens", "reused_tokens",
                     "estimated_reused_tokens", "store_hits", "store_tokens_saved"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.tools = other.tools or self.tools
        seen = [x for x in (self.first_seen, other.first_seen) if x]
        self.first_seen = min(seen) if seen else 0.0
        self.last_seen = max(self.last_seen, other.last_seen)
        mins = [x for x in (self.min_prompt_tokens, other.min_prompt_tokens) if x]
        self.min_prompt_tokens = min(mins) if mins else 0
        self.last_miss_reason = other.last_miss_reason or self.last_miss_reason

    @classmethod
    def from_dict(cls, raw: Any) -> PrefixRecord:
        """Rebuild from what was stored, ignoring unknown fields."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names}) if isinstance(
            raw, dict) else cls()


def miss_reason(previous: tuple[str, str] | None, ids: PrefixIds) -> MissReason:
    """What changed from the client's previous prefix."""
    if previous is None:
        return MissReason.NEW_CLIENT
    tools_changed = previous[0] != ids.tools_hash
    system_changed = previous[1] != ids.system_hash
    if tools_changed and system_changed:
        return MissReason.BOTH_CHANGED
    if tools_changed:
        return MissReason.TOOLS_CHANGED
    if system_changed:
        return MissReason.SYSTEM_CHANGED
    return MissReason.NOT_CACHED


class PrefixLedger:
    """Per-prefix records and each client's last prefix (for the miss reason)."""

    def __init__(self, cache: diskcache.Cache) -> None:
        self._cache = cache
        self._pending: dict[str, PrefixRecord] = {}
        self._clients: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._lock = threading.Lock()
        # Also handed every flushed batch of records (the shared ledger in Redis).
        self.on_flush: Callable[[dict[str, PrefixRecord]], None] | None = None

    def record(self, ids: PrefixIds, usage: Usage | None, *, from_store: bool,
               client: str, now: float | None = None) -> MissReason | None:
        """Account one answered request; returns why it missed, or None for a hit."""
        now = time.time() if now is None else now
        with self._lock:
            previous = self._clients.pop(client, None)
            self._clients[client] = (ids.tools_hash, ids.system_hash)
            while len(self._clients) > MAX_CLIENTS:
                self._clients.popitem(last=False)
            delta = PrefixRecord(tools=ids.tools, first_seen=now, last_seen=now, requests=1)
            prompt = usage.prompt_tokens if usage else 0
            delta.prompt_tokens = prompt
            delta.min_prompt_tokens = prompt
            if from_store:
                delta.store_hits = 1
                delta.store_tokens_saved = prompt + (usage.completion_tokens if usage else 0)
                hit = True
            elif usage is not None and usage.cached_tokens is not None:
                delta.reused_tokens = usage.cached_tokens
                hit = usage.cached_tokens > 0
            else:
                # No measurement: a prefix seen before shares at least its shortest prompt.
                # (Looked up only here: it may read the disk, and measured answers need not.)
                known = self._known_min_prompt(ids.prefix_id)
                delta.estimated_reused_tokens = min(known, prompt) if known else 0
                hit = bool(known)
            reason = None if hit else miss_reason(previous, ids)
            delta.hits, delta.misses = int(hit), int(not hit)
            delta.last_miss_reason = reason.value if reason else None
            self._pending.setdefault(ids.prefix_id, PrefixRecord()).merge(delta)
        return reason

    def _known_min_prompt(self, prefix_id: str) -> int:
        pending = self._pending.get(prefix_id)
        if pending is not None and pending.min_prompt_tokens:
            return pending.min_prompt_tokens
        stored = PrefixRecord.from_dict(self._cache.get(PREFIX_KEY + prefix_id))
        return stored.min_prompt_tokens

    def flush(self) -> None:
        """Merge pending records into the stored ones in one transaction (blocking)."""
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


def top_entries(records: dict[str, PrefixRecord], limit: int = 20) -> list[dict[str, Any]]:
    """anyclaude's topEntries (hash, tools, hits, misses, hitRate, cacheTokens) and more."""
    ranked = sorted(records.items(), key=lambda kv: (-kv[1].requests, kv[0]))[:limit]
    return [
        {
            "hash": prefix_id,
            "tools": r.tools,
            "hits": r.hits,
            "misses": r.misses,
            "hitRate": f"{100.0 * r.hits / r.requests:.1f}" if r.requests else "0.0",
            "cacheTokens": r.reused_tokens,
            "requests": r.requests,
            "promptTokens": r.prompt_tokens,
            "estimatedCacheTokens": r.estimated_reused_tokens,
            "storeHits": r.store_hits,
            "storeTokensSaved": r.store_tokens_saved,
            "firstSeen": r.first_seen,
            "lastSeen": r.last_seen,
            "lastMissReason": r.last_miss_reason,
        }
        for prefix_id, r in ranked
    ]
