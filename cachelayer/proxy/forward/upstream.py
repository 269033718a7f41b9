"""The upstream client: one pooled aiohttp session, and opening a completion call on it.

The forwarder always speaks OpenAI's API upstream. A request's own credential rides
along (the upstream may need it); nothing else from the client's headers does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
from aiohttp import web

from cachelayer.errors import BackendDown, UpstreamStatusError
from cachelayer.periodic import Periodic
from cachelayer.protocol.chat import Kind
from cachelayer.protocol.openai import upstream_body
from cachelayer.proxy.forward.errors import (
    NEVER_REACHED,
    UPSTREAM_FAILURES,
    error_message,
    upstream_error,
)
from cachelayer.proxy.forward.pool import UpstreamPool
from cachelayer.proxy.identity import ANONYMOUS_TENANT, kv_salt, request_tenant
from cachelayer.proxy.state import POOL, SETTINGS, UPSTREAM, Exchange
from cachelayer.telemetry.logs import REQUEST_ID_KEY

TENANT_HEADER = "X-Cachelayer-Tenant"
PATHS: dict[Kind, str] = {"chat": "/v1/chat/completions", "text": "/v1/completions"}
_ERROR_BODY_LIMIT = 64 * 1024


def forwarded_headers(request: web.Request) -> dict[str, str]:
    """The headers an upstream call carries: JSON, the request id, the client's
    Authorization if any, and the tenant salt that scopes the backend's KV reuse (unless
    --share-kv)."""
    headers = {"Content-Type": "application/json"}
    rid = request.get(REQUEST_ID_KEY)
    if rid:
        # The backend's log lines about this request carry the same id as ours.
        headers["X-Request-Id"] = rid
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    tenant = request_tenant(request.headers)
    if tenant != ANONYMOUS_TENANT and not request.app[SETTINGS].share_kv:
        headers[TENANT_HEADER] = kv_salt(tenant)
    return headers


async def open_completion(
    request: web.Request, exchange: Exchange, base_url: str
) -> tuple[aiohttp.ClientResponse, str]:
    """POST the exchange's request to one upstream; an error status raises with its
    message, a connection that never reached it raises BackendDown (routing may try
    another backend)."""
    url = base_url + PATHS[exchange.chat.kind]
    body = orjson.dumps(upstream_body(exchange.chat))
    try:
        response = await request.app[UPSTREAM].post(url, data=body,
                                                     headers=forwarded_headers(request))
    except NEVER_REACHED as exc:
        raise BackendDown(upstream_error(exc, url, "connect")) from exc
    except UPSTREAM_FAILURES as exc:
        raise upstream_error(exc, url, "connect") from exc
    if response.status >= 400:
        raw = await response.content.read(_ERROR_BODY_LIMIT)
        response.release()
        raise UpstreamStatusError(error_message(response.status, raw, url),
                                  status=response.status)
    return response, url


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: the pooled client session every upstream call uses."""
    settings = app[SETTINGS]
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
    )
    connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=300)
    pool = app[POOL] = UpstreamPool(settings)
    # No cookie jar: cookies one upstream answer sets must never ride on another
    # client's request.
    async with aiohttp.ClientSession(timeout=timeout, connector=connector,
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        app[UPSTREAM] = session
        # Health checks only when there is a choice of backend to make.
        checks = Periodic(lambda: pool.check(session), pool.interval_s,
                          name="upstream health checks", immediately=True)
        if pool.routed:
            checks.start()
        yield
        await checks.stop()
