"""A table of malformed and hostile requests across both APIs and all four proxied routes.

Every case must get a 4xx status with a JSON error in its API's shape (OpenAI
`{"error": {...}}`, Anthropic `{"type": "error", "error": {"type", "message"}}`), store
nothing, never reach the upstream, and leave the proxy healthy (`/health` answers 200
after every case). The run ends with a summary line: cases tried and passed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cachelayer.proxy.app import make_app
from cachelayer.proxy.store.layer import STORE
from tests.hardening.helpers import (
    BODY_LIMIT,
    SUMMARY,
    CountingUpstream,
    api_of,
    error_message,
    hardened_settings,
)
from tests.support import http
from tests.support.servers import RunningServer, serve_app
from tests.support.store_writes import wait_for_writes

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"
ROUTES = (CHAT, TEXT, MESSAGES, COUNT)

OA_MSGS = [{"role": "user", "content": "hi"}]
AN_OK: dict[str, Any] = {"model": "claude-x", "max_tokens": 16,
                         "messages": [{"role": "user", "content": "hi"}]}
TEN_MB = 10 * 1024 * 1024
# Over orjson's serialisation depth limit (254) but under its parse limit (1024): parses,
# then fails wherever the proxy re-serialises the body (keys, upstream body, estimates).
MID_DEPTH = 300


def deep_list(depth: int, leaf: Any = "x") -> Any:
    """`leaf` wrapped in `depth` lists."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def j(value: Any) -> bytes:
    """JSON bytes of a value."""
    return json.dumps(value).encode()


def openai(**fields: Any) -> bytes:
    """An OpenAI chat body: a valid one, with `fields` replacing or adding keys."""
    return j({"model": "m", "messages": OA_MSGS, **fields})


def anthropic(**fields: Any) -> bytes:
    """A Messages body: a valid one, with `fields` replacing or adding keys."""
    return j({**AN_OK, **fields})


def without(body: dict[str, Any], *names: str) -> bytes:
    """JSON bytes of body with some keys removed."""
    return j({k: v for k, v in body.items() if k not in names})


def huge_system(api: str) -> bytes:
    """A request whose system prompt alone is 10 MB, over the 4 MiB body limit."""
    system = "s" * TEN_MB
    if api == "openai":
        return j({"model": "m", "messages": [{"role": "system", "content": system}, *OA_MSGS]})
    return j({**AN_OK, "system": system})


def deeply_nested(depth: int) -> bytes:
    """depth nested arrays: `[[[...]]]`."""
    return b"[" * depth + b"]" * depth


@dataclass(frozen=True)
class Case:
    """One hostile request and the 4xx it must get."""

    name: str
    path: str
    body: bytes | Callable[[], bytes]
    status: int = 400
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"

    def raw(self) -> bytes:
        """The body bytes (large ones are built only when the case runs)."""
        return self.body() if callable(self.body) else self.body


TOOL_USE_TURNS = [
    {"role": "user", "content": "list files"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "ls",
                                       "input": {"path": "."}}]},
]
AN_TOOL = {"name": "ls", "input_schema": {"type": "object"}}

CASES: list[Case] = [
    # -- OpenAI chat --------------------------------------------------------------------
    Case("chat-invalid-json", CHAT, b"{not json"),
    Case("chat-truncated-json", CHAT, b'{"model": "m", "messages": [{"role": "us'),
    Case("chat-trailing-garbage", CHAT, openai() + b" trailing"),
    Case("chat-array-body", CHAT, b"[1, 2, 3]"),
    Case("chat-string-body", CHAT, b'"just text"'),
    Case("chat-null-body", CHAT, b"null"),
    Case("chat-number-body", CHAT, b"42"),
    Case("chat-empty-body", CHAT, b""),
    Case("chat-whitespace-body", CHAT, b"   \n\t "),
    Case("chat-model-number", CHAT, openai(model=3)),
    Case("chat-messages-missing", CHAT, j({"model": "m"})),
    Case("chat-messages-null", CHAT, openai(messages=None)),
    Case("chat-messages-empty", CHAT, openai(messages=[])),
    Case("chat-messages-string", CHAT, openai(messages="hi")),
    Case("chat-message-not-object", CHAT, openai(messages=[5])),
    Case("chat-unknown-role", CHAT, openai(messages=[{"role": "wizard", "content": "x"}])),
    Case("chat-role-missing", CHAT, openai(messages=[{"content": "x"}])),
    Case("chat-content-number", CHAT, openai(messages=[{"role": "user", "content": 5}])),
    Case("chat-content-parts-not-objects", CHAT,
         openai(messages=[{"role": "user", "content": ["a", "b"]}])),
    Case("chat-system-part-text-number", CHAT,
         openai(messages=[{"role": "system", "content": [{"type": "text", "text": 5}]},
                          *OA_MSGS])),
    Case("chat-system-part-text-null", CHAT,
         openai(messages=[{"role": "system", "content": [{"type": "text", "text": None}]},
                          *OA_MSGS])),
    Case("chat-negative-max-tokens", CHAT, openai(max_tokens=-1)),
    Case("chat-zero-max-tokens", CHAT, openai(max_tokens=0)),
    Case("chat-bool-max-tokens", CHAT, openai(max_tokens=True)),
    Case("chat-float-max-tokens", CHAT, openai(max_tokens=1.5)),
    Case("chat-huge-int-max-tokens", CHAT,
         b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], '
         b'"max_tokens": 99999999999999999999999999999}'),
    Case("chat-infinite-max-tokens", CHAT,
         b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e400}'),
    Case("chat-negative-n", CHAT, openai(n=-3)),
    Case("chat-stream-string", CHAT, openai(stream="yes")),
    Case("chat-temperature-string", CHAT, openai(temperature="hot")),
    Case("chat-temperature-nan-literal", CHAT,
         b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'),
    Case("chat-top-p-infinity-literal", CHAT,
         b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}'),
    Case("chat-tools-object", CHAT, openai(tools={"name": "ls"})),
    Case("chat-tools-not-objects", CHAT, openai(tools=["ls"])),
    Case("chat-tool-choice-number", CHAT, openai(tool_choice=7)),
    Case("chat-stop-ints", CHAT, openai(stop=[1, 2])),
    Case("chat-stream-options-string", CHAT, openai(stream_options="usage")),
    Case("chat-invalid-utf8", CHAT,
         b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe\xc3\x28"}]}'),
    Case("chat-lone-surrogate", CHAT,
         b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}'),
    Case("chat-100k-nested-arrays", CHAT, lambda: deeply_nested(100_000)),
    Case("chat-100k-nested-in-field", CHAT,
         lambda: b'{"model": "m", "messages": ' + deeply_nested(100_000) + b"}"),
    Case("chat-deep-tool-parameters", CHAT,
         openai(tools=[{"type": "function", "function": {
             "name": "f", "parameters": {"type": "object", "x": deep_list(MID_DEPTH)}}}])),
    Case("chat-deep-content-part", CHAT,
         openai(messages=[{"role": "user", "content": [
             {"type": "text", "text": "x", "extra": deep_list(MID_DEPTH)}]}])),
    Case("chat-10mb-system-prompt", CHAT, lambda: huge_system("openai"), status=413),
    Case("chat-text-plain", CHAT, openai(), status=415,
         headers={"Content-Type": "text/plain"}),
    Case("chat-form-encoded", CHAT, b"model=m&messages=hi", status=415,
         headers={"Content-Type": "application/x-www-form-urlencoded"}),
    Case("chat-bad-gzip-encoding", CHAT, b"this is not gzip",
         headers={"Content-Encoding": "gzip"}),
    Case("chat-get-method", CHAT, b"", status=405, method="GET"),
    # -- OpenAI text completions --------------------------------------------------------
    Case("text-invalid-json", TEXT, b"{'prompt': 'single quotes'}"),
    Case("text-empty-body", TEXT, b""),
    Case("text-prompt-missing", TEXT, j({"model": "m"})),
    Case("text-prompt-number", TEXT, j({"model": "m", "prompt": 12})),
    Case("text-prompt-empty-list", TEXT, j({"model": "m", "prompt": []})),
    Case("text-prompt-null", TEXT, j({"model": "m", "prompt": None})),
    Case("text-negative-max-tokens", TEXT, j({"model": "m", "prompt": "x", "max_tokens": -5})),
    Case("text-deep-prompt", TEXT, j({"model": "m", "prompt": [deep_list(MID_DEPTH)]})),
    Case("text-wrong-content-type", TEXT, j({"model": "m", "prompt": "x"}), status=415,
         headers={"Content-Type": "text/html"}),
    Case("text-10mb-prompt", TEXT, lambda: j({"model": "m", "prompt": "p" * TEN_MB}),
         status=413),
    # -- Anthropic Messages -------------------------------------------------------------
    Case("msg-invalid-json", MESSAGES, b'{"model": "claude-x",'),
    Case("msg-array-body", MESSAGES, b'[{"role": "user"}]'),
    Case("msg-empty-body", MESSAGES, b""),
    Case("msg-model-missing", MESSAGES, without(AN_OK, "model")),
    Case("msg-model-empty", MESSAGES, anthropic(model="")),
    Case("msg-model-list", MESSAGES, anthropic(model=["claude"])),
    Case("msg-max-tokens-missing", MESSAGES, without(AN_OK, "max_tokens")),
    Case("msg-negative-max-tokens", MESSAGES, anthropic(max_tokens=-100)),
    Case("msg-string-max-tokens", MESSAGES, anthropic(max_tokens="100")),
    Case("msg-infinite-max-tokens", MESSAGES,
         b'{"model": "claude-x", "max_tokens": -1e999, '
         b'"messages": [{"role": "user", "content": "hi"}]}'),
    Case("msg-messages-null", MESSAGES, anthropic(messages=None)),
    Case("msg-messages-empty", MESSAGES, anthropic(messages=[])),
    Case("msg-unknown-role", MESSAGES, anthropic(messages=[{"role": "tool", "content": "x"}])),
    Case("msg-content-number", MESSAGES, anthropic(messages=[{"role": "user", "content": 1}])),
    Case("msg-content-empty-list", MESSAGES,
         anthropic(messages=[{"role": "user", "content": []}])),
    Case("msg-block-without-type", MESSAGES,
         anthropic(messages=[{"role": "user", "content": [{"text": "x"}]}])),
    Case("msg-text-block-number", MESSAGES,
         anthropic(messages=[{"role": "user", "content": [{"type": "text", "text": 3}]}])),
    Case("msg-unsupported-block", MESSAGES,
         anthropic(messages=[{"role": "user", "content": [{"type": "audio", "data": "x"}]}])),
    Case("msg-image-bad-source", MESSAGES,
         anthropic(messages=[{"role": "user", "content": [
             {"type": "image", "source": {"type": "file", "path": "/etc/passwd"}}]}])),
    Case("msg-tool-result-without-tool-use", MESSAGES,
         anthropic(messages=[{"role": "user", "content": [
             {"type": "tool_result", "tool_use_id": "toolu_missing", "content": "ok"}]}])),
    Case("msg-tool-result-wrong-id", MESSAGES,
         anthropic(messages=[*TOOL_USE_TURNS, {"role": "user", "content": [
             {"type": "tool_result", "tool_use_id": "toolu_2", "content": "ok"}]}])),
    Case("msg-tool-use-input-string", MESSAGES,
         anthropic(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": [
             {"type": "tool_use", "id": "t", "name": "ls", "input": "{}"}]}])),
    Case("msg-tool-use-deep-input", MESSAGES,
         anthropic(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": [
             {"type": "tool_use", "id": "t", "name": "ls",
              "input": {"x": deep_list(MID_DEPTH)}}]}])),
    Case("msg-system-number", MESSAGES, anthropic(system=12)),
    Case("msg-system-image-block", MESSAGES,
         anthropic(system=[{"type": "image", "source": {"type": "url", "url": "x"}}])),
    Case("msg-tools-object", MESSAGES, anthropic(tools={"name": "ls"})),
    Case("msg-tool-without-schema", MESSAGES, anthropic(tools=[{"name": "ls"}])),
    Case("msg-tool-deep-schema", MESSAGES,
         anthropic(tools=[{"name": "ls", "input_schema": {"x": deep_list(MID_DEPTH)}}])),
    Case("msg-tool-choice-string", MESSAGES, anthropic(tools=[AN_TOOL], tool_choice="auto")),
    Case("msg-tool-choice-unknown-tool", MESSAGES,
         anthropic(tools=[AN_TOOL], tool_choice={"type": "tool", "name": "rm"})),
    Case("msg-negative-temperature", MESSAGES, anthropic(temperature=-1)),
    Case("msg-float-top-k", MESSAGES, anthropic(top_k=2.5)),
    Case("msg-stop-sequences-string", MESSAGES, anthropic(stop_sequences="END")),
    Case("msg-stream-string", MESSAGES, anthropic(stream="true")),
    Case("msg-nan-literal", MESSAGES,
         b'{"model": "claude-x", "max_tokens": 16, "temperature": NaN, '
         b'"messages": [{"role": "user", "content": "hi"}]}'),
    Case("msg-invalid-utf8", MESSAGES,
         b'{"model": "claude-x", "max_tokens": 16, '
         b'"messages": [{"role": "user", "content": "\xc0\xaf"}]}'),
    Case("msg-100k-nested-arrays", MESSAGES, lambda: deeply_nested(100_000)),
    Case("msg-10mb-system-prompt", MESSAGES, lambda: huge_system("anthropic"), status=413),
    Case("msg-text-plain", MESSAGES, anthropic(), status=415,
         headers={"Content-Type": "text/plain"}),
    Case("msg-get-method", MESSAGES, b"", status=405, method="GET"),
    # -- Anthropic count_tokens ---------------------------------------------------------
    Case("count-invalid-json", COUNT, b"{{}}"),
    Case("count-empty-body", COUNT, b""),
    Case("count-string-body", COUNT, b'"count me"'),
    Case("count-messages-missing", COUNT, j({"model": "claude-x"})),
    Case("count-model-missing", COUNT, j({"messages": AN_OK["messages"]})),
    Case("count-unknown-role", COUNT,
         j({"model": "claude-x", "messages": [{"role": "robot", "content": "x"}]})),
    Case("count-tool-result-without-tool-use", COUNT,
         j({"model": "claude-x", "messages": [{"role": "user", "content": [
             {"type": "tool_result", "tool_use_id": "nope", "content": "x"}]}]})),
    Case("count-deep-tool-schema", COUNT,
         j({"model": "claude-x", "messages": AN_OK["messages"],
            "tools": [{"name": "ls", "input_schema": {"x": deep_list(MID_DEPTH)}}]})),
    Case("count-100k-nested-arrays", COUNT, lambda: deeply_nested(100_000)),
    Case("count-10mb-system-prompt", COUNT,
         lambda: j({"model": "claude-x", "system": "s" * TEN_MB,
                    "messages": AN_OK["messages"]}), status=413),
    Case("count-text-plain", COUNT,
         j({"model": "claude-x", "messages": AN_OK["messages"]}), status=415,
         headers={"Content-Type": "text/plain"}),
]

RESULTS: dict[str, bool] = {}


@dataclass
class MatrixEnv:
    """The one proxy and upstream every case runs against."""

    proxy: RunningServer
    fake: CountingUpstream


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MatrixEnv]:
    """A proxy with a 4 MiB body limit in front of a counting upstream; prints the
    matrix summary when the module ends."""
    tmp: Path = tmp_path_factory.mktemp("matrix")
    fake = CountingUpstream()
    with serve_app(fake.make_app) as upstream:
        settings = hardened_settings(tmp, upstream=upstream.url)
        with serve_app(lambda: make_app(settings)) as proxy:
            yield MatrixEnv(proxy, fake)
    if not RESULTS:
        return
    passed = sum(RESULTS.values())
    failed = sorted(name for name, ok in RESULTS.items() if not ok)
    line = (f"bad-input matrix: {len(RESULTS)} cases tried across {len(ROUTES)} routes, "
            f"{passed} passed, {len(failed)} failed")
    SUMMARY.append(line + (f" ({', '.join(failed)})" if failed else ""))


def test_the_matrix_covers_both_apis_and_every_route() -> None:
    """At least 40 cases, every proxied route hit, every name unique."""
    assert len(CASES) >= 40
    assert {case.path for case in CASES} == set(ROUTES)
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_request_gets_4xx_in_its_api_shape_and_stores_nothing(
    env: MatrixEnv, case: Case
) -> None:
    RESULTS[case.name] = False
    store = env.proxy.app[STORE]
    entries_before, upstream_posts = len(store), env.fake.posts()
    headers = {"Content-Type": "application/json", **case.headers}
    answer = http.request(case.method, env.proxy.url + case.path, data=case.raw() or None,
                          headers=headers, timeout=30)
    assert answer.status == case.status, (
        f"{case.name}: expected {case.status}, got {answer.status}: {answer.content[:300]!r}")
    error_message(answer, api_of(case.path))
    wait_for_writes(env.proxy)
    assert len(store) == entries_before, f"{case.name}: something was stored"
    assert env.fake.posts() == upstream_posts, f"{case.name}: the upstream was called"
    assert http.get(env.proxy.url + "/health", timeout=10).status == 200
    RESULTS[case.name] = True


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_large_system_prompt_under_the_limit_is_accepted_and_stored(
    env: MatrixEnv, path: str
) -> None:
    """A 3 MB system prompt is under the 4 MiB limit: forwarded once, stored, replayed."""
    system = f"{path} " + "y" * (3 * 1024 * 1024)
    if path == CHAT:
        body = {"model": "m", "messages": [{"role": "system", "content": system}, *OA_MSGS]}
    else:
        body = {**AN_OK, "system": system}
    assert len(json.dumps(body)) < BODY_LIMIT
    posts = env.fake.completions()
    first = http.post(env.proxy.url + path, json=body, timeout=30)
    assert first.status == 200, first.content[:300]
    assert first.headers["X-Cache-Status"] == "MISS"
    wait_for_writes(env.proxy)
    again = http.post(env.proxy.url + path, json=body, timeout=30)
    assert again.status == 200 and again.headers["X-Cache-Status"] == "HIT"
    assert http.answer_of(again.content) == http.answer_of(first.content)
    assert env.fake.completions() == posts + 1
