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
    return out


def fmt_value(v: dict[str, Any]) -> str:
    """A verdict's value for a table cell."""
    if v["value"] is None:
        return "-"
    unit = v.get("unit", "")
    if unit == "x":
        return f"{v['value']:.2f}x"
    return f"{v['value']:.2f} {unit}".strip()
