"""The tables of tools/bench_kv_budget.py (memory under --prompt-cache-bytes, cachelayer vs
stock mlx_lm.server), shared by the tool's own report and docs/kv-cache.md's block."""

from __future__ import annotations

from typing import Any

_MB = 1e6


def budget_tables(report: dict[str, Any]) -> list[str]:
    """RSS growth against the budget as N grows, and the early prompt's reuse."""
    s, c = report["stock"], report["cachelayer"]
    n = len(s["rss"])
    marks = sorted({1, 5, 10, 20, 30, 40, n} & set(range(1, n + 1)))
    rows = [f"Budget `--prompt-cache-bytes {report['budget']}` "
            f"({report['budget_bytes'] / _MB:.0f} MB) on both; KV of one prompt: "
            f"~{report['prompt_kv_bytes'] / _MB:.0f} MB.", "",
            "| prompts | stock RSS growth (MB) | cachelayer RSS growth (MB) |",
            "|---:|---:|---:|"]
    for i in marks:
        rows.append(f"| {i} | {(s['rss'][i - 1] - s['rss_base']) / _MB:.0f} "
                    f"| {(c['rss'][i - 1] - c['rss_base']) / _MB:.0f} |")
    rows += ["", "| first prompt again | cached tokens | seconds | answer = cold |",
             "|---|---:|---:|---|"]
    for name, r in (("stock", s), ("cachelayer", c)):
        rows.append(f"| {name} | {r['again']['cached_tokens']} of {r['again']['prompt_tokens']} "
                    f"| {r['again']['seconds']:.2f} (cold {r['first']['seconds']:.2f}) "
                    f"| {'yes' if r['identical'] else 'no'} |")
    mem = c["memory"] or {}
    peak_c, peak_s = c["rss_peak"] - c["rss_base"], s["rss_peak"] - s["rss_base"]
    rows += ["", f"- cachelayer's hot tier at the end: {mem.get('bytes', 0) / _MB:.0f} MB of "
                 f"{mem.get('budget_bytes', 0) / _MB:.0f} MB, {mem.get('evictions')} evictions",
             f"- peak RSS growth: cachelayer {peak_c / _MB:.0f} MB, stock {peak_s / _MB:.0f} MB "
             f"({peak_c / max(1, peak_s):.2f}x)",
             f"- load average before/after: {report['loadavg_before']} / "
             f"{report['loadavg_after']}"]
    return rows
