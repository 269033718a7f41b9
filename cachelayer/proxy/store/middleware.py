"""Layer 2: answer exact repeats from the response store; store complete misses.

A hit never reaches the forwarder. A miss passes through, and once the forwarder has
recorded a complete result on the exchange, this layer stores it off the request path
(if the policy allows and the answer is not a failure).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable

from aiohttp import web
from aiohttp.typedefs import Handler

from cachelayer.protocol.chat import ChatRequest, ChatResult
from cachelayer.protocol.codec import Codec
from cachelayer.protocol.early_usage import as_replayed
from cachelayer.protocol.sse import render_sse, write_sse
from cachelayer.proxy.memo import Memo
from cachelayer.proxy.prefix.ledger import LEDGER, Ledger
from cachelayer.proxy.state import EXCHANGE, SETTINGS, CacheStatus, Exchange
from cachelayer.proxy.store import waiters
from cachelayer.proxy.store.backends.base import AnswerStore, PutOutcome
from cachelayer.proxy.store.keys import response_key
from cachelayer.proxy.store.layer import COALESCER, KEY_MEMO, RENDER_MEMO, STORE
from cachelayer.proxy.store.policy import decide, parse_cache_control, unstorable_reason
from cachelayer.proxy.store.waiters import paced
from cachelayer.telemetry import counters as c

log = logging.getLogger(__name__)
# The store key a request was answered from or its answer was kept under: what the
# fast path (proxy/fast_path.py) learns a byte-identical repeat may be answered from.
RESOLVED_KEY = web.RequestKey("resolved_store_key", str)


def request_key(request: web.Request, exchange: Exchange) -> str:
    """The response key for this request: its meaning, its tenant, its upstream."""
    tenant = exchange.tenant
    memo = request.app[KEY_MEMO]
    memo_key = (exchange.fingerprint, tenant)
    key = memo.get(memo_key) if exchange.fingerprint else None
    if key is None:
        key = response_key(exchange.chat.kind, exchange.chat.body, tenant=tenant,
                           upstream=request.app[SETTINGS].upstream_identity)
        if exchange.fingerprint:
            memo.put(memo_key, key)
    return key


def render(chat: ChatRequest, codec: Codec, result: ChatResult) -> bytes:
    """A stored result in the client's API: one JSON body, or one SSE stream's bytes.

    Its usage says what a replay cost: the whole prompt read from cache, nothing created.
    """
    result = as_replayed(result)
    if chat.stream:
        return render_sse(codec, chat, result)
    return codec.render_response(result, chat)


def rendered(memo: Memo[bytes], chat: ChatRequest, codec: Codec, result: ChatResult,
             memo_key: Hashable | None) -> bytes:
    """`render`, remembered under memo_key (the raw request's digest, the store key and
    when the answer was stored): rendering is pure, so a repeat reuses the bytes."""
    body = memo.get(memo_key) if memo_key is not None else None
    if body is None:
        body = render(chat, codec, result)
        if memo_key is not None:
            memo.put(memo_key, body)
    return body


async def respond(request: web.Request, chat: ChatRequest, body: bytes,
                  headers: dict[str, str]) -> web.StreamResponse:
    """Send rendered bytes: one SSE stream if the request streams, else one JSON body."""
    if chat.stream:
        return await write_sse(request, body, headers)
    return web.Response(body=body, content_type="application/json", headers=headers)


async def replay(
    request: web.Request, chat: ChatRequest, codec: Codec, result: ChatResult, age: float,
    memo_key: Hashable | None = None,
) -> web.StreamResponse:
    """Answer from a stored result, as JSON or SSE per the current request's stream flag
    (its rendered bytes remembered under memo_key, when there is one)."""
    body = rendered(request.app[RENDER_MEMO], chat, codec, result, memo_key)
    return await respond(request, chat, body, {"Age": str(int(age))})


@web.middleware
async def store_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Look up, replay on a hit, and store a complete answer on a miss."""
    exchange = request.get(EXCHANGE)
    if exchange is None:
        return await handler(request)
    app = request.app
    settings, store, ledger = app[SETTINGS], app[STORE], app[LEDGER]
    control = parse_cache_control(request.headers.get("Cache-Control"))
    decision = decide(settings.response_cache, control, exchange.chat.body)
    key = request_key(request, exchange) if decision.lookup or decision.store else ""
    exchange.cache_status = CacheStatus.BYPASS
    if decision.lookup:
        found = await store.lookup(key)
        exchange.cache_status = CacheStatus.MISS
        if found is not None:
            age = found.age(time.time())
            if decision.max_age is None or age <= decision.max_age:
                exchange.cache_status = CacheStatus.HIT
                exchange.result = found.result
                request[RESOLVED_KEY] = key
                ledger.count(c.RESPONSE_HITS)
                memo_key = ((exchange.fingerprint, key, found.stored_at)
                            if exchange.fingerprint else None)
                return await replay(request, exchange.chat, exchange.codec, found.result,
                                    age, memo_key)
            exchange.cache_status = CacheStatus.EXPIRED
    coalescer = app[COALESCER]
    leads = False
    if decision.store and exchange.cache_status != CacheStatus.BYPASS:
        miss_status = exchange.cache_status
        # A waiter's stream may begin (keep-alives) before its answer: it expects a HIT.
        exchange.cache_status = CacheStatus.HIT
        leader = coalescer.leading(key)
        if leader is None:
            coalescer.lead(key)
            leads = True
            try:
                # Another proxy computing the same key: wait for its answer instead.
                fleet = await paced(request, exchange, store.await_fleet(key)) \
                    if store.fleet_wide else None
            except BaseException:
                coalescer.settle(key, None)
                raise
            # The fleet's answer may be one stored a while ago: max-age still applies.
            fresh = fleet is not None and (
                decision.max_age is None or fleet.age(time.time()) <= decision.max_age)
            shared = fleet.result if fleet is not None and fresh else None
            if shared is not None:
                coalescer.settle(key, shared)
        else:
            shared = await paced(request, exchange, coalescer.follow(leader))
        if shared is not None:
            exchange.result = shared
            ledger.count(c.RESPONSE_COALESCED)
            begun = waiters.begun(request)
            if begun is not None:
                return await waiters.finish_begun(begun, shared)
            return await replay(request, exchange.chat, exchange.codec, shared, 0.0)
        exchange.cache_status = miss_status
    ledger.count(c.LOOKUP_COUNTERS[exchange.cache_status.value])
    kept = False
    try:
        response = await handler(request)
        result = exchange.result
        if result is None:
            ledger.count(c.RESPONSE_ERRORS)
        elif decision.store:
            kept = await _keep(store, ledger, key, result, exchange.oversized,
                               settings.store_truncated)
            if kept:
                request[RESOLVED_KEY] = key
        return response
    except Exception:
        ledger.count(c.RESPONSE_ERRORS)
        raise
    finally:
        if leads:
            coalescer.settle(key, None if exchange.oversized else exchange.result)
            if not kept:
                store.release(key)


async def _keep(store: AnswerStore, ledger: Ledger, key: str, result: ChatResult,
                oversized: bool, store_truncated: bool) -> bool:
    """Stage the answer and queue its write, unless it must not be stored; True when
    it was kept (its write then releases the fleet's marker once it landed)."""
    reason = "over --entry-max-size" if oversized else unstorable_reason(
        result, store_truncated=store_truncated)
    if reason is not None:
        ledger.count(c.RESPONSE_NOT_STORED)
        log.debug("not storing answer: %s", reason)
        return False

    def done(outcome: PutOutcome) -> None:
        if outcome.stored:
            ledger.count(c.RESPONSE_STORED)
            ledger.count(c.RESPONSE_EVICTIONS, outcome.evicted + outcome.expired)
        else:
            ledger.count(c.RESPONSE_NOT_STORED)

    if await store.keep(key, result, done):
        # Backpressure: the write queue was full, so this request paid for its own
        # (a non-streamed answer leaves once it is stored).
        ledger.count(c.RESPONSE_WRITE_WAITS)
    return True
