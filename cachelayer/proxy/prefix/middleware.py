"""Layer 1: keep the prompt prefix stable, identify it, and account what reuse saved.

Runs before layer 2, so the response key and the forwarded body are both computed on
the stabilised body: the volatile rules (proxy/prefix/rules.py) and, on the Anthropic
route, the system placement (proxy/prefix/placement.py) make the backend see a
byte-identical prefix turn after turn, session after session.
"""

from __future__ import annotations

import logging
import re
from collections import Counter

from aiohttp import web
from aiohttp.typedefs import Handler

from cachelayer.proxy.conversation import conversation_of
from cachelayer.proxy.prefix.layer import (
    PREFIX_MEMO,
    PREFIX_SIZER,
    REWRITES_SEEN,
    VOLATILE_RULES,
)
from cachelayer.proxy.prefix.ledger import LEDGER, count_usage
from cachelayer.proxy.prefix.prefixes import HIT, MISS, PARTIAL
from cachelayer.proxy.prefix.rules import BILLING_LINE
from cachelayer.proxy.prefix.size import byte_share_estimate
from cachelayer.proxy.prefix.stabilize import Stable, stabilize_chat
from cachelayer.proxy.state import EXCHANGE, SETTINGS, CacheStatus, Exchange
from cachelayer.telemetry import counters as c

log = logging.getLogger(__name__)
SESSION_HEADER = "X-Claude-Code-Session-Id"
SUBAGENT_MARK = "cc_is_subagent=true"
_LOGGED_LIMIT = 256


def client_of(request: web.Request, tenant: str, *, subagent: bool = False) -> str:
    """Who is talking, for 'what changed since your last prefix': session, else tenant.

    A session's sub-agents share its session id but not its prefix; they are a client of
    their own, so their first request is a new session, not the main agent's "system
    changed".
    """
    return client_name(request.headers.get(SESSION_HEADER), conversation_of(request), tenant,
                       subagent=subagent)


def client_name(session: str | None, conversation: str | None, tenant: str, *,
                subagent: bool = False) -> str:
    """`client_of` from its parts: the session header, the conversation key, the tenant."""
    if session:
        return "s:" + session[:128] + (":sub" if subagent else "")
    if conversation:
        return f"c:{tenant}:{conversation}"
    return tenant


def is_subagent(stable: Stable) -> bool:
    """Claude Code marks a sub-agent's requests in the billing line layer 1 removed."""
    return any(rule == BILLING_LINE and SUBAGENT_MARK in before
               for rule, before in stable.rewrites)


def _log_rewritten_once(app: web.Application, stable: Stable) -> None:
    seen: set[str] = app[REWRITES_SEEN]
    for rule, before in stable.rewrites:
        shape = f"{rule}: " + re.sub(r"=[^;\s]*", "=…", before.strip())
        if shape not in seen and len(seen) < _LOGGED_LIMIT:
            seen.add(shape)
            log.debug("rewrote volatile prompt text (%s)", shape)


_SUBAGENT = web.RequestKey("prefix_subagent", bool)


def stabilize_exchange(app: web.Application, exchange: Exchange) -> Stable:
    """Stabilise the exchange's request (remembered for byte-identical repeats)."""
    memo, fp = app[PREFIX_MEMO], exchange.fingerprint
    stable = memo.get(fp) if fp else None
    if stable is None:
        # Codex sends its instructions as two developer turns; Claude Code's second
        # system turn comes after the first user message: both are hoisted.
        hoist = (exchange.chat.client_api in ("anthropic", "responses")
                 and not app[SETTINGS].keep_system_order)
        stable = stabilize_chat(exchange.chat, app[VOLATILE_RULES], hoist=hoist)
        if fp:
            memo.put(fp, stable)
    return stable


def apply_stable(request: web.Request, exchange: Exchange, stable: Stable) -> None:
    """Count what stabilising changed and put the stable request on the exchange (the
    fast path's tally counts a batch of repeats with `count_stable` and a count)."""
    count_stable(request.app, stable)
    exchange.chat, exchange.prefix = stable.chat, stable.prefix
    request[_SUBAGENT] = is_subagent(stable)


def count_stable(app: web.Application, stable: Stable, times: int = 1) -> None:
    """Count what stabilising changed, for `times` requests that it changed alike."""
    ledger = app[LEDGER]
    if stable.rewrites:
        ledger.count(c.PREFIX_STRIPPED, len(stable.rewrites) * times)
        for rule, n in Counter(rule for rule, _ in stable.rewrites).items():
            ledger.count(c.prefix_rewrites(rule), n * times)
        _log_rewritten_once(app, stable)
    if stable.moved_system:
        ledger.count(c.PREFIX_SYSTEM_MOVED, stable.moved_system * times)
        ledger.count(c.PREFIX_REORDERED, times)


def account(request: web.Request, exchange: Exchange) -> None:
    """Record the answered request in the ledger: tokens, and how it used its prefix."""
    account_answered(request.app, exchange, client_of(
        request, exchange.tenant, subagent=request.get(_SUBAGENT, False)), request)


def account_answered(app: web.Application, exchange: Exchange, client: str,
                     request: web.Request | None = None, times: int = 1) -> None:
    """`account` for a named client; `times` identical store replays at once (the fast
    path's batches). A backend's answer gives its request, to measure its prefix by."""
    result = exchange.result
    assert result is not None
    ledger = app[LEDGER]
    from_store = exchange.cache_status is CacheStatus.HIT
    usage = result.usage
    count_usage(ledger, usage, from_store=from_store, times=times)
    if exchange.prefix is None:
        if usage is not None and not from_store and usage.cached_tokens:
            ledger.count(c.KV_HITS)  # no stable prefix to measure against: any reuse
        return
    prefix, body = exchange.prefix, exchange.chat.body
    ledger.count(c.PREFIX_REQUESTS, times)
    prompt = usage.prompt_tokens if usage else 0
    outcome = ledger.prefixes.record(
        prefix, usage, from_store=from_store, client=client,
        estimate=lambda: byte_share_estimate(body, prompt), times=times)
    if outcome.category == HIT:
        ledger.count(c.PREFIX_HITS)
        ledger.count(c.KV_HITS)
    elif outcome.reason is not None and outcome.category in (PARTIAL, MISS):
        counter = c.prefix_partial if outcome.category == PARTIAL else c.prefix_miss
        ledger.count(counter(outcome.reason))
        log.debug("prefix %s… %s: %s", prefix.prefix_id[:12], outcome.category,
                  outcome.reason.label)
    if not from_store and request is not None:
        app[PREFIX_SIZER].measure_later(request, ledger, prefix.prefix_id, body)


@web.middleware
async def prefix_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Stabilise and identify the prefix; after the answer, record it in the ledger."""
    exchange = request.get(EXCHANGE)
    if exchange is None:
        return await handler(request)
    if exchange.chat.kind == "chat":
        apply_stable(request, exchange, stabilize_exchange(request.app, exchange))
    response = await handler(request)
    if exchange.result is not None:
        account(request, exchange)
    return response

