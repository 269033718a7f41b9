"""Relay an upstream SSE stream to the client chunk by chunk, folding it into a result.

Each upstream chunk is rendered in the client's API as it arrives. The same chunks are
folded into a ChatResult, handed to the exchange only when the stream ended cleanly
(`[DONE]` seen, client still there): that is what lets layer 2 store complete answers
and nothing else. The backend's `: keepalive N/M` comments are read as prefill progress
(progress.py), and the client hears a keep-alive whenever the stream is quiet for an
interval (keepalive.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from cachelayer.errors import CachelayerError, UpstreamProtocolError
from cachelayer.protocol.chat import ResultBuilder
from cachelayer.protocol.early_usage import announce, parse_usage_comment
from cachelayer.protocol.openai import parse_chunk
from cachelayer.protocol.sse import Comment, sse_batches
from cachelayer.proxy.forward.errors import UPSTREAM_FAILURES, error_message, upstream_error
from cachelayer.proxy.forward.keepalive import Downstream, next_or_none
from cachelayer.proxy.forward.progress import parse_keepalive
from cachelayer.proxy.state import SETTINGS, Exchange

log = logging.getLogger(__name__)


async def relay_stream(
    downstream: Downstream,
    exchange: Exchange,
    upstream: aiohttp.ClientResponse,
    url: str,
    started: float,
) -> web.StreamResponse:
    """Stream the upstream's answer to the client; record the result if it completed.

    The backend's comments carry its prefill progress; the client gets keep-alives
    whenever it has heard nothing for an interval (keepalive.py)."""
    response = await downstream.prepare()
    renderer = downstream.renderer
    builder = ResultBuilder(exchange.chat.kind,
                            max_chars=downstream.request.app[SETTINGS].entry_max_bytes)
    done = False
    batches = sse_batches(upstream)
    try:
        while (batch := await downstream.paced(next_or_none(batches))) is not None:
            if exchange.upstream_ms is None:
                exchange.upstream_ms = (time.perf_counter() - started) * 1000
            out = []
            for data in batch:
                if isinstance(data, Comment):
                    early = parse_usage_comment(b": " + data.text.encode())
                    if early is not None:  # the backend's usage, before prefill
                        exchange.early_usage = early
                        announce(renderer, early)
                        continue
                    progress = parse_keepalive(data.text)
                    if progress is not None:
                        downstream.report(*progress)
                    continue
                downstream.first_token()
                if exchange.first_token_ms is None:
                    exchange.first_token_ms = (time.perf_counter() - started) * 1000
                if data == b"[DONE]":
                    done = True
                    break
                for event in parse_chunk(exchange.chat.kind, _load_chunk(data, url)):
                    builder.add(event)
                    out.append(renderer.render(event))
            piece = b"".join(out)
            if piece:
                await downstream.write(piece)
            if done:
                break
        if not done:
            raise UpstreamProtocolError(f"upstream {url} ended the stream before [DONE]")
        await response.write(renderer.close())
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        log.info("client went away mid-stream; the answer is not stored")
        return response
    except (CachelayerError, *UPSTREAM_FAILURES) as exc:
        error = exc if isinstance(exc, CachelayerError) else upstream_error(exc, url, "stream")
        log.warning("stream from %s failed: %s", url, error.message)
        await _write_quietly(response, renderer.fail(error))
        return response
    result = builder.result()
    early_id = getattr(renderer, "early_id", None)
    # A renderer that named the answer before the upstream did (a Responses stream
    # created by a keep-alive): the stored result keeps the name the client saw.
    exchange.result = dataclasses.replace(result, id=early_id) if early_id else result
    exchange.oversized = builder.oversized
    await response.write_eof()
    return response


def _load_chunk(data: bytes, url: str) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError(f"upstream {url} sent a chunk that is not JSON") from exc
    if not isinstance(chunk, dict):
        raise UpstreamProtocolError(f"upstream {url} sent a chunk that is not an object")
    if "error" in chunk and "choices" not in chunk:
        raise UpstreamProtocolError(error_message(200, data, url))
    return chunk


async def _write_quietly(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
        await response.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        pass
