"""`tools/bench_redis_reads.py` runs end to end against a real redis-server and writes
every cell (no timing thresholds: speed is judged in docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a child redis-server

REPO = Path(__file__).resolve().parents[3]


def test_redis_reads_bench_measures_both_ways_at_every_depth(tmp_path: Path) -> None:
    out = tmp_path / "redis-reads.json"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "bench_redis_reads.py"),
                           "--reads", "128", "--reps", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    reads = json.loads(out.read_text())["reads"]
    assert set(reads) == {"header", "whole"}
    for by_n in reads.values():
        assert set(by_n) == {"1", "8", "64"}
        for cell in by_n.values():
            assert cell["redis-py"]["cpu_us"] > 0 and cell["pipe"]["cpu_us"] > 0
            assert cell["cpu_ratio"] == cell["redis-py"]["cpu_us"] / cell["pipe"]["cpu_us"]
