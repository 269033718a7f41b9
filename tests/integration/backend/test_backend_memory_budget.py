"""`cachelayer backend --prompt-cache-bytes`: memory stays within the budget, and a prompt
that left memory comes back from disk with the answer it had cold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.family_models import build_family_model
from tests.support.greedy import SYSTEM, answer, ask_greedy, cached
from tests.support.processes import ServerProcess
from tests.support.variant_models import build_wide_model

pytestmark = pytest.mark.slow  # real mlx inference, child servers

def ask(server: ServerProcess, case: int, *, max_tokens: int = 6) -> dict[str, Any]:
    """A greedy answer; `case` makes the prompt distinct from its first words on (so no two
    cases share more than the template's first tokens)."""
    return ask_greedy(server, f"Case {case} of many. {SYSTEM}", f"What does case {case} need?",
                      max_tokens=max_tokens)


def rss(server: ServerProcess) -> int:
    """Resident bytes of the backend process now."""
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random llama (random weights: greedy logprobs are informative)."""
    return build_family_model(tmp_path_factory.mktemp("budget") / "llama", "llama")


def test_evicted_prompt_restores_from_disk_with_the_answer_it_had_cold(
    llama: Path, tmp_path: Path, start_backend: Any, api: Any
) -> None:
    # ~1.3 MB of KV per prompt (and as much again for its system-segment checkpoint):
    # a 3 MB hot tier holds about one prompt, so four later prompts push case 0 out.
    server = start_backend(llama, tmp_path / "kv", "--prompt-cache-bytes", "3M")
    cold = ask(server, 0)
    assert cached(cold) == 0
    for case in range(1, 5):
        ask(server, case)
    stats = api.wait_for_writes(server)
    memory = stats["memory"]
    assert memory["budget_bytes"] == 3_000_000
    assert 0 < memory["bytes"] <= 3_000_000
    assert memory["evictions"] >= 1 and memory["evicted_bytes"] > 0

    again = ask(server, 0)
    after = api.get_json(server, "/v1/cachelayer/kv")
    assert after["disk_hits"] == stats["disk_hits"] + 1  # from disk, not memory
    assert cached(again) == again["usage"]["prompt_tokens"] - 1
    assert answer(again) == answer(cold)
    assert after["memory"]["bytes"] <= 3_000_000


def test_rss_over_many_distinct_prompts_stays_within_the_budget_plus_an_allowance(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, start_backend: Any, api: Any
) -> None:
    # 4 layers x 4 KV heads x head_dim 128 in float32: 16 KiB of KV per token, so each
    # ~1200-token prompt holds ~20 MB (twice, with its system-segment checkpoint).
    # Unbounded, sixteen of them would grow the process by ~600 MB.
    model = build_wide_model(tmp_path_factory.mktemp("wide") / "wide", layers=4, kv_heads=4,
                             head_dim=128)
    budget = 32_000_000
    server = start_backend(model, tmp_path / "kv", "--prompt-cache-bytes", str(budget))
    base = rss(server)  # the model loaded, no prompt seen
    peak = base
    for case in range(16):
        ask(server, case, max_tokens=1)
        peak = max(peak, rss(server))
        assert api.get_json(server, "/v1/cachelayer/kv")["memory"]["bytes"] <= budget
    stats = api.wait_for_writes(server)
    memory = stats["memory"]
    assert memory["evictions"] >= 12  # nearly every prompt left memory at least once
    per_prompt = memory["evicted_bytes"] // memory["evictions"]
    # Beyond the hot tier, what may be alive at once: the request being answered, the
    # copy mlx-lm makes of the nearest cache, the write queue (its 32 MB floor plus the
    # item being written), mlx's compiled kernels and allocator slack: stated as three
    # prompts' caches plus 96 MB (measured here: 153 MB of growth for a 187 MB bound).
    allowance = 3 * per_prompt + 96_000_000
    # What the ten caches mlx-lm keeps by count would take does not fit: the test can fail.
    assert min(memory["evicted_bytes"] + memory["bytes"], 10 * per_prompt) > budget + allowance
    assert peak - base <= budget + allowance, (
        f"rss grew {(peak - base) / 1e6:.0f} MB; budget {budget / 1e6:.0f} MB + allowance "
        f"{allowance / 1e6:.0f} MB")
