"""Keep-alives: a streaming client hears from the proxy at least every keep-alive interval.

A long prefill is minutes of silence: the backend answers its headers only once the
request reached its generation thread, and its first token after the whole prompt.
Clients give up on silent streams (Codex after 5 minutes, proxies and load balancers
sooner), and a user sees nothing moving. So a streamed request's response is prepared
(200, SSE headers) once the upstream has not answered within the first keep-alive delay,
and from then on, whenever the client has heard nothing for one interval, it gets the
renderer's keep-alive: an SSE comment (`: keepalive N/M`, with the backend's progress when
known) in every API before its first event, and Anthropic's `event: ping` once
`message_start` is out. An upstream failure after the response is prepared ends the
stream with the API's error event instead of an error status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from aiohttp import web

from cachelayer.protocol.codec import StreamRenderer
from cachelayer.protocol.sse import SSE_HEADERS
from cachelayer.proxy.forward.layer import PREFILLS
from cachelayer.proxy.forward.progress import PrefillProgress
from cachelayer.proxy.state import EXCHANGE, SETTINGS
from cachelayer.telemetry.logs import REQUEST_ID

T = TypeVar("T")
# The first keep-alive goes out after at most this long, whatever the interval.
_FIRST_S = 1.0


class Downstream:
    """The client's side of one streamed answer: the response (prepared when first
    needed), the renderer, the prefill progress, and when the client last heard from us."""

    def __init__(self, request: web.Request) -> None:
        exchange = request[EXCHANGE]
        self.request = request
        self.renderer: StreamRenderer = exchange.codec.stream_renderer(exchange.chat)
        self.interval_s = request.app[SETTINGS].keepalive_interval_s
        self.response: web.StreamResponse | None = None
        self.prefills = request.app[PREFILLS]
        self.progress: PrefillProgress | None = self.prefills.begin(
            REQUEST_ID.get(), exchange.chat.client_model)
        self._last_write = time.monotonic()
        self.keepalives = 0

    async def prepare(self) -> web.StreamResponse:
        """The SSE response, its headers sent on the first call."""
        if self.response is None:
            self.response = web.StreamResponse(headers=SSE_HEADERS)
            await self.response.prepare(self.request)
        return self.response

    async def write(self, data: bytes) -> None:
        """Send bytes to the client (preparing the response first if needed)."""
        response = await self.prepare()
        await response.write(data)
        self._last_write = time.monotonic()

    async def finish(self) -> web.StreamResponse:
        """End the stream (after its last bytes were written)."""
        response = await self.prepare()
        await response.write_eof()
        return response

    def due_in(self) -> float:
        """Seconds until the client is owed a keep-alive (the first one comes sooner)."""
        wait = self.interval_s if self.response is not None else min(_FIRST_S, self.interval_s)
        return max(0.0, self._last_write + wait - time.monotonic())

    async def keepalive(self) -> None:
        """Send one keep-alive, with the backend's progress when it has reported any."""
        progress = self.progress
        note = "keepalive"
        if progress is not None and progress.total:
            note = f"keepalive {progress.done}/{progress.total}"
        await self.write(self.renderer.keepalive(note))
        self.keepalives += 1

    def report(self, done: int, total: int) -> None:
        """The backend's prefill progress (its `: keepalive N/M` comments)."""
        if self.progress is not None:
            self.prefills.report(self.progress, done, total)

    def first_token(self) -> None:
        """The prefill is over: stop listing it."""
        if self.progress is not None:
            self.prefills.end(self.progress)
            self.progress = None

    async def paced(self, awaitable: Awaitable[T]) -> T:
        """Await something, sending keep-alives while it takes longer than an interval.

        If this is cancelled (the client went away), so is what it awaited."""
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.due_in())
                if done:
                    return task.result()
                await self.keepalive()
        finally:
            if not task.done():
                task.cancel()


# A streamed request that already heard keep-alives while it waited on a coalesced one
# (proxy/store/waiters.py) carries its Downstream here, so the handler goes on with it.
DOWNSTREAM = web.RequestKey("downstream", Downstream)


async def next_or_none(iterator: AsyncIterator[T]) -> T | None:
    """The iterator's next item, or None at its end (a task cannot end in
    StopAsyncIteration)."""
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None
