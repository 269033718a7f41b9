"""The paged KV store at a real model's KV width (48 layers x 4 KV heads x 128, bf16: 96 KiB
per token), side by side with the old whole-prompt files, in one run:

  1. bytes written per turn over a 10-turn session: old format vs paged store;
  2. restore after a restart vs the disk's own sequential read of the same bytes
     (page cache dropped before each; warm page-cache figures beside them);
  3. time to first token after a restart vs cold, for a new user turn on a stored prefix;
  4. the family matrix: reuse in memory vs after a restart, answer equal to cold.

Writes bench-kv-paged.json and bench-kv-paged.md to --out.

    python tools/bench_kv_paged.py [--quick] [--out DIR] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run from a checkout without installing: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import kv_paged as kp
from benchlib.kv_families import family_matrix
from benchlib.provenance import stamp

from cachelayer.backend.paged_store import PagedStore

SYSTEM_TOKENS = 2048
TURN_TOKENS = 320  # a user message plus an answer, per turn
NEW_TURN = 32  # the new user message after a restart


def _store(kv: Path) -> PagedStore:
    store = PagedStore(kv, "geometry", max_bytes=1 << 40, min_tokens=1)
    store.rebuild_index()
    return store


def bench_writes(work: Path, turns: int) -> dict[str, Any]:
    """Bytes each turn writes: one whole-prompt safetensors file (old) vs new blocks (paged)."""
    from mlx_lm.models.cache import save_prompt_cache

    total = SYSTEM_TOKENS + turns * TURN_TOKENS
    tokens = kp.tokens_for(total, seed=1)
    layers = kp.synthetic_kv(total)
    old_dir, kv = work / "old", work / "kv-writes"
    old_dir.mkdir(parents=True, exist_ok=True)
    store = _store(kv)
    rows = []
    for turn in range(1, turns + 1):
        n = SYSTEM_TOKENS + turn * TURN_TOKENS
        # The old writer kept the longest cache of a request: the whole context, every turn.
        old_file = old_dir / f"turn{turn}.safetensors"
        started = time.perf_counter()
        save_prompt_cache(str(old_file), kp.cache_of(layers, n), {"n": str(n)})
        old_s = time.perf_counter() - started
        before = store.counters.bytes_written
        started = time.perf_counter()
        # mlx-lm inserts the system segment, then prompt plus answer: the paged store gets both.
        store.save(tuple(tokens[:SYSTEM_TOKENS]), kp.cache_of(layers, SYSTEM_TOKENS), kp.KINDS)
        store.save(tuple(tokens[:n]), kp.cache_of(layers, n), kp.KINDS)
        paged_s = time.perf_counter() - started
        rows.append({"turn": turn, "context_tokens": n, "old_bytes": old_file.stat().st_size,
                     "paged_bytes": store.counters.bytes_written - before,
                     "old_s": round(old_s, 3), "paged_s": round(paged_s, 3)})
        old_file.unlink()  # only its size matters; keep the disk free
    old = sum(r["old_bytes"] for r in rows)
    paged = sum(r["paged_bytes"] for r in rows)
    distinct = total * kp.BYTES_PER_TOKEN
    return {"turns": rows, "old_total_bytes": old, "paged_total_bytes": paged,
            "distinct_kv_bytes": distinct, "old_over_paged": old / paged,
            "paged_over_distinct": paged / distinct, "old_over_distinct": old / distinct,
            "kv_dir": str(kv), "tokens": tokens}


def bench_restore(kv: Path, tokens: list[int], trials: int) -> dict[str, Any]:
    """Restore the whole stored session after a restart vs reading its files sequentially."""
    import mlx.core as mx

    store = _store(kv)  # the restart: index from headers only
    request = [*tokens, *kp.tokens_for(NEW_TURN, seed=99)]
    match = store.nearest(request, kp.KINDS)
    assert match is not None
    paths = [block.path for block, _ in match.chain]
    nbytes = sum(p.stat().st_size for p in paths)
    result: dict[str, Any] = {"tokens": match.n_tokens, "bytes": nbytes, "blocks": len(paths)}
    for label, cold in (("disk", True), ("page_cache", False)):
        restore, read = [], []
        for _ in range(trials):
            if cold:
                kp.drop_page_cache(paths)
            started = time.perf_counter()
            found = store.nearest(request, kp.KINDS)
            caches = store.load(found, kp.KINDS) if found else None
            assert caches is not None
            mx.eval([c.state for c in caches])
            restore.append(time.perf_counter() - started)
            del caches
            if cold:
                kp.drop_page_cache(paths)
            read.append(kp.sequential_read(paths)[1])
        r, s = kp.median(restore), kp.median(read)
        result[label] = {"restore_s": round(r, 4), "read_s": round(s, 4),
                         "restore_gb_s": round(nbytes / r / 1e9, 3),
                         "read_gb_s": round(nbytes / s / 1e9, 3),
                         "restore_over_read_bandwidth": round(s / r, 3)}
    return result


def bench_ttft(work: Path, sizes: list[int], synthetic_sizes: list[int]) -> list[dict[str, Any]]:
    """TTFT of a new user turn on a stored prefix of each size: cold vs after a restart."""
    from tests.support.family_models import geometry_model

    model = geometry_model()
    rows = []
    for n in [*sizes, *synthetic_sizes]:
        kv = work / f"kv-ttft-{n}"
        prefix = kp.tokens_for(n, seed=n)
        request = [*prefix, *kp.tokens_for(NEW_TURN, seed=7)]
        row: dict[str, Any] = {"prefix_tokens": n, "request_tokens": len(request)}
        if n in sizes:
            print(f"  ttft: cold prefill of {len(request)} tokens ...", file=sys.stderr)
            row["cold_s"], cache = kp.cold_first_token(model, request)
            for c in cache:
                c.trim(len(request) - n)  # what the first turn left: the prefix
            _store(kv).save(tuple(prefix), cache, kp.KINDS)
            del cache
        else:
            # Restore cost does not depend on the values: random KV of the same size.
            _store(kv).save(tuple(prefix), kp.cache_of(kp.synthetic_kv(n), n), kp.KINDS)
            row["cold_s"] = None
        store = _store(kv)
        match = store.nearest(request, kp.KINDS)
        assert match is not None and match.n_tokens == n
        kp.drop_page_cache(block.path for block, _ in match.chain)
        started = time.perf_counter()
        restored = store.load(store.nearest(request, kp.KINDS), kp.KINDS)  # type: ignore[arg-type]
        assert restored is not None
        restore_s = time.perf_counter() - started
        row["restore_s"] = round(restore_s, 3)
        row["restart_s"] = round(restore_s + kp.first_token(model, request[n:], restored), 3)
        if row["cold_s"] is not None:
            row["cold_s"] = round(row["cold_s"], 3)
            row["cold_over_restart"] = round(row["cold_s"] / row["restart_s"], 1)
        rows.append(row)
        shutil.rmtree(kv, ignore_errors=True)
    return rows


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables with ratios."""
    w = report["writes"]
    lines = ["### Bytes written per turn (10-turn session, 96 KiB/token)", "",
             "| turn | context tokens | old format (MB) | paged (MB) | old / paged |",
             "|---:|---:|---:|---:|---:|"]
    for r in w["turns"]:
        lines.append(f"| {r['turn']} | {r['context_tokens']} | {r['old_bytes'] / 1e6:.1f} | "
                     f"{r['paged_bytes'] / 1e6:.1f} | "
                     f"{r['old_bytes'] / max(1, r['paged_bytes']):.1f}x |")
    lines += ["", f"- total: old {w['old_total_bytes'] / 1e9:.2f} GB, paged "
              f"{w['paged_total_bytes'] / 1e9:.3f} GB ({w['old_over_paged']:.1f}x less); "
              f"paged / distinct tokens' KV = {w['paged_over_distinct']:.3f} "
              f"(old: {w['old_over_distinct']:.2f})", ""]
    r = report["restore"]
    lines += [f"### Restore after a restart vs sequential read ({r['tokens']} tokens, "
              f"{r['bytes'] / 1e6:.0f} MB, {r['blocks']} blocks)", "",
              "| source | restore (s) | read (s) | restore GB/s | read GB/s | restore / read |",
              "|---|---:|---:|---:|---:|---:|"]
    for label in ("disk", "page_cache"):
        x = r[label]
        lines.append(f"| {label} | {x['restore_s']} | {x['read_s']} | {x['restore_gb_s']} | "
                     f"{x['read_gb_s']} | {x['restore_over_read_bandwidth']:.0%} |")
    lines += ["", "### Time to first token, new user turn on a stored prefix", "",
              "| prefix tokens | cold (s) | after restart (s) | of which restore (s) | speed-up |",
              "|---:|---:|---:|---:|---:|"]
    for t in report["ttft"]:
        cold = f"{t['cold_s']}" if t["cold_s"] is not None else "not run"
        speed = f"{t['cold_over_restart']}x" if t.get("cold_over_restart") else "-"
        lines.append(f"| {t['prefix_tokens']} | {cold} | {t['restart_s']} | {t['restore_s']} | "
                     f"{speed} |")
    if report.get("families"):
        lines += ["", "### Family matrix (turn 2, new user message)", "",
                  "| family | cache kinds | prompt | reused in memory | reused after restart | "
                  "answer == cold |", "|---|---|---:|---:|---:|---|"]
        for f in report["families"]:
            lines.append(f"| {f['family']} | {', '.join(f['kinds'])} | {f['prompt_tokens']} | "
                         f"{f['in_memory']} | {f['after_restart']} | {f['equal_to_cold']} |")
    lines += ["", f"load average before/after: {report['loadavg_before']} / "
              f"{report['loadavg_after']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run every part, write bench-kv-paged.json and .md."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, no family matrix")
    parser.add_argument("--ttft-sizes", default="1024,2048,4096",
                        help="prefix sizes with a measured cold prefill")
    parser.add_argument("--restore-only-sizes", default="8192,16384",
                        help="prefix sizes restored from random KV (cold prefill not run)")
    parser.add_argument("--trials", type=int, default=3, help="restore/read trials (median)")
    parser.add_argument("--no-families", action="store_true", help="skip the family matrix")
    parser.add_argument("--out", type=Path, default=Path("."), help="where to write results")
    parser.add_argument("--work-dir", type=Path, help="scratch directory (default: temp)")
    args = parser.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-kv-paged-"))
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(x) for x in args.ttft_sizes.split(",") if x]
    synthetic = [int(x) for x in args.restore_only_sizes.split(",") if x]
    if args.quick:
        sizes, synthetic = [512], [2048]
    report: dict[str, Any] = {
        "command": " ".join(["python", "tools/bench_kv_paged.py", *(argv or sys.argv[1:])]),
        "geometry": f"{kp.LAYERS} layers x {kp.HEADS} KV heads x {kp.HEAD_DIM} dims, bf16, "
                    f"{kp.BYTES_PER_TOKEN} bytes/token; hidden 64, random weights",
        "machine": stamp(),  # commit, dirty flag, machine
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    print("writes: 10-turn session ...", file=sys.stderr)
    writes = bench_writes(work, 3 if args.quick else 10)
    tokens = writes.pop("tokens")
    print("restore vs sequential read ...", file=sys.stderr)
    report["restore"] = bench_restore(Path(writes.pop("kv_dir")), tokens, args.trials)
    report["writes"] = writes
    shutil.rmtree(work / "kv-writes", ignore_errors=True)
    print("time to first token ...", file=sys.stderr)
    report["ttft"] = bench_ttft(work, sizes, synthetic)
    if not (args.quick or args.no_families):
        print("family matrix ...", file=sys.stderr)
        report["families"] = family_matrix(work / "families")
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench-kv-paged.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "bench-kv-paged.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
