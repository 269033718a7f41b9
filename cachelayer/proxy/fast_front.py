"""The front: byte-identical repeats answered before the application is entered.

A stored answer leaving the proxy should cost about what a bare aiohttp handler costs to
send the same bytes. Entering the application does not: routing, seven middlewares and
the response-prepare signal are paid by every request, before the fast path can tell a
repeat. So `ProxyRunner` puts this front between aiohttp's server and the application:
it reads an eligible request (a small JSON POST to a completion route), names its tenant,
hashes its raw key (proxy/fast_path.py), and when the index knows the key and the store
still has the answer, writes the HIT itself, rendered, named (X-Request-Id), logged and
(in batches, proxy/hit_tally.py) accounted as the layers would. Every other request goes
to the application unchanged, carrying its raw key so the normal path's answer is learned.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from typing import cast

from aiohttp import web
from aiohttp.web_request import BaseRequest

from cachelayer.errors import CachelayerError
from cachelayer.proxy.access import REQUEST_IDS, log_hit, name_request
from cachelayer.proxy.conversation import session_header
from cachelayer.proxy.edge import API_ROUTES, TENANT, read_body
from cachelayer.proxy.fast_path import FAST_PATH, RAW_KEY, FastPath, Learned, raw_key
from cachelayer.proxy.identity import request_tenant
from cachelayer.proxy.memo import MAX_MEMO_BODY
from cachelayer.proxy.one_write import OneWrite
from cachelayer.proxy.state import SETTINGS, CacheStatus
from cachelayer.proxy.store.backends.base import StoredAnswer
from cachelayer.proxy.store.layer import RENDER_MEMO, STORE
from cachelayer.proxy.store.middleware import rendered
from cachelayer.proxy.store.policy import CacheControl, parse_cache_control
from cachelayer.telemetry.sessions import CLAUDE_CODE_HEADER

RequestHandler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]
HIT = CacheStatus.HIT.value


class Front:
    """The server's request handler: a fast HIT, or the application's own handling."""

    def __init__(self, app: web.Application, handle: RequestHandler) -> None:
        self.app, self.handle = app, handle
        self.fast: FastPath = app[FAST_PATH]
        self.store, self.memo, self.ids = app[STORE], app[RENDER_MEMO], app[REQUEST_IDS]
        # A body the edge would refuse as too large is the edge's to refuse.
        self.max_body = min(MAX_MEMO_BODY, app[SETTINGS].max_body_bytes)

    def _eligible(self, request: web.Request, control: CacheControl | None) -> bool:
        """A proxied POST with a small, plain JSON body already on its way (no
        `Expect: 100-continue`, which the application answers), whose Cache-Control lets
        a stored answer be used."""
        if request.method != "POST" or request.path not in API_ROUTES or not self.fast.enabled:
            return False
        headers = request.headers
        length = request.content_length
        if (length is None or not 0 < length <= self.max_body
                or "Content-Encoding" in headers or "Expect" in headers):
            return False
        return control is None or not (control.no_cache or control.no_store)

    async def __call__(self, base: BaseRequest) -> web.StreamResponse:
        """Answer a known repeat; hand anything else to the application."""
        # The application's request factory made it; not routed yet (no `request.app`).
        request = cast(web.Request, base)
        header = request.headers.get("Cache-Control")
        control = parse_cache_control(header) if header else None
        if not self._eligible(request, control):
            return await self.handle(request)
        started = time.perf_counter()
        try:
            body = await read_body(request)
        except CachelayerError:
            # The edge reads it again and answers the error in the client's shape.
            return await self.handle(request)
        tenant = request[TENANT] = request_tenant(request.headers)
        key = raw_key(request.path, body, tenant, request.headers)
        learned = self.fast.get(key) if len(self.fast) else None
        if learned is not None:
            found = await self.store.lookup(learned.store_key)
            if found is not None:
                max_age = control.max_age if control is not None else None
                response = self._answer(request, key, learned, found, tenant, max_age,
                                        started)
                if response is not None:
                    return response
            self.fast.forget(key)
        request[RAW_KEY] = key
        return await self.handle(request)

    def _answer(self, request: web.Request, key: Hashable, learned: Learned,
                found: StoredAnswer, tenant: str, max_age: float | None, started: float
                ) -> web.StreamResponse | None:
        """A HIT as layer 2 writes one, or None: the normal path must answer."""
        now = time.time()
        age = found.age(now)
        if max_age is not None and age > max_age:
            return None  # EXPIRED: the normal path says so and forwards
        rid = name_request(request, self.ids)
        body = rendered(self.memo, learned.chat, learned.codec, found.result,
                        (learned.fingerprint, learned.store_key, found.stored_at))
        # The headers the response-prepare signal gives every answer of the application.
        response = OneWrite(body, (("Age", str(int(age))), ("X-Request-Id", rid),
                                   ("X-Cache-Status", HIT)), stream=learned.chat.stream)
        self.fast.hits += 1
        headers = request.headers
        self.fast.tally.add(self.app, key, learned, found.result, found.stored_at, tenant,
                            headers.get(CLAUDE_CODE_HEADER), session_header(headers), now)
        log_hit(request, rid, found.result.usage, started)
        return response


class ProxyRunner(web.AppRunner):
    """An `AppRunner` whose server hands each request to the `Front` first."""

    async def setup(self) -> None:
        """Set the application up, then put the front before it."""
        await super().setup()
        server = self.server
        assert server is not None
        server.request_handler = Front(self.app, server.request_handler)
