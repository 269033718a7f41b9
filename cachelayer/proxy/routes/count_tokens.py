"""POST /v1/messages/count_tokens: how many input tokens a Messages request would use.

Claude Code asks this to size its context. The body is validated and translated exactly
as /v1/messages would be, then counted by the upstream when it can (cachelayer's own
backend counts with the real tokenizer and chat template at /v1/cachelayer/count_tokens);
any other upstream, or a failure there, gets the documented byte estimate instead.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from cachelayer.protocol.anthropic import AnthropicCodec, estimate_tokens
from cachelayer.proxy.edge import CODECS, read_body
from cachelayer.proxy.state import POOL, UPSTREAM

log = logging.getLogger(__name__)

COUNT_ROUTE = "/v1/cachelayer/count_tokens"
# Counting is a tokenizer pass, not a generation: a slow answer means something is wrong.
_TIMEOUT = aiohttp.ClientTimeout(total=30)


async def upstream_count(request: web.Request, body: dict[str, Any]) -> int | None:
    """The upstream's own count for an OpenAI chat body, or None when it cannot give one."""
    url = request.app[POOL].first_healthy() + COUNT_ROUTE
    headers = {"Content-Type": "application/json"}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    try:
        async with request.app[UPSTREAM].post(url, data=orjson.dumps(body), headers=headers,
                                              timeout=_TIMEOUT) as response:
            if response.status != 200:
                if response.status != 404:
                    log.info("upstream count_tokens answered %d; estimating", response.status)
                return None
            answer = orjson.loads(await response.read())
    except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as exc:
        log.info("upstream count_tokens failed (%s); estimating", exc)
        return None
    count = answer.get("input_tokens") if isinstance(answer, dict) else None
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        log.info("upstream count_tokens answered no usable count; estimating")
        return None
    return count


async def count_tokens(request: web.Request) -> web.Response:
    """Answer `{"input_tokens": N}` for a Messages body (errors in Anthropic's shape)."""
    raw = await read_body(request)
    codec = request.app[CODECS]["anthropic"]
    assert isinstance(codec, AnthropicCodec)
    body = codec.parse_count_request(raw)
    count = await upstream_count(request, body)
    if count is None:
        count = estimate_tokens(body)
    return web.json_response({"input_tokens": count})
