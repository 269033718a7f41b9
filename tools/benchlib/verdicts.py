"""The targets the benchmark is judged against, checked from a run's results.

Each verdict carries the measured value, the target, and met / missed / not measured,
so the report can say plainly which targets held on this run and which did not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _point(results: dict[str, Any], target: str, concurrency: int) -> dict[str, Any] | None:
    for point in results.get("store", {}).get("targets", {}).get(target, {}).get("points", []):
        if point["concurrency"] == concurrency:
            return dict(point)
    return None


def _verdict(name: str, value: float | None, target: str,
             ok: Callable[[float], bool], unit: str = "") -> dict[str, Any]:
    if value is None:
        return {"name": name, "value": None, "target": target, "status": "not measured"}
    return {"name": name, "value": value, "unit": unit, "target": target,
            "status": "met" if ok(value) else "missed"}


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the brief, as measured in this run."""
    out = []
    ratios = results.get("store", {}).get("ratios", {})
    for conc in ("1", "8", "32"):
        r = ratios.get(conc, {})
        out.append(_verdict(f"store hit req/s vs ceiling, {conc} clients",
                            r.get("vs_ceiling"), ">= 0.50x", lambda v: v >= 0.5, "x"))
    c1 = _point(results, "cachelayer", 1)
    out.append(_verdict("store hit p99 latency, 1 client", c1["p99_ms"] if c1 else None,
                        "< 2 ms", lambda v: v < 2.0, "ms"))
    for conc in ("1", "8", "32"):
        r = ratios.get(conc, {})
        out.append(_verdict(f"store hit req/s vs LiteLLM disk cache, {conc} clients",
                            r.get("vs_litellm"), ">= 10x", lambda v: v >= 10, "x"))
    summary = results.get("miss", {}).get("summary", {})
    out.append(_verdict("miss: added non-stream latency, p50", summary.get("added_p50_ms"),
                        "<= 1 ms", lambda v: v <= 1.0, "ms"))
    out.append(_verdict("miss: added time to first streamed chunk, p50",
                        summary.get("added_ttfc_p50_ms"), "<= 1 ms", lambda v: v <= 1.0, "ms"))
    return out + kv_verdicts(results.get("kv", {}))


def kv_verdicts(kvr: dict[str, Any]) -> list[dict[str, Any]]:
    """The kv layer's targets per prompt size: a warm second turn (b) within 10% of stock
    mlx-lm's, and at the largest size a new turn after a restart (c) at most 1/20 of cold."""
    sizes = [row for row in kvr.get("sizes", []) if "ratios" in row]
    out = [_verdict(f"kv: warm second turn (b) / stock's, {row['tokens']} tokens",
                    row["ratios"].get("b_cachelayer_over_stock"), "<= 1.10x",
                    lambda v: v <= 1.10, "x") for row in sizes]
    if sizes:
        last = max(sizes, key=lambda row: row["tokens"])
        out.append(_verdict(f"kv: after restart (c) / cold (a), {last['tokens']} tokens",
                            last["ratios"].get("cachelayer_c_over_a"), "<= 0.05x (1/20)",
                            lambda v: v <= 0.05, "x"))
    return out


def kv_paged_verdicts(r: dict[str, Any]) -> list[dict[str, Any]]:
    """tools/bench_kv_paged.py's targets: a restore at >= 70% of the disk's sequential
    read, writes within 1.1x of the distinct tokens' KV, answers equal to cold."""
    disk = r.get("restore", {}).get("disk", {})
    families = r.get("families", [])
    return [
        _verdict("restore after a restart / the disk's sequential read",
                 disk.get("restore_over_read_bandwidth"), ">= 0.70x", lambda v: v >= 0.70, "x"),
        _verdict("bytes written / the session's distinct tokens' KV",
                 r.get("writes", {}).get("paged_over_distinct"), "<= 1.10x",
                 lambda v: v <= 1.10, "x"),
        _verdict("families whose answer after a restart equals cold",
                 sum(bool(f.get("equal_to_cold")) for f in families) if families else None,
                 f"all {len(families)}", lambda v: v == len(families)),
    ]


def scaleout_verdicts(store: dict[str, Any], routing: dict[str, Any]) -> list[dict[str, Any]]:
    """tools/bench_scaleout.py's targets: store hits at >= 0.8x the ceiling (per store and
    connection count), and every later turn on the backend holding its prefix."""
    out = []
    for name, per_conns in store.get("store_hits", {}).get("vs_ceiling", {}).items():
        for conns, ratio in per_conns.items():
            out.append(_verdict(f"store hits vs ceiling: {name}, {conns} connections", ratio,
                                ">= 0.80x", lambda v: v >= 0.80, "x"))
    share = routing.get("routing", {}).get("prefix", {}).get("share_on_prefix_backend")
    out.append(_verdict("prefix routing: later turns on the backend holding their prefix",
                        share, "= 1.00x (100%)", lambda v: v >= 1.0, "x"))
    return out


def prefix_verdicts(r: dict[str, Any]) -> list[dict[str, Any]]:
    """tools/bench_prefix.py's target: layer 1 on a new body within its budget."""
    target = r.get("target_us")
    return [_verdict("layer 1 on a new body", r.get("layer1_new_body_us"),
                     f"<= {target} µs", lambda v: target is not None and v <= target, "µs")]


def fmt_value(v: dict[str, Any]) -> str:
    """A verdict's value for a table cell."""
    if v["value"] is None:
        return "-"
    if isinstance(v["value"], int):
        return str(v["value"])
    unit = v.get("unit", "")
    if unit == "x":
        return f"{v['value']:.3f}x" if abs(v["value"]) < 0.1 else f"{v['value']:.2f}x"
    return f"{v['value']:.2f} {unit}".strip()
