"""The tables in docs/ that are rendered from the JSON in docs/benchmarks/, one function each.

Each block is named in the docs by marker comments (`<!-- render:NAME -->` ...
`<!-- /render:NAME -->`); tools/render_docs.py replaces what lies between them with a
provenance line (commit, dirty flag, how many commits ago, machine) and the block's
lines. A number in a block comes from its JSON through this code and nowhere else
(tests/unit/tools/test_docs_rendered_from_data.py re-renders and compares).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchlib import kv, report
from benchlib.kv_budget import budget_tables
from benchlib.verdicts import (
    fmt_value,
    kv_paged_verdicts,
    prefix_verdicts,
    scaleout_verdicts,
)

Data = dict[str, Any]


@dataclass(frozen=True)
class Block:
    """One rendered block: the JSON files it reads (under docs/benchmarks/) and its renderer."""

    sources: tuple[str, ...]
    render: Callable[..., list[str]]


def verdict_table(verdicts: list[dict[str, Any]]) -> list[str]:
    """Targets as a table: what was measured, the goal, met or missed (computed)."""
    rows = ["| target | measured | goal | result |", "|---|---:|---:|---|"]
    rows += [f"| {v['name']} | {fmt_value(v)} | {v['target']} | {v['status']} |"
             for v in verdicts]
    return rows


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f}"


def kv_paged_writes(r: Data) -> list[str]:
    """Bytes written per turn: the old whole-context format vs the paged store."""
    w = r["writes"]
    rows = ["| turn | context tokens | old format (MB) | paged (MB) | old / paged |",
            "|---:|---:|---:|---:|---:|"]
    for t in w["turns"]:
        if t["turn"] in (1, 2, 5, len(w["turns"])):
            rows.append(f"| {t['turn']} | {t['context_tokens']} | {_mb(t['old_bytes'])} | "
                        f"{_mb(t['paged_bytes'])} | {t['old_bytes'] / t['paged_bytes']:.1f}x |")
    rows.append(f"| **total** | | **{_mb(w['old_total_bytes'])}** | "
                f"**{_mb(w['paged_total_bytes'])}** | **{w['old_over_paged']:.1f}x** |")
    rows += ["", f"Paged bytes / the distinct tokens' KV: {w['paged_over_distinct']:.3f}x; "
             f"old format: {w['old_over_distinct']:.2f}x."]
    return rows


def kv_paged_restore(r: Data) -> list[str]:
    """Restore after a restart vs the disk's own sequential read of the same files."""
    rest = r["restore"]
    rows = [f"{rest['blocks']} block files, {rest['tokens']:,} tokens, "
            f"{_mb(rest['bytes'])} MB.", "",
            "| source | restore (s) | read (s) | restore GB/s | read GB/s | restore / read |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, label in (("disk", "disk"), ("page_cache", "page cache (warm)")):
        s = rest[name]
        rows.append(f"| {label} | {s['restore_s']:.3f} | {s['read_s']:.3f} | "
                    f"{s['restore_gb_s']:.2f} | {s['read_gb_s']:.2f} | "
                    f"{s['restore_over_read_bandwidth']:.0%} |")
    return rows


def kv_paged_ttft(r: Data) -> list[str]:
    """Time to first token, cold vs after a restart, per prefix size."""
    rows = ["| prefix tokens | cold (s) | after restart (s) | of which restore (s) | speed-up |",
            "|---:|---:|---:|---:|---:|"]
    for t in r["ttft"]:
        cold = "not run" if t.get("cold_s") is None else f"{t['cold_s']:.1f}"
        ratio = t.get("cold_over_restart")
        rows.append(f"| {t['prefix_tokens']} | {cold} | {t['restart_s']:.2f} | "
                    f"{t['restore_s']:.2f} | {'-' if ratio is None else f'{ratio:.1f}x'} |")
    return rows


def kv_paged_families(r: Data) -> list[str]:
    """The family matrix: reuse in memory and after a restart, answers equal to cold."""
    rows = ["| family | cache kinds | prompt | reused in memory | reused after restart "
            "| answer == cold |", "|---|---|---:|---:|---:|---|"]
    for f in r["families"]:
        rows.append(f"| {f['family']} | {', '.join(sorted(set(f['kinds'])))} | "
                    f"{f['prompt_tokens']} | {f['in_memory']} | {f['after_restart']} | "
                    f"{'yes' if f['equal_to_cold'] else '**no**'} |")
    return rows


def kv_paged_targets(r: Data) -> list[str]:
    """The paged store's targets, met or missed."""
    return verdict_table(kv_paged_verdicts(r))


def _cell(point: Data, ratio: float) -> str:
    return (f"{point['rps_median']:,.0f} req/s ({ratio:.2f}x), "
            f"p50 {point['p50_ms_median']:.2f} ms")


def scaleout_store(r: Data) -> list[str]:
    """Store hits per store and connection count, with the ratio to the ceiling."""
    hits = r["store_hits"]
    conns = list(hits["targets"]["ceiling"])
    rows = ["| target | " + " | ".join(f"{c} connections" for c in conns)
            + " | upstream calls |", "|---|" + "---:|" * (len(conns) + 1)]
    for name, points in hits["targets"].items():
        ratios = hits["vs_ceiling"].get(name, dict.fromkeys(conns, 1.0))
        calls = sum(points[c].get("upstream_calls", 0) for c in conns)
        rows.append(f"| {name} | " + " | ".join(_cell(points[c], ratios[c]) for c in conns)
                    + f" | {calls} |")
    loads = [x for points in hits["targets"].values() for p in points.values()
             for x in p.get("loadavg_1m", [])]
    reps = [max(p["rps_reps"]) / min(p["rps_reps"]) for points in hits["targets"].values()
            for p in points.values() if p.get("rps_reps")]
    rows += ["", f"1-minute load average during the cells: {min(loads):.2f}-{max(loads):.2f}; "
             f"the repetitions of one cell differ by up to {max(reps):.2f}x."]
    return rows


ROUTING_LABELS = {"prefix": "prefix (consistent hashing, bounded load)"}


def scaleout_routing(r: Data) -> list[str]:
    """Prefix routing vs round-robin over three KV-reporting backends."""
    rows = ["| routing | later turns on the backend holding their prefix | KV tokens reused "
            "| tokens prefilled |", "|---|---:|---:|---:|"]
    for mode, m in r["routing"].items():
        rows.append(f"| {ROUTING_LABELS.get(mode, mode)} | {m['share_on_prefix_backend']:.1%} | "
                    f"{m['kv_tokens_reused']:,} ({m['reused_share']:.1%}) | "
                    f"{m['prefilled_tokens']:,} |")
    return rows


def scaleout_targets(store: Data, routing: Data) -> list[str]:
    """Scale-out targets, met or missed (store hits from the store run, routing from the
    routing run)."""
    return verdict_table(scaleout_verdicts(store, routing))


def prefix_overhead(r: Data) -> list[str]:
    """Layer 1's cost per request beside parsing the same body, and its budget's verdict."""
    return [f"| path ({r['body_bytes']:,}-byte body) | µs/request | vs orjson.loads |",
            "|---|---:|---:|",
            f"| reference: orjson.loads of the body | {r['reference_orjson_loads_us']:.1f} "
            "| 1.00x |",
            f"| layer 1, a body it has not seen | {r['layer1_new_body_us']:.1f} | "
            f"{r['ratio_new_body_to_parse']:.2f}x |",
            f"| layer 1, a byte-identical repeat | {r['layer1_repeat_us']:.1f} | "
            f"{r['ratio_repeat_to_parse']:.2f}x |", "",
            *verdict_table(prefix_verdicts(r))]


def fleet(r: Data) -> list[str]:
    """The fleet's cost on a miss (this checkout vs the reference, Redis and diskcache)
    and read-after-write across two proxies."""
    misses = r["miss_path"]["targets"]
    rows = ["| miss (new ~50 KB request, instant upstream) | requests | p50 | p90 |",
            "|---|---:|---:|---:|"]
    for name, m in misses.items():
        rows.append(f"| {name} | {m['n']} | {m['p50_ms']:.2f} ms | {m['p90_ms']:.2f} ms |")
    added = r["miss_path"]["added_p50_ms"]
    rows += ["", "Added at the median, this checkout over the reference: "
             + ", ".join(f"{store} {ms:+.2f} ms" for store, ms in added.items()) + ".", "",
             "| read-after-write: asked of proxy B the moment proxy A's client had it "
             "| sent | HIT on B | not a HIT |", "|---|---:|---:|---:|"]
    for who, x in r["read_after_write"].items():
        rows.append(f"| {who} | {x['sent']} | {x['b_statuses'].get('HIT', 0)} "
                    f"| {x['b_not_hit']} |")
    low, high = r["loadavg_1m"]
    rows += ["", f"1-minute load average during the run: {min(low, high):.2f}-"
             f"{max(low, high):.2f}."]
    return rows


def store_hits_table(r: Data) -> list[str]:
    """tools/bench_store_hits.py part 1: hits per store beside the ceiling, per connections:
    req/s and its ratio, p50, and the server's CPU per answer with the ceiling's over it."""
    hits = dict(r["store_hits"])
    targets, rps_ratio, cpu_ratio = hits["targets"], hits["vs_ceiling"], hits["cpu_vs_ceiling"]
    conns = list(targets["ceiling"])
    rows = ["| target | " + " | ".join(f"{c} connections" for c in conns)
            + " | upstream calls |", "|---|" + "---:|" * (len(conns) + 1)]
    for name, points in targets.items():
        cells = []
        for c in conns:
            point = points[c]
            rr = rps_ratio.get(name, {}).get(c, 1.0)
            cr = cpu_ratio.get(name, {}).get(c, 1.0)
            cells.append(f"{point['rps_median']:,.0f} req/s ({rr:.2f}x), p50 "
                         f"{point['p50_ms_median']:.2f} ms; {point['cpu_us_median']:.0f} µs "
                         f"CPU/answer ({cr:.2f}x)")
        calls = sum(points[c].get("upstream_calls", 0) for c in conns)
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {calls} |")
    loads = [x for points in targets.values() for p in points.values()
             for x in p.get("loadavg_1m", [])]
    reps = [max(p["rps_reps"]) / min(p["rps_reps"]) for points in targets.values()
            for p in points.values() if p.get("rps_reps")]
    return [f"Request {hits['request_bytes']:,} bytes, answer {hits['response_bytes']:,} bytes; "
            f"median of {hits['repetitions']} interleaved {hits['duration_s']:g}-second wrk "
            "runs per cell (1 thread). CPU/answer: the server process's CPU time over the "
            "answers it gave; (x) is the ceiling's CPU/answer over the target's.", "", *rows,
            "", f"1-minute load average during the cells: {min(loads):.2f}-{max(loads):.2f}; "
            f"the repetitions of one cell differ by up to {max(reps):.2f}x in req/s."]


def store_hits_miss(r: Data) -> list[str]:
    """tools/bench_store_hits.py part 2: a miss through each proxy beside direct."""
    miss = r["miss"]
    added = miss["added_p50_ms"]
    over_relay = miss.get("over_relay_p50_ms", {})
    rows = ["| path | requests | p50 | p99 | added p50 | over the bare relay |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, point in miss.items():
        if isinstance(point, dict) and "p50_ms" in point:
            extra = f"{added[name]:+.2f} ms" if name in added else "-"
            own = f"{over_relay[name]:+.2f} ms" if name in over_relay else "-"
            rows.append(f"| {name} | {point['n']} | {point['p50_ms']:.2f} ms | "
                        f"{point['p99_ms']:.2f} ms | {extra} | {own} |")
    return rows


def redis_reads(r: Data) -> list[str]:
    """tools/bench_redis_reads.py: redis-py beside the pipelined connection, per read."""
    rows = [f"{r['reads_per_cell']:,} reads per cell, median of {r['repetitions']}; "
            f"the value is {r['value_bytes']:,} bytes.", "",
            "| read | in flight | redis-py CPU/read | pipe CPU/read | redis-py / pipe |",
            "|---|---:|---:|---:|---:|"]
    names = {"header": "12-byte header (GETRANGE)", "whole": "whole entry (GET)"}
    for what, by_n in r["reads"].items():
        for n, cell in by_n.items():
            rows.append(f"| {names.get(what, what)} | {n} | {cell['redis-py']['cpu_us']:.0f} µs"
                        f" | {cell['pipe']['cpu_us']:.0f} µs | {cell['cpu_ratio']:.1f}x |")
    return rows


def store_hits_on_off(r: Data) -> list[str]:
    """tools/bench_store_hits.py part 3: the fast path on and off in one process."""
    ab = r["on_and_off"]
    rows = [f"{ab['repetitions']} alternating {ab['duration_s']:g}-second wrk runs per mode, "
            f"{ab['connections']} connections, one proxy process (diskcache).", "",
            "| fast path | answers/s, each run | median | loop CPU µs/answer, median |",
            "|---|---:|---:|---:|"]
    for mode in ("on", "off"):
        runs = ", ".join(f"{p['answers_per_s']:,.0f}" for p in ab["runs"][mode])
        rows.append(f"| {mode} | {runs} | {ab[mode]['answers_per_s']:,.0f} | "
                    f"{ab[mode]['loop_cpu_us_per_answer']:.0f} |")
    return [*rows, "", f"On over off: {ab['on_over_off_answers']:.2f}x the answers/s; "
            f"{ab['cpu_saved_us_per_answer']:.1f} µs of loop CPU saved per answer."]


def store_hits_targets(r: Data) -> list[str]:
    """tools/bench_store_hits.py's targets, met or missed."""
    hits = r.get("store_hits", {}).get("vs_ceiling", {})
    out = [_verdict_row(f"store hits vs ceiling: {name}, {conns} connections", ratio,
                        f"{ratio:.3f}x", f">= {r['targets']['hits_vs_ceiling']:.2f}x",
                        ratio >= r["targets"]["hits_vs_ceiling"])
           for name, per in hits.items() if not name.startswith("diskcache at ")
           for conns, ratio in per.items()]
    if "miss" in r:
        added = r["miss"]["added_p50_ms"]["cachelayer"]
        goal = r["targets"]["miss_added_p50_ms"]
        out.append(_verdict_row("a miss: p50 added over direct", added, f"{added:.2f} ms",
                                f"<= {goal:g} ms", added <= goal))
    return ["| target | measured | goal | result |", "|---|---:|---:|---|", *out]


def _verdict_row(name: str, _value: float, shown: str, goal: str, met: bool) -> str:
    return f"| {name} | {shown} | {goal} | {'met' if met else 'missed'} |"


def _results(bench: Data) -> Data:
    return dict(bench["results"])


def _with_kv(bench: Data, kv_run: Data) -> Data:
    """bench.json's results with the kv scenario from its own, newer run (kv.json:
    `tools/bench --only kv`), so the summary's kv verdicts come from that run."""
    return {**_results(bench), "kv": _results(kv_run)["kv"]}


BLOCKS: dict[str, Block] = {
    "bench-machine": Block(("bench.json",), lambda b: report.machine_section(b["meta"])[2:-1]),
    "bench-summary": Block(("bench.json", "kv.json"),
                           lambda b, k: report.summary_table(_with_kv(b, k))),
    "bench-store": Block(("bench.json",), lambda b: report.store_section(
        _results(b)["store"])[2:-1]),
    "bench-miss": Block(("bench.json",), lambda b: report.miss_section(
        _results(b)["miss"])[2:-1]),
    "bench-kv": Block(("kv.json",), lambda k: report.kv_section(
        _results(k)["kv"], paged=False)[2:-1]),
    "bench-session": Block(("bench.json",), lambda b: report.session_section(
        _results(b)["session"])[2:-1]),
    "kv-paged-summary": Block(("kv-paged.json",), lambda r: kv.paged_paragraph(r)[2:-1]),
    "kv-paged-writes": Block(("kv-paged.json",), kv_paged_writes),
    "kv-paged-restore": Block(("kv-paged.json",), kv_paged_restore),
    "kv-paged-ttft": Block(("kv-paged.json",), kv_paged_ttft),
    "kv-paged-families": Block(("kv-paged.json",), kv_paged_families),
    "kv-paged-targets": Block(("kv-paged.json",), kv_paged_targets),
    "scaleout-store": Block(("scaleout-store.json",), scaleout_store),
    "scaleout-fleet": Block(("fleet.json",), fleet),
    "scaleout-routing": Block(("scaleout.json",), scaleout_routing),
    "scaleout-targets": Block(("scaleout-store.json", "scaleout.json"), scaleout_targets),
    "prefix-overhead": Block(("prefix.json",), prefix_overhead),
    "store-hits": Block(("store-hits.json",), store_hits_table),
    "store-hits-miss": Block(("store-hits.json",), store_hits_miss),
    "store-hits-on-off": Block(("store-hits.json",), store_hits_on_off),
    "redis-reads": Block(("redis-reads.json",), redis_reads),
    "store-hits-targets": Block(("store-hits.json",), store_hits_targets),
    "kv-budget": Block(("kv-budget.json",), budget_tables),
}
