"""A request waiting on a coalesced one hears what a leader's client hears.

An identical request that arrives while another is being computed (here: coalesce.py;
at another proxy: the fleet's marker) waits for that answer instead of computing it. A
streamed one waits with the forwarder's own keep-alives (forward/keepalive.py): SSE
comments before the first event, Anthropic's ping only once message_start is out, the
Responses API's in-progress events. When the answer comes, it is rendered on through
the same renderer, so a stream that has begun continues rather than starting twice. A
waiter that ends up computing itself (its leader failed) hands its Downstream to the
handler, which goes on with the stream already begun.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import TypeVar

import aiohttp
from aiohttp import web

from cachelayer.protocol.chat import ChatResult, result_events
from cachelayer.protocol.early_usage import announce, as_replayed
from cachelayer.proxy.forward.keepalive import DOWNSTREAM, Downstream
from cachelayer.proxy.state import Exchange

T = TypeVar("T")


async def paced(request: web.Request, exchange: Exchange, awaitable: Awaitable[T]) -> T:
    """Await what a coalesced request waits for; a streamed request gets keep-alives
    every keep-alive interval meanwhile (the first within a second)."""
    if not exchange.chat.stream:
        return await awaitable
    downstream = request.get(DOWNSTREAM)
    if downstream is None:
        downstream = request[DOWNSTREAM] = Downstream(request)
    return await downstream.paced(awaitable)


def begun(request: web.Request) -> Downstream | None:
    """The waiter's stream if keep-alives already went out (its headers are sent)."""
    downstream = request.get(DOWNSTREAM)
    if downstream is None:
        return None
    downstream.first_token()  # no longer waiting: off the list of prefills
    return downstream if downstream.response is not None else None


async def finish_begun(downstream: Downstream, result: ChatResult) -> web.StreamResponse:
    """The answer, rendered on through the stream's own renderer after its keep-alives."""
    renderer = downstream.renderer
    result = as_replayed(result)
    announce(renderer, result.usage)
    body = b"".join(renderer.render(event) for event in result_events(result))
    with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
        await downstream.write(body + renderer.close())
        return await downstream.finish()
    assert downstream.response is not None
    return downstream.response
