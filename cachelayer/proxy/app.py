"""make_app(settings): the layers in order, the middleware order, the routes, in one place.

A completion request goes down, and its answer comes back up, this chain:

0. Before the application: the front (proxy/fast_front.py, put there by `ProxyRunner`)
   answers a byte-identical repeat of a stored answer without entering it: named,
   logged and counted as the layers below count a HIT (its accounting batched,
   proxy/hit_tally.py). Anything else comes in here, with its raw key.
1. `fast_path_middleware` (proxy/fast_path.py) learns what the normal path resolved a
   request to, so its next repeat is a fast HIT.
   `access_middleware` (proxy/access.py) names the request, hides its credentials
   from every log line; on the way up it times the upstream and writes the access line.
2. `edge_middleware` (proxy/edge.py) reads and validates the body into one neutral
   `Exchange` and names its tenant; on the way up it renders any error in the client's
   API shape.
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

Each layer is one object (proxy/layer.py) whose `setup(app)` installs its own keys and
start-up/shutdown; they are set up in the order above, so their cleanup contexts start
in that order and close in reverse: the ledger (layer 1) opens first and closes last.
The observer's context comes after all of them: at shutdown it stops the export, drains
the background writes and exports once more before any layer closes.
"""

from __future__ import annotations

from aiohttp import web

from cachelayer.config import Settings
from cachelayer.proxy.access import access_middleware, setup_access
from cachelayer.proxy.activity import ActivityLayer, activity_middleware
from cachelayer.proxy.background import BACKGROUND, Background
from cachelayer.proxy.edge import EdgeLayer, edge_middleware, expect_continue
from cachelayer.proxy.fast_path import FastPathLayer, fast_path_middleware
from cachelayer.proxy.forward.handler import handle_completion
from cachelayer.proxy.forward.layer import ForwardLayer
from cachelayer.proxy.layer import LAYERS, Layer, setup_layers
from cachelayer.proxy.observe import metrics, observe_ctx
from cachelayer.proxy.prefix.layer import PrefixLayer
from cachelayer.proxy.prefix.middleware import prefix_middleware
from cachelayer.proxy.responses.middleware import ResponsesLayer, responses_middleware
from cachelayer.proxy.routes import admin
from cachelayer.proxy.routes.count_tokens import count_tokens
from cachelayer.proxy.routes.dashboard import setup_dashboard
from cachelayer.proxy.state import SETTINGS
from cachelayer.proxy.store.layer import StoreLayer
from cachelayer.proxy.store.middleware import store_middleware

COMPLETION_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/messages",
                     "/v1/responses")


def make_layers(settings: Settings) -> list[Layer]:
    """The layer objects, in the order a request meets them."""
    return [FastPathLayer(), EdgeLayer(settings), ResponsesLayer(), ActivityLayer(),
            PrefixLayer(settings), StoreLayer(settings), ForwardLayer(settings)]


def make_app(settings: Settings) -> web.Application:
    """Build the proxy application for these settings."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        # Outermost first: the fast path's learning, request ids and the
        # access log, the edge (parse, errors in the client's shape), the Responses state,
        # activity, layer 1 (prefix), layer 2 (store); the handler is layer 3.
        middlewares=[fast_path_middleware, access_middleware, edge_middleware,
                     responses_middleware, activity_middleware, prefix_middleware,
                     store_middleware],
        handler_args={"max_field_size": 65536},
    )
    app[SETTINGS] = settings
    app[BACKGROUND] = Background()
    setup_access(app)
    app[LAYERS] = setup_layers(app, make_layers(settings))
    app.cleanup_ctx.append(observe_ctx)
    for path in COMPLETION_ROUTES:
        app.router.add_post(path, handle_completion, expect_handler=expect_continue)
    app.router.add_post("/v1/messages/count_tokens", count_tokens,
                        expect_handler=expect_continue)
    app.router.add_get("/v1/models", admin.models)
    app.router.add_get("/health", admin.health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/cache/stats", admin.stats)
    app.router.add_post("/cache/clear", admin.clear)
    setup_dashboard(app)
    return app
