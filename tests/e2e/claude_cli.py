"""Running the real Claude Code CLI (from npm) headless against a local URL.

`make test` installs the pinned CLI into .e2e/; CLAUDE_BIN points elsewhere if it lives
there. Each run gets its own HOME (Claude Code keeps its sessions there, which is what
`--continue` and `--resume` read) and only the environment it needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CLAUDE = Path(os.environ.get("CLAUDE_BIN", ROOT / ".e2e" / "node_modules" / ".bin" / "claude"))
# Two of Claude Code's 24 tools: the prompt keeps its real shape (the Bash tool with its
# commit trailer naming the model, the Agent tool with the agent list sent after the
# first user message) at a size the 2-core demo model prefills in seconds, not minutes.
SMALL_TOOLS = ("--tools", "Bash,Agent")


def require_claude() -> None:
    """Fail (not skip) when the CLI is missing: the e2e tests are part of `make test`."""
    assert CLAUDE.exists(), f"Claude Code CLI not installed at {CLAUDE}: run `make test`"


def claude(url: str, home: Path, prompt: str, *args: str,
           timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`claude -p PROMPT ARGS...` against `url`, in `home`, as a user would run it."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": "local-dummy-key",
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    home.mkdir(parents=True, exist_ok=True)
    # The prompt goes first: options such as --tools take every argument after them.
    return subprocess.run([str(CLAUDE), "-p", prompt, *args], env=env, cwd=home, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def stats(url: str) -> dict[str, Any]:
    """The proxy's live metrics document."""
    with urllib.request.urlopen(url + "/cache/stats", timeout=30) as response:
        return dict(json.loads(response.read()))
