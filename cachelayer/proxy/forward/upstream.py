"""Calls on the upstream: opening a completion, and asking it to count tokens.

The forwarder always speaks OpenAI's API upstream, on the pooled client session the
forward layer opens (layer.py). A request's own credential rides along (the upstream
may need it); nothing else from the client's headers does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from cachelayer.errors import BackendDown, UpstreamStatusError
from cachelayer.protocol.chat import Kind
from cachelayer.protocol.openai import upstream_body
from cachelayer.proxy.forward.errors import (
    NEVER_REACHED,
    UPSTREAM_FAILURES,
    error_message,
    upstream_error,
)
from cachelayer.proxy.forward.layer import POOL, UPSTREAM
from cachelayer.proxy.identity import ANONYMOUS_TENANT, kv_salt
from cachelayer.proxy.state import SETTINGS, Exchange
from cachelayer.telemetry.logs import REQUEST_ID

log = logging.getLogger(__name__)
TENANT_HEADER = "X-Cachelayer-Tenant"
PATHS: dict[Kind, str] = {"chat": "/v1/chat/completions", "text": "/v1/completions"}
_ERROR_BODY_LIMIT = 64 * 1024
COUNT_ROUTE = "/v1/cachelayer/count_tokens"
# Counting is a tokenizer pass, not a generation: a slow answer means something is wrong.
_COUNT_TIMEOUT = aiohttp.ClientTimeout(total=30)


def forwarded_headers(request: web.Request, tenant: str) -> dict[str, str]:
    """The headers an upstream call carries: JSON, the request id, the client's
    Authorization if any, and the tenant salt that scopes the backend's KV reuse (unless
    --share-kv)."""
    headers = {"Content-Type": "application/json"}
    rid = REQUEST_ID.get()
    if rid != "-":
        # The backend's log lines about this request carry the same id as ours.
        headers["X-Request-Id"] = rid
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
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
        response = await request.app[UPSTREAM].post(
            url, data=body, headers=forwarded_headers(request, exchange.tenant))
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


async def upstream_count(request: web.Request, body: dict[str, Any]) -> int | None:
    """The upstream's own count for an OpenAI chat body, or None when it cannot give one
    (cachelayer's backend counts with the real tokenizer and chat template)."""
    url = request.app[POOL].first_healthy() + COUNT_ROUTE
    headers = {"Content-Type": "application/json"}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    try:
        async with request.app[UPSTREAM].post(url, data=orjson.dumps(body), headers=headers,
                                              timeout=_COUNT_TIMEOUT) as response:
            if response.status != 200:
                if response.status != 404:
                    log.info("upstream count_tokens answered %d; estimating", response.status)
                return None
            answer = orjson.loads(await response.read())
    except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as exc:
        log.info("upstream count_tokens failed (%s); estimating", exc)
        return None
    count = answer.get("input_tokens") if isinstance(answer, dict) else None
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        log.info("upstream count_tokens answered no usable count; estimating")
        return None
    return count
