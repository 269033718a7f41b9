"""The tool loop with the real Codex CLI: a scripted chat-completions upstream (no
/v1/responses, like stock mlx_lm.server) answers with a streamed exec_command call,
Codex runs the command, its output comes back through cachelayer as a
function_call_output, and the final answer arrives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.claude_cli import stats
from tests.e2e.codex_cli import codex, require_codex
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.proxy_process import running_proxy
from tests.support.servers import serve_app

pytestmark = pytest.mark.slow


def script(body: dict[str, Any]) -> Reply:
    """First: call exec_command; once its output is back: an answer quoting it."""
    last = body["messages"][-1]
    if last["role"] == "tool":
        seen = "marker-42" in str(last["content"])
        return Reply(text=f"The command ran (marker seen: {'yes' if seen else 'no'}).")
    if "again" in str(last["content"]):
        return Reply(text="Still here.")
    call = {"id": "call_echo_1", "type": "function",
            "function": {"name": "exec_command",
                         "arguments": json.dumps({"cmd": "echo marker-$((40+2))"})}}
    return Reply(text="", tool_calls=[call], finish_reason="tool_calls", split_arguments=4)


def test_codex_runs_a_shell_call_and_sends_its_output_back(tmp_path: Path) -> None:
    require_codex()
    home = tmp_path / "home"
    fake = FakeUpstream(script)
    with serve_app(fake.make_app) as upstream, running_proxy(
            tmp_path, upstream.url, "--read-timeout", "60") as proxy:
        # The tool loop through cachelayer is the subject, not Codex's sandbox (bubblewrap
        # needs user namespaces, which some CI containers lack): run the command plainly.
        done = codex(proxy.url, home, "--sandbox", "danger-full-access",
                     "please run the echo command")
        resumed = codex(proxy.url, home, "resume", "--last", "and again?")
        doc = stats(proxy.url)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "marker seen: yes" in done.stdout
    assert len(fake.calls) == 3
    # Codex's tools arrive as chat function tools; its hosted ones (web_search, the
    # multi-agent namespace) do not reach the upstream
    names = {t["function"]["name"] for t in fake.calls[0]["tools"]}
    assert "exec_command" in names and all(t["type"] == "function"
                                           for t in fake.calls[0]["tools"])
    second = fake.calls[1]["messages"]
    assert second[-2]["tool_calls"][0]["id"] == "call_echo_1"
    assert second[-1]["role"] == "tool" and "marker-42" in second[-1]["content"]
    # resume --last continues the same conversation: the earlier turns, then the new one
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Still here." in resumed.stdout
    third = fake.calls[2]["messages"]
    assert third[:len(second)] == second
    assert third[-1]["role"] == "user" and "and again?" in third[-1]["content"]
    assert doc["layers"]["prefix"]["uniquePrefixes"] == 1


def compaction_script(body: dict[str, Any]) -> Reply:
    """Every answer reports a prompt near Codex's limit, so it compacts before the next
    turn; the compaction request gets a summary."""
    last = str(body["messages"][-1]["content"])
    text = "Summary: the user said hi." if "CONTEXT CHECKPOINT COMPACTION" in last else "Hi."
    return Reply(text=text, prompt_tokens=90_000)


def test_codex_compacts_its_context_through_cachelayer(tmp_path: Path) -> None:
    require_codex()
    home = tmp_path / "home"
    fake = FakeUpstream(compaction_script)
    config = "model_auto_compact_token_limit = 2000\n"
    with serve_app(fake.make_app) as upstream, running_proxy(
            tmp_path, upstream.url, "--read-timeout", "60") as proxy:
        first = codex(proxy.url, home, "say hi", config=config)
        resumed = codex(proxy.url, home, "resume", "--last", "more", config=config)
    assert first.returncode == 0 and resumed.returncode == 0, resumed.stderr[-3000:]
    assert "context compacted" in resumed.stderr
    # compaction is an ordinary /v1/responses request; the turn after it carries the summary
    compaction = [c for c in fake.calls
                  if "CONTEXT CHECKPOINT COMPACTION" in str(c["messages"][-1]["content"])]
    assert len(compaction) == 1
    assert "Summary: the user said hi." in json.dumps(fake.calls[-1]["messages"])


def thinking_script(body: dict[str, Any]) -> Reply:
    """A thinking model: reasoning first, then the answer."""
    return Reply(text=f"Answer {len(body['messages'])}.", reasoning="Let me think it over.")


def test_codex_takes_a_local_models_reasoning_and_sends_the_next_turn(
    tmp_path: Path
) -> None:
    require_codex()
    home = tmp_path / "home"
    fake = FakeUpstream(thinking_script)
    with serve_app(fake.make_app) as upstream, running_proxy(
            tmp_path, upstream.url, "--read-timeout", "60") as proxy:
        raw = "show_raw_agent_reasoning = true\n"
        first = codex(proxy.url, home, "think, then say hi", config=raw)
        resumed = codex(proxy.url, home, "resume", "--last", "again", config=raw)
    assert first.returncode == 0, first.stderr[-3000:]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Let me think it over." in first.stderr  # shown as the model's reasoning
    # Codex kept it in its session as a reasoning item (and sends it back each turn)
    rollout = "".join(p.read_text() for p in (home / ".codex" / "sessions").rglob("*.jsonl"))
    assert '"type":"reasoning"' in rollout and "Let me think it over." in rollout
    # the reasoning item Codex sent back is dropped: the history holds the answer only
    history = fake.calls[1]["messages"]
    assert history[-2] == {"role": "assistant", "content": "Answer 4."}
    assert "Let me think it over." not in json.dumps(history)
