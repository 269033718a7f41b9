"""The observer: the layers' snapshots handed to telemetry's renderers, on a timer and
on request.

Every few seconds (and once more at shutdown, after background writes drained) the
ledger is flushed (and pushed to Redis, with a shared store) and the metrics file is
rewritten; `GET /metrics` and `GET /cache/stats` render the same snapshots. Snapshots
block (diskcache, the ledger's disk), so they are taken in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from cachelayer.backend.kv_files import kv_stats
from cachelayer.periodic import Periodic
from cachelayer.proxy.background import BACKGROUND
from cachelayer.proxy.hit_tally import settle_hits
from cachelayer.proxy.layer import LAYERS
from cachelayer.proxy.prefix.ledger import LEDGER
from cachelayer.proxy.state import SETTINGS
from cachelayer.proxy.store.layer import SHARED, STORE
from cachelayer.telemetry.export import Snapshots, metrics_document, write_metrics_file
from cachelayer.telemetry.kv_memory import exported_kv_stats
from cachelayer.telemetry.prometheus import render_prometheus

log = logging.getLogger(__name__)
STARTED_AT = web.AppKey("started_at", float)


def snapshots(app: web.Application) -> Snapshots:
    """Every layer's snapshot by its name (blocking: call it off the loop)."""
    return {name: layer.snapshot() for name, layer in app[LAYERS].items()}


def document(app: web.Application) -> dict[str, Any]:
    """The metrics document as of now (blocking: reads the ledger and kv dir from disk)."""
    settings = app[SETTINGS]
    kv = kv_stats(settings.kv_dir) if settings.kv_dir.is_dir() else None
    if kv and isinstance(kv.get("min_tokens"), int):
        # The backend's --kv-min-tokens: below it a prompt never reached disk, so the
        # prefix ledger calls its loss "too short to persist", not an eviction.
        app[LEDGER].prefixes.persist_min_tokens = kv["min_tokens"]
    runtime_ms = int((time.time() - app[STARTED_AT]) * 1000)
    return metrics_document(snapshots(app), runtime_ms=runtime_ms, kv=kv)


def prometheus_text(app: web.Application) -> str:
    """The /metrics exposition text (blocking: reads the ledger)."""
    return render_prometheus(snapshots(app), exported_kv_stats(app[SETTINGS].kv_dir))


async def sync_ledger(app: web.Application) -> None:
    """Flush the ledger off the loop, then push it to the shared store and read the
    shared totals back (when there is one)."""
    await asyncio.get_running_loop().run_in_executor(None, app[LEDGER].flush)
    shared = app.get(SHARED)
    if shared is not None:
        await shared.sync()


async def export_cycle(app: web.Application) -> None:
    """One export: flush (and share) the ledger, rewrite the metrics file."""
    settle_hits(app)
    await sync_ledger(app)
    doc = await asyncio.get_running_loop().run_in_executor(None, document, app)
    await asyncio.get_running_loop().run_in_executor(
        None, write_metrics_file, app[SETTINGS].metrics_file, doc)


async def _export_tick(app: web.Application) -> None:
    """One periodic export; a disk that refuses is logged, and tried again next time."""
    try:
        await export_cycle(app)
    except OSError as exc:
        log.warning("could not write the metrics file: %s", exc)


async def observe_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context, registered after every layer's: export every few seconds; at
    shutdown (before the layers close their stores) drain the background writes and
    export once more, so the file counts every answer."""
    app[STARTED_AT] = time.time()
    exporter = Periodic(lambda: _export_tick(app), app[SETTINGS].metrics_interval_s,
                        name="metrics export")
    exporter.start()
    yield
    await exporter.stop()
    await app[BACKGROUND].drain()
    store = app.get(STORE)
    if store is not None:
        await store.drain()  # layer 2's queued writes: their counts belong in the export
    try:
        await export_cycle(app)
    except OSError as exc:
        log.error("could not write the metrics file at shutdown: %s", exc)


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics in Prometheus text format."""
    loop = asyncio.get_running_loop()
    text = await loop.run_in_executor(None, prometheus_text, request.app)
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})
