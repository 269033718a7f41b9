"""`tools/bench --quick` runs end to end and writes JSON and markdown with real numbers.

No timing thresholds here: speed is judged in docs/benchmarks.md, not in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real mlx inference, child servers or CLIs

REPO = Path(__file__).resolve().parents[3]


def test_quick_store_and_miss_write_positive_numbers(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench"), "--quick", "--only", "store,miss",
         "--out", str(out), "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=170, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((out / "bench.json").read_text())
    results = data["results"]
    assert data["meta"]["quick"] is True
    assert set(results) == {"store", "miss"}

    store = results["store"]
    for name in ("cachelayer", "ceiling"):
        points = store["targets"][name]["points"]
        assert [p["concurrency"] for p in points] == [1, 8, 32]
        for point in points:
            assert point["rps"] > 0 and point["p50_ms"] > 0 and point["p99_ms"] > 0
            assert point["errors"] == 0
    # Every measured cachelayer request was answered from the store.
    assert store["targets"]["cachelayer"]["upstream_calls_during_measurement"] == 0
    assert "skipped" in store["targets"]["litellm"]
    for ratio in store["ratios"].values():
        assert ratio["vs_ceiling"] > 0

    miss = results["miss"]
    assert miss["upstream_calls"] == miss["requests_sent"]  # no-store: every one forwarded
    for path in ("direct", "cachelayer"):
        assert miss["non_stream"][path]["p50_ms"] > 0
        assert miss["stream"][path]["ttfc_p50_ms"] > 0
        assert miss["stream"][path]["chunks_per_s_p50"] > 0
    assert miss["summary"]["latency_ratio_p50"] > 0
    assert miss["summary"]["chunks_per_s_ratio"] > 0

    report = (out / "benchmarks.md").read_text()
    assert "| store hit req/s vs ceiling, 1 clients |" in report
    assert "tools/bench --quick --only store,miss" in report
