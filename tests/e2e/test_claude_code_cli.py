"""The real Claude Code CLI (from npm), headless, through `cachelayer serve` on the demo model.

`make test` installs the CLI into .e2e/; CLAUDE_BIN points elsewhere if it lives there.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.proxy_process import running_proxy

pytestmark = pytest.mark.slow  # real mlx inference, child servers or CLIs

ROOT = Path(__file__).resolve().parents[2]
CLAUDE = Path(os.environ.get("CLAUDE_BIN", ROOT / ".e2e" / "node_modules" / ".bin" / "claude"))


def _stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/cache/stats", timeout=30) as response:
        return dict(json.loads(response.read()))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[str]:
    """`cachelayer serve` with its embedded backend on the demo model, as users run it."""
    # Building the demo model and loading the backend take longer than a proxy alone;
    # a first turn prefills Claude Code's whole prompt before its first byte.
    with running_proxy(tmp_path, None, "--max-tokens-cap", "64", "--read-timeout", "600",
                       up_timeout=240) as child:
        yield child.url


def _claude(url: str, home: Path, prompt: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": "local-dummy-key",
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    return subprocess.run([str(CLAUDE), "-p", prompt], env=env, cwd=home, text=True,
                          capture_output=True, timeout=600)


def test_two_claude_code_turns_run_and_the_second_reuses_the_prefix(
    serve: str, tmp_path: Path
) -> None:
    assert CLAUDE.exists(), f"Claude Code CLI not installed at {CLAUDE}: run `make test`"
    home = tmp_path / "home"
    home.mkdir()
    first = _claude(serve, home, "Say hello.")
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.strip()
    after_first = _stats(serve)
    second = _claude(serve, home, "Say goodbye.")
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.strip()
    after_second = _stats(serve)
    read_before = after_first["metrics"]["cacheReadTokens"]
    read_after = after_second["metrics"]["cacheReadTokens"]
    assert read_after > read_before, (after_first["metrics"], after_second["metrics"])
    prefix = after_second["layers"]["prefix"]
    assert prefix["strippedSegments"] >= 2  # the billing line, removed on every turn
