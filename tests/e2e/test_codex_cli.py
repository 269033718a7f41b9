"""The real Codex CLI against `cachelayer serve` on its embedded default (the demo model
in `cachelayer backend`): a turn completes, `codex exec resume --last` continues it, and
the resumed turn prefills only its new work, read from the backend's own counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cachelayer.backend.demo_model import build_demo_model
from tests.e2e.claude_cli import stats
from tests.e2e.codex_cli import codex, require_codex
from tests.support.processes import free_port, running_server, stock_command
from tests.support.proxy_process import running_proxy

pytestmark = pytest.mark.slow
SERVE_ARGS = ("--max-tokens-cap", "64", "--read-timeout", "600")
# The resumed turn's new work: the chat template's framing of the last answer and the
# new prompt, and Codex's per-turn context; the bound.
NEW_TOKENS_ALLOWANCE = 600


def _counts(url: str) -> tuple[int, int]:
    doc = stats(url)
    return doc["metrics"]["totalInputTokens"], doc["layers"]["kv"]["tokensReused"]


def test_codex_completes_a_turn_and_resumes_it_on_the_embedded_backend(
    tmp_path: Path
) -> None:
    require_codex()
    home = tmp_path / "home"
    with running_proxy(tmp_path, None, *SERVE_ARGS, up_timeout=240) as proxy:
        first = codex(proxy.url, home, "Say hello.")
        after_first = _counts(proxy.url)
        resumed = codex(proxy.url, home, "resume", "--last", "Say more.")
        after_resume = _counts(proxy.url)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "tokens used" in first.stderr
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    prompt = after_resume[0] - after_first[0]
    reused = after_resume[1] - after_first[1]
    assert prompt > 1000  # Codex's whole prompt went to the backend again...
    assert prompt - reused < NEW_TOKENS_ALLOWANCE  # ...and only the new part was computed


def test_codex_works_through_cachelayer_in_front_of_a_stock_mlx_lm_server(
    tmp_path: Path
) -> None:
    """mlx_lm.server has no /v1/responses: cachelayer answers it and sends chat
    completions on; a repeated turn's prompt is read from the stock server's own cache."""
    require_codex()
    model = build_demo_model(tmp_path / "models" / "demo")
    port = free_port()
    (tmp_path / "hf").mkdir()
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    with running_server(stock_command(model, port, "--max-tokens", "64"), port,
                        tmp_path / "stock.log", env=env) as stock, running_proxy(
            tmp_path, stock.url, "--upstream-model", str(model), "--read-timeout", "600"
    ) as proxy:
        home = tmp_path / "home"
        first = codex(proxy.url, home, "Say hello.")
        resumed = codex(proxy.url, home, "resume", "--last", "Say more.")
        doc = stats(proxy.url)
    assert first.returncode == 0, first.stderr[-3000:]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert doc["layers"]["response"]["misses"] == 2
    assert doc["layers"]["kv"]["tokensReused"] > 1000  # mlx_lm.server's in-memory reuse
