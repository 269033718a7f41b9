"""Hostile requests to POST /v1/responses (and its GET/DELETE): every one gets a 4xx in
OpenAI's error shape naming what is wrong, nothing is stored (answers nor response
state), the upstream is never called, and the proxy keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cachelayer.proxy.app import make_app
from cachelayer.proxy.responses.middleware import RESPONSE_STATES
from cachelayer.proxy.store.layer import STORE
from tests.hardening.helpers import (
    CountingUpstream,
    error_message,
    hardened_settings,
)
from tests.support import http
from tests.support.servers import RunningServer, serve_app
from tests.support.store_writes import wait_for_writes
from tests.support.wait import wait_until

PATH = "/v1/responses"
TEN_MB = 10 * 1024 * 1024
FN_TOOL = {"type": "function", "name": "ls", "parameters": {"type": "object"}}


def body(**fields: Any) -> bytes:
    """A valid Responses body with `fields` replacing or adding keys."""
    return json.dumps({"model": "m", "input": "hi", **fields}).encode()


def items(*entries: Any) -> bytes:
    """A body whose input is these items."""
    return body(input=list(entries))


def user(text: str) -> dict[str, Any]:
    """A user message item."""
    return {"type": "message", "role": "user", "content": [{"type": "input_text",
                                                             "text": text}]}


@dataclass(frozen=True)
class Case:
    """One hostile request, the status it must get and the field the error names."""

    name: str
    raw: bytes
    status: int = 400
    param: str | None = None


CASES = [
    Case("invalid-json", b'{"model": "m", "input": '),
    Case("array-body", b"[1]"),
    Case("model-missing", json.dumps({"input": "hi"}).encode(), param="model"),
    Case("model-number", body(model=5), param="model"),
    Case("input-missing", json.dumps({"model": "m"}).encode(), param="input"),
    Case("input-number", body(input=42), param="input"),
    Case("input-empty-list", body(input=[]), param="input"),
    Case("input-item-not-object", items("hello"), param="input[0]"),
    Case("input-item-type-number", items({"type": 3}), param="input[0].type"),
    Case("input-unknown-item-type", items({"type": "computer_call", "id": "x"}),
         param="input[0].type"),
    Case("input-item-reference", items({"type": "item_reference", "id": "msg_1"}),
         param="input[0].type"),
    Case("message-unknown-role", items({"type": "message", "role": "wizard",
                                        "content": "x"}), param="input[0].role"),
    Case("message-content-number", items({"type": "message", "role": "user", "content": 7}),
         param="input[0].content"),
    Case("message-part-unknown", items({"type": "message", "role": "user", "content": [
        {"type": "input_audio", "data": "x"}]}), param="input[0].content[0].type"),
    Case("message-part-text-number", items({"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": 5}]}), param="input[0].content[0].text"),
    Case("image-file-id", items({"type": "message", "role": "user", "content": [
        {"type": "input_image", "file_id": "file_1"}]}),
         param="input[0].content[0].image_url"),
    Case("orphan-function-call-output",
         items(user("x"), {"type": "function_call_output", "call_id": "call_nope",
                           "output": "ok"}), param="input[1].call_id"),
    Case("function-call-without-call-id",
         items(user("x"), {"type": "function_call", "name": "ls", "arguments": "{}"}),
         param="input[1].call_id"),
    Case("function-call-arguments-object",
         items(user("x"), {"type": "function_call", "call_id": "c", "name": "ls",
                           "arguments": {}}), param="input[1].arguments"),
    Case("tools-object", body(tools={"type": "function"}), param="tools"),
    Case("tool-without-name", body(tools=[{"type": "function"}]), param="tools[0].name"),
    Case("tool-parameters-string", body(tools=[{**FN_TOOL, "parameters": "x"}]),
         param="tools[0].parameters"),
    Case("tool-choice-unknown", body(tool_choice="sometimes"), param="tool_choice"),
    Case("tool-choice-hosted", body(tools=[FN_TOOL], tool_choice={"type": "web_search"}),
         param="tool_choice"),
    Case("tool-choice-missing-function", body(tools=[FN_TOOL], tool_choice={
        "type": "function", "name": "rm"}), param="tool_choice.name"),
    Case("stream-string", body(stream="yes"), param="stream"),
    Case("store-string", body(store="no"), param="store"),
    Case("max-output-tokens-zero", body(max_output_tokens=0), param="max_output_tokens"),
    Case("temperature-string", body(temperature="hot"), param="temperature"),
    Case("text-format-unknown", body(text={"format": {"type": "yaml"}}),
         param="text.format.type"),
    Case("json-schema-without-schema", body(text={"format": {"type": "json_schema",
                                                             "name": "x"}}),
         param="text.format.schema"),
    Case("background-true", body(background=True), param="background"),
    Case("conversation-object", body(conversation={"id": "conv_1"}), param="conversation"),
    Case("prompt-template", body(prompt={"id": "pmpt_1"}), param="prompt"),
    Case("previous-response-id-number", body(previous_response_id=7),
         param="previous_response_id"),
    Case("previous-response-id-unknown", body(previous_response_id="resp_nope"),
         status=404, param="previous_response_id"),
    Case("metadata-list", body(metadata=["x"]), param="metadata"),
    Case("deep-nesting", b"[" * 100_000 + b"]" * 100_000),
    Case("ten-megabyte-input", body(input="x" * TEN_MB), status=413),
]


@dataclass
class Env:
    """The proxy and upstream every case runs against."""

    proxy: RunningServer
    fake: CountingUpstream
    data_dir: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A proxy with a 4 MiB body limit in front of a counting upstream."""
    tmp: Path = tmp_path_factory.mktemp("responses-hardening")
    fake = CountingUpstream()
    with serve_app(fake.make_app) as upstream:
        settings = hardened_settings(tmp, upstream=upstream.url)
        with serve_app(lambda: make_app(settings)) as proxy:
            yield Env(proxy, fake, settings.data_dir)


def _state_size(env: Env) -> int:
    return len(env.proxy.app[RESPONSE_STATES])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_responses_request_gets_4xx_in_openai_shape_and_stores_nothing(
    env: Env, case: Case
) -> None:
    store = env.proxy.app[STORE]
    entries, states, posts = len(store), _state_size(env), env.fake.posts()
    answer = http.request("POST", env.proxy.url + PATH, data=case.raw, timeout=30)
    assert answer.status == case.status, answer.content[:300]
    error_message(answer, "openai")
    if case.param is not None:
        assert answer.json()["error"]["param"] == case.param
    wait_for_writes(env.proxy)
    assert len(store) == entries and _state_size(env) == states
    assert env.fake.posts() == posts
    assert http.get(env.proxy.url + "/health", timeout=10).status == 200


def test_another_tenants_response_cannot_be_read_chained_or_deleted(env: Env) -> None:
    alice = {"Authorization": "Bearer alice-key"}
    mallory = {"Authorization": "Bearer mallory-key"}
    made = http.request("POST", env.proxy.url + PATH, data=body(input="alice's secret"),
                        headers=alice)
    assert made.status == 200, made.content
    ident = made.json()["id"]
    posts, states = env.fake.posts(), _state_size(env)
    chained = http.request("POST", env.proxy.url + PATH, headers=mallory,
                           data=body(input="and?", previous_response_id=ident))
    read = http.request("GET", env.proxy.url + f"{PATH}/{ident}", headers=mallory)
    deleted = http.request("DELETE", env.proxy.url + f"{PATH}/{ident}", headers=mallory)
    for answer in (chained, read, deleted):
        assert answer.status == 404
        assert "alice's secret" not in error_message(answer, "openai")
    assert env.fake.posts() == posts and _state_size(env) == states
    mine = http.request("GET", env.proxy.url + f"{PATH}/{ident}", headers=alice)
    assert mine.status == 200 and mine.json()["id"] == ident


def test_a_large_valid_input_under_the_limit_is_answered(env: Env) -> None:
    many = [user(f"line {i}") for i in range(20_000)]
    answer = http.request("POST", env.proxy.url + PATH, data=items(*many), timeout=60)
    assert answer.status == 200, answer.content[:300]
    assert answer.json()["status"] == "completed"


def test_stored_responses_are_owner_only_and_never_hold_the_credential(env: Env) -> None:
    secret = "sk-responses-secret-4242"
    made = http.request("POST", env.proxy.url + PATH, data=body(input="keep me"),
                        headers={"Authorization": f"Bearer {secret}"})
    assert made.status == 200, made.content
    state = env.data_dir / "response-state"
    states = env.proxy.app[RESPONSE_STATES]
    wait_until(lambda: len(states) > 0 and states.pending() == 0,
               "the response state to be on disk")
    assert state.stat().st_mode & 0o777 == 0o700
    for path in state.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
