"""Time to first token: stock `mlx_lm server` vs `cachelayer backend`, across a restart.

For each server, on the offline demo model and a long system prompt:
  (a) cold: first request;
  (b) second turn: the conversation continues on the same prefix (both servers up,
      their warm turns alternating, so load on a shared machine hits both alike);
  (c) restart the server, then the same prefix with a new user turn.
Writes bench-kv.json and bench-kv.md to --out.

    python tools/bench_kv.py [--quick] [--tokens N] [--out DIR]
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

from benchlib.provenance import stamp

from cachelayer.backend.demo_model import build_demo_model
from tests.support.processes import (
    backend_command,
    free_port,
    start_server,
    stock_command,
    stop_server,
)

ROOT = Path(__file__).resolve().parent.parent
# Warm second turns take ~10 ms: on a shared 2-core machine one sample is mostly noise,
# so the median of many is reported (each costs one short request).
B_SAMPLES = 21
_SENTENCE = "Rule {i}: before editing file number {i}, read it and run the tests. "


def system_prompt(tokenizer: Any, target_tokens: int) -> str:
    """A deterministic system prompt of about `target_tokens` tokens."""
    text = ""
    i = 0
    while True:
        chunk = "".join(_SENTENCE.format(i=i + k) for k in range(50))
        if len(tokenizer.encode(text + chunk)) > target_tokens:
            break
        text += chunk
        i += 50
    while len(tokenizer.encode(text)) < target_tokens:
        text += _SENTENCE.format(i=i)
        i += 1
    return text


def stream_chat(url: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    """One streamed chat request: time to first token, total time, text, usage."""
    body = {
        "model": "default_model",  # stock mlx_lm would try to load any other name
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    started = time.perf_counter()
    ttft = None
    text = ""
    usage: dict[str, Any] = {}
    with urllib.request.urlopen(request, timeout=1800) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            for choice in chunk.get("choices") or []:
                if ttft is None:
                    ttft = time.perf_counter() - started
                text += (choice.get("delta") or {}).get("content") or ""
            usage = chunk.get("usage") or usage
    total = time.perf_counter() - started
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {
        "ttft_s": round(ttft if ttft is not None else total, 4),
        "total_s": round(total, 4),
        "prompt_tokens": usage.get("prompt_tokens"),
        "cached_tokens": cached,
        "text": text,
    }


def _turn2(turn1: list[dict[str, str]], answer: str, i: int) -> list[dict[str, str]]:
    return [*turn1, {"role": "assistant", "content": answer},
            {"role": "user", "content": f"Now list the rules about tests, part {i}."}]


def run_servers(commands: dict[str, Any], system: str, work: Path,
                max_tokens: int) -> dict[str, dict[str, Any]]:
    """Per server: (a) cold, (b) second turn (median of B_SAMPLES), (c) a new turn after
    a restart.

    Both servers run at once for (a) and (b): each cold prefill runs while the other
    server idles, then the warm turns alternate between the servers (the order flipped
    every round), so a burst of load on the shared machine hits both alike instead of
    whichever ran at that minute.
    """
    results: dict[str, dict[str, Any]] = {name: {} for name in commands}
    turn1 = [{"role": "system", "content": system}, {"role": "user", "content": "Hi."}]
    servers = {}
    try:
        for name, argv_for_port in commands.items():
            port = free_port()
            servers[name] = start_server(argv_for_port(port), port, work / f"{name}-1.log",
                                         cwd=ROOT)
        for name, server in servers.items():
            print(f"  {name}: cold ...", file=sys.stderr)
            results[name]["a_cold"] = stream_chat(server.url, turn1, max_tokens)
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        for i in range(B_SAMPLES):
            order = list(servers) if i % 2 == 0 else list(reversed(servers))
            for name in order:
                turn2 = _turn2(turn1, results[name]["a_cold"]["text"], i)
                samples[name].append(stream_chat(servers[name].url, turn2, max_tokens))
        for name, taken in samples.items():
            taken.sort(key=lambda r: r["ttft_s"])
            results[name]["b_second_turn"] = {
                **taken[len(taken) // 2],
                "ttft_samples_s": [r["ttft_s"] for r in taken],
            }
    finally:
        for server in servers.values():
            stop_server(server)
    turn3 = [{"role": "system", "content": system},
             {"role": "user", "content": "A new question after the restart."}]
    for name, argv_for_port in commands.items():
        port = free_port()
        server = start_server(argv_for_port(port), port, work / f"{name}-2.log", cwd=ROOT)
        try:
            results[name]["c_after_restart"] = stream_chat(server.url, turn3, max_tokens)
        finally:
            stop_server(server)
    for per_server in results.values():
        for r in per_server.values():
            r.pop("text")
    return results


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table plus ratios."""
    rows = [
        "| server | case | TTFT (s) | prompt tokens | cached tokens |",
        "|---|---|---:|---:|---:|",
    ]
    for server in ("stock", "cachelayer"):
        for case, r in report[server].items():
            rows.append(
                f"| {server} | {case} | {r['ttft_s']:.3f} | {r['prompt_tokens']} "
                f"| {r['cached_tokens']} |"
            )
    ratios = report["ratios"]
    rows += [
        "",
        f"- cachelayer (c)/(a): {ratios['cachelayer_c_over_a']:.3f} (target <= 0.05)",
        f"- stock (c)/(a): {ratios['stock_c_over_a']:.3f} (expected ~1)",
        f"- cachelayer (b)/stock (b): {ratios['b_cachelayer_over_stock']:.3f} (target <= 1.10)",
        f"- stock (c) / cachelayer (c): {ratios['c_speedup']:.1f}x",
        f"- load average before/after: {report['loadavg_before']} / {report['loadavg_after']}",
    ]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Build the model, run both servers, write bench-kv.json and bench-kv.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about 3k tokens instead of 16k")
    parser.add_argument("--tokens", type=int, help="system prompt length in tokens")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens to generate")
    parser.add_argument("--out", type=Path, default=Path("."), help="where to write results")
    parser.add_argument("--work-dir", type=Path, help="model, kv dir and logs (default: temp)")
    args = parser.parse_args(argv)
    target = args.tokens or (3000 if args.quick else 16000)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-kv-"))
    work.mkdir(parents=True, exist_ok=True)
    model = build_demo_model(work / "demo-model")

    from transformers import AutoTokenizer

    system = system_prompt(AutoTokenizer.from_pretrained(str(model)), target)
    kv_dir = work / "kv"
    scenarios = {
        "stock": lambda port: stock_command(model, port),
        "cachelayer": lambda port: backend_command(model, port, kv_dir),
    }
    report: dict[str, Any] = {
        "command": " ".join(["python", "tools/bench_kv.py", *(argv or sys.argv[1:])]),
        "system_prompt_tokens": target,
        "model": "demo llama, hidden 64, 2 layers, 2 heads, float32, random weights",
        "machine": stamp(),  # commit, dirty flag, machine
    }
    # Other jobs on the machine skew single runs; the load average says how much.
    report["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    report["warm_turns"] = "interleaved: both servers up, turns alternating"
    report.update(run_servers(scenarios, system, work, args.max_tokens))
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    s, c = report["stock"], report["cachelayer"]
    report["ratios"] = {
        "cachelayer_c_over_a": c["c_after_restart"]["ttft_s"] / c["a_cold"]["ttft_s"],
        "stock_c_over_a": s["c_after_restart"]["ttft_s"] / s["a_cold"]["ttft_s"],
        "b_cachelayer_over_stock": c["b_second_turn"]["ttft_s"] / s["b_second_turn"]["ttft_s"],
        "c_speedup": s["c_after_restart"]["ttft_s"] / c["c_after_restart"]["ttft_s"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench-kv.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "bench-kv.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
