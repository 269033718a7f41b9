"""`tools/bench_store_hits.py --quick` runs end to end and writes its JSON.

No timing thresholds: speed is judged in docs/benchmarks.md. What is checked is that
every measured request was what the row says: all hits (the upstream saw none of them),
and every miss a MISS that reached the upstream.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # child servers, redis-server and wrk

REPO = Path(__file__).resolve().parents[3]


def test_quick_store_hits_bench_measures_every_store_and_the_misses(tmp_path: Path) -> None:
    assert shutil.which("wrk"), "wrk is not installed (apt-get install wrk; .ci/run does it)"
    out = tmp_path / "store-hits.json"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "bench_store_hits.py"),
                           "--quick", "--reference", "HEAD", "--out", str(out)],
                          capture_output=True, text=True, timeout=400, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    hits = data["store_hits"]
    assert set(hits["targets"]) == {"ceiling", "diskcache", "redis (hot tier)",
                                    "redis (no hot tier)",
                                    f"diskcache at {hits['reference']['commit']} (HEAD)"}
    for name, by_conc in hits["targets"].items():
        assert set(by_conc) == {"8", "64"}, name
        for point in by_conc.values():
            assert point["rps_median"] > 0 and point["non_2xx"] == 0, name
            assert point["cpu_us_median"] > 0, name
            assert point["upstream_calls"] == 0, name  # every measured request was a hit
    miss = data["miss"]
    proxies = list(miss["over_relay_p50_ms"])
    assert len(proxies) == 2 and set(miss["added_p50_ms"]) == {"bare relay", *proxies}
    for name in proxies:
        assert miss[name]["cache_status"] == {"MISS": miss[name]["n"]}
    # every request, measured or warm-up, direct, relayed or proxied, reached the upstream once
    assert miss["upstream_calls"] == 4 * (30 + 5)
    assert set(data["met"]) >= {"a miss adds <= 1 ms p50", "diskcache, 8 connections"}
    # on/off in one process: every "on" run answered on the fast path, no "off" run did
    runs = data["on_and_off"]["runs"]
    assert runs["on"] and all(r["fast_hits"] > 0 for r in runs["on"])
    assert runs["off"] and all(r["fast_hits"] == 0 for r in runs["off"])
