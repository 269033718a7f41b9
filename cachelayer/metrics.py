"""The metrics export: `.anyclaude-cache-metrics.json`, a superset of anyclaude's file.

anyclaude's top-level names and types stay as they were (hitRate and tokenSavings are
strings with two decimals) so scripts that read it keep working; cachelayer's own
per-layer numbers sit beside them under `layers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from cachelayer.files import write_atomic
from cachelayer.ledger import Ledger
from cachelayer.prefix_ledger import PrefixRecord, top_entries
from cachelayer.protocol.chat import Usage

SCHEMA_VERSION = 1
RESPONSE_COUNTERS = (
    "requests", "hits", "coalesced", "misses", "bypasses", "expired", "stored", "not_stored",
    "evictions", "errors", "tokens_saved",
)


def count_usage(ledger: Ledger, usage: Usage | None, *, from_store: bool) -> None:
    """Account one answered request's tokens, measured where the backend measured them."""
    ledger.count("requests")
    if usage is None:
        return
    ledger.count("tokens.input", usage.prompt_tokens)
    if from_store:
        # A stored answer recomputes nothing: its whole prompt and completion are saved.
        ledger.count("tokens.read", usage.prompt_tokens)
        ledger.count("response.tokens_saved", usage.prompt_tokens + usage.completion_tokens)
        return
    cached = usage.cached_tokens or 0
    ledger.count("tokens.read", cached)
    ledger.count("tokens.reused", cached)
    ledger.count("tokens.created", max(0, usage.prompt_tokens - cached))
    if usage.cached_tokens is None:
        ledger.count("kv.unreported")
    elif cached > 0:
        ledger.count("kv.hits")


def prefix_section(
    totals: Mapping[str, int], prefixes: Mapping[str, PrefixRecord]
) -> dict[str, Any]:
    """Layer 1's numbers: requests, distinct prefixes, what was stripped, why prefixes missed."""
    reasons = {name[len("prefix.miss."):]: n for name, n in totals.items()
               if name.startswith("prefix.miss.")}
    return {
        "requests": totals.get("prefix.requests", 0),
        "uniquePrefixes": len(prefixes),
        "hits": sum(r.hits for r in prefixes.values()),
        "misses": sum(r.misses for r in prefixes.values()),
        "strippedSegments": totals.get("prefix.stripped_segments", 0),
        "reusedTokens": sum(r.reused_tokens for r in prefixes.values()),
        "estimatedReusedTokens": sum(r.estimated_reused_tokens for r in prefixes.values()),
        "missReasons": dict(sorted(reasons.items())),
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
    requests = totals.get("requests", 0)
    hits = totals.get("response.hits", 0) + totals.get("kv.hits", 0)
    total_input = totals.get("tokens.input", 0)
    read = totals.get("tokens.read", 0)
    stamp = (now or datetime.now(timezone.utc)).isoformat(timespec="milliseconds")
    response: dict[str, Any] = {
        name: totals.get(f"response.{name}", 0) for name in RESPONSE_COUNTERS
    }
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
            "cacheCreationTokens": totals.get("tokens.created", 0),
            "cacheReadTokens": read,
        },
        "topEntries": top_entries(dict(prefixes)),
        "schemaVersion": SCHEMA_VERSION,
        "layers": {
            "prefix": prefix_section(totals, prefixes),
            "response": response,
            "kv": {
                "hits": totals.get("kv.hits", 0),
                "tokensReused": totals.get("tokens.reused", 0),
                "tokensPrefilled": totals.get("tokens.created", 0),
                "unreported": totals.get("kv.unreported", 0),
                **dict(kv or {}),
            },
        },
    }


def write_metrics_file(path: Path, document: Mapping[str, Any]) -> None:
    """Export the metrics document atomically, pretty-printed for people and scripts."""
    write_atomic(path, orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
