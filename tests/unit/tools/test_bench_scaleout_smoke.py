"""`tools/bench_scaleout.py --quick` runs end to end and writes its JSON.

No timing thresholds: speed is judged in docs/scale-out.md. The routing share is not a
timing: prefix routing must keep every later turn on its backend, round-robin cannot.
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


def test_quick_scaleout_bench_measures_every_target_and_both_routings(tmp_path: Path) -> None:
    assert shutil.which("wrk"), "wrk is not installed (apt-get install wrk; .ci/run does it)"
    out = tmp_path / "scaleout.json"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "bench_scaleout.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    targets = data["store_hits"]["targets"]
    assert set(targets) == {"ceiling", "diskcache", "redis (hot tier)", "redis (no hot tier)"}
    for name, by_conc in targets.items():
        for point in by_conc.values():
            assert point["rps_median"] > 0 and point["non_2xx"] == 0, name
            assert point["upstream_calls"] == 0, name  # every measured request was a hit
    routing = data["routing"]
    assert routing["prefix"]["share_on_prefix_backend"] == 1.0
    assert routing["round-robin"]["share_on_prefix_backend"] < 0.9
    assert routing["prefix"]["prefilled_tokens"] < routing["round-robin"]["prefilled_tokens"]
