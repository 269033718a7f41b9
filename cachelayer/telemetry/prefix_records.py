"""The figures kept per stable prefix, and how the metrics file and /metrics report them.

A `PrefixRecord` is plain data: the prefix layer's ledger (proxy/prefix/prefixes.py)
fills records in, the shared ledger merges them across proxies, and the renderers here
read them. Nothing in this module knows where records come from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

# "Warm" prefixes: distinct prefixes used this recently (what the backend's LRU of prompt
# caches is likely to hold; mlx-lm keeps 10 by default).
WARM_WINDOW_S = 600.0

@dataclass
class PrefixRecord:
    """Everything the ledger knows about one prefix id."""

    tools: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    requests: int = 0
    hits: int = 0
    partial: int = 0
    misses: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    estimated_reused_tokens: int = 0
    store_hits: int = 0
    store_tokens_saved: int = 0
    min_prompt_tokens: int = 0
    prefix_tokens: int = 0
    prefix_tokens_estimated: bool = True
    reasons: dict[str, int] = field(default_factory=dict)
    last_miss_reason: str | None = None

    def merge(self, other: PrefixRecord) -> None:
        """Add another record's counts into this one (other is the newer)."""
        # Spelled out, not a getattr loop: this runs once per answered request.
        self.requests += other.requests
        self.hits += other.hits
        self.partial += other.partial
        self.misses += other.misses
        self.prompt_tokens += other.prompt_tokens
        self.reused_tokens += other.reused_tokens
        self.estimated_reused_tokens += other.estimated_reused_tokens
        self.store_hits += other.store_hits
        self.store_tokens_saved += other.store_tokens_saved
        self.tools = other.tools or self.tools
        self.first_seen = _min_set(self.first_seen, other.first_seen)
        self.last_seen = max(self.last_seen, other.last_seen)
        self.min_prompt_tokens = int(_min_set(self.min_prompt_tokens, other.min_prompt_tokens))
        # A measured size beats an estimate; the newer of two of a kind wins.
        if other.prefix_tokens and (not other.prefix_tokens_estimated
                                    or self.prefix_tokens_estimated or not self.prefix_tokens):
            self.prefix_tokens = other.prefix_tokens
            self.prefix_tokens_estimated = other.prefix_tokens_estimated
        for reason, n in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n
        self.last_miss_reason = other.last_miss_reason or self.last_miss_reason

    @classmethod
    def from_dict(cls, raw: Any) -> PrefixRecord:
        """Rebuild from what was stored, ignoring unknown fields."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names}) if isinstance(
            raw, dict) else cls()


def _min_set(a: float, b: float) -> float:
    """The smaller of two values where 0 means 'not set'."""
    if not a:
        return b
    return min(a, b) if b else a


def _hit_rate(r: PrefixRecord) -> str:
    # Of the requests the backend answered: store replays did not ask it anything.
    asked = r.hits + r.partial + r.misses
    return f"{100.0 * r.hits / asked:.1f}" if asked else "0.0"


def warm_prefixes(records: dict[str, PrefixRecord], now: float,
                  window_s: float = WARM_WINDOW_S) -> int:
    """Distinct prefixes used within the window: what the backend is likely keeping warm."""
    return sum(1 for r in records.values() if r.last_seen and now - r.last_seen <= window_s)


def top_entries(records: dict[str, PrefixRecord], limit: int = 20) -> list[dict[str, Any]]:
    """anyclaude's topEntries (hash, tools, hits, misses, hitRate, cacheTokens) and more."""
    ranked = sorted(records.items(), key=lambda kv: (-kv[1].requests, kv[0]))[:limit]
    return [
        {
            "hash": prefix_id,
            "tools": r.tools,
            "hits": r.hits,
            "misses": r.misses,
            "hitRate": _hit_rate(r),
            "cacheTokens": r.reused_tokens,
            "requests": r.requests,
            "partial": r.partial,
            "prefixTokens": r.prefix_tokens,
            "prefixTokensEstimated": r.prefix_tokens_estimated,
            "reasons": dict(sorted(r.reasons.items())),
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
