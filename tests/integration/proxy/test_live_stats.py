"""`cachelayer stats` right after a request: read live from the proxy, one set of figures."""

from __future__ import annotations

import re

import pytest

from cachelayer.cli.main import main
from tests.support import http
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.servers import RunningServer

BODY = {"model": "m", "messages": [{"role": "user", "content": "count me"}]}


def _row(text: str, label: str) -> list[str]:
    for line in text.splitlines():
        if line.strip().startswith(label):
            return line[44:].split()
    raise AssertionError(f"{label!r} not in:\n{text}")


def test_stats_right_after_a_request_shows_it_live(
    proxy: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    http.post(proxy.url + "/v1/chat/completions", json=BODY)
    assert main(["stats", "--url", proxy.url]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"cachelayer stats (live from {proxy.url})"
    assert _row(out, "answered")[0] == "1"
    assert _row(out, "sent by clients")[0] == "42"
    assert _row(out, "answered by the backend")[0] == "1"


def test_stats_sessions_lists_each_conversation_with_turns_and_reuse(
    proxy: RunningServer, upstream: tuple[FakeUpstream, RunningServer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake, _ = upstream
    fake.script = lambda body: Reply(prompt_tokens=1000, cached_tokens=900 if len(
        body["messages"]) > 1 else 0)
    session = {"X-Claude-Code-Session-Id": "conv-alpha"}
    http.post(proxy.url + "/v1/chat/completions", json=BODY, headers=session)
    two_turns = {"model": "m", "messages": [*BODY["messages"],  # type: ignore[list-item]
                                            {"role": "assistant", "content": "ok"},
                                            {"role": "user", "content": "again"}]}
    http.post(proxy.url + "/v1/chat/completions", json=two_turns, headers=session)
    http.post(proxy.url + "/v1/chat/completions", json={**BODY, "max_tokens": 3},
              headers={"X-Claude-Code-Session-Id": "conv-beta"})
    assert main(["stats", "--sessions", "--url", proxy.url]) == 0
    out = capsys.readouterr().out
    alpha = next(line for line in out.splitlines() if "conv-alpha" in line)
    beta = next(line for line in out.splitlines() if "conv-beta" in line)
    assert re.search(r"conv-alpha\s+claude-code\s+2\s+2000\s+900\s+45\.0%", alpha), alpha
    assert re.search(r"conv-beta\s+claude-code\s+1\s+1000\s+0\s+0\.0%", beta), beta
    # most recent first
    assert out.index("conv-beta") < out.index("conv-alpha")
