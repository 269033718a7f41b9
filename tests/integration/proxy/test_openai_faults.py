"""Bad input and upstream faults on the OpenAI routes: clear errors, nothing stored."""

from __future__ import annotations

import contextlib

import openai
import pytest

from cachelayer.proxy.store.layer import STORE
from tests.integration.conftest import ProxyFactory
from tests.support import http
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.servers import RunningServer, free_port

CHAT = "/v1/chat/completions"
GOOD = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _assert_openai_error(answer: http.Answer, status: int) -> str:
    assert answer.status == status
    body = answer.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str)
    return str(body["error"]["message"])


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"text"', "JSON object"),
        (b"", "empty"),
        (b'{"model": 3, "messages": []}', "'model' must be a string"),
        (b'{"messages": "hi"}', "'messages'"),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', "role"),
        (b'{"messages": [{"role": "user", "content": 5}]}', "content"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
         "temperature"),
        (b'{"messages": [{"role": "user", "content": "x"}], "tools": {}}', "tools"),
        (b"\xff\xfe{}", "not valid JSON"),
    ],
)
def test_malformed_chat_requests_get_400_in_openai_shape(
    proxy: RunningServer, raw: bytes, fragment: str
) -> None:
    answer = http.request("POST", proxy.url + CHAT, data=raw)
    assert fragment in _assert_openai_error(answer, 400)
    assert len(proxy.app[STORE]) == 0
    assert http.get(proxy.url + "/health").status == 200


def test_wrong_content_type_gets_415(proxy: RunningServer) -> None:
    answer = http.request("POST", proxy.url + CHAT, data=b"a=b",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    _assert_openai_error(answer, 415)


def test_body_over_the_limit_gets_413(
    upstream: tuple[FakeUpstream, RunningServer], start_proxy: ProxyFactory
) -> None:
    with start_proxy(upstream=upstream[1].url, max_body_bytes=1024) as proxy:
        big = {**GOOD, "messages": [{"role": "user", "content": "x" * 4096}]}
        assert "limit" in _assert_openai_error(http.post(proxy.url + CHAT, json=big), 413)
        assert http.post(proxy.url + CHAT, json=GOOD).status == 200


def test_unreachable_upstream_gets_502_naming_it(start_proxy: ProxyFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with start_proxy(upstream=dead) as proxy:
        message = _assert_openai_error(http.post(proxy.url + CHAT, json=GOOD), 502)
        assert dead in message
        health = http.get(proxy.url + "/health").json()
        assert health["upstream"]["ok"] is False


def test_hung_upstream_gets_504(
    upstream: tuple[FakeUpstream, RunningServer], start_proxy: ProxyFactory
) -> None:
    fake, server = upstream
    fake.script = lambda body: Reply(hang=True)
    with start_proxy(upstream=server.url, read_timeout_s=0.5) as proxy:
        _assert_openai_error(http.post(proxy.url + CHAT, json=GOOD), 504)
        assert len(proxy.app[STORE]) == 0


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        (Reply(status=500), 500),
        (Reply(status=404), 404),
        (Reply(raw_body=b"<html>oops</html>", content_type="text/html"), 502),
        (Reply(raw_body=b'{"choices": "nope"}'), 502),
    ],
)
def test_upstream_failures_are_passed_on_and_not_stored(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer], reply: Reply,
    status: int
) -> None:
    fake, _ = upstream
    fake.script = lambda body: reply
    for _ in range(2):
        answer = http.post(proxy.url + CHAT, json=GOOD)
        _assert_openai_error(answer, status)
    assert len(fake.calls) == 2  # the failure was not stored and replayed


@pytest.mark.parametrize(
    "reply",
    [
        Reply(cut_after=2, text="one two three four"),
        Reply(finish_reason="length", text="cut short"),
        Reply(text=""),
    ],
    ids=["cut-stream", "length", "empty"],
)
def test_incomplete_streams_are_never_stored(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer], reply: Reply
) -> None:
    fake, _ = upstream
    fake.script = lambda body: reply
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
    for _ in range(2):
        with contextlib.suppress(openai.APIError):
            list(client.chat.completions.create(model="m", messages=GOOD["messages"],
                                                stream=True))
    assert len(fake.calls) == 2
    assert len(proxy.app[STORE]) == 0


def test_cut_stream_ends_with_an_error_event(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer]
) -> None:
    upstream[0].script = lambda body: Reply(cut_after=2, text="one two three four")
    answer = http.post(proxy.url + CHAT, json={**GOOD, "stream": True})
    assert answer.status == 200
    assert b"data: [DONE]" not in answer.content
    assert b'"error"' in answer.content and b"before [DONE]" in answer.content


def test_tool_calls_stream_through_and_replay(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer]
) -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "ls", "arguments": '{"path": "."}'}}
    upstream[0].script = lambda body: Reply(text="", tool_calls=[call],
                                            finish_reason="tool_calls")
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
    streamed = list(client.chat.completions.create(model="m", messages=GOOD["messages"],
                                                   stream=True))
    deltas = [c.choices[0].delta.tool_calls for c in streamed if c.choices
              and c.choices[0].delta.tool_calls]
    assert deltas and deltas[0][0].function.name == "ls"
    replayed = client.chat.completions.create(model="m", messages=GOOD["messages"])
    assert replayed.choices[0].finish_reason == "tool_calls"
    assert replayed.choices[0].message.tool_calls[0].function.arguments == '{"path": "."}'
    assert len(upstream[0].calls) == 1


def test_v1_models_answers_with_the_upstreams_model_list(proxy: RunningServer) -> None:
    answer = http.get(proxy.url + "/v1/models")
    assert answer.status == 200 and answer.json()["data"][0]["id"] == "fake-model"


def test_unknown_route_gets_404_in_openai_shape(proxy: RunningServer) -> None:
    _assert_openai_error(http.get(proxy.url + "/v1/nothing"), 404)


def test_stream_over_the_entry_cap_is_relayed_whole_but_not_stored(
    upstream: tuple[FakeUpstream, RunningServer], start_proxy: ProxyFactory
) -> None:
    fake, server = upstream
    text = " ".join(["long"] * 400)
    fake.script = lambda body: Reply(text=text)
    with start_proxy(upstream=server.url, entry_max_bytes=256) as proxy:
        for _ in range(2):
            answer = http.post(proxy.url + CHAT, json={**GOOD, "stream": True})
            assert http.sse_text(answer.content) == text
            assert answer.headers["X-Cache-Status"] == "MISS"
        assert len(proxy.app[STORE]) == 0
    assert len(fake.calls) == 2


def _expect_exchange(url: str, path: str, length: int, body: bytes | None) -> bytes:
    """Send headers with `Expect: 100-continue`; if told to continue, send `body`; return
    everything the proxy wrote back."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n".encode())
        received = sock.recv(65536)
        if received.startswith(b"HTTP/1.1 100") and body is not None:
            sock.sendall(body)
            while b"HTTP/1.1 200" not in received and (more := sock.recv(65536)):
                received += more
        return received


@pytest.mark.parametrize(("path", "shape"), [(CHAT, "error"), ("/v1/messages", "type")])
def test_expect_continue_with_a_huge_content_length_gets_413_before_the_body(
    proxy: RunningServer, path: str, shape: str
) -> None:
    received = _expect_exchange(proxy.url, path, 10**12, None)
    assert received.startswith(b"HTTP/1.1 413"), received[:200]
    assert b"100 Continue" not in received
    assert f'"{shape}"'.encode() in received and b"max-body-size" in received
    assert http.get(proxy.url + "/health").status == 200


def test_expect_continue_within_the_limit_continues(proxy: RunningServer) -> None:
    import json

    body = json.dumps(GOOD).encode()
    received = _expect_exchange(proxy.url, CHAT, len(body), body)
    assert received.startswith(b"HTTP/1.1 100 Continue"), received[:200]
    assert b"HTTP/1.1 200 OK" in received
