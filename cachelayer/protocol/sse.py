"""Server-sent events: reading an upstream's SSE stream, and replaying a stored answer.

Both APIs stream as SSE; the codec's stream renderer decides what each event looks like,
this module only frames bytes and writes them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from cachelayer.protocol.chat import ChatRequest, ChatResult, result_events
from cachelayer.protocol.codec import Codec
from cachelayer.protocol.early_usage import announce

log = logging.getLogger(__name__)
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_BATCH = 32  # SSE events rendered per write when the upstream is ahead of us


@dataclass(frozen=True)
class Comment:
    """An SSE comment line (`: text`): the backend's prefill progress, `: keepalive N/M`."""

    text: str


def _event_data(event: bytes) -> bytes | None:
    parts = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(parts) if parts else None


def _comments(event: bytes) -> list[Comment]:
    return [Comment(line[1:].strip().decode("utf-8", "replace"))
            for line in event.split(b"\n") if line.startswith(b":")]


async def sse_batches(
    response: aiohttp.ClientResponse,
) -> AsyncIterator[list[bytes | Comment]]:
    """The `data:` payloads and comment lines of an SSE stream, in batches of whatever
    has arrived.

    The first event goes out alone, as soon as it is framed (time to first token is what
    users feel); after it, up to _BATCH events share a write when the upstream is ahead.
    Comments (the backend's prefill progress) ride in the batches without counting.
    """
    pending = b""
    limit = 1
    async for data in response.content.iter_any():
        pending += data
        if b"\r" in pending:
            pending = pending.replace(b"\r\n", b"\n")
        pos = 0
        batch: list[bytes | Comment] = []
        while (end := pending.find(b"\n\n", pos)) >= 0:
            event = pending[pos:end]
            payload = _event_data(event)
            pos = end + 2
            if event.startswith(b":"):
                batch.extend(_comments(event))
            if payload is not None:
                batch.append(payload)
                if len(batch) >= limit:
                    yield batch
                    batch, limit = [], _BATCH
        if batch:
            yield batch
            limit = _BATCH
        pending = pending[pos:]
    tail = _event_data(pending.strip())
    if tail is not None:
        yield [tail]


async def replay_stream(
    request: web.Request,
    codec: Codec,
    chat: ChatRequest,
    result: ChatResult,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Send a complete result as one SSE stream in the client's API, without delay."""
    return await write_sse(request, render_sse(codec, chat, result), headers)


def render_sse(codec: Codec, chat: ChatRequest, result: ChatResult) -> bytes:
    """A complete result as the bytes of one SSE stream in the client's API."""
    renderer = codec.stream_renderer(chat)
    announce(renderer, result.usage)
    body = b"".join(renderer.render(event) for event in result_events(result))
    return body + renderer.close()


async def write_sse(
    request: web.Request, body: bytes, headers: dict[str, str] | None = None
) -> web.StreamResponse:
    """Send already rendered SSE bytes as one stream."""
    response = web.StreamResponse(headers={**SSE_HEADERS, **(headers or {})})
    await response.prepare(request)
    try:
        await response.write(body)
        await response.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        log.info("client went away during a replay")
    return response
