"""Keep-alives while the upstream is silent: before its headers, and ending in an error.

A scripted upstream stands in for a backend whose generation thread is busy (it answers
nothing for a while) and for upstream failures; the real-backend prefill is in
tests/integration/stack/test_prefill_progress.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anthropic
import openai
import pytest

from cachelayer.proxy.store.layer import STORE
from tests.integration.conftest import ProxyFactory
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.recording import RecordingTransport, keepalives
from tests.support.servers import RunningServer

MESSAGES = [{"role": "user", "content": "hello"}]


@contextlib.contextmanager
def _late_upstream(
    upstream: tuple[FakeUpstream, RunningServer], start_proxy: ProxyFactory, reply: Reply
) -> Iterator[tuple[RunningServer, RecordingTransport]]:
    """A proxy (a keep-alive every 0.2 s) in front of an upstream that gives every request
    `reply`, and a transport that records when each byte reached the client."""
    fake, server = upstream
    fake.script = lambda body: reply
    with start_proxy(upstream=server.url, keepalive_interval_s=0.2) as proxy:
        yield proxy, RecordingTransport()


def test_an_openai_stream_hears_keepalives_while_the_upstream_is_silent(
    upstream: tuple[FakeUpstream, RunningServer], start_proxy: ProxyFactory
) -> None:
    late = Reply(text="Hello there.", headers_delay_s=1.5)
    with _late_upstream(upstream, start_proxy, late) as (proxy, recorder):
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0,
                               http_client=recorder.client())
        chunks = list(client.chat.completions.create(model="m", messages=MESSAGES,  # type: ignore[arg-type]
                                                     stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there."
    waiting = recorder.before(b"data:")
    assert len(keepalives(waiting)) >= 3  # 1.5 s of silence upstream, one every 0.2 s
    assert recorder.chunks[0][0] - (recorder.sent_at or 0) < 1.2  # the first within ~1 s


def test_an_anthropic_stream_hears_comments_not_pings_before_message_start(
    upstream: tuple[FakeUpstream, RunningServer], start_proxy: ProxyFactory
) -> None:
    late = Reply(text="Hello there.", headers_delay_s=1.5)
    with _late_upstream(upstream, start_proxy, late) as (proxy, recorder):
        client = anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0,
                                     http_client=recorder.client())
        with client.messages.stream(model="claude-x", max_tokens=16,
                                    messages=MESSAGES) as stream:  # type: ignore[arg-type]
            message = stream.get_final_message()
    assert message.content[0].type == "text" and message.content[0].text == "Hello there."
    waiting = recorder.before(b"event: message_start")
    assert len(keepalives(waiting)) >= 3
    assert b"event: ping" not in waiting


def test_an_upstream_failing_after_keepalives_ends_the_stream_with_an_error_event(
    upstream: tuple[FakeUpstream, RunningServer], start_proxy: ProxyFactory
) -> None:
    late = Reply(status=503, headers_delay_s=1.0)
    with _late_upstream(upstream, start_proxy, late) as (proxy, recorder):
        client = anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0,
                                     http_client=recorder.client())
        with (pytest.raises(anthropic.APIStatusError, match="scripted failure"),
              client.messages.stream(model="claude-x", max_tokens=16,
                                     messages=MESSAGES) as stream):  # type: ignore[arg-type]
            stream.get_final_message()
        assert len(proxy.app[STORE]) == 0
        # The proxy still serves: the next request (a quick upstream) is answered.
        upstream[0].script = lambda body: Reply(text="fine")
        again = client.messages.create(model="claude-x", max_tokens=16,
                                       messages=MESSAGES)  # type: ignore[arg-type]
        assert again.content[0].text == "fine"  # type: ignore[union-attr]
    assert keepalives(recorder.body())


def test_a_quick_upstream_error_keeps_its_status(
    upstream: tuple[FakeUpstream, RunningServer], start_proxy: ProxyFactory
) -> None:
    fake, server = upstream
    fake.script = lambda body: Reply(status=404)
    with start_proxy(upstream=server.url, keepalive_interval_s=0.2) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="m", messages=MESSAGES,  # type: ignore[arg-type]
                                           stream=True)


def test_a_responses_stream_is_created_at_the_first_keepalive_and_hears_in_progress_events(
    upstream: tuple[FakeUpstream, RunningServer], start_proxy: ProxyFactory
) -> None:
    # Codex resets its idle timer on events only: a silent prefill must still send some.
    late = Reply(text="Hello there.", headers_delay_s=1.5)
    with _late_upstream(upstream, start_proxy, late) as (proxy, recorder):
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0,
                               http_client=recorder.client())
        events = list(client.responses.create(model="m", input="hello", stream=True))
        created = events[0]
        assert created.type == "response.created"
        assert events[-1].type == "response.completed"
        waiting = recorder.before(b"event: response.output_item.added")
        assert waiting.count(b"event: response.in_progress") >= 3  # 1.5 s, one per 0.2 s
        assert recorder.chunks[0][0] - (recorder.sent_at or 0) < 1.2  # the first within ~1 s
        # The id the client saw first is the response's id everywhere after.
        rid = created.response.id
        assert events[-1].response.id == rid
        assert client.responses.retrieve(rid).output_text == "Hello there."
        # The chained turn is about the id, not keep-alives: its upstream answers at once.
        upstream[0].script = lambda body: Reply(text="Hello there.")
        chained = client.responses.create(model="m", input="and again?",
                                          previous_response_id=rid)
    assert chained.output_text == "Hello there."
    sent = upstream[0].calls[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]

