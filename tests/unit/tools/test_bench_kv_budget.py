"""`tools/bench_kv_budget.py --quick` runs end to end: both servers under one budget, the
early prompt restored from disk by cachelayer with the answer it had cold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_quick_run_restores_the_evicted_first_prompt_from_disk(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "tools/bench_kv_budget.py", "--quick", "--out", str(out),
         "--work-dir", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "bench-kv-budget.json").read_text())
    ours, stock = report["cachelayer"], report["stock"]
    assert len(ours["rss"]) == len(stock["rss"]) == 8
    assert ours["memory"]["bytes"] <= report["budget_bytes"] and ours["memory"]["evictions"] > 0
    again = ours["again"]
    assert again["cached_tokens"] == again["prompt_tokens"] - 1 and ours["identical"]
    assert stock["again"]["cached_tokens"] < again["cached_tokens"]
    assert (out / "bench-kv-budget.md").read_text().startswith("Budget `--prompt-cache-bytes")
