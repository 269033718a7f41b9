"""The real Claude Code CLI, headless, through `cachelayer serve` on the demo model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.claude_cli import SMALL_TOOLS, claude, require_claude, stats
from tests.support.proxy_process import running_proxy

pytestmark = pytest.mark.slow  # real mlx inference, child servers or CLIs


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[str]:
    """`cachelayer serve` with its embedded backend on the demo model, as users run it."""
    # Building the demo model and loading the backend take longer than a proxy alone.
    with running_proxy(tmp_path, None, "--max-tokens-cap", "64", "--read-timeout", "600",
                       up_timeout=240) as child:
        yield child.url


def test_two_claude_code_turns_run_and_the_second_reuses_the_prefix(
    serve: str, tmp_path: Path
) -> None:
    require_claude()
    home = tmp_path / "home"
    first = claude(serve, home, "Say hello.", *SMALL_TOOLS)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.strip()
    after_first = stats(serve)
    second = claude(serve, home, "Say goodbye.", *SMALL_TOOLS)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.strip()
    after_second = stats(serve)
    read_before = after_first["metrics"]["cacheReadTokens"]
    read_after = after_second["metrics"]["cacheReadTokens"]
    assert read_after > read_before, (after_first["metrics"], after_second["metrics"])
    prefix = after_second["layers"]["prefix"]
    assert prefix["strippedSegments"] >= 2  # the billing line, removed on every turn
    assert prefix["rewrites"]["billing-line"] == 2
