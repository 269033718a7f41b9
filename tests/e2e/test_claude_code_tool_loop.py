"""The tool loop with the real Claude Code CLI: a scripted upstream answers with a streamed
tool call (its arguments split over chunks), Claude Code runs it, the tool result comes
back through cachelayer, and the final answer arrives; through layers 1 and 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.claude_cli import SMALL_TOOLS, claude, require_claude, stats
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.proxy_process import running_proxy
from tests.support.servers import serve_app

pytestmark = pytest.mark.slow
MARKER = "marker-file-for-the-tool-loop.txt"


def _tool_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else json.dumps(content)


def script(body: dict[str, Any]) -> Reply:
    """First turn: call Bash(ls); once the result is back: a final answer quoting it."""
    last = body["messages"][-1]
    if last["role"] == "tool":
        seen = "yes" if MARKER in _tool_text(last) else "no"
        return Reply(text=f"The listing came back (marker seen: {seen}).")
    call = {"id": "call_ls_1", "type": "function",
            "function": {"name": "Bash",
                         "arguments": json.dumps({"command": "ls",
                                                  "description": "List files"})}}
    return Reply(text="", tool_calls=[call], finish_reason="tool_calls", split_arguments=4)


def test_claude_code_runs_a_streamed_tool_call_and_gets_the_final_answer(
    tmp_path: Path
) -> None:
    require_claude()
    home = tmp_path / "home"
    home.mkdir()
    (home / MARKER).write_text("x")
    fake = FakeUpstream(script)
    with serve_app(fake.make_app) as upstream, running_proxy(
            tmp_path, upstream.url, "--read-timeout", "60") as proxy:
        done = claude(proxy.url, home, "List the files here.", *SMALL_TOOLS,
                      "--allowedTools", "Bash(ls:*)")
        doc = stats(proxy.url)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "marker seen: yes" in done.stdout
    # two completions: the tool call, then the answer built on the tool's result
    assert len(fake.calls) == 2
    tool_turns = [m for m in fake.calls[1]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_turns] == ["call_ls_1"]
    assert MARKER in _tool_text(tool_turns[0])
    # both went through layer 2 (stored as misses) and layer 1 (one prefix, rewritten)
    assert doc["layers"]["response"]["misses"] == 2
    assert doc["layers"]["prefix"]["requests"] == 2
    assert doc["layers"]["prefix"]["uniquePrefixes"] == 1
