"""Sub-agents keep their own warm prefix: main, sub-agent, main, sub-agent turns each reuse
their own prefix on the real backend (mlx-lm's LRU of prompt caches holds both).

Claude Code's Agent tool runs a sub-agent with its own system prompt and tools. A tiny
model cannot call that tool on cue, so the real CLI first runs against a scripted
Anthropic server that does, and its requests are captured as sent (two turns, each
spawning a sub-agent). They are then replayed, in the order Claude Code sent them,
through `cachelayer serve` on the demo model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.claude_cli import SMALL_TOOLS, claude, require_claude, stats
from tests.support import http
from tests.support.fake_anthropic import Captured, FakeAnthropic, ToolUse
from tests.support.proxy_process import running_proxy
from tests.support.servers import serve_app

pytestmark = pytest.mark.slow
SERVE_ARGS = ("--max-tokens-cap", "64", "--read-timeout", "600")
# Claude Code forwards these; everything else (content type, length) is the client's own.
FORWARDED = ("x-claude-code-session-id", "anthropic-version", "anthropic-beta")


def is_main(body: dict[str, Any]) -> bool:
    """Claude Code marks a sub-agent's requests in its billing line."""
    system = body.get("system") or []
    return not any("cc_is_subagent=true" in str(b.get("text", "")) for b in system)


def spawn_when_asked(body: dict[str, Any]) -> str | ToolUse:
    """Main agent: call Agent when the newest prompt says SPAWN; otherwise answer.

    Each sub-agent gets its own task (numbered by the main agent's turns so far), so its
    request is new to layer 2 and must be answered by the backend.
    """
    last = [m for m in body["messages"] if m["role"] != "system"][-1]
    answered = isinstance(last["content"], list) and any(
        b.get("type") == "tool_result" for b in last["content"] if isinstance(b, dict))
    if is_main(body) and "SPAWN" in str(last["content"]) and not answered:
        task = sum(1 for m in body["messages"] if m["role"] == "assistant") + 1
        return ToolUse("Agent", {"description": "Check the files",
                                 "prompt": f"Task {task}: reply with the word done.",
                                 "subagent_type": "general-purpose"})
    return "done"


def capture(root: Path) -> list[Captured]:
    """Two Claude Code turns, each spawning a sub-agent; every request as it was sent."""
    fake = FakeAnthropic(spawn_when_asked)
    home = root / "home"
    with serve_app(fake.make_app) as server:
        for args in ((), ("--continue",)):
            done = claude(server.url, home, "SPAWN a helper.", *args, *SMALL_TOOLS,
                          "--allowedTools", "Agent")
            assert done.returncode == 0, done.stderr[-2000:]
    return fake.captured


def replay(url: str, request: Captured) -> dict[str, int]:
    """Send one captured request to cachelayer; the backend's usage for it."""
    before = stats(url)
    headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED}
    answer = http.post(url + "/v1/messages?beta=true", json=request.body, headers=headers,
                       timeout=600)
    assert answer.status == 200, answer.content[:500]
    after = stats(url)
    return {
        "prompt": after["metrics"]["totalInputTokens"] - before["metrics"]["totalInputTokens"],
        "reused": (after["layers"]["kv"]["tokensReused"]
                   - before["layers"]["kv"]["tokensReused"]),
        "hit": after["layers"]["prefix"]["hits"] - before["layers"]["prefix"]["hits"],
    }


def test_interleaved_main_and_subagent_turns_each_reuse_their_own_prefix(
    tmp_path: Path
) -> None:
    require_claude()
    requests = capture(tmp_path)
    roles = ["main" if is_main(r.body) else "sub" for r in requests]
    # turn 1: main calls Agent, the sub-agent answers, main finishes; turn 2 the same
    assert roles == ["main", "sub", "main", "main", "sub", "main"], roles
    with running_proxy(tmp_path, None, *SERVE_ARGS, up_timeout=240) as proxy:
        # a fresh proxy's store is empty, so every replay reaches the backend
        used = [replay(proxy.url, r) for r in requests]
        doc = stats(proxy.url)
    rows = "\n".join(f"  {role:<5} prompt {u['prompt']:>6} reused {u['reused']:>6} "
                     f"hit {u['hit']}" for role, u in zip(roles, used, strict=True))
    print("\n" + rows)
    first_main, first_sub = used[0], used[1]
    assert first_main["hit"] == 0 and first_sub["hit"] == 0, rows
    # the sub-agent's first request follows the main agent's: it must not have thrown
    # the main agent's prefix out, and its own later turn must find its own
    for role, u in list(zip(roles, used, strict=True))[2:]:
        assert u["hit"] == 1, f"a {role} turn lost its prefix:\n{rows}"
        assert u["prompt"] - u["reused"] < 300, f"a {role} turn prefilled too much:\n{rows}"
    prefix = doc["layers"]["prefix"]
    assert prefix["uniquePrefixes"] == 2 and prefix["warmPrefixes"] == 2, prefix
