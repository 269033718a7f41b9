"""PNG charts of a run (matplotlib, the `bench` extra); never needed by --quick."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib import kv


def available() -> bool:
    """Whether matplotlib can be imported here."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on CI or servers
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def store_chart(store: dict[str, Any], path: Path) -> bool:
    """Grouped bars: req/s per target at each concurrency (log scale: LiteLLM is far off)."""
    targets = {n: t["points"] for n, t in store.get("targets", {}).items() if "points" in t}
    if not targets:
        return False
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    concs = [p["concurrency"] for p in next(iter(targets.values()))]
    width = 0.8 / len(targets)
    for i, (name, points) in enumerate(targets.items()):
        xs = [j + i * width for j in range(len(concs))]
        ax.bar(xs, [p["rps"] for p in points], width, label=name)
        ax2.bar(xs, [p["p99_ms"] for p in points], width, label=name)
    for a, title in ((ax, "store hits: requests/s"), (ax2, "store hits: p99 latency (ms)")):
        a.set_xticks([j + 0.4 - width / 2 for j in range(len(concs))])
        a.set_xticklabels([f"{c} clients" for c in concs])
        a.set_yscale("log")
        a.set_title(title)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def miss_chart(miss: dict[str, Any], path: Path) -> bool:
    """Bars: direct vs via cachelayer for the three miss latencies."""
    if "non_stream" not in miss:
        return False
    plt = _plt()
    labels = ["non-stream p50", "first chunk p50", "whole stream p50"]
    rows = {name: [miss["non_stream"][name]["p50_ms"], miss["stream"][name]["ttfc_p50_ms"],
                   miss["stream"][name]["p50_ms"]] for name in ("direct", "cachelayer")}
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, values) in enumerate(rows.items()):
        ax.bar([j + i * 0.4 for j in range(3)], values, 0.4, label=name)
    ax.set_xticks([j + 0.2 for j in range(3)])
    ax.set_xticklabels(labels)
    ax.set_ylabel("ms")
    ax.set_title("misses: straight to the upstream vs through cachelayer")
    ax.legend()
    return _save(plt, fig, path)


def kv_chart(kvr: dict[str, Any], path: Path) -> bool:
    """Lines: TTFT vs prompt tokens, per server and case (log-log)."""
    rows = [r for r in kvr.get("sizes", []) if "error" not in r]
    if not rows:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = {"a_cold": "cold", "b_second_turn": "warm (2nd turn)",
             "c_after_restart": "after restart"}
    for server, style in (("stock", "--"), ("cachelayer", "-")):
        for case, label in names.items():
            pts = [(r["tokens"], kv.ttft(r, server, case)) for r in rows]
            pts = [(x, y) for x, y in pts if y]
            ax.plot([x for x, _ in pts], [y for _, y in pts], style, marker="o",
                    label=f"{server}: {label}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("time to first token (s)")
    ax.set_title("kv layer: stock mlx_lm server vs cachelayer backend")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def session_chart(session: dict[str, Any], path: Path) -> bool:
    """Lines: seconds per turn of the recorded session, per path."""
    if "paths" not in session:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, p in session["paths"].items():
        ax.plot([t["turn"] for t in p["turns"]], [t["total_s"] for t in p["turns"]],
                marker="o", label=f"{name} (total {p['total_s']:.1f} s)")
    ax.set_xlabel("turn")
    ax.set_ylabel("seconds")
    ax.set_title("10-turn Claude-Code-shaped session")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def draw_all(results: dict[str, Any], out_dir: Path) -> list[str]:
    """Every chart that has data; returns the file names written."""
    jobs = (("store.png", store_chart, "store"), ("miss.png", miss_chart, "miss"),
            ("kv.png", kv_chart, "kv"), ("session.png", session_chart, "session"))
    written = []
    for name, draw, key in jobs:
        if key in results and draw(results[key], out_dir / name):
            written.append(name)
    return written
