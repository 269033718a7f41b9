"""The Responses edge on real mlx-lm inference: one cache behind three APIs.

A conversation over `POST /v1/responses` (the openai SDK), chained by
previous_response_id, reuses its prefix from the backend's KV; carried on over chat
completions and then the Messages API it keeps reusing the same KV; and in front of a
stock mlx_lm.server (no /v1/responses of its own) it works and repeats are hits.
"""

from __future__ import annotations

from pathlib import Path

import anthropic
import openai
import pytest

from cachelayer.proxy.app import make_app
from tests.integration.stack.conftest import stack_settings
from tests.support.processes import ServerProcess
from tests.support.servers import RunningServer, serve_app

pytestmark = pytest.mark.slow  # real mlx inference in child servers

SYSTEM = " ".join(f"Rule {i}: read file number {i} before you edit it." for i in range(60))


def _reused(usage: object) -> float:
    details = usage.input_tokens_details  # type: ignore[attr-defined]
    return float(details.cached_tokens) / float(usage.input_tokens)  # type: ignore[attr-defined]


def test_turn_two_by_previous_response_id_reuses_the_kv(stack: RunningServer) -> None:
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="local", max_retries=0)
    first = client.responses.create(model="any", instructions=SYSTEM, input="Turn one.",
                                    max_output_tokens=16)
    assert first.usage is not None and first.usage.input_tokens > 500
    events = list(client.responses.create(model="any", instructions=SYSTEM,
                                          input="Turn two.", previous_response_id=first.id,
                                          max_output_tokens=16, stream=True))
    final = events[-1].response  # type: ignore[union-attr]
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert final.usage is not None and final.usage.input_tokens > first.usage.input_tokens
    assert _reused(final.usage) >= 0.8


def test_one_conversation_over_three_apis_reuses_one_kv(stack: RunningServer) -> None:
    oai = openai.OpenAI(base_url=stack.url + "/v1", api_key="local", max_retries=0)
    first = oai.responses.create(model="any", instructions=SYSTEM, input="Turn one.",
                                 max_output_tokens=16)
    answer = first.output_text or ""
    history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Turn one."},
               {"role": "assistant", "content": answer}]
    chat = oai.chat.completions.create(
        model="any", max_tokens=16,
        messages=[*history, {"role": "user", "content": "Turn two."}])  # type: ignore[list-item]
    usage = chat.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens / usage.prompt_tokens >= 0.8
    claude = anthropic.Anthropic(base_url=stack.url, api_key="local", max_retries=0)
    message = claude.messages.create(
        model="any", max_tokens=16, system=SYSTEM,
        messages=[{"role": "user", "content": "Turn one."},
                  {"role": "assistant", "content": answer or "ok"},
                  {"role": "user", "content": "Turn two."},
                  {"role": "assistant", "content": chat.choices[0].message.content or "ok"},
                  {"role": "user", "content": "Turn three."}])
    whole = (message.usage.input_tokens + (message.usage.cache_creation_input_tokens or 0)
             + (message.usage.cache_read_input_tokens or 0))
    assert (message.usage.cache_read_input_tokens or 0) / whole >= 0.8


def test_responses_in_front_of_stock_mlx_lm_server_and_repeat_is_a_hit(
    stock: ServerProcess, tmp_path: Path, stack_model: Path
) -> None:
    settings = stack_settings(tmp_path, stock.url, store_truncated=True)
    with serve_app(lambda: make_app(settings)) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="local", max_retries=0)
        kwargs = {"model": str(stack_model), "input": "Say something about caches.",
                  "max_output_tokens": 8, "temperature": 0}
        first = client.responses.with_raw_response.create(**kwargs)  # type: ignore[call-overload]
        events = list(client.responses.create(stream=True, **kwargs))  # type: ignore[call-overload]
        again = client.responses.with_raw_response.create(**kwargs)  # type: ignore[call-overload]
    assert first.headers["X-Cache-Status"] == "MISS"
    assert again.headers["X-Cache-Status"] == "HIT"
    whole = first.parse().model_dump()
    hit, streamed = again.parse().model_dump(), events[-1].response.model_dump()
    # The same response each time; a replay's usage says its whole input came from cache.
    assert first.parse().output_text
    assert {**hit, "usage": None} == {**whole, "usage": None} == {**streamed, "usage": None}
    assert hit["usage"]["input_tokens_details"]["cached_tokens"] == hit["usage"][
        "input_tokens"]
