"""`tools/bench_kv_paged.py --quick` runs end to end; its JSON feeds docs/benchmarks.md.

No timing thresholds: speed is judged in docs/kv-cache.md. Byte counts are exact, though.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_quick_run_writes_new_tokens_only_and_restores(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "tools/bench_kv_paged.py", "--quick", "--trials", "1",
         "--out", str(out), "--work-dir", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "bench-kv-paged.json").read_text())
    writes = report["writes"]
    per_turn = 320 * 98304  # new tokens x 96 KiB, plus a header per block
    assert all(r["paged_bytes"] < per_turn * 1.02 for r in writes["turns"][1:])
    assert writes["old_total_bytes"] > 2 * writes["paged_total_bytes"]
    assert report["restore"]["disk"]["restore_s"] > 0
    assert (out / "bench-kv-paged.md").read_text().startswith("### Bytes written per turn")


def test_the_benchmark_report_summarises_the_stored_paged_results() -> None:
    sys.path.insert(0, str(REPO / "tools"))
    from benchlib.kv import paged_summary

    text = "\n".join(paged_summary())
    assert "bench_kv_paged.py" in text and "of the disk's own sequential read" in text
    assert paged_summary(REPO / "does-not-exist.json") == []
