"""Layer 3: send a miss upstream and relay the answer chunk by chunk as it arrives.

The forwarder always speaks OpenAI's API upstream and renders each chunk in the client's
API as it comes. It folds the same chunks into a ChatResult and hands that to the
exchange only when the stream ended cleanly (`[DONE]` seen, client still there), which
is what lets layer 2 store complete answers and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from cachelayer.context import EXCHANGE, SETTINGS, UPSTREAM, Exchange
from cachelayer.errors import (
    CachelayerError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from cachelayer.protocol.chat import ChatResult, Kind, ResultBuilder, result_events
from cachelayer.protocol.openai import parse_chunk, parse_response, upstream_body

log = logging.getLogger(__name__)
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_PATHS: dict[Kind, str] = {"chat": "/v1/chat/completions", "text": "/v1/completions"}
_ERROR_BODY_LIMIT = 64 * 1024
_BATCH = 32  # SSE events rendered per write when the upstream is ahead of us


def _error_message(status: int, raw: bytes, url: str) -> str:
    try:
        data = orjson.loads(raw)
        inner = data.get("error", data) if isinstance(data, dict) else data
        message = inner.get("message") if isinstance(inner, dict) else inner
        if isinstance(message, str) and message:
            return f"upstream {url} answered {status}: {message}"
    except orjson.JSONDecodeError:
        pass
    text = raw[:200].decode("utf-8", "replace").strip()
    return f"upstream {url} answered {status}: {text or 'no body'}"


async def _open(request: web.Request, exchange: Exchange) -> tuple[aiohttp.ClientResponse, str]:
    settings = request.app[SETTINGS]
    url = settings.upstream_url + _PATHS[exchange.chat.kind]
    headers = {"Content-Type": "application/json"}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    body = orjson.dumps(upstream_body(exchange.chat))
    try:
        response = await request.app[UPSTREAM].post(url, data=body, headers=headers)
    except asyncio.TimeoutError:
        raise UpstreamTimeout(f"upstream {url} did not answer in time") from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(f"cannot reach upstream {url}: {exc}") from None
    if response.status >= 400:
        raw = await response.content.read(_ERROR_BODY_LIMIT)
        response.release()
        raise UpstreamStatusError(_error_message(response.status, raw, url),
                                  status=response.status)
    return response, url


def _event_data(event: bytes) -> bytes | None:
    parts = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(parts) if parts else None


async def sse_batches(response: aiohttp.ClientResponse) -> AsyncIterator[list[bytes]]:
    """The `data:` payloads of an SSE stream, in batches of whatever has arrived.

    The first event goes out alone, as soon as it is framed (time to first token is what
    users feel); after it, up to _BATCH events share a write when the upstream is ahead.
    """
    pending = b""
    limit = 1
    async for data in response.content.iter_any():
        pending += data
        if b"\r" in pending:
            pending = pending.replace(b"\r\n", b"\n")
        pos = 0
        batch: list[bytes] = []
        while (end := pending.find(b"\n\n", pos)) >= 0:
            payload = _event_data(pending[pos:end])
            pos = end + 2
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


async def handle_completion(request: web.Request) -> web.StreamResponse:
    """The innermost handler: a miss (or bypass) goes to the upstream."""
    exchange = request[EXCHANGE]
    started = time.perf_counter()
    upstream, url = await _open(request, exchange)
    try:
        is_sse = upstream.content_type == "text/event-stream"
        if exchange.chat.stream and is_sse:
            return await _relay_stream(request, exchange, upstream, url, started)
        raw = await upstream.read()
        exchange.upstream_ms = (time.perf_counter() - started) * 1000
        if is_sse:
            raise UpstreamProtocolError(f"upstream {url} streamed an answer that was not asked for")
        result = parse_response(exchange.chat.kind, raw)
        exchange.result = result
        if exchange.chat.stream:
            return await replay_stream(request, exchange, result)
        return web.Response(body=exchange.codec.render_response(result, exchange.chat),
                            content_type="application/json")
    except asyncio.TimeoutError:
        raise UpstreamTimeout(f"upstream {url} stopped answering") from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(f"upstream {url} dropped the connection: {exc}") from None
    finally:
        if exchange.result is None:
            # Closing (not releasing) drops the connection, so the upstream sees the client
            # leave and stops generating instead of finishing an answer nobody reads.
            upstream.close()
        else:
            upstream.release()


async def replay_stream(
    request: web.Request,
    exchange: Exchange,
    result: ChatResult,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Send a complete result as one SSE stream in the client's API, without delay."""
    response = web.StreamResponse(headers={**SSE_HEADERS, **(headers or {})})
    await response.prepare(request)
    renderer = exchange.codec.stream_renderer(exchange.chat)
    body = b"".join(renderer.render(event) for event in result_events(result))
    try:
        await response.write(body + renderer.close())
        await response.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        log.info("client went away during a replay")
    return response


async def _relay_stream(
    request: web.Request,
    exchange: Exchange,
    upstream: aiohttp.ClientResponse,
    url: str,
    started: float,
) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    renderer = exchange.codec.stream_renderer(exchange.chat)
    builder = ResultBuilder(exchange.chat.kind,
                            max_chars=request.app[SETTINGS].entry_max_bytes)
    done = False
    try:
        async for batch in sse_batches(upstream):
            if exchange.upstream_ms is None:
                exchange.upstream_ms = (time.perf_counter() - started) * 1000
            out = []
            for data in batch:
                if data == b"[DONE]":
                    done = True
                    break
                for event in parse_chunk(exchange.chat.kind, _load_chunk(data, url)):
                    builder.add(event)
                    out.append(renderer.render(event))
            piece = b"".join(out)
            if piece:
                await response.write(piece)
            if done:
                break
        if not done:
            raise UpstreamProtocolError(f"upstream {url} ended the stream before [DONE]")
        await response.write(renderer.close())
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        log.info("client went away mid-stream; the answer is not stored")
        return response
    except (CachelayerError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
        error = exc if isinstance(exc, CachelayerError) else _as_upstream_error(exc, url)
        log.warning("stream from %s failed: %s", url, error.message)
        await _write_quietly(response, renderer.fail(error))
        return response
    exchange.result = builder.result()
    exchange.oversized = builder.oversized
    await response.write_eof()
    return response


def _load_chunk(data: bytes, url: str) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(f"upstream {url} sent a chunk that is not JSON") from None
    if not isinstance(chunk, dict):
        raise UpstreamProtocolError(f"upstream {url} sent a chunk that is not an object")
    if "error" in chunk and "choices" not in chunk:
        raise UpstreamProtocolError(_error_message(200, data, url))
    return chunk


def _as_upstream_error(exc: BaseException, url: str) -> UpstreamError:
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout(f"upstream {url} stopped answering mid-stream")
    return UpstreamUnreachable(f"upstream {url} dropped the stream: {exc}")


async def _write_quietly(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
        await response.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        pass
