"""Layer 3 on the proxy side: the innermost handler sends a miss upstream.

A streamed request is relayed chunk by chunk (relay.py); anything else is read whole,
parsed into a ChatResult, and rendered in the client's API (as one SSE replay when the
client asked to stream and the upstream did not).
"""

from __future__ import annotations

import contextlib
import logging
import time

import aiohttp
from aiohttp import web

from cachelayer.errors import (
    BackendDown,
    CachelayerError,
    UpstreamProtocolError,
    UpstreamUnreachable,
)
from cachelayer.protocol.openai import parse_response
from cachelayer.protocol.sse import render_sse
from cachelayer.proxy.conversation import AFFINITY, conversation_of
from cachelayer.proxy.forward.errors import UPSTREAM_FAILURES, upstream_error
from cachelayer.proxy.forward.keepalive import DOWNSTREAM, Downstream
from cachelayer.proxy.forward.layer import POOL
from cachelayer.proxy.forward.pool import Upstream
from cachelayer.proxy.forward.relay import relay_stream
from cachelayer.proxy.forward.upstream import open_completion
from cachelayer.proxy.state import EXCHANGE, Exchange
from cachelayer.proxy.supervisor import SUPERVISOR, unavailable

log = logging.getLogger(__name__)


def routing_key(exchange: Exchange) -> str:
    """What picks the backend: layer 1's prefix id (tools + system), so a conversation
    keeps landing where its KV cache is; a text completion goes by its body. A client's
    conversation key then keeps a conversation where it began (proxy/conversation.py)."""
    if exchange.prefix is not None:
        return exchange.prefix.prefix_id
    return exchange.fingerprint or ""


async def open_routed(request: web.Request, exchange: Exchange
                      ) -> tuple[Upstream, aiohttp.ClientResponse, str]:
    """Open the upstream answer on the chosen backend, or on the next one while backends
    refuse connections (a request is never sent twice to a backend that took it)."""
    pool = request.app[POOL]
    candidates = pool.candidates(routing_key(exchange))
    # With a choice of backend, a conversation the client names stays where it began.
    conversation = conversation_of(request) if pool.routed else None
    affinity = request.app[AFFINITY]
    if conversation:
        by_url = {b.url: b for b in candidates}
        healthy = {url for url, b in by_url.items() if b.healthy}
        candidates = [by_url[u] for u in affinity.order(conversation, list(by_url), healthy)]
    for n, backend in enumerate(candidates):
        try:
            upstream, url = await open_completion(request, exchange, backend.url)
            affinity.remember(conversation, backend.url)
            return backend, upstream, url
        except BackendDown as exc:
            pool.failed(backend, exc.message)
            if n + 1 == len(candidates):
                pool.account(backend, None, ok=False)
                raise exc.error from exc.__cause__
        except CachelayerError:
            pool.account(backend, None, ok=False)
            raise
    raise UpstreamUnreachable("no upstream configured")


async def handle_completion(request: web.Request) -> web.StreamResponse:
    """The innermost handler: a miss (or bypass) goes to the upstream."""
    exchange = request[EXCHANGE]
    if exchange.chat.stream:
        return await _handle_streamed(request, exchange)
    started = time.perf_counter()
    backend, upstream, url = await open_supervised(request, exchange)
    return await _answer(request, exchange, backend, upstream, url, started, None)


async def open_supervised(request: web.Request, exchange: Exchange
                          ) -> tuple[Upstream, aiohttp.ClientResponse, str]:
    """open_routed, with our embedded backend's restarts answered as 503."""
    supervisor = request.app.get(SUPERVISOR)
    if supervisor is not None and not supervisor.up:
        raise unavailable(supervisor)
    try:
        return await open_routed(request, exchange)
    except UpstreamUnreachable as exc:
        if supervisor is None:
            raise
        # Our own backend refused the connection: it died, and is being restarted.
        raise unavailable(supervisor) from exc


async def _handle_streamed(request: web.Request, exchange: Exchange) -> web.StreamResponse:
    """A streamed request: keep-alives from the first second until the answer flows, and
    an upstream that fails after the stream began ends it with the API's error event."""
    started = time.perf_counter()
    supervisor = request.app.get(SUPERVISOR)
    # A request that waited on a coalesced one may have heard keep-alives already.
    downstream = request.get(DOWNSTREAM)
    if supervisor is not None and not supervisor.up and (
            downstream is None or downstream.response is None):
        if downstream is not None:
            downstream.first_token()
        raise unavailable(supervisor)  # before anything is sent: a 503 with its status
    downstream = downstream or Downstream(request)
    try:
        backend, upstream, url = await downstream.paced(open_supervised(request, exchange))
        return await _answer(request, exchange, backend, upstream, url, started, downstream)
    except CachelayerError as error:
        if downstream.response is None:
            raise  # nothing sent yet: the edge renders it with its status
        log.warning("upstream failed after keep-alives were sent: %s", error.message)
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
            await downstream.write(downstream.renderer.fail(error))
            await downstream.finish()
        return downstream.response
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        # The client left while only keep-alives had been sent; nothing to store.
        return downstream.response or web.StreamResponse()
    finally:
        downstream.first_token()


async def _answer(request: web.Request, exchange: Exchange, backend: Upstream,
                  upstream: aiohttp.ClientResponse, url: str, started: float,
                  downstream: Downstream | None) -> web.StreamResponse:
    """Relay or render the opened upstream answer; account it on its backend."""
    backend.in_flight += 1
    try:
        is_sse = upstream.content_type == "text/event-stream"
        if downstream is not None and is_sse:
            return await relay_stream(downstream, exchange, upstream, url, started)
        raw = await (downstream.paced(upstream.read()) if downstream else upstream.read())
        exchange.upstream_ms = (time.perf_counter() - started) * 1000
        if is_sse:
            raise UpstreamProtocolError(f"upstream {url} streamed an answer that was not asked for")
        result = parse_response(exchange.chat.kind, raw)
        exchange.result = result
        if downstream is not None:
            await downstream.write(render_sse(exchange.codec, exchange.chat, result))
            return await downstream.finish()
        return web.Response(body=exchange.codec.render_response(result, exchange.chat),
                            content_type="application/json")
    except UPSTREAM_FAILURES as exc:
        raise upstream_error(exc, url, "read") from exc
    finally:
        backend.in_flight -= 1
        answered = exchange.result
        request.app[POOL].account(backend, answered.usage if answered is not None else None,
                                  ok=answered is not None)
        if exchange.result is None:
            # Closing (not releasing) drops the connection, so the upstream sees the client
            # leave and stops generating instead of finishing an answer nobody reads.
            upstream.close()
        else:
            upstream.release()
