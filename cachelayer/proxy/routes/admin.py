"""Routes that are not completions: models, health, stats, clear."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from cachelayer.errors import (
    AuthenticationRequired,
    Forbidden,
    InvalidRequest,
    UpstreamStatusError,
)
from cachelayer.proxy.forward.errors import UPSTREAM_FAILURES, upstream_error
from cachelayer.proxy.state import LEDGER, SETTINGS, STORE, UPSTREAM
from cachelayer.telemetry.export import metrics_document

log = logging.getLogger(__name__)
_HEALTH_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")



async def models(request: web.Request) -> web.Response:
    """GET /v1/models, forwarded to the upstream."""
    url = request.app[SETTINGS].upstream_url + "/v1/models"
    try:
        async with request.app[UPSTREAM].get(url) as upstream:
            body = await upstream.read()
            if upstream.status >= 400:
                raise UpstreamStatusError(f"upstream {url} answered {upstream.status}",
                                          status=upstream.status)
            return web.Response(body=body, status=upstream.status,
                                content_type="application/json")
    except UPSTREAM_FAILURES as exc:
        raise upstream_error(exc, url, "connect") from exc


async def health(request: web.Request) -> web.Response:
    """GET /health: the proxy is up; whether the upstream answers; whether the store writes."""
    url = request.app[SETTINGS].upstream_url
    upstream: dict[str, Any] = {"url": url}
    try:
        async with request.app[UPSTREAM].get(url + "/v1/models", timeout=_HEALTH_TIMEOUT) as r:
            upstream["ok"] = r.status < 500
            upstream["status"] = r.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        upstream["ok"] = False
        upstream["error"] = str(exc) or type(exc).__name__
    degraded = request.app[STORE].degraded
    ledger = request.app[LEDGER].degraded
    return _json({"status": "degraded" if degraded or ledger else "ok", "upstream": upstream,
                  "store": {"ok": degraded is None, "error": degraded},
                  "ledger": {"ok": ledger is None, "error": ledger}})


def require_admin(request: web.Request) -> None:
    """Admin routes answer loopback clients, or any client holding the admin token."""
    token = request.app[SETTINGS].admin_token
    if token:
        offered = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(offered.encode(), token.encode()):
            raise AuthenticationRequired("this admin route needs 'Authorization: Bearer <token>'")
        return
    try:
        loopback = ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise Forbidden("admin routes answer loopback clients only (or set --admin-token)")


async def stats(request: web.Request) -> web.Response:
    """GET /cache/stats: the metrics document, live."""
    loop = asyncio.get_running_loop()
    return _json(await loop.run_in_executor(None, metrics_document, request.app))


async def clear(request: web.Request) -> web.Response:
    """POST /cache/clear?what=responses,ledger: remove what is named (admin only)."""
    require_admin(request)
    what = set(filter(None, request.query.get("what", "responses").split(",")))
    unknown = what - {"responses", "ledger"}
    if unknown:
        raise InvalidRequest(f"cannot clear {sorted(unknown)}; choose responses, ledger")
    loop = asyncio.get_running_loop()
    removed: dict[str, int] = {}
    if "responses" in what:
        removed["responses"] = await loop.run_in_executor(None, request.app[STORE].clear)
    if "ledger" in what:
        await loop.run_in_executor(None, request.app[LEDGER].clear)
        removed["ledger"] = 1
    log.info("cleared %s", removed)
    return _json({"cleared": removed})
