"""Claude Code's sessions as users run them, on one stable prefix (issue 12).

A conversation, two `--continue` turns, a new session, then `cachelayer serve` restarted
and the first conversation resumed: every turn after the first prefills only what is
genuinely new. Read from the backend's own counts (usage prompt_tokens and
cached_tokens, summed by the proxy's ledger), turn by turn.

With its default model Claude Code names the model "Opus 4.8 (1M context)" in a new
session and "Opus 4.8" in a resumed one, and sends its agent list as a system turn after
the first user message; with `--model claude-sonnet-4-5` neither happens. Both run here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.claude_cli import SMALL_TOOLS, claude, require_claude, stats
from tests.support.proxy_process import running_proxy

pytestmark = pytest.mark.slow
# What a turn may prefill beyond its new messages: the chat template's framing of the
# new turns and the demo model's short answer are well under it.
NEW_TOKENS_ALLOWANCE = 300
SERVE_ARGS = ("--max-tokens-cap", "64", "--read-timeout", "600")


@dataclass
class Turn:
    """What one `claude -p` turn cost the backend, from the ledger's deltas."""

    name: str
    prompt_tokens: int
    reused_tokens: int
    prefix_hits: int

    @property
    def prefilled(self) -> int:
        """Prompt tokens the backend computed rather than reused."""
        return self.prompt_tokens - self.reused_tokens


def _counts(url: str) -> tuple[int, int, int]:
    doc = stats(url)
    return (doc["metrics"]["totalInputTokens"], doc["layers"]["kv"]["tokensReused"],
            doc["layers"]["prefix"]["hits"])


def turn(url: str, home: Path, name: str, prompt: str, *args: str) -> Turn:
    """Run one turn and measure it."""
    before = _counts(url)
    done = claude(url, home, prompt, *args, *SMALL_TOOLS)
    assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"
    assert done.stdout.strip(), name
    after = _counts(url)
    return Turn(name, *(a - b for a, b in zip(after, before, strict=True)))


def run_sessions(root: Path, model_args: tuple[str, ...], label: str) -> list[Turn]:
    """The whole story for one model setting; returns every turn's numbers."""
    home, data = root / f"home-{label}", root / "data"
    session = str(uuid.uuid4())
    turns = []
    with running_proxy(root, None, *SERVE_ARGS, data_dir=data, name=f"{label}-first",
                       up_timeout=240) as child:
        turns.append(turn(child.url, home, "new", "Say hello.", *model_args,
                          "--session-id", session))
        turns.append(turn(child.url, home, "continue 1", "Say more.", *model_args,
                          "--continue"))
        turns.append(turn(child.url, home, "continue 2", "Say even more.", *model_args,
                          "--continue"))
        turns.append(turn(child.url, home, "new session", "Start something else.",
                          *model_args))
    with running_proxy(root, None, *SERVE_ARGS, data_dir=data, name=f"{label}-restarted",
                       up_timeout=240) as child:
        turns.append(turn(child.url, home, "resumed after restart", "Back to the first.",
                          *model_args, "--resume", session))
    return turns


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir for both model settings: the demo model is built once."""
    return tmp_path_factory.mktemp("sessions")


@pytest.mark.parametrize("model_args", [(), ("--model", "claude-sonnet-4-5")],
                         ids=["default-model", "sonnet-4-5"])
def test_continued_new_and_resumed_sessions_prefill_only_what_is_new(
    root: Path, model_args: tuple[str, ...], request: Any
) -> None:
    require_claude()
    label = request.node.callspec.id
    turns = run_sessions(root, model_args, label)
    table = "\n".join(f"  {t.name:<24} prompt {t.prompt_tokens:>6}  reused "
                      f"{t.reused_tokens:>6}  prefilled {t.prefilled:>6}  hit {t.prefix_hits}"
                      for t in turns)
    print(f"\n{label}:\n{table}")
    first, later = turns[0], turns[1:]
    assert first.prefilled > 1000, table  # the one cold prefill: tools + system prompt
    assert first.prefix_hits == 0, table  # the first request of a prefix is never a hit
    for t in later:
        assert t.prefilled < NEW_TOKENS_ALLOWANCE, f"{t.name} prefilled too much:\n{table}"
        assert t.prefix_hits == 1, f"{t.name} was not counted as a prefix hit:\n{table}"
