"""Layer 1: keep the prompt prefix stable, identify it, and account what reuse saved.

Runs before layer 2, so the response key and the forwarded body are both computed on
the stabilised body: the backend sees a byte-identical prefix turn after turn even when
Claude Code's billing line changes on every request.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from cachelayer.protocol.chat import ChatRequest
from cachelayer.proxy.identity import tenant_id
from cachelayer.proxy.memo import Memo
from cachelayer.proxy.prefix.stabilize import PrefixIds, VolatileRule, prefix_ids, stabilize
from cachelayer.proxy.state import EXCHANGE, LEDGER, CacheStatus, Exchange
from cachelayer.telemetry import counters as c
from cachelayer.telemetry.usage import count_usage

log = logging.getLogger(__name__)
VOLATILE_RULES = web.AppKey("volatile_rules", tuple[VolatileRule, ...])
SESSION_HEADER = "X-Claude-Code-Session-Id"
_LOGGED_LIMIT = 256


def client_of(request: web.Request) -> str:
    """Who is talking, for 'what changed since your last prefix': session, else tenant."""
    session = request.headers.get(SESSION_HEADER)
    if session:
        return "s:" + session[:128]
    return tenant_id(request.headers.get("Authorization"), request.headers.get("x-api-key"))


def _log_stripped_once(app: web.Application, removed: list[str]) -> None:
    seen: set[str] = app[_STRIPPED_SEEN]
    for segment in removed:
        pattern = re.sub(r"=[^;\s]*", "=…", segment.strip())
        if pattern not in seen and len(seen) < _LOGGED_LIMIT:
            seen.add(pattern)
            log.debug("stripped volatile prompt segment: %s", pattern)


@dataclass(frozen=True)
class Stable:
    """The stabilised request, its prefix ids, and what was stripped from it."""

    chat: ChatRequest
    prefix: PrefixIds
    removed: tuple[str, ...]


_STRIPPED_SEEN = web.AppKey("stripped_seen", set[str])
PREFIX_MEMO = web.AppKey("prefix_memo", Memo[Stable])


def stabilize_chat(chat: ChatRequest, rules: tuple[VolatileRule, ...]) -> Stable:
    """Remove volatile segments from the request body and compute its prefix ids."""
    body, removed = stabilize(chat.body, rules)
    if removed:
        chat = dataclasses.replace(chat, body=body)
    return Stable(chat, prefix_ids(chat.body), tuple(removed))


def stabilize_exchange(app: web.Application, exchange: Exchange) -> None:
    """Stabilise the exchange's request (remembered for byte-identical repeats)."""
    memo, fp = app[PREFIX_MEMO], exchange.fingerprint
    stable = memo.get(fp) if fp else None
    if stable is None:
        stable = stabilize_chat(exchange.chat, app[VOLATILE_RULES])
        if fp:
            memo.put(fp, stable)
    if stable.removed:
        app[LEDGER].count(c.PREFIX_STRIPPED, len(stable.removed))
        _log_stripped_once(app, list(stable.removed))
    exchange.chat, exchange.prefix = stable.chat, stable.prefix


@web.middleware
async def prefix_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Stabilise and identify the prefix; after the answer, record it in the ledger."""
    exchange = request.get(EXCHANGE)
    if exchange is None:
        return await handler(request)
    app = request.app
    if exchange.chat.kind == "chat":
        stabilize_exchange(app, exchange)
    response = await handler(request)
    result = exchange.result
    if result is None:
        return response
    ledger = app[LEDGER]
    from_store = exchange.cache_status is CacheStatus.HIT
    count_usage(ledger, result.usage, from_store=from_store)
    if exchange.prefix is not None:
        ledger.count(c.PREFIX_REQUESTS)
        reason = ledger.prefixes.record(exchange.prefix, result.usage,
                                        from_store=from_store, client=client_of(request))
        if reason is not None:
            ledger.count(c.prefix_miss(reason))
            log.debug("prefix %s… missed: %s", exchange.prefix.prefix_id[:12], reason.label)
    return response


def setup_prefix_layer(app: web.Application, compiled: tuple[VolatileRule, ...]) -> None:
    """Install the layer's state on the app."""
    app[VOLATILE_RULES] = compiled
    app[_STRIPPED_SEEN] = set()
    app[PREFIX_MEMO] = Memo()
