"""The response store through the real openai SDK: hits, misses, replay as either shape."""

from __future__ import annotations

import openai
import pytest

from tests.integration.conftest import ProxyFactory
from tests.support import http as httpx
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import RunningServer
from tests.support.store_writes import wait_for_writes

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}]


def _client(proxy: RunningServer, key: str = "k1") -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)


def test_repeated_request_is_a_hit_with_the_same_answer_and_its_whole_prompt_cached(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer]
) -> None:
    fake, _ = upstream
    body = {"model": "m", "messages": MESSAGES, "temperature": 0}
    first = httpx.post(proxy.url + "/v1/chat/completions", json=body)
    second = httpx.post(proxy.url + "/v1/chat/completions", json=body)
    assert first.headers["X-Cache-Status"] == "MISS"
    assert second.headers["X-Cache-Status"] == "HIT"
    assert "Age" in second.headers
    miss, hit = first.json(), second.json()
    # Everything but the usage is the same; the usage says what the replay computed.
    assert {**miss, "usage": None} == {**hit, "usage": None}
    assert miss["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert hit["usage"]["prompt_tokens_details"] == {"cached_tokens": 42}
    assert len(fake.calls) == 1


def test_streamed_miss_serves_a_later_non_streamed_repeat(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer]
) -> None:
    fake, _ = upstream
    client = _client(proxy)
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    again = client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
    assert again.headers["X-Cache-Status"] == "HIT"
    assert again.parse().choices[0].message.content == streamed
    assert len(fake.calls) == 1


def test_non_streamed_miss_replays_as_sse_with_usage_when_asked(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer]
) -> None:
    client = _client(proxy)
    long = [{"role": "user", "content": "tell me a long story about caches " * 4}]
    full = client.chat.completions.create(model="m", messages=long)
    chunks = list(client.chat.completions.create(
        model="m", messages=long, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert len([c for c in chunks if c.choices]) > 2  # replayed as real chunks, not one lump
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 42
    assert len(upstream[0].calls) == 1


def test_stream_without_include_usage_carries_no_usage_chunk(proxy: RunningServer) -> None:
    client = _client(proxy)
    for _ in range(2):  # miss, then hit
        chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
        assert all(c.usage is None for c in chunks)


def test_different_credentials_never_share_an_answer(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer]
) -> None:
    _client(proxy, "alice").chat.completions.create(model="m", messages=MESSAGES)
    raw = _client(proxy, "bob").chat.completions.with_raw_response.create(
        model="m", messages=MESSAGES)
    assert raw.headers["X-Cache-Status"] == "MISS"
    assert len(upstream[0].calls) == 2


@pytest.mark.parametrize(
    ("header", "statuses", "upstream_calls"),
    [
        ("no-store", ["BYPASS", "BYPASS", "MISS"], 3),
        ("no-cache", ["BYPASS", "BYPASS", "HIT"], 2),
    ],
)
def test_no_store_skips_lookup_and_store_and_no_cache_skips_lookup_only(
    proxy: RunningServer,
    upstream: tuple[FakeUpstream, RunningServer],
    header: str,
    statuses: list[str],
    upstream_calls: int,
) -> None:
    body = {"model": "m", "messages": MESSAGES}
    seen = []
    for hdrs in ({"Cache-Control": header}, {"Cache-Control": header}, {}):
        response = httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=hdrs)
        seen.append(response.headers["X-Cache-Status"])
        wait_for_writes(proxy)
    assert seen == statuses
    assert len(upstream[0].calls) == upstream_calls


def test_max_age_zero_treats_an_old_entry_as_expired(proxy: RunningServer) -> None:
    body = {"model": "m", "messages": MESSAGES}
    httpx.post(proxy.url + "/v1/chat/completions", json=body)
    wait_for_writes(proxy)
    # Any age is over max-age=0: the entry is milliseconds old by now, no need to wait.
    late = httpx.post(proxy.url + "/v1/chat/completions", json=body,
                      headers={"Cache-Control": "max-age=0"})
    assert late.headers["X-Cache-Status"] == "EXPIRED"


def test_text_completions_are_cached_too(proxy: RunningServer) -> None:
    client = _client(proxy)
    first = client.completions.with_raw_response.create(model="m", prompt="once upon")
    second = client.completions.with_raw_response.create(model="m", prompt="once upon")
    assert (first.headers["X-Cache-Status"], second.headers["X-Cache-Status"]) == ("MISS", "HIT")
    assert first.parse().choices[0].text == second.parse().choices[0].text


def test_model_map_renames_the_model_sent_upstream(
    upstream: tuple[FakeUpstream, RunningServer], start_proxy: ProxyFactory
) -> None:
    fake, server = upstream
    with start_proxy(upstream=server.url, model_map={"gpt-4o": "local/qwen"}) as proxy:
        _client(proxy).chat.completions.create(model="gpt-4o", messages=MESSAGES)
        _client(proxy).chat.completions.create(model="other", messages=MESSAGES)
    assert [call["model"] for call in fake.calls] == ["local/qwen", "other"]


@pytest.mark.parametrize(("max_pending", "waits"), [(0, 3), (64, 0)])
def test_a_full_write_queue_makes_the_request_wait_for_its_own_write(
    start_proxy: ProxyFactory, upstream: tuple[FakeUpstream, RunningServer],
    max_pending: int, waits: int,
) -> None:
    from cachelayer.proxy.prefix.ledger import LEDGER
    from cachelayer.proxy.store.layer import STORE

    with start_proxy(upstream=upstream[1].url, max_pending_writes=max_pending) as proxy:
        for n in range(3):
            body = {"model": "m", "messages": [{"role": "user", "content": f"q{n}"}]}
            answer = httpx.post(proxy.url + "/v1/chat/completions", json=body)
            assert answer.headers["X-Cache-Status"] == "MISS"
            if waits:  # the answer left only once it was on disk
                assert len(proxy.app[STORE]) == n + 1
        wait_for_writes(proxy)
        assert len(proxy.app[STORE]) == 3
        totals = proxy.app[LEDGER].totals()
        assert totals.get("response.write_waits", 0) == waits
        assert totals["response.stored"] == 3
