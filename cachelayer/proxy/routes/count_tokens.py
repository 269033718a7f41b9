"""POST /v1/messages/count_tokens: how many input tokens a Messages request would use.

Claude Code asks this to size its context. The body is validated and translated exactly
as /v1/messages would be, then counted by the upstream when it can (cachelayer's own
backend counts with the real tokenizer and chat template at /v1/cachelayer/count_tokens);
any other upstream, or a failure there, gets the documented byte estimate instead.
"""

from __future__ import annotations

from aiohttp import web

from cachelayer.protocol.anthropic import AnthropicCodec, estimate_tokens
from cachelayer.proxy.edge import CODECS, read_body
from cachelayer.proxy.forward.upstream import upstream_count


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
