"""The metrics export: `.anyclaude-cache-metrics.json`, a superset of anyclaude's file.

anyclaude's top-level names and types stay as they were (hitRate and tokenSavings are
strings with two decimals) so scripts that read it keep working; cachelayer's own
per-layer numbers sit beside them under `layers`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from cachelayer.backend.kv_files import kv_stats
from cachelayer.fs import write_atomic
from cachelayer.periodic import Periodic
from cachelayer.proxy.prefix.ledger import (
    WARM_WINDOW_S,
    PrefixRecord,
    top_entries,
    warm_prefixes,
)
from cachelayer.proxy.state import LEDGER, POOL, PREFILLS, SETTINGS, SHARED, STARTED_AT, STORE
from cachelayer.telemetry import counters as c
from cachelayer.telemetry.sessions import session_rows

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1



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

def store_stats(app: web.Application) -> dict[str, Any]:
    """Live numbers of the response store (blocking for diskcache: call it off the loop)."""
    return app[STORE].snapshot()


def routing_stats(app: web.Application) -> dict[str, Any] | None:
    """Each backend's numbers, when the proxy routes over several; None with one."""
    pool = app.get(POOL)
    if pool is None or not pool.routed:
        return None
    return {"mode": pool.mode.value, "backends": pool.snapshot()}


def metrics_document(app: web.Application) -> dict[str, Any]:
    """The metrics document as of now (blocking: reads the ledger and kv dir from disk).

    With a shared store the top level holds the totals of every proxy on it, and
    `thisProxy` this proxy's own (kept in its data dir, across its restarts)."""
    settings, ledger = app[SETTINGS], app[LEDGER]
    runtime_ms = int((time.time() - app[STARTED_AT]) * 1000)
    kv = kv_stats(settings.kv_dir) if settings.kv_dir.is_dir() else None
    if kv and isinstance(kv.get("min_tokens"), int):
        ledger.prefixes.persist_min_tokens = kv["min_tokens"]
    store = store_stats(app)
    doc = build_metrics(ledger.totals(), runtime_ms=runtime_ms, store=store, kv=kv,
                        prefixes=ledger.prefixes.records())
    shared = app.get(SHARED)
    if shared is not None:
        own = doc
        doc = build_metrics(shared.totals(), runtime_ms=runtime_ms, store=store, kv=kv,
                            prefixes=shared.records())
        doc["thisProxy"] = {"metrics": own["metrics"], "layers": own["layers"],
                            "topEntries": own["topEntries"]}
        doc["shared"] = {"store": settings.store_label, "error": shared.error}
    routing = routing_stats(app)
    if routing is not None:
        doc["layers"]["routing"] = routing
    # Streamed requests still prefilling: what a long first turn is doing right now.
    doc["prefills"] = app[PREFILLS].snapshot()
    doc["sessions"] = session_rows(ledger.sessions.records())
    return doc


def export_metrics(app: web.Application) -> None:
    """Rewrite the metrics file atomically (blocking; the ledger was flushed just before)."""
    write_metrics_file(app[SETTINGS].metrics_file, metrics_document(app))


async def sync_ledger(app: web.Application) -> None:
    """Flush the ledger off the loop, then push it to the shared store and read the
    shared totals back (when there is one)."""
    await asyncio.get_running_loop().run_in_executor(None, app[LEDGER].flush)
    shared = app.get(SHARED)
    if shared is not None:
        await shared.sync()


async def export_cycle(app: web.Application) -> None:
    """One export: flush (and share) the ledger, rewrite the metrics file."""
    await sync_ledger(app)
    await asyncio.get_running_loop().run_in_executor(None, export_metrics, app)


async def export_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: export every few seconds, and once more on the way out."""
    exporter = Periodic(lambda: _export_tick(app), app[SETTINGS].metrics_interval_s,
                        name="metrics export")
    exporter.start()
    yield
    await exporter.stop()


async def final_export(app: web.Application) -> None:
    """The last export at shutdown, after background writes have drained."""
    try:
        await export_cycle(app)
    except OSError as exc:
        log.error("could not write the metrics file at shutdown: %s", exc)


async def _export_tick(app: web.Application) -> None:
    """One periodic export; a disk that refuses is logged, and tried again next time."""
    try:
        await export_cycle(app)
    except OSError as exc:
        log.warning("could not write the metrics file: %s", exc)
