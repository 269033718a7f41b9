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
from redis.exceptions import RedisError

from cachelayer.errors import (
    AuthenticationRequired,
    Forbidden,
    InvalidRequest,
    StoreUnavailable,
    UpstreamStatusError,
)
from cachelayer.proxy.activity import ACTIVITY
from cachelayer.proxy.forward.errors import UPSTREAM_FAILURES, upstream_error
from cachelayer.proxy.forward.layer import POOL, UPSTREAM, routing_stats
from cachelayer.proxy.model_info import MODEL_INFO
from cachelayer.proxy.observe import document, sync_ledger
from cachelayer.proxy.prefix.ledger import LEDGER
from cachelayer.proxy.state import SETTINGS
from cachelayer.proxy.store.layer import SHARED, STORE
from cachelayer.proxy.supervisor import SUPERVISOR, unavailable

log = logging.getLogger(__name__)
_HEALTH_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")



async def models(request: web.Request) -> web.Response:
    """GET /v1/models, forwarded to the upstream."""
    url = request.app[POOL].first_healthy() + "/v1/models"
    try:
        async with request.app[UPSTREAM].get(url) as upstream:
            body = await upstream.read()
            if upstream.status >= 400:
                raise UpstreamStatusError(f"upstream {url} answered {upstream.status}",
                                          status=upstream.status)
            return web.Response(body=body, status=upstream.status,
                                content_type="application/json")
    except UPSTREAM_FAILURES as exc:
        supervisor = request.app.get(SUPERVISOR)
        if supervisor is not None:  # our own backend: it is down, and being restarted
            raise unavailable(supervisor) from exc
        raise upstream_error(exc, url, "connect") from exc


async def health(request: web.Request) -> web.Response:
    """GET /health: the proxy is up; whether the upstream answers; whether the store writes.

    With several upstreams, `backends` shows each; with a shared store, `store` names it
    (password removed) and says why it is not used when it is down."""
    app = request.app
    routing = routing_stats(app.get(POOL))
    if routing is not None:
        backends = routing["backends"]
        body = _health_body(app, {"ok": any(b["healthy"] for b in backends),
                                  "healthy": sum(b["healthy"] for b in backends),
                                  "of": len(backends)})
        body["backends"] = backends
        body["kv_reuse"] = await kv_reuse(app)
        return _json(body)
    url = app[SETTINGS].upstream_url
    upstream: dict[str, Any] = {"url": url}
    try:
        async with request.app[UPSTREAM].get(url + "/v1/models", timeout=_HEALTH_TIMEOUT) as r:
            upstream["ok"] = r.status < 500
            upstream["status"] = r.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        upstream["ok"] = False
        upstream["error"] = str(exc) or type(exc).__name__
    body = _health_body(app, upstream)
    body["kv_reuse"] = await kv_reuse(app)
    supervisor = app.get(SUPERVISOR)
    if supervisor is not None:
        body["backend"] = supervisor.status()
        if not supervisor.up:  # our own backend is down: say so, and why
            body["status"] = "degraded"
            body["reason"] = supervisor.reason
            return _json(body, status=503)
    return _json(body)


async def kv_reuse(app: web.Application) -> dict[str, Any]:
    """Whether the backend's prompt-KV reuse (cached_tokens, timings) is scoped by
    credential, and why not when it is shared."""
    if app[SETTINGS].share_kv:
        return {"scope": "shared", "why": "--share-kv: prefixes are shared across credentials"}
    limits = await app[MODEL_INFO].get(app[UPSTREAM])
    if limits.tenant_scoped_kv:
        return {"scope": "per-credential"}
    return {"scope": "shared", "why": "the upstream is not a cachelayer backend (or does "
            "not answer): it cannot be told whose prompt it is, so clients with different "
            "credentials can see each other's cached prefixes through cached_tokens"}


def _health_body(app: web.Application, upstream: dict[str, Any]) -> dict[str, Any]:
    store = app[STORE]
    degraded, ledger = store.degraded, app[LEDGER].degraded
    shared = app.get(SHARED)
    store_part: dict[str, Any] = {"ok": degraded is None, "error": degraded}
    if store.kind != "diskcache":
        store_part["backend"] = store.kind
        store_part["url"] = app[SETTINGS].store_label
    ledger_part: dict[str, Any] = {"ok": ledger is None, "error": ledger}
    if shared is not None:
        ledger_part["shared"] = {"ok": shared.error is None, "error": shared.error}
    return {"status": "degraded" if degraded or ledger else "ok", "upstream": upstream,
            "store": store_part, "ledger": ledger_part}


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
    app = request.app
    if app.get(SHARED) is not None:  # fresh shared totals: push ours, read everyone's
        await sync_ledger(app)
    loop = asyncio.get_running_loop()
    doc = await loop.run_in_executor(None, document, app)
    # Only a running proxy knows what is in flight and the last hour's timeline.
    doc["live"] = app[ACTIVITY].document()
    return _json(doc)


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
        removed["responses"] = await request.app[STORE].wipe()
    if "ledger" in what:
        await loop.run_in_executor(None, request.app[LEDGER].clear)
        shared = request.app.get(SHARED)
        if shared is not None:
            try:
                await shared.clear()
            except (RedisError, OSError) as exc:
                raise StoreUnavailable(f"cannot clear the shared ledger: {exc}") from exc
        removed["ledger"] = 1
    log.info("cleared %s", removed)
    return _json({"cleared": removed})
