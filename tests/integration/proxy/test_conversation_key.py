"""The conversation key clients already send keeps a conversation on one backend:
Codex's prompt_cache_key on /v1/responses, opencode's x-session-id (or
x-session-affinity) on chat completions. Its first request is placed by its prefix, so
new sessions of one agent find the shared prefix warm. It also names the client in the
ledger."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager

import pytest
from aiohttp.test_utils import make_mocked_request

from cachelayer.proxy.conversation import CONVERSATION, conversation_of
from cachelayer.proxy.identity import request_tenant
from cachelayer.proxy.prefix.ledger import LEDGER
from cachelayer.proxy.prefix.middleware import client_of
from tests.integration.conftest import ProxyFactory
from tests.support import http
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import RunningServer, serve_app


@pytest.fixture
def stoppable() -> Iterator[list[AbstractContextManager[RunningServer]]]:
    """The three backends' server contexts (a test may exit one early)."""
    contexts: list[AbstractContextManager[RunningServer]] = []
    yield contexts
    for ctx in contexts:
        with contextlib.suppress(Exception):
            ctx.__exit__(None, None, None)


@pytest.fixture
def three(stoppable: list[AbstractContextManager[RunningServer]]
          ) -> list[tuple[FakeUpstream, RunningServer]]:
    """Three scripted backends."""
    out = []
    for _ in range(3):
        fake = FakeUpstream()
        ctx = serve_app(fake.make_app)
        out.append((fake, ctx.__enter__()))
        stoppable.append(ctx)
    return out


def _served_by(backends: list[tuple[FakeUpstream, RunningServer]]) -> list[int]:
    return [len(fake.calls) for fake, _ in backends]


def test_new_sessions_of_one_agent_start_where_their_shared_prefix_is(
    three: list[tuple[FakeUpstream, RunningServer]], start_proxy: ProxyFactory
) -> None:
    with start_proxy(upstreams=tuple(s.url for _, s in three)) as proxy:
        for i in range(9):
            answer = http.post(proxy.url + "/v1/responses", json={
                "model": "m", "instructions": "The same agent prompt.", "input": f"hi {i}",
                "prompt_cache_key": f"session-{i}"})
            assert answer.status == 200, answer.content
    assert sorted(_served_by(three)) == [0, 0, 9]


def test_a_conversation_whose_backend_went_away_continues_on_another(
    three: list[tuple[FakeUpstream, RunningServer]], start_proxy: ProxyFactory,
    stoppable: list[AbstractContextManager[RunningServer]]
) -> None:
    fakes = [fake for fake, _ in three]
    with start_proxy(upstreams=tuple(s.url for _, s in three)) as proxy:
        def turn(i: int) -> None:
            answer = http.post(proxy.url + "/v1/responses", json={
                "model": "m", "instructions": f"Prompt {i}.", "input": "hi",
                "prompt_cache_key": "conversation-x"})
            assert answer.status == 200, answer.content
        turn(0)
        first = next(i for i, f in enumerate(fakes) if f.calls)
        stoppable.pop(first).__exit__(None, None, None)  # connections refused from now on
        for i in range(1, 5):
            turn(i)
    served = [len(f.calls) for f in fakes]
    assert served[first] == 1 and sum(served) == 5
    assert sorted(served)[-1] == 4  # the rest stayed together on one other backend


def test_prompt_cache_key_keeps_a_conversation_on_one_backend_whatever_its_prefix(
    three: list[tuple[FakeUpstream, RunningServer]], start_proxy: ProxyFactory
) -> None:
    with start_proxy(upstreams=tuple(s.url for _, s in three)) as proxy:
        for i in range(12):
            answer = http.post(proxy.url + "/v1/responses", json={
                "model": "m", "instructions": f"System prompt number {i}.",
                "input": f"turn {i}", "prompt_cache_key": "codex-conversation-1"})
            assert answer.status == 200, answer.content
    assert sorted(_served_by(three)) == [0, 0, 12]


def test_opencode_session_header_keeps_chat_completions_on_one_backend(
    three: list[tuple[FakeUpstream, RunningServer]], start_proxy: ProxyFactory
) -> None:
    with start_proxy(upstreams=tuple(s.url for _, s in three)) as proxy:
        for i in range(12):
            header = "x-session-id" if i % 2 else "x-session-affinity"
            answer = http.post(proxy.url + "/v1/chat/completions", json={
                "model": "m", "messages": [{"role": "system", "content": f"Prompt {i}."},
                                           {"role": "user", "content": "hi"}]},
                headers={header: "opencode-session-7"})
            assert answer.status == 200, answer.content
    assert sorted(_served_by(three)) == [0, 0, 12]


def test_the_ledger_names_the_client_by_its_conversation_within_its_tenant() -> None:
    plain = make_mocked_request("POST", "/v1/chat/completions",
                                headers={"Authorization": "Bearer k"})
    opencode = make_mocked_request("POST", "/v1/chat/completions",
                                   headers={"Authorization": "Bearer k", "x-session-id": "s1"})
    codex = make_mocked_request("POST", "/v1/responses", headers={"Authorization": "Bearer k"})
    codex[CONVERSATION] = "conv-9"
    assert conversation_of(plain) is None and conversation_of(opencode) == "s1"
    tenant = request_tenant(plain.headers)  # the edge names it once per request
    assert client_of(plain, tenant).startswith("t-")
    assert client_of(opencode, tenant) == client_of(plain, tenant).join(["c:", ":s1"])
    assert client_of(codex, tenant).endswith(":conv-9")


def _miss_reasons(proxy: RunningServer) -> dict[str, int]:
    totals = proxy.call(lambda: proxy.app[LEDGER].totals())
    assert isinstance(totals, dict)
    return {k.removeprefix("prefix.miss."): v for k, v in totals.items()
            if k.startswith("prefix.miss.")}


@pytest.mark.parametrize("with_sessions", [True, False])
def test_a_second_session_on_one_key_is_a_new_session_not_a_changed_system(
    proxy: RunningServer, with_sessions: bool
) -> None:
    """opencode: two sessions (or a title request and the main prompt) on one API key."""
    for session, system in (("s-title", "Write a title."), ("s-main", "You are opencode.")):
        headers = {"x-session-id": session} if with_sessions else {}
        answer = http.post(proxy.url + "/v1/chat/completions", headers=headers, json={
            "model": "m", "messages": [{"role": "system", "content": system},
                                       {"role": "user", "content": "hi"}]})
        assert answer.status == 200
    reasons = _miss_reasons(proxy)
    if with_sessions:
        assert reasons == {"new_session": 2}
    else:  # what every header-less client got before: compared with the other session
        assert reasons == {"new_session": 1, "system_changed": 1}
