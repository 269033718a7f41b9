"""Every counter the ledger keeps, named once, with its Prometheus name and meaning.

Layers count with these constants, never with string literals, so a renamed counter is
a one-line change and a typo is an import error. Miss reasons are slugs (no spaces) so
a reason can sit inside a counter name and be read back without parsing prose.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

REQUESTS = "requests"
RESPONSE_HITS = "response.hits"
RESPONSE_COALESCED = "response.coalesced"
RESPONSE_MISSES = "response.misses"
RESPONSE_EXPIRED = "response.expired"
RESPONSE_BYPASSES = "response.bypasses"
RESPONSE_STORED = "response.stored"
RESPONSE_NOT_STORED = "response.not_stored"
RESPONSE_WRITE_WAITS = "response.write_waits"
RESPONSE_EVICTIONS = "response.evictions"
RESPONSE_ERRORS = "response.errors"
RESPONSE_TOKENS_SAVED = "response.tokens_saved"
TOKENS_INPUT = "tokens.input"
TOKENS_READ = "tokens.read"
TOKENS_REUSED = "tokens.reused"
TOKENS_CREATED = "tokens.created"
KV_HITS = "kv.hits"
KV_UNREPORTED = "kv.unreported"
PREFIX_REQUESTS = "prefix.requests"
PREFIX_STRIPPED = "prefix.stripped_segments"
PREFIX_HITS = "prefix.hits"
PREFIX_PARTIAL = "prefix.partial."  # followed by a MissReason value
PREFIX_MISS = "prefix.miss."  # followed by a MissReason value
PREFIX_REWRITES = "prefix.rewrites."  # followed by a volatile rule's name
PREFIX_SYSTEM_MOVED = "prefix.system_moved"
PREFIX_REORDERED = "prefix.reordered_requests"

# The response layer's counters by their short name, as the metrics file lists them.
RESPONSE_COUNTERS = {
    name.split(".", 1)[1]: name
    for name in (RESPONSE_HITS, RESPONSE_COALESCED, RESPONSE_MISSES, RESPONSE_BYPASSES,
                 RESPONSE_EXPIRED, RESPONSE_STORED, RESPONSE_NOT_STORED, RESPONSE_WRITE_WAITS,
                 RESPONSE_EVICTIONS, RESPONSE_ERRORS, RESPONSE_TOKENS_SAVED)
}
# What the store layer counts for each lookup outcome that goes on to the upstream.
LOOKUP_COUNTERS = {"MISS": RESPONSE_MISSES, "EXPIRED": RESPONSE_EXPIRED,
                   "BYPASS": RESPONSE_BYPASSES}


class MissReason(str, enum.Enum):
    """Why a request was not a prefix hit (a partial reuse or a miss).

    A prefix seen for the first time says what changed since the client's previous one
    (or that the client is new); a prefix seen before that the backend no longer had in
    full was evicted (from its memory and its disk), or, when its prompts were too short
    for the backend to write them to disk, never persisted.
    """

    NEW_SESSION = "new_session"
    TOOLS_CHANGED = "tools_changed"
    SYSTEM_CHANGED = "system_changed"
    BOTH_CHANGED = "tools_and_system_changed"
    EVICTED = "evicted"
    # Seen before, but its earlier prompts were below the backend's --kv-min-tokens: they
    # were never written to disk, so nothing was evicted (a restart or the memory LRU
    # dropped them).
    TOO_SHORT = "too_short_to_persist"

    @property
    def label(self) -> str:
        """The reason as people read it in `cachelayer stats`."""
        return reason_label(self.value)


_REASON_LABELS = {
    "new_session": "new conversation",
    "tools_changed": "tools changed",
    "system_changed": "system prompt changed",
    "tools_and_system_changed": "tools and system prompt changed",
    "evicted": "evicted from the backend's cache",
    "too_short_to_persist": "too short to persist (below --kv-min-tokens)",
}


def reason_label(slug: str) -> str:
    """A reason slug (as stored in the ledger and metrics file) in words."""
    return _REASON_LABELS.get(slug, slug.replace("_", " "))


def prefix_miss(reason: MissReason) -> str:
    """The counter of prefix misses (nothing reused) for one reason."""
    return PREFIX_MISS + reason.value


def prefix_partial(reason: MissReason) -> str:
    """The counter of partial prefix reuses (less than the prefix) for one reason."""
    return PREFIX_PARTIAL + reason.value


def prefix_rewrites(rule: str) -> str:
    """The counter of rewrites one volatile rule made."""
    return PREFIX_REWRITES + rule


@dataclass(frozen=True)
class CounterSpec:
    """A ledger counter as Prometheus exposes it."""

    counter: str
    metric: str
    help: str


PROMETHEUS_COUNTERS = (
    CounterSpec(REQUESTS, "cachelayer_requests_total", "Completions answered."),
    CounterSpec(RESPONSE_HITS, "cachelayer_response_hits_total",
                "Answers replayed from the store."),
    CounterSpec(RESPONSE_COALESCED, "cachelayer_response_coalesced_total",
                "Misses answered by an identical request already in flight."),
    CounterSpec(RESPONSE_MISSES, "cachelayer_response_misses_total",
                "Store lookups that missed."),
    CounterSpec(RESPONSE_EXPIRED, "cachelayer_response_expired_total",
                "Entries older than max-age."),
    CounterSpec(RESPONSE_BYPASSES, "cachelayer_response_bypasses_total",
                "Requests not looked up."),
    CounterSpec(RESPONSE_STORED, "cachelayer_response_stored_total",
                "Answers written to the store."),
    CounterSpec(RESPONSE_WRITE_WAITS, "cachelayer_response_write_waits_total",
                "Answers whose request waited for its own write (write queue full)."),
    CounterSpec(RESPONSE_EVICTIONS, "cachelayer_response_evictions_total",
                "Entries evicted or expired."),
    CounterSpec(RESPONSE_ERRORS, "cachelayer_response_errors_total",
                "Requests that got no answer."),
    CounterSpec(TOKENS_INPUT, "cachelayer_tokens_input_total",
                "Prompt tokens of answered requests."),
    CounterSpec(TOKENS_REUSED, "cachelayer_tokens_reused_total",
                "Prompt tokens the backend reused from its KV cache."),
    CounterSpec(TOKENS_CREATED, "cachelayer_tokens_prefilled_total",
                "Prompt tokens the backend computed."),
    CounterSpec(KV_HITS, "cachelayer_kv_hits_total",
                "Requests whose backend reused at least their whole stable prefix."),
    CounterSpec(PREFIX_HITS, "cachelayer_prefix_hits_total",
                "Requests reusing their whole stable prefix, seen before (tools + system)."),
    CounterSpec(PREFIX_SYSTEM_MOVED, "cachelayer_prefix_system_moved_total",
                "System turns moved into the leading system prompt."),
)
