"""message_start carries the real prompt usage, read through the anthropic SDK's raw events.

The scripted upstream reports its usage early the way `cachelayer backend` does (one
`: cachelayer-usage` SSE comment before the first chunk); the full-stack tests check the
same on the real backend.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai

from tests.integration.conftest import ProxyFactory
from tests.support import http
from tests.support.anthropic_usage import INPUT_FIELDS, stream_usages
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.servers import RunningServer, serve_app
from tests.support.store_writes import wait_for_writes


def _partial_reuse(body: dict[str, Any]) -> Reply:
    return Reply(text="An answer in a few words.", prompt_tokens=1335, cached_tokens=1200,
                 completion_tokens=6, early_usage=True)


def _raw_usages(client: anthropic.Anthropic, content: str) -> tuple[Any, Any, str]:
    """(message_start usage, message_delta usage, X-Cache-Status) of one streamed turn."""
    return stream_usages(client, model="claude-x", max_tokens=64,
                         messages=[{"role": "user", "content": content}])


def test_message_start_equals_the_final_input_usage_on_a_miss_with_partial_reuse_and_a_hit(
    start_proxy: ProxyFactory,
) -> None:
    with serve_app(FakeUpstream(_partial_reuse).make_app) as upstream, \
            start_proxy(upstream=upstream.url) as proxy:
        client = anthropic.Anthropic(base_url=proxy.url, api_key="k1", max_retries=0)
        start, delta, status = _raw_usages(client, "hello")
        assert status == "MISS"
        assert (start.input_tokens, start.cache_creation_input_tokens,
                start.cache_read_input_tokens) == (0, 135, 1200)
        for name in INPUT_FIELDS:
            assert getattr(start, name) == getattr(delta, name), name
        assert delta.output_tokens == 6
        wait_for_writes(proxy)
        start, delta, status = _raw_usages(client, "hello")
        assert status == "HIT"
        assert (start.input_tokens, start.cache_creation_input_tokens,
                start.cache_read_input_tokens) == (0, 0, 1335)
        for name in INPUT_FIELDS:
            assert getattr(start, name) == getattr(delta, name), name


def _hit(proxy: RunningServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    first = http.post(proxy.url + path, json=body)
    assert first.headers["X-Cache-Status"] == "MISS"
    wait_for_writes(proxy)
    again = http.post(proxy.url + path, json=body)
    assert again.headers["X-Cache-Status"] == "HIT"
    usage: dict[str, Any] = again.json()["usage"]
    return usage


def test_a_store_hit_reports_all_input_read_and_nothing_created_in_every_api(
    upstream: tuple[FakeUpstream, RunningServer], start_proxy: ProxyFactory,
) -> None:
    fake, server = upstream
    fake.script = lambda body: Reply(prompt_tokens=42, cached_tokens=10)
    with start_proxy(upstream=server.url) as proxy:
        chat = _hit(proxy, "/v1/chat/completions",
                    {"model": "m", "messages": [{"role": "user", "content": "a"}]})
        assert chat["prompt_tokens_details"] == {"cached_tokens": 42}
        text = _hit(proxy, "/v1/completions", {"model": "m", "prompt": "b"})
        assert text["prompt_tokens_details"] == {"cached_tokens": 42}
        messages = _hit(proxy, "/v1/messages", {"model": "m", "max_tokens": 8,
                                                "messages": [{"role": "user", "content": "c"}]})
        assert messages["cache_read_input_tokens"] == 42
        assert messages["cache_creation_input_tokens"] == 0 == messages["input_tokens"]
        responses = _hit(proxy, "/v1/responses", {"model": "m", "input": "d", "store": False})
        assert responses["input_tokens"] == 42
        assert responses["input_tokens_details"] == {"cached_tokens": 42}


def test_an_openai_sdk_stream_hit_reports_its_whole_prompt_as_cached(
    upstream: tuple[FakeUpstream, RunningServer], start_proxy: ProxyFactory,
) -> None:
    fake, server = upstream
    fake.script = lambda body: Reply(prompt_tokens=42, cached_tokens=10, early_usage=True)
    with start_proxy(upstream=server.url) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k1", max_retries=0)

        def cached() -> int | None:
            stream = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "s"}], stream=True,
                stream_options={"include_usage": True})
            usage = [c.usage for c in stream if c.usage is not None][-1]
            details = usage.prompt_tokens_details
            return details.cached_tokens if details else None

        assert cached() == 10
        wait_for_writes(proxy)
        assert cached() == 42

