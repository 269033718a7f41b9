"""make_app(settings): the middleware order, the routes, start-up and clean-up, in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from cachelayer import admin
from cachelayer.config import Settings
from cachelayer.context import (
    BACKGROUND,
    EXCHANGE,
    LEDGER,
    SETTINGS,
    STARTED_AT,
    STORE,
    UPSTREAM,
    Background,
)
from cachelayer.count_tokens import count_tokens
from cachelayer.embedded import backend_ctx
from cachelayer.keys import compile_volatile
from cachelayer.layers.edge import edge_middleware, setup_edge
from cachelayer.layers.forward import handle_completion
from cachelayer.layers.prefix import prefix_middleware, setup_prefix_layer
from cachelayer.layers.store import setup_store_layer, store_middleware
from cachelayer.ledger import Ledger
from cachelayer.observability import (
    REQUEST_ID_KEY,
    REQUEST_IDS,
    UPSTREAM_LATENCY,
    Histogram,
    RequestIds,
    metrics,
    request_id_middleware,
)
from cachelayer.protocol.anthropic import AnthropicCodec
from cachelayer.protocol.codec import Codec
from cachelayer.protocol.openai import OpenAICodec
from cachelayer.storage import ResponseStore

log = logging.getLogger(__name__)


def make_codecs(settings: Settings) -> dict[str, Codec]:
    """The client APIs this proxy speaks, keyed by name."""
    return {"openai": OpenAICodec(settings.model_map), "anthropic": AnthropicCodec(settings)}


async def _storage_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[STORE] = ResponseStore(
        settings.responses_dir,
        size_limit=settings.response_max_bytes,
        ttl_s=settings.response_ttl_s,
        entry_max_bytes=settings.entry_max_bytes,
    )
    app[LEDGER] = Ledger(settings.ledger_dir)
    app[BACKGROUND] = Background()
    app[STARTED_AT] = time.time()
    exporter = asyncio.create_task(_export_loop(app))
    yield
    exporter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await exporter
    await app[BACKGROUND].drain()
    try:
        await asyncio.get_running_loop().run_in_executor(None, admin.export_metrics, app)
    except OSError as exc:
        log.error("could not write the metrics file at shutdown: %s", exc)
    app[LEDGER].close()
    app[STORE].close()


async def _export_loop(app: web.Application) -> None:
    """Flush the ledger and rewrite the metrics file every few seconds, off the loop."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(app[SETTINGS].metrics_interval_s)
        try:
            await loop.run_in_executor(None, admin.export_metrics, app)
        except OSError as exc:
            log.warning("could not write the metrics file: %s", exc)


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
    )
    connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=300)
    # No cookie jar: cookies one upstream answer sets must never ride on another
    # client's request.
    async with aiohttp.ClientSession(timeout=timeout, connector=connector,
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        app[UPSTREAM] = session
        yield


async def _set_cache_headers(request: web.Request, response: web.StreamResponse) -> None:
    # A signal, not the middlewares: a streamed answer's headers leave before they return.
    response.headers["X-Request-Id"] = request.get(REQUEST_ID_KEY, "-")
    exchange = request.get(EXCHANGE)
    if exchange is not None:
        response.headers["X-Cache-Status"] = exchange.cache_status


def make_app(settings: Settings) -> web.Application:
    """Build the proxy application for these settings."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        # Outermost first: request ids and access log, the edge (parse, errors in the
        # client's shape), layer 1 (prefix), layer 2 (store); the handler is layer 3.
        middlewares=[request_id_middleware, edge_middleware, prefix_middleware,
                     store_middleware],
        handler_args={"max_field_size": 65536},
    )
    app[SETTINGS] = settings
    app[UPSTREAM_LATENCY] = Histogram()
    app[REQUEST_IDS] = RequestIds()
    setup_edge(app, make_codecs(settings))
    setup_prefix_layer(app, compile_volatile(settings.volatile_patterns))
    setup_store_layer(app)
    app.cleanup_ctx.append(backend_ctx)
    app.cleanup_ctx.append(_storage_ctx)
    app.cleanup_ctx.append(_upstream_ctx)
    app.on_response_prepare.append(_set_cache_headers)
    app.router.add_post("/v1/chat/completions", handle_completion)
    app.router.add_post("/v1/completions", handle_completion)
    app.router.add_post("/v1/messages", handle_completion)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/v1/models", admin.models)
    app.router.add_get("/health", admin.health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/cache/stats", admin.stats)
    app.router.add_post("/cache/clear", admin.clear)
    return app

