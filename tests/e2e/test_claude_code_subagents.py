"""Sub-agents keep their own warm prefix, with the real Claude Code CLI talking to
`cachelayer serve` in front of a real `cachelayer backend` (demo model).

Two `claude -p` turns each spawn a sub-agent through the Agent tool: main, sub-agent,
main; main, sub-agent, main. A tiny model cannot call the Agent tool on cue, so a
scripted front sits between cachelayer and the backend: every request still goes to
the backend (its real prefill, KV reuse and usage), and where the main agent is asked to
SPAWN the answer's content becomes an Agent tool call. The proxy's ledger then shows two
prefixes, the main agent's and the sub-agent's, each reused by its own later requests
even with the other's requests in between.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.demo_model import build_demo_model
from tests.e2e.claude_cli import SMALL_TOOLS, claude, require_claude, stats
from tests.support.processes import (
    ServerProcess,
    backend_command,
    free_port,
    start_server,
    stop_server,
)
from tests.support.proxy_process import running_proxy
from tests.support.scripted_front import ScriptedFront, Seen
from tests.support.servers import serve_app

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SERVE_ARGS = ("--max-tokens-cap", "64", "--read-timeout", "600")
# What a later request may prefill beyond what its agent sent before: the tool call or
# tool result and the chat template's framing, well under it.
NEW_TOKENS_ALLOWANCE = 300


def is_main(body: dict[str, Any]) -> bool:
    """The main agent's conversation holds the user's SPAWN prompt; a sub-agent's holds
    only the task the main agent gave it (both have the same tools)."""
    return any(m["role"] == "user" and "SPAWN" in json.dumps(m["content"])
               for m in body["messages"])


def spawn_when_asked(body: dict[str, Any]) -> dict[str, Any] | None:
    """Main agent, newest message a user's SPAWN: call Agent. Otherwise the model answers.

    Each sub-agent gets its own task (numbered by the main agent's turns so far), so its
    request is new to layer 2 and must be answered by the backend.
    """
    last = body["messages"][-1]
    if not (last["role"] == "user" and "SPAWN" in json.dumps(last["content"])):
        return None
    task = sum(1 for m in body["messages"] if m["role"] == "assistant") + 1
    arguments = {"description": "Check the files",
                 "prompt": f"Task {task}: reply with the word done.",
                 "subagent_type": "general-purpose"}
    return {"id": f"call_agent_{task}", "type": "function",
            "function": {"name": "Agent", "arguments": json.dumps(arguments)}}


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[ServerProcess]:
    """One real backend on the demo model."""
    model = build_demo_model(tmp_path / "demo")
    port = free_port()
    server = start_server(backend_command(model, port, tmp_path / "kv"), port,
                          tmp_path / "backend.log", cwd=ROOT)
    try:
        yield server
    finally:
        stop_server(server)


def _table(seen: list[Seen]) -> str:
    return "\n".join(
        f"  {'main' if is_main(s.body) else 'sub':<5} prompt {s.prompt_tokens:>6} cached "
        f"{s.cached_tokens:>6}{'  (Agent call)' if s.scripted else ''}" for s in seen)


def test_interleaved_main_and_subagent_turns_each_reuse_their_own_prefix(
    tmp_path: Path, backend: ServerProcess
) -> None:
    require_claude()
    front = ScriptedFront(backend.url, spawn_when_asked)
    home = tmp_path / "home"
    with serve_app(front.make_app) as upstream, running_proxy(
            tmp_path, upstream.url, *SERVE_ARGS) as proxy:
        for args in ((), ("--continue",)):
            done = claude(proxy.url, home, "SPAWN a helper.", *args, *SMALL_TOOLS,
                          "--allowedTools", "Agent")
            assert done.returncode == 0, done.stderr[-2000:]
            assert done.stdout.strip()
        doc = stats(proxy.url)
    seen = front.seen
    table = _table(seen)
    print("\n" + table)
    roles = ["main" if is_main(s.body) else "sub" for s in seen]
    # turn 1: main calls Agent, the sub-agent answers, main finishes; turn 2 the same
    assert roles == ["main", "sub", "main", "main", "sub", "main"], table
    assert [s.scripted for s in seen] == [True, False, False, True, False, False], table
    # the sub-agent really ran: its answer came back to the main agent as the tool result
    results = [m for m in seen[2].body["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in results] == ["call_agent_1"], table

    # The backend's own usage, request by request: after each agent's first request,
    # every request reuses that agent's prefix, though the other agent ran in between.
    first_main, first_sub = seen[0], seen[1]
    assert first_main.prompt_tokens - first_main.cached_tokens > 1000, table
    assert first_sub.prompt_tokens - first_sub.cached_tokens > 500, table
    for s in seen[2:]:
        assert s.prompt_tokens - s.cached_tokens < NEW_TOKENS_ALLOWANCE, table

    # The proxy's ledger: two prefixes, each hit by every request of its own after the
    # first (a first request is never a hit), and the reuse it counted is the backend's.
    prefix = doc["layers"]["prefix"]
    assert prefix["uniquePrefixes"] == 2 and prefix["warmPrefixes"] == 2, prefix
    main, sub = doc["topEntries"]  # most requests first
    assert (main["requests"], main["hits"]) == (4, 3), (main, table)
    assert (sub["requests"], sub["hits"]) == (2, 1), (sub, table)
    assert main["cacheTokens"] == sum(s.cached_tokens for s in seen if is_main(s.body))
    assert sub["cacheTokens"] == sum(s.cached_tokens for s in seen if not is_main(s.body))
    assert doc["layers"]["kv"]["tokensReused"] == sum(s.cached_tokens for s in seen)
