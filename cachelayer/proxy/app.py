"""make_app(settings): the middleware order, the routes, start-up and clean-up, in one place.

A completion request goes down, and its answer comes back up, this chain:

1. `request_id_middleware` (telemetry/logs.py) names the request, hides its credentials
   from every log line; on the way up it times the upstream and writes the access line.
2. `edge_middleware` (proxy/edge.py) reads and validates the body into one neutral
   `Exchange`; on the way up it renders any error in the client's API shape.
   `responses_middleware` (proxy/responses/) puts a Responses request's stored
   conversation (previous_response_id) in front of it; on the way up it stores the
   response under its id when the request asked to.
   `activity_middleware` (proxy/activity.py) lists it while in flight; on the way up it
   adds it to the timeline and its conversation's record.
3. `prefix_middleware` (proxy/prefix/) rewrites volatile text, moves early system turns
   up, identifies the prefix; on the way up it accounts usage in the ledger.
4. `store_middleware` (proxy/store/) replays an exact repeat (HIT) or lets the miss pass;
   on the way up it stores a completed answer off the request path.
5. `handle_completion` (proxy/forward/) routes the miss to an upstream and relays its
   answer chunk by chunk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from cachelayer.config import Settings
from cachelayer.protocol.anthropic import AnthropicCodec
from cachelayer.protocol.codec import Codec
from cachelayer.protocol.openai import OpenAICodec
from cachelayer.protocol.responses_codec import ResponsesCodec
from cachelayer.proxy.activity import activity_middleware, setup_activity
from cachelayer.proxy.conversation import AFFINITY, Affinity
from cachelayer.proxy.edge import edge_middleware, expect_continue, setup_edge
from cachelayer.proxy.embedded import backend_ctx
from cachelayer.proxy.forward.handler import handle_completion
from cachelayer.proxy.forward.progress import Prefills
from cachelayer.proxy.forward.upstream import upstream_ctx
from cachelayer.proxy.model_info import MODEL_INFO, ModelInfo
from cachelayer.proxy.prefix.middleware import prefix_middleware, setup_prefix_layer
from cachelayer.proxy.prefix.rules import compile_rules
from cachelayer.proxy.responses.middleware import responses_middleware, setup_responses
from cachelayer.proxy.routes import admin
from cachelayer.proxy.routes.count_tokens import count_tokens
from cachelayer.proxy.routes.dashboard import setup_dashboard
from cachelayer.proxy.state import (
    BACKGROUND,
    EXCHANGE,
    LEDGER,
    PREFILLS,
    SETTINGS,
    SHARED,
    STARTED_AT,
    STORE,
    Background,
)
from cachelayer.proxy.store.backends import redis as redis_store
from cachelayer.proxy.store.backends.base import AnswerStore
from cachelayer.proxy.store.backends.disk import ResponseStore
from cachelayer.proxy.store.backends.redis_ledger import SharedLedger
from cachelayer.proxy.store.middleware import setup_store_layer, store_middleware
from cachelayer.telemetry.export import export_ctx, final_export
from cachelayer.telemetry.ledger import Ledger
from cachelayer.telemetry.logs import REQUEST_ID_KEY, REQUEST_IDS, RequestIds, request_id_middleware
from cachelayer.telemetry.prometheus import UPSTREAM_LATENCY, Histogram, metrics

log = logging.getLogger(__name__)


def make_codecs(settings: Settings) -> dict[str, Codec]:
    """The client APIs this proxy speaks, keyed by name."""
    return {"openai": OpenAICodec(settings.model_map), "anthropic": AnthropicCodec(settings),
            "responses": ResponsesCodec(settings)}


def open_store(settings: Settings) -> tuple[AnswerStore, SharedLedger | None]:
    """Layer 2's store for --store (Redis, with the ledger's shared half) or diskcache."""
    if settings.store_url:
        client = redis_store.connect(settings)
        return (redis_store.RedisStore(client, settings),
                SharedLedger(client, settings.store_namespace))
    return ResponseStore(settings.responses_dir, size_limit=settings.response_max_bytes,
                         ttl_s=settings.response_ttl_s, entry_max_bytes=settings.entry_max_bytes,
                         hot_bytes=settings.hot_tier_bytes), None


async def _storage_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the response store and the ledger; on the way out drain, export, close."""
    settings = app[SETTINGS]
    store, shared = open_store(settings)
    app[STORE] = store
    app[LEDGER] = ledger = Ledger(settings.ledger_dir)
    if shared is not None:
        # Every delta the local ledger flushes also goes to Redis, exactly once.
        app[SHARED] = shared
        ledger.on_flush = shared.take_counters
        ledger.prefixes.on_flush = shared.take_prefixes
    await store.start()
    app[BACKGROUND] = Background()
    app[STARTED_AT] = time.time()
    yield
    await app[BACKGROUND].drain()
    await final_export(app)
    ledger.close()
    await store.aclose()


async def _set_cache_headers(request: web.Request, response: web.StreamResponse) -> None:
    # A signal, not the middlewares: a streamed answer's headers leave before they return.
    response.headers["X-Request-Id"] = request.get(REQUEST_ID_KEY, "-")
    exchange = request.get(EXCHANGE)
    if exchange is not None:
        response.headers["X-Cache-Status"] = exchange.cache_status.value


def make_app(settings: Settings) -> web.Application:
    """Build the proxy application for these settings."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        # Outermost first: request ids and access log, the edge (parse, errors in the
        # client's shape), layer 1 (prefix), layer 2 (store); the handler is layer 3.
        middlewares=[request_id_middleware, edge_middleware, responses_middleware,
                     activity_middleware, prefix_middleware, store_middleware],
        handler_args={"max_field_size": 65536},
    )
    app[SETTINGS] = settings
    app[UPSTREAM_LATENCY] = Histogram()
    app[REQUEST_IDS] = RequestIds()
    app[PREFILLS] = Prefills(settings.progress_log_interval_s)
    setup_edge(app, make_codecs(settings))
    app[MODEL_INFO] = ModelInfo(settings.backend_urls)
    setup_activity(app)
    setup_prefix_layer(app, compile_rules(settings.volatile_patterns))
    setup_store_layer(app)
    app[AFFINITY] = Affinity()
    app.cleanup_ctx.append(backend_ctx)
    app.cleanup_ctx.append(_storage_ctx)
    app.cleanup_ctx.append(export_ctx)
    app.cleanup_ctx.append(upstream_ctx)
    app.on_response_prepare.append(_set_cache_headers)
    app.router.add_post("/v1/chat/completions", handle_completion, expect_handler=expect_continue)
    app.router.add_post("/v1/completions", handle_completion, expect_handler=expect_continue)
    app.router.add_post("/v1/messages", handle_completion, expect_handler=expect_continue)
    app.router.add_post("/v1/responses", handle_completion, expect_handler=expect_continue)
    setup_responses(app)
    app.router.add_post("/v1/messages/count_tokens", count_tokens,
                        expect_handler=expect_continue)
    app.router.add_get("/v1/models", admin.models)
    app.router.add_get("/health", admin.health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/cache/stats", admin.stats)
    app.router.add_post("/cache/clear", admin.clear)
    setup_dashboard(app)
    return app

