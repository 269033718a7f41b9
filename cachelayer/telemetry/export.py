"""The metrics document (`.anyclaude-cache-metrics.json`, `/cache/stats`), a superset of
anyclaude's file, rendered from the layers' snapshots.

anyclaude's top-level names and types stay as they were (hitRate and tokenSavings are
strings with two decimals) so scripts that read it keep working; cachelayer's own
per-layer numbers sit beside them under `layers`. Everything here takes plain data: the
proxy's observer (proxy/observe.py) collects the snapshots, `cachelayer stats` reads a
ledger or Redis directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from cachelayer.fs import write_atomic
from cachelayer.telemetry import counters as c
from cachelayer.telemetry.prefix_records import (
    WARM_WINDOW_S,
    PrefixRecord,
    top_entries,
    warm_prefixes,
)
from cachelayer.telemetry.sessions import session_rows

SCHEMA_VERSION = 1
# A layer's snapshot by the layer's name (proxy/layer.py): "prefix", "store", "forward".
Snapshots = Mapping[str, Mapping[str, Any]]


def _named(totals: Mapping[str, int], prefix: str) -> dict[str, int]:
    return dict(sorted((name[len(prefix):], n) for name, n in totals.items()
                       if name.startswith(prefix)))


def prefix_section(
    totals: Mapping[str, int], prefixes: Mapping[str, PrefixRecord], now: float
) -> dict[str, Any]:
    """Layer 1's numbers: requests, hits / partial / misses with reasons, what was
    rewritten or moved, and how many distinct prefixes are in use (warm)."""
    return {
        "requests": totals.get(c.PREFIX_REQUESTS, 0),
        "uniquePrefixes": len(prefixes),
        "warmPrefixes": warm_prefixes(dict(prefixes), now),
        "warmWindowSeconds": int(WARM_WINDOW_S),
        "hits": sum(r.hits for r in prefixes.values()),
        "partial": sum(r.partial for r in prefixes.values()),
        "misses": sum(r.misses for r in prefixes.values()),
        "storeHits": sum(r.store_hits for r in prefixes.values()),
        "strippedSegments": totals.get(c.PREFIX_STRIPPED, 0),
        "rewrites": _named(totals, c.PREFIX_REWRITES),
        "systemBlocksMoved": totals.get(c.PREFIX_SYSTEM_MOVED, 0),
        "reorderedRequests": totals.get(c.PREFIX_REORDERED, 0),
        "reusedTokens": sum(r.reused_tokens for r in prefixes.values()),
        "estimatedReusedTokens": sum(r.estimated_reused_tokens for r in prefixes.values()),
        "partialReasons": _named(totals, c.PREFIX_PARTIAL),
        "missReasons": _named(totals, c.PREFIX_MISS),
    }


def percent(part: float, whole: float) -> float:
    """part/whole in percent; 0 when nothing was counted (never a ratio of nothing)."""
    return 100.0 * part / whole if whole > 0 else 0.0


def build_metrics(
    totals: Mapping[str, int],
    *,
    runtime_ms: int,
    store: Mapping[str, Any],
    kv: Mapping[str, Any] | None = None,
    prefixes: Mapping[str, PrefixRecord] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The metrics document from ledger totals and live layer stats."""
    prefixes = prefixes or {}
    requests = totals.get(c.REQUESTS, 0)
    hits = totals.get(c.RESPONSE_HITS, 0) + totals.get(c.KV_HITS, 0)
    total_input = totals.get(c.TOKENS_INPUT, 0)
    read = totals.get(c.TOKENS_READ, 0)
    now = now or datetime.now(timezone.utc)
    stamp = now.isoformat(timespec="milliseconds")
    response: dict[str, Any] = {
        short: totals.get(name, 0) for short, name in c.RESPONSE_COUNTERS.items()
    }
    # Every request that reached layer 2, whatever the lookup's outcome.
    response["requests"] = sum(totals.get(name, 0) for name in (
        c.RESPONSE_HITS, c.RESPONSE_COALESCED, *c.LOOKUP_COUNTERS.values()))
    response["hitRate"] = round(percent(response["hits"], response["hits"] + response["misses"]
                                        + response["expired"]), 2)
    response.update(store)
    return {
        "exportedAt": stamp.replace("+00:00", "Z"),
        "runtime": runtime_ms,
        "metrics": {
            "totalRequests": requests,
            "cacheHits": hits,
            "cacheMisses": max(0, requests - hits),
            "hitRate": f"{percent(hits, requests):.2f}",
            "tokenSavings": f"{percent(read, total_input):.2f}",
            "totalInputTokens": total_input,
            "cacheCreationTokens": totals.get(c.TOKENS_CREATED, 0),
            "cacheReadTokens": read,
        },
        "topEntries": top_entries(dict(prefixes)),
        "schemaVersion": SCHEMA_VERSION,
        "layers": {
            "prefix": prefix_section(totals, prefixes, now.timestamp()),
            "response": response,
            "kv": {
                "hits": totals.get(c.KV_HITS, 0),
                "tokensReused": totals.get(c.TOKENS_REUSED, 0),
                "tokensPrefilled": totals.get(c.TOKENS_CREATED, 0),
                "unreported": totals.get(c.KV_UNREPORTED, 0),
                **dict(kv or {}),
            },
        },
    }


def write_metrics_file(path: Path, document: Mapping[str, Any]) -> None:
    """Export the metrics document atomically, pretty-printed for people and scripts."""
    write_atomic(path, orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")


def metrics_document(layers: Snapshots, *, runtime_ms: int,
                     kv: Mapping[str, Any] | None) -> dict[str, Any]:
    """The metrics document from the layers' snapshots and the backend's kv stats.

    With a shared store the top level holds the totals of every proxy on it, and
    `thisProxy` this proxy's own (kept in its data dir, across its restarts)."""
    prefix, store_layer, forward = layers["prefix"], layers["store"], layers["forward"]
    store = store_layer.get("store") or {}
    doc = build_metrics(prefix["totals"], runtime_ms=runtime_ms, store=store, kv=kv,
                        prefixes=prefix["prefixes"])
    shared = store_layer.get("shared")
    if shared is not None:
        own = doc
        doc = build_metrics(shared["totals"], runtime_ms=runtime_ms, store=store, kv=kv,
                            prefixes=shared["prefixes"])
        doc["thisProxy"] = {"metrics": own["metrics"], "layers": own["layers"],
                            "topEntries": own["topEntries"]}
        doc["shared"] = {"store": shared["label"], "error": shared["error"]}
    routing = forward.get("routing")
    if routing is not None:
        doc["layers"]["routing"] = routing
    # Streamed requests still prefilling: what a long first turn is doing right now.
    doc["prefills"] = forward.get("prefills", [])
    doc["sessions"] = session_rows(prefix["sessions"])
    return doc
