"""The fast path: a byte-identical repeat is answered from the store without parsing.

Agents re-send the same request bytes (a retry, a sub-agent's fixed prompt, a benchmark).
The normal path parses, validates, stabilises and keys such a repeat before it finds its
stored answer. This middleware sits just inside the request-id/access-log middleware and
hashes what the client sent (`raw_key`: route, body bytes, tenant and the headers that can
change the answer or its validation) to the store key the normal path resolved it to the
last time. A repeat costs that hash, one `AnswerStore.lookup(store_key)` and the write of
the stored answer's bytes, rendered exactly as the normal path renders a HIT.

What the first full pass learned (the stabilised request, its prefix record, its
conversation, the Responses object it kept) is applied again, so a fast HIT counts like a
normal HIT everywhere: ledger and metrics, access log, activity and sessions, stored
Responses. Anything else (an unknown raw key, an answer gone after a clear or its TTL,
`no-cache`/`no-store`, an answer older than `max-age`) takes the normal path unchanged,
which then teaches the fast path again.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import xxhash
from aiohttp import web
from aiohttp.typedefs import Handler

from cachelayer.errors import CachelayerError
from cachelayer.protocol.chat import ChatRequest
from cachelayer.protocol.codec import Codec
from cachelayer.protocol.responses_stream import response_id
from cachelayer.proxy.activity import record_answer
from cachelayer.proxy.conversation import CONVERSATION
from cachelayer.proxy.edge import API_ROUTES, CODECS, error_response, read_body
from cachelayer.proxy.identity import request_tenant
from cachelayer.proxy.memo import MAX_MEMO_BODY
from cachelayer.proxy.prefix.layer import PREFIX_MEMO
from cachelayer.proxy.prefix.ledger import LEDGER
from cachelayer.proxy.prefix.middleware import Stable, account, apply_stable
from cachelayer.proxy.responses.middleware import RESPONSE_STATES
from cachelayer.proxy.responses.store import StoredResponse
from cachelayer.proxy.state import EXCHANGE, CacheStatus, Exchange
from cachelayer.proxy.store.layer import STORE
from cachelayer.proxy.store.middleware import RESOLVED_KEY, replay
from cachelayer.proxy.store.policy import parse_cache_control
from cachelayer.telemetry import counters as c

log = logging.getLogger(__name__)

# Request headers that can change the answer or whether the request is valid at all:
# the Content-Type (the edge refuses non-JSON), Cache-Control (no-cache, no-store,
# max-age), and the Anthropic version and betas (the API's shape of the answer). The
# credential enters as its tenant id. Nothing else the client sends is read on the way
# to a stored answer (user-agent, X-Request-Id, session headers only name who asked, and
# the accounting reads them from the live request).
ANSWER_HEADERS = ("content-type", "cache-control", "anthropic-version", "anthropic-beta")
# Each entry keeps a parsed request (a few hundred KB for an agent's 50 KB body), so
# keep as many as the store layer's render memo.
DEFAULT_ENTRIES = 256


def raw_key(route: str, body: bytes, tenant: str, headers: Mapping[str, str]) -> str:
    """The fast path's key: what the client sent, byte for byte, as one xxh3 digest."""
    h = xxhash.xxh3_128()
    for part in (route.encode(), body, tenant.encode(),
                 *(headers.get(name, "\x00absent").encode() for name in ANSWER_HEADERS)):
        # Length-prefixed, so no two different sequences of parts hash the same bytes.
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


@dataclass(frozen=True)
class Learned:
    """What the normal path resolved one raw request to, to be applied again on a repeat."""

    store_key: str
    chat: ChatRequest  # as layer 2 saw it (stabilised)
    codec: Codec
    fingerprint: str
    stable: Stable | None  # layer 1's result, for chat requests
    conversation: str | None  # the body's conversation key (Responses prompt_cache_key)
    kept: StoredResponse | None  # the Responses object stored under the answer's id


class FastPath:
    """Raw keys to what the normal path learned, least recently used dropped first."""

    def __init__(self, entries: int = DEFAULT_ENTRIES) -> None:
        self.entries = entries
        self._index: OrderedDict[str, Learned] = OrderedDict()
        self.hits = 0
        # Off: every request takes the normal path, as if there were no fast path
        # (tools/bench_store_hits.py switches it to compare both in one process).
        self.enabled = True

    def get(self, key: str) -> Learned | None:
        """The learned entry for a raw key, or None."""
        learned = self._index.get(key)
        if learned is not None:
            self._index.move_to_end(key)
        return learned

    def learn(self, key: str, learned: Learned) -> None:
        """Remember (or refresh) what a raw key resolved to."""
        self._index[key] = learned
        self._index.move_to_end(key)
        while len(self._index) > self.entries:
            self._index.popitem(last=False)

    def forget(self, key: str) -> None:
        """Drop a raw key (its answer is gone or no longer applies)."""
        self._index.pop(key, None)

    def snapshot(self) -> dict[str, Any]:
        """Its figures: raw keys known, and repeats it answered since start."""
        return {"entries": len(self._index), "hits": self.hits}

    def __len__(self) -> int:
        return len(self._index)


FAST_PATH = web.AppKey("fast_path", FastPath)


class FastPathLayer:
    """The fast path in front of the layers: its index of raw keys, and its figures."""

    name = "fast_path"

    def __init__(self, entries: int = DEFAULT_ENTRIES) -> None:
        self.fast = FastPath(entries)

    def setup(self, app: web.Application) -> None:
        """Install the index on the app (it lives in memory only: nothing to close)."""
        app[FAST_PATH] = self.fast

    def snapshot(self) -> dict[str, Any]:
        """Raw keys known, and repeats answered on the fast path since start."""
        return self.fast.snapshot()


def _eligible(request: web.Request) -> bool:
    """A request the fast path may read: a proxied POST with a small, plain JSON body
    whose Cache-Control lets a stored answer be used."""
    if request.method != "POST" or request.path not in API_ROUTES:
        return False
    length = request.content_length
    if length is None or not 0 < length <= MAX_MEMO_BODY or "Content-Encoding" in request.headers:
        return False
    header = request.headers.get("Cache-Control")
    if header:
        control = parse_cache_control(header)
        if control.no_cache or control.no_store:
            return False
    return True


async def _answer(request: web.Request, learned: Learned, tenant: str
                  ) -> web.StreamResponse | None:
    """A HIT written exactly as layer 2 writes one, or None: the normal path must answer."""
    app = request.app
    found = await app[STORE].lookup(learned.store_key)
    if found is None:
        return None
    age = found.age(time.time())
    header = request.headers.get("Cache-Control")
    max_age = parse_cache_control(header).max_age if header else None
    if max_age is not None and age > max_age:
        return None  # EXPIRED: the normal path says so and forwards
    exchange = Exchange(chat=learned.chat, codec=learned.codec,
                        fingerprint=learned.fingerprint, tenant=tenant,
                        cache_status=CacheStatus.HIT, result=found.result)
    request[EXCHANGE] = exchange
    if learned.conversation:
        request[CONVERSATION] = learned.conversation
    ledger = app[LEDGER]
    if learned.stable is not None:
        apply_stable(request, exchange, learned.stable)
    # Layer 2, then on the way up layer 1's ledger, the activity record and the kept
    # Responses object: the same calls, in the same order, as the normal path's HIT.
    ledger.count(c.RESPONSE_HITS)
    response = await replay(request, exchange, found.result, age,
                            (learned.fingerprint, learned.store_key, found.stored_at))
    account(request, exchange)
    record_answer(request, exchange, time.time())
    if learned.kept is not None:
        app[RESPONSE_STATES].put(tenant, response_id(found.result.id), learned.kept)
    app[FAST_PATH].hits += 1
    return response


def _learned(request: web.Request, response: web.StreamResponse) -> Learned | None:
    """What the normal path just resolved this request to, if a repeat may reuse it."""
    exchange = request.get(EXCHANGE)
    store_key = request.get(RESOLVED_KEY)
    if (store_key is None or exchange is None or exchange.result is None
            or exchange.fingerprint is None or response.status != 200
            or exchange.cache_status not in (CacheStatus.HIT, CacheStatus.MISS,
                                             CacheStatus.EXPIRED)):
        return None  # no stored answer, or a request whose body is not all it means
    app, stable, kept = request.app, None, None
    if exchange.chat.kind == "chat":
        stable = app[PREFIX_MEMO].get(exchange.fingerprint)
        if stable is None or stable.chat is not exchange.chat:
            return None
    if exchange.chat.client_api == "responses" and (exchange.chat.extra or {}).get(
            "store", True):
        kept = app[RESPONSE_STATES].get(exchange.tenant, response_id(exchange.result.id))
        if kept is None:
            return None  # too large to keep: the normal path logs why, every time
    return Learned(store_key, exchange.chat, exchange.codec, exchange.fingerprint, stable,
                   request.get(CONVERSATION), kept)


@web.middleware
async def fast_path_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer a byte-identical repeat of a stored answer; teach the index otherwise."""
    fast = request.app[FAST_PATH]
    if not fast.enabled or not _eligible(request):
        return await handler(request)
    try:
        body = await read_body(request)
    except CachelayerError as error:
        # The edge's own answer for a body it cannot read (it would read the same).
        route = API_ROUTES[request.path]
        log.info("%s %s -> %d %s", request.method, request.path, error.status, error.message)
        return error_response(request.app[CODECS][route[0]], error)
    tenant = request_tenant(request.headers)
    key = raw_key(request.path, body, tenant, request.headers)
    learned = fast.get(key) if len(fast) else None
    if learned is not None:
        response = await _answer(request, learned, tenant)
        if response is not None:
            return response
        fast.forget(key)
    response = await handler(request)
    learned = _learned(request, response)
    if learned is not None:
        fast.learn(key, learned)
    return response
