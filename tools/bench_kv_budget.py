"""Memory under a byte budget: `cachelayer backend` vs stock `mlx_lm.server`, side by side.

Both get the same `--prompt-cache-bytes`. On a model of a real model's KV width
(48 layers x 4 KV heads x head_dim 128 in bfloat16, 96 KiB per token, on a hidden
size of 64 so CPU prefill stays tractable), N distinct prompts go through each server
one after another; the resident memory (RSS) of the server process is read after each.
Then the first prompt comes again: it left memory long ago, so stock prefills it
from scratch while cachelayer restores it from disk; the answer must equal the cold one
(token ids and logprobs, greedy). Writes bench-kv-budget.json and .md to --out.

    python tools/bench_kv_budget.py [--prompts 40] [--budget 256M] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

# Run from a checkout without installing: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import provenance
from benchlib.kv_budget import budget_tables

from cachelayer.backend.memory_budget import parse_mlx_size
from tests.support.processes import (
    ServerProcess,
    backend_command,
    free_port,
    start_server,
    stock_command,
    stop_server,
)
from tests.support.variant_models import build_wide_model

ROOT = Path(__file__).resolve().parent.parent
_RULES = " ".join(f"Rule {i}: read file number {i} before editing it." for i in range(24))


def ask(server: ServerProcess, case: int, max_tokens: int) -> dict[str, Any]:
    """One greedy completion of prompt `case` (distinct from its first words on)."""
    body = {"messages": [{"role": "system", "content": f"Case {case} of many. {_RULES}"},
                         {"role": "user", "content": f"What does case {case} need?"}],
            "max_tokens": max_tokens, "temperature": 0, "logprobs": True}
    request = urllib.request.Request(f"{server.url}/v1/chat/completions",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=900) as r:
        out = json.loads(r.read())
    return {"seconds": round(time.monotonic() - started, 3),
            "prompt_tokens": out["usage"]["prompt_tokens"],
            "cached_tokens": out["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0),
            "answer": [(t["id"], t["logprob"]) for t in out["choices"][0]["logprobs"]["content"]]}


def rss(server: ServerProcess) -> int:
    """Resident bytes of the server process now (Linux)."""
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run(name: str, argv: Any, prompts: int, max_tokens: int, work: Path) -> dict[str, Any]:
    """N distinct prompts, RSS after each, then the first prompt again."""
    port = free_port()
    server = start_server(argv(port), port, work / f"{name}.log", cwd=ROOT, ready_timeout=600)
    try:
        base = rss(server)
        series, first = [], None
        for case in range(prompts):
            r = ask(server, case, max_tokens)
            first = first or r
            series.append(rss(server))
            print(f"{name}: prompt {case + 1}/{prompts} rss {series[-1] / 1e6:.0f} MB "
                  f"({r['seconds']:.1f}s)", file=sys.stderr)
        again = ask(server, 0, max_tokens)
        hot = None
        if name == "cachelayer":
            with urllib.request.urlopen(f"{server.url}/v1/cachelayer/kv", timeout=30) as r:
                hot = json.loads(r.read())["memory"]
    finally:
        stop_server(server)
    assert first is not None
    return {"rss_base": base, "rss": series, "rss_peak": max(series), "first": first,
            "again": again, "identical": again["answer"] == first["answer"], "memory": hot}


def markdown(report: dict[str, Any]) -> str:
    """RSS against the budget as N grows, and the early prompt's reuse."""
    return "\n".join(budget_tables(report)) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Build the model, run both servers, write bench-kv-budget.json and .md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=40, help="distinct prompts (40)")
    parser.add_argument("--budget", default="256M", help="--prompt-cache-bytes of both (256M)")
    parser.add_argument("--layers", type=int, default=48, help="model layers (48)")
    parser.add_argument("--max-tokens", type=int, default=2, help="tokens per answer (2)")
    parser.add_argument("--quick", action="store_true", help="8 prompts, 8 layers, 32M")
    parser.add_argument("--out", type=Path, default=Path("."), help="where to write results")
    parser.add_argument("--work-dir", type=Path, help="model, kv dir and logs (default: temp)")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.layers, args.budget = 8, 8, "32M"
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-kv-budget-"))
    work.mkdir(parents=True, exist_ok=True)
    model = build_wide_model(work / f"wide-{args.layers}", layers=args.layers, kv_heads=4,
                             head_dim=128, dtype="bfloat16")
    budget = parse_mlx_size(args.budget)
    flags = ("--prompt-cache-bytes", args.budget)
    servers = {
        "stock": lambda port: stock_command(model, port, *flags),
        "cachelayer": lambda port: backend_command(model, port, work / "kv", *flags),
    }
    report: dict[str, Any] = {
        "command": " ".join(["python", "tools/bench_kv_budget.py", *(argv or sys.argv[1:])]),
        "model": f"random llama, hidden 64, {args.layers} layers x 4 KV heads x head_dim 128, "
                 "bfloat16",
        "budget": args.budget, "budget_bytes": budget,
        "machine": provenance.stamp(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    for name, make_argv in servers.items():
        report[name] = run(name, make_argv, args.prompts, args.max_tokens, work)
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    tokens = report["stock"]["first"]["prompt_tokens"]
    report["prompt_kv_bytes"] = tokens * args.layers * 4 * 128 * 2 * 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench-kv-budget.json").write_text(json.dumps(report, indent=2))
    (args.out / "bench-kv-budget.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
