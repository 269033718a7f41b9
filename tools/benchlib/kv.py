"""Scenario 3, the kv layer: `tools/bench_kv.py` (stock mlx_lm server vs cachelayer backend,
cold / warm second turn / after a restart), run once per prompt size for a scaling curve.

bench_kv.py is run as a subprocess, unchanged. Each size gets its own work directory,
so no size starts with the prompt caches of another (the prompts of the smaller sizes
are prefixes of the larger ones); the demo model is built once and linked into each.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import procs
from benchlib.config import RunConfig
from benchlib.session import demo_model

SCRIPT = procs.REPO / "tools" / "bench_kv.py"
CASES = ("a_cold", "b_second_turn", "c_after_restart")


def run(cfg: RunConfig) -> dict[str, Any]:
    """Every size in turn; returns the scenario's JSON section."""
    if cfg.quick:
        return {"skipped": "skipped in --quick mode (real mlx prefill takes minutes)"}
    if not SCRIPT.exists():
        return {"error": f"{SCRIPT} not found"}
    model = demo_model(cfg)
    sizes: list[dict[str, Any]] = []
    for tokens in cfg.kv_sizes:
        work = cfg.work_dir / "kv" / f"{tokens}"
        work.mkdir(parents=True, exist_ok=True)
        link = work / "demo-model"
        if not link.exists():
            link.symlink_to(model, target_is_directory=True)
        out = work / "out"
        argv = [sys.executable, str(SCRIPT), "--tokens", str(tokens), "--out", str(out),
                "--work-dir", str(work)]
        print(f"  kv: {tokens} tokens ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, cwd=str(procs.REPO),
                              env=procs.child_env(), timeout=1200, check=False)
        row: dict[str, Any] = {"tokens": tokens, "wall_s": time.perf_counter() - started}
        if done.returncode != 0:
            row["error"] = f"bench_kv.py exited {done.returncode}: {done.stderr[-1500:]}"
        else:
            report = json.loads((out / "bench-kv.json").read_text())
            row.update({server: {case: report[server][case] for case in CASES}
                        for server in ("stock", "cachelayer")})
            row["ratios"] = report["ratios"]
        sizes.append(row)
    return {"command_per_size": "python tools/bench_kv.py --tokens N --out DIR --work-dir DIR",
            "sizes": sizes}


def ttft(row: dict[str, Any], server: str, case: str) -> float | None:
    """One TTFT from a size's row, or None when that size failed."""
    try:
        return float(row[server][case]["ttft_s"])
    except (KeyError, TypeError, ValueError):
        return None


PAGED_RESULTS = procs.REPO / "docs" / "benchmarks" / "kv-paged.json"


def paged_summary(path: Path = PAGED_RESULTS) -> list[str]:
    """A paragraph on the paged store at a real KV width, from tools/bench_kv_paged.py's JSON."""
    try:
        return paged_paragraph(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, IndexError):
        return []


def paged_paragraph(r: dict[str, Any]) -> list[str]:
    """paged_summary's paragraph from the parsed JSON (KeyError/IndexError if incomplete)."""
    w, disk = r["writes"], r["restore"]["disk"]
    ttft = [t for t in r["ttft"] if t.get("cold_over_restart")]
    last = ttft[-1]
    return [
        "### 3b. The paged KV store at a real model's KV width (`tools/bench_kv_paged.py`)", "",
        "The table above uses the demo model, whose KV is about 1 KB per token, so it says "
        f"nothing about file sizes. At {r['geometry'].split(';')[0]}: a "
        f"{len(w['turns'])}-turn session writes {w['paged_total_bytes'] / 1e9:.3f} GB instead of "
        f"the old format's {w['old_total_bytes'] / 1e9:.2f} GB "
        f"({w['paged_over_distinct']:.3f}x its distinct tokens' KV); a restart restores at "
        f"{disk['restore_gb_s']} GB/s, {disk['restore_over_read_bandwidth']:.0%} of the disk's own "
        f"sequential read; a new turn on a {last['prefix_tokens']}-token prefix answers in "
        f"{last['restart_s']} s instead of {last['cold_s']} s cold "
        f"({last['cold_over_restart']}x). Details, cut sizes and the command: "
        "[kv-cache.md](kv-cache.md#benchmark).", ""]
