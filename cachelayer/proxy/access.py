"""The access middleware, outermost of all: it names each request, keeps its credentials
out of every log line, and writes its one access line (INFO; DEBUG for polling routes).

    ... INFO cachelayer.access rid=7f3a9c01e2000004 method=POST path=/v1/messages
        status=200 cache=MISS tokens=41210/44680 ms=1834.2

It reads what the layers left on the `Exchange` (the cache status, the usage, the
upstream's time, which goes into the forward layer's latency histogram); the line's
format and the context variables are telemetry/logs.py's.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from cachelayer.protocol.chat import Usage
from cachelayer.proxy.forward.layer import UPSTREAM_LATENCY
from cachelayer.proxy.hit_tally import settle_hits
from cachelayer.proxy.state import EXCHANGE, CacheStatus
from cachelayer.telemetry.logs import (
    REQUEST_ID,
    SANE_ID,
    SECRETS,
    RequestIds,
    access_level,
    access_line,
    access_log,
    request_secrets,
    reused_of_total,
)

REQUEST_ID_KEY = web.RequestKey("request_id", str)
REQUEST_IDS = web.AppKey("request_ids", RequestIds)


def name_request(request: web.Request, ids: RequestIds) -> str:
    """The request's id: the client's X-Request-Id when it is sane, else a new one; kept
    on the request for the response headers."""
    offered = request.headers.get("X-Request-Id")
    rid = offered if offered and SANE_ID.match(offered) else ids.next()
    request[REQUEST_ID_KEY] = rid
    return rid


def _write_line(level: int, request: web.Request, status: int, cache: str, tokens: str,
                started: float) -> None:
    access_log.log(level, "%s", access_line(request.method, request.path, status, cache,
                                            tokens, (time.perf_counter() - started) * 1000))


def log_access(request: web.Request, status: int, started: float) -> None:
    """Write the request's access line (INFO; DEBUG for polling routes)."""
    level = access_level(request.path)
    if not access_log.isEnabledFor(level):
        return
    exchange = request.get(EXCHANGE)
    cache, tokens = "-", "-"
    if exchange is not None:
        cache = exchange.cache_status.value
        if exchange.result is not None:
            tokens = reused_of_total(exchange.result.usage,
                                     store_hit=exchange.cache_status is CacheStatus.HIT)
    _write_line(level, request, status, cache, tokens, started)


def log_hit(request: web.Request, rid: str, usage: Usage | None, started: float) -> None:
    """The access line of a HIT answered before the access middleware (the fast path)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    token = REQUEST_ID.set(rid)
    try:
        _write_line(logging.INFO, request, 200, CacheStatus.HIT.value,
                    reused_of_total(usage, store_hit=True), started)
    finally:
        REQUEST_ID.reset(token)


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Name the request, log one access line for it, time its upstream call."""
    # Fast HITs answered before this request are accounted before it reads or adds to
    # the records (proxy/hit_tally.py).
    settle_hits(request.app)
    token = REQUEST_ID.set(name_request(request, request.app[REQUEST_IDS]))
    secrets_token = SECRETS.set(request_secrets(request.headers))
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away
        raise
    finally:
        exchange = request.get(EXCHANGE)
        if exchange is not None and exchange.upstream_ms is not None:
            request.app[UPSTREAM_LATENCY].observe(exchange.upstream_ms / 1000)
        log_access(request, status, started)
        REQUEST_ID.reset(token)
        SECRETS.reset(secrets_token)


async def set_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the request id and the cache status on every answer."""
    # A signal, not the middleware: a streamed answer's headers leave before it returns.
    response.headers["X-Request-Id"] = request.get(REQUEST_ID_KEY, "-")
    exchange = request.get(EXCHANGE)
    if exchange is not None:
        response.headers["X-Cache-Status"] = exchange.cache_status.value


def setup_access(app: web.Application) -> None:
    """The request id maker and the response-headers signal."""
    app[REQUEST_IDS] = RequestIds()
    app.on_response_prepare.append(set_response_headers)
