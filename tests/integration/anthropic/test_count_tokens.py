"""/v1/messages/count_tokens: the upstream's real count when it has one, else the estimate."""

from __future__ import annotations

from typing import Any

import anthropic
import orjson
from aiohttp import web

from cachelayer.config import Settings
from cachelayer.protocol.anthropic import AnthropicCodec, estimate_tokens
from tests.integration.anthropic.conftest import COUNT_TOKENS_PATH, CountingProxy
from tests.support import http

BODY: dict[str, Any] = {
    "model": "claude-x", "system": [{"type": "text", "text": "You are Claude Code.",
                                     "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": "count me, please"}],
    "tools": [{"name": "ls", "input_schema": {"type": "object"}}],
}


def _estimate() -> int:
    return estimate_tokens(AnthropicCodec(Settings()).parse_count_request(orjson.dumps(BODY)))


def test_sdk_count_tokens_uses_the_upstream_tokenizer_count(
    counting_proxy: CountingProxy,
) -> None:
    with counting_proxy(web.json_response({"input_tokens": 1234})) as (proxy, counted):
        client = anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0)
        answer = client.messages.count_tokens(**BODY)
    assert answer.input_tokens == 1234
    assert counted == [{
        "model": "claude-x",
        "messages": [{"role": "system", "content": "You are Claude Code."},
                     {"role": "user", "content": "count me, please"}],
        "tools": [{"type": "function", "function": {"name": "ls",
                                                    "parameters": {"type": "object"}}}],
    }]


def test_upstream_without_the_count_route_gets_the_estimate(
    counting_proxy: CountingProxy,
) -> None:
    with counting_proxy(None) as (proxy, _):
        answer = http.post(proxy.url + COUNT_TOKENS_PATH, json=BODY)
    assert answer.status == 200 and answer.json() == {"input_tokens": _estimate()}


def test_failing_or_nonsense_count_route_falls_back_to_the_estimate(
    counting_proxy: CountingProxy,
) -> None:
    for reply in (web.json_response({"error": "boom"}, status=500),
                  web.json_response({"tokens": "many"}),
                  web.Response(body=b"<html>", content_type="text/html")):
        with counting_proxy(reply) as (proxy, counted):
            answer = http.post(proxy.url + COUNT_TOKENS_PATH, json=BODY)
        assert len(counted) == 1
        assert answer.json() == {"input_tokens": _estimate()}


def test_malformed_count_request_is_a_400_in_anthropic_shape(
    counting_proxy: CountingProxy,
) -> None:
    with counting_proxy(web.json_response({"input_tokens": 1})) as (proxy, counted):
        answer = http.post(proxy.url + COUNT_TOKENS_PATH, json={"model": "claude-x"})
    assert answer.status == 400
    assert answer.json()["type"] == "error"
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert counted == []
