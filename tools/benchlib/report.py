"""Turn a run's results into the markdown report (tables, ratios beside absolute numbers)."""

from __future__ import annotations

from typing import Any

from benchlib import kv
from benchlib.verdicts import fmt_value, verdicts

CLIENTS_NOTE = (
    "Every server under test and the load generator run as separate processes (no shared "
    "event loop), but on the same machine: with {cores} cores, the load generator and the "
    "server each get about one, so the ceiling row is also bounded by the client. The "
    "machine is shared with other work (load average is recorded per point in the JSON), "
    "so the store targets are measured interleaved (every target at every concurrency, "
    "then again) and each cell is the median of {reps} repetitions.")


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def machine_section(meta: dict[str, Any]) -> list[str]:
    """The machine and the software versions."""
    m = meta["machine"]
    return [
        "## Machine", "",
        f"- CPU: {m['cpu_model']}, {m['cores']} cores; RAM {m['ram_gib']} GiB; {m['os']}",
        f"- Python {m['python']}, aiohttp {m['aiohttp']}, mlx {m['mlx']}, "
        f"mlx-lm {m['mlx_lm']}; cachelayer at commit {m['git_commit']}"
        + (" plus uncommitted changes" if m.get("git_dirty") else ""),
        f"- load generator loop: {meta.get('client_loop', '?')}; no GPU", "",
    ]


def summary_table(results: dict[str, Any]) -> list[str]:
    """The main table: each target, what was measured, met or missed."""
    rows = ["| target | measured | goal | result |", "|---|---:|---:|---|"]
    for v in verdicts(results):
        rows.append(f"| {v['name']} | {fmt_value(v)} | {v['target']} | {v['status']} |")
    session = results.get("session", {})
    if "paths" in session:
        p = session["paths"]
        speedup = session.get("speedup_vs_stock") or 0
        rows.append(f"| 10-turn session, wall time: stock / cachelayer | {_f(speedup)}x "
                    f"({_f(p['stock']['total_s'])} s / {_f(p['cachelayer']['total_s'])} s) "
                    f"| > 1x | {'met' if speedup > 1 else 'missed'} |")
    return rows


def store_section(store: dict[str, Any]) -> list[str]:
    """Requests/s and latency of every store target at every concurrency."""
    if "error" in store or "skipped" in store:
        why = store.get("error") or store["skipped"]
        return ["## 1. Store hits", "", f"Not measured: {why}", ""]
    out = ["## 1. Store hits", "",
           f"One {store['request_bytes']:,}-byte Claude-Code-sized OpenAI chat request "
           f"(system prompt, 12 tools, 5 messages; {store['response_bytes']:,}-byte answer), "
           "pre-warmed so every measured request is a hit, sent by N keep-alive clients "
           "back to back. `ceiling` is a bare aiohttp handler that reads the body and "
           "answers the same bytes; `cachelayer /v1/messages` is the same store answering "
           f"a {store['anthropic_request_bytes']:,}-byte Anthropic Messages request.", "",
           "| target | clients | req/s | p50 ms | p99 ms | vs ceiling | upstream calls |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    targets = store["targets"]
    ceiling = {p["concurrency"]: p["rps"] for p in targets.get("ceiling", {}).get("points", [])}
    for name, t in targets.items():
        if "points" not in t:
            out.append(f"| {name} | - | - | - | - | - | {t.get('error') or t.get('skipped')} |")
            continue
        for p in t["points"]:
            ratio = p["rps"] / ceiling[p["concurrency"]] if ceiling.get(p["concurrency"]) else None
            out.append(f"| {name} | {p['concurrency']} | {_f(p['rps'], 0)} | {_f(p['p50_ms'])} "
                       f"| {_f(p['p99_ms'])} | {_f(ratio)}x | {p.get('upstream_calls', '-')} |")
    lite = targets.get("litellm", {})
    if "points" in lite:
        out += ["", f"LiteLLM {lite.get('version')} ({lite.get('config')}); "
                f"upstream calls while warming it: {lite.get('warm_up_upstream_calls')}."]
    ratios = store.get("ratios", {})
    out += ["", "| clients | cachelayer / ceiling | cachelayer / LiteLLM |", "|---:|---:|---:|"]
    for conc, r in ratios.items():
        out.append(f"| {conc} | {_f(r.get('vs_ceiling'))}x | {_f(r.get('vs_litellm'), 1)}x |")
    return [*out, ""]


def miss_section(miss: dict[str, Any]) -> list[str]:
    """Direct vs through cachelayer for forwarded requests."""
    if "non_stream" not in miss:
        return ["## 2. Misses", "", f"Not measured: {miss.get('error') or miss.get('skipped')}", ""]
    ns, st, s = miss["non_stream"], miss["stream"], miss["summary"]
    d, c = st["direct"], st["cachelayer"]
    return [
        "## 2. Misses (forwarded with `Cache-Control: no-store`)", "",
        f"The same {miss['request_bytes']:,}-byte request, one at a time, alternating "
        f"between the paths; the fake upstream answers 256 words at once "
        f"({_f(d['chunks_per_stream'], 0)} SSE chunks). {miss['upstream_calls']} of "
        f"{miss['requests_sent']} requests reached the upstream.", "",
        "| metric | direct | via cachelayer | added | ratio |", "|---|---:|---:|---:|---:|",
        f"| non-stream latency p50 (ms) | {_f(ns['direct']['p50_ms'])} | "
        f"{_f(ns['cachelayer']['p50_ms'])} | {_f(s['added_p50_ms'])} | "
        f"{_f(s['latency_ratio_p50'])}x |",
        f"| non-stream latency p99 (ms) | {_f(ns['direct']['p99_ms'])} | "
        f"{_f(ns['cachelayer']['p99_ms'])} | "
        f"{_f(ns['cachelayer']['p99_ms'] - ns['direct']['p99_ms'])} | - |",
        f"| time to first chunk p50 (ms) | {_f(d['ttfc_p50_ms'])} | {_f(c['ttfc_p50_ms'])} | "
        f"{_f(s['added_ttfc_p50_ms'])} | {_f(s['ttfc_ratio_p50'])}x |",
        f"| whole stream p50 (ms) | {_f(d['p50_ms'])} | {_f(c['p50_ms'])} | "
        f"{_f(c['p50_ms'] - d['p50_ms'])} | {_f(c['p50_ms'] / d['p50_ms'])}x |",
        f"| streamed chunks/s p50 | {_f(d['chunks_per_s_p50'], 0)} | "
        f"{_f(c['chunks_per_s_p50'], 0)} | - | {_f(s['chunks_per_s_ratio'])}x |", ""]


def kv_section(kvr: dict[str, Any], *, paged: bool = True) -> list[str]:
    """TTFT per prompt size: stock vs cachelayer backend, cold, warm, after restart (and,
    with `paged`, the paragraph on the paged store from its own JSON)."""
    if "sizes" not in kvr:
        return ["## 3. The kv layer", "", f"Not measured: {kvr.get('error') or kvr.get('skipped')}",
                ""]
    out = ["## 3. The kv layer (`tools/bench_kv.py`, per prompt size)", "",
           "Time to first token (s) on the demo model. (a) cold: first request; (b) warm: "
           "second turn on the same prefix; (c) after restarting the server, a new turn on "
           "the same prefix. Stock mlx_lm keeps prompt caches in memory only.", "",
           "| tokens | stock a | stock b | stock c | cachelayer a | cachelayer b | "
           "cachelayer c | c speed-up (stock c / cachelayer c) |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in kvr["sizes"]:
        if "error" in row:
            out.append(f"| {row['tokens']} | error: {row['error'][:200]} |||||||")
            continue
        cells = [_f(kv.ttft(row, s, c), 3) for s in ("stock", "cachelayer") for c in kv.CASES]
        out.append(f"| {row['tokens']} | {' | '.join(cells)} | "
                   f"{_f(row['ratios']['c_speedup'], 1)}x |")
    return [*out, "", f"Command per size: `{kvr['command_per_size']}`.", "",
            *(kv.paged_summary() if paged else [])]


def session_section(session: dict[str, Any]) -> list[str]:
    """Per-turn times of the recorded session on every path."""
    if "paths" not in session:
        return ["## 4. A 10-turn Claude Code session", "",
                f"Not measured: {session.get('error') or session.get('skipped')}", ""]
    paths = session["paths"]
    names = list(paths)
    out = ["## 4. A 10-turn Claude-Code-shaped session", "",
           f"{session['model']}; max_tokens {session['max_tokens']}; requests grow from "
           f"{session['request_bytes_turn1']:,} to {session['request_bytes_last']:,} bytes. "
           "`cachelayer`: `cachelayer serve --model DEMO` (backend as its child), "
           "POST /v1/messages, streamed. `stock`: `mlx_lm server`, the equivalent OpenAI "
           "chat body with the billing header line in the system prompt. `stock, no billing "
           "header`: the same with that line removed by hand. Seconds per turn "
           "(cached prompt tokens / prompt tokens).", "",
           "| turn | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for i in range(session["turns"]):
        cells = []
        for name in names:
            t = paths[name]["turns"][i]
            cells.append(f"{t['total_s']:.2f} ({t.get('cached_tokens', '?')}/"
                         f"{t.get('prompt_tokens', '?')})")
        out.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    out.append("| **total** | " + " | ".join(f"**{paths[n]['total_s']:.2f}**" for n in names)
               + " |")
    out += ["", f"Stock total / cachelayer total: {_f(session['speedup_vs_stock'])}x; "
            f"stock-without-header total / cachelayer total: "
            f"{_f(session['speedup_vs_stock_no_header'])}x. cachelayer start-up (not counted): "
            f"{_f(session.get('cachelayer_startup_s'), 1)} s.", ""]
    return out


def marked(name: str, lines: list[str]) -> list[str]:
    """`lines` between the markers tools/render_docs.py re-renders (with provenance)."""
    return [f"<!-- render:{name} -->", *lines, f"<!-- /render:{name} -->"]


def _section(name: str, lines: list[str]) -> list[str]:
    """A section's header, then its body as a marked block."""
    return [*lines[:2], *marked(name, lines[2:-1]), ""]


def markdown(meta: dict[str, Any], results: dict[str, Any], charts: list[str],
             analysis: str = "") -> str:
    """The whole report; `analysis` (hand-written, from <out>/analysis.md) goes after the
    summary so the reading of the numbers survives re-runs of the tool. Tables sit in
    marked blocks, so `make bench-docs` can re-render them with their provenance."""
    out = ["# Benchmarks", "",
           f"Generated by `{meta['command']}` on {meta['finished_at']} "
           f"({'quick smoke test' if meta['quick'] else 'full run'}, "
           f"{meta['duration_s']:.0f} s). Raw numbers: `{meta['json_name']}`.", "",
           "## Machine", "", *marked("bench-machine", machine_section(meta)[2:-1]), "",
           "## Summary", "", *marked("bench-summary", summary_table(results)), "",
           CLIENTS_NOTE.format(cores=meta["machine"]["cores"], reps=meta["repetitions"]), ""]
    for note in meta.get("notes", []):
        out.append(f"- {note}")
    if meta.get("notes"):
        out.append("")
    if analysis.strip():
        out += [analysis.strip(), ""]
    out += _section("bench-store", store_section(
        results.get("store", {"skipped": "not selected (--only)"})))
    out += _section("bench-miss", miss_section(
        results.get("miss", {"skipped": "not selected (--only)"})))
    out += _section("bench-kv", kv_section(
        results.get("kv", {"skipped": "not selected (--only)"}), paged=False))
    paged = kv.paged_summary()
    if paged:
        out += _section("kv-paged-summary", paged)
    out += _section("bench-session", session_section(
        results.get("session", {"skipped": "not selected (--only)"})))
    if charts:
        out += ["## Charts", ""] + [f"![{c}]({c})" for c in charts] + [""]
    return "\n".join(out)
