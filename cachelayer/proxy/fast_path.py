"""The fast path's index: byte-identical repeats mapped to what the normal path learned.

Agents re-send the same request bytes (a retry, a sub-agent's fixed prompt, a benchmark).
The normal path parses, validates, stabilises and keys such a repeat before it finds its
stored answer. The front (proxy/fast_front.py) hashes what the client sent (`raw_key`:
route, body bytes, tenant and the headers that can change the answer or its validation)
and looks it up here: the store key the normal path resolved it to the last time, with
what that pass learned (the stabilised request, its prefix record, its conversation, the
Responses object it kept), so a fast HIT is rendered and counted like a normal HIT
everywhere. `fast_path_middleware`, outermost in the application, learns it: after the
normal path answered a request the front passed on with its raw key. Anything else (an
unknown raw key, an answer gone after a clear or its TTL, `no-cache`/`no-store`, an
answer older than `max-age`) takes the normal path unchanged, which then teaches the
index again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import xxhash
from aiohttp import web
from aiohttp.typedefs import Handler

from cachelayer.protocol.chat import ChatRequest
from cachelayer.protocol.codec import Codec
from cachelayer.protocol.responses_stream import response_id
from cachelayer.proxy.conversation import CONVERSATION
from cachelayer.proxy.hit_tally import HIT_TALLY, HitTally
from cachelayer.proxy.prefix.layer import PREFIX_MEMO
from cachelayer.proxy.prefix.middleware import Stable
from cachelayer.proxy.responses.middleware import RESPONSE_STATES
from cachelayer.proxy.responses.store import StoredResponse
from cachelayer.proxy.state import EXCHANGE, CacheStatus
from cachelayer.proxy.store.middleware import RESOLVED_KEY

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


def raw_key(route: str, body: bytes, tenant: str, headers: Mapping[str, str]) -> Hashable:
    """The fast path's key: what the client sent, byte for byte (the body as one xxh3
    digest), beside its route, tenant and the headers that can change the answer."""
    return (route, xxhash.xxh3_128_intdigest(body), len(body), tenant,
            *[headers.get(name) for name in ANSWER_HEADERS])


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
        self._index: OrderedDict[Hashable, Learned] = OrderedDict()
        self.hits = 0
        self.tally = HitTally()
        # Off: every request takes the normal path, as if there were no fast path
        # (tools/bench_store_hits.py switches it to compare both in one process).
        self.enabled = True

    def get(self, key: Hashable) -> Learned | None:
        """The learned entry for a raw key, or None."""
        learned = self._index.get(key)
        if learned is not None:
            self._index.move_to_end(key)
        return learned

    def learn(self, key: Hashable, learned: Learned) -> None:
        """Remember (or refresh) what a raw key resolved to."""
        self._index[key] = learned
        self._index.move_to_end(key)
        while len(self._index) > self.entries:
            self._index.popitem(last=False)

    def forget(self, key: Hashable) -> None:
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
        """Install the index and the tally of its HITs on the app (both in memory)."""
        app[FAST_PATH] = self.fast
        app[HIT_TALLY] = self.fast.tally
        app.cleanup_ctx.append(self._tally_ctx)

    async def _tally_ctx(self, app: web.Application) -> AsyncIterator[None]:
        yield
        # The observer's last export settled the tally (its context closes first);
        # nothing may be accounted after the ledger closed.
        self.fast.tally.close()

    def snapshot(self) -> dict[str, Any]:
        """Raw keys known, and repeats answered on the fast path since start."""
        return self.fast.snapshot()


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


# The raw key the front (proxy/fast_front.py) computed for a request it passed on: the
# normal path's answer is learned under it.
RAW_KEY = web.RequestKey("fast_path_raw_key", object)


@web.middleware
async def fast_path_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Teach the index what the normal path resolved a fast-path-eligible request to."""
    response = await handler(request)
    key = request.get(RAW_KEY)
    if key is not None:
        learned = _learned(request, response)
        if learned is not None:
            request.app[FAST_PATH].learn(key, learned)
    return response
