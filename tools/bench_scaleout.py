#!/usr/bin/env python3
"""Scale-out benchmark: store hits through Redis vs diskcache vs the bare aiohttp ceiling
(wrk), and prefix-affinity routing vs round-robin over three backends.

    .venv/bin/python tools/bench_scaleout.py [--quick] [--out docs/benchmarks/scaleout.json]

Part 1 (wrk, Debian package `wrk`): the same ~50 KB Claude-Code-sized request, warmed
into a HIT, against four targets measured interleaved in the same run: the ceiling (a
bare aiohttp handler answering the HIT's bytes), cachelayer on diskcache, cachelayer on
Redis with its hot tier (hot-tier hits), and on Redis with `--hot-tier-size 0` (every
hit read from Redis). The fake upstream counts calls: a target whose count moved during
its measurement was not all hits and is flagged.

Part 2: one proxy in front of three scripted backends that report KV reuse like a
prefix-caching server (tests/support/kv_fake.py); 30 conversations of 6 turns over 10
system prompts, four at a time, in a shuffled order each round (the same for both
modes); `--routing prefix` and `--routing
round-robin` on the same conversations. Reported: the share of turns 2..n that land on
the backend that served the conversation's previous turn (it holds the whole prefix),
and the KV tokens the backends reused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path[:0] = [str(TOOLS), str(REPO)]

from benchlib import payload, procs  # noqa: E402

from tests.support.kv_fake import KvFake  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.servers import serve_app  # noqa: E402

ROUTE = "/v1/chat/completions"
AUTH = {"Authorization": "Bearer bench-tenant"}
_WRK_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-tenant"
local f = io.open("{body}", "rb"); wrk.body = f:read("*a"); f:close()
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, lua: Path, connections: int, duration_s: float) -> dict[str, Any]:
    """One wrk run (one thread: the box has two cores and the servers need them)."""
    done = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s",
                           "--latency", "-s", str(lua), url],
                          capture_output=True, text=True, check=True, timeout=duration_s + 60)
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": float(p50.group(1)) * _UNITS[p50.group(2)] if p50 else None,
            "non_2xx": int(errors.group(1)) if errors else 0}


def warm(url: str, body: bytes) -> bytes:
    """Send until the answer is a HIT; the HIT's bytes."""
    for _ in range(100):
        status, headers, raw = procs.post(url, body, AUTH)
        if status == 200 and headers.get("X-Cache-Status") == "HIT":
            return raw
        time.sleep(0.05)
    raise RuntimeError(f"{url} never answered a HIT")


def calls(fake: procs.Server) -> int:
    """Requests that reached the fake upstream so far."""
    return int(procs.get_json(fake.url + "/bench/calls")["calls"])


def reference_argv(checkout: Path, port: int, upstream: str, data_dir: Path) -> list[str]:
    """`cachelayer serve` from another checkout (e.g. main before this change), same flags."""
    start = (f"import runpy, sys; sys.path.insert(0, {str(checkout)!r}); "
             "sys.argv[0] = 'cachelayer'; "
             "runpy.run_module('cachelayer', run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", start, *procs.cachelayer_argv(port, upstream, data_dir)[3:]]


def store_hits(work: Path, quick: bool, reference: Path | None = None) -> dict[str, Any]:
    """Part 1: req/s of hits per target, interleaved repetitions, medians and ratios."""
    body = json.dumps(payload.openai_request(scale=0.9)).encode()
    body_file = work / "request.json"
    body_file.write_bytes(body)
    lua = work / "post.lua"
    lua.write_text(_WRK_LUA.format(body=body_file))
    logs = work / "logs"
    redis = RedisServer(work / "redis")
    redis.start()
    targets: dict[str, str] = {}
    try:
        with contextlib.ExitStack() as stack:
            port = procs.free_port()
            fake = stack.enter_context(procs.server(
                "fake", procs.target_argv("fake", port), port, logs))
            variants = {
                "diskcache": [],
                "redis (hot tier)": ["--store", redis.url()],
                "redis (no hot tier)": ["--store", redis.url(), "--hot-tier-size", "0"],
            }
            hit = b""
            for n, (name, extra) in enumerate(variants.items()):
                port = procs.free_port()
                server = stack.enter_context(procs.server(
                    f"cachelayer-{n}", procs.cachelayer_argv(
                        port, fake.url, work / f"data-{n}", "--log-level", "warning",
                        *extra), port, logs))
                hit = warm(server.url + ROUTE, body)
                targets[name] = server.url + ROUTE
            if reference is not None:
                port = procs.free_port()
                server = stack.enter_context(procs.server("reference", reference_argv(
                    reference, port, fake.url, work / "data-ref"), port, logs))
                warm(server.url + ROUTE, body)
                targets["diskcache (reference checkout)"] = server.url + ROUTE
            (work / "hit.json").write_bytes(hit)
            port = procs.free_port()
            ceiling = stack.enter_context(procs.server("ceiling", procs.target_argv(
                "ceiling", port, "--body-file", str(work / "hit.json")), port, logs))
            targets = {"ceiling": ceiling.url + ROUTE, **targets}
            reps, duration = (1, 1.0) if quick else (3, 3.0)
            raw: dict[str, dict[int, list[dict[str, Any]]]] = {t: {} for t in targets}
            for _ in range(reps):
                for conc in (8, 32):
                    for name, url in targets.items():
                        before = calls(fake)
                        point = wrk(url, lua, conc, duration)
                        point["upstream_calls"] = calls(fake) - before
                        point["loadavg_1m"] = os.getloadavg()[0]
                        raw[name].setdefault(conc, []).append(point)
    finally:
        redis.stop()
    results: dict[str, Any] = {}
    for name, by_conc in raw.items():
        results[name] = {}
        for conc, points in by_conc.items():
            results[name][str(conc)] = {
                "rps_median": statistics.median(p["rps"] for p in points),
                "rps_reps": [p["rps"] for p in points],
                "p50_ms_median": statistics.median(p["p50_ms"] or 0 for p in points),
                "non_2xx": sum(p["non_2xx"] for p in points),
                "loadavg_1m": [p["loadavg_1m"] for p in points],
                "upstream_calls": sum(p["upstream_calls"] for p in points)}
    ratios = {name: {conc: round(v["rps_median"] / results["ceiling"][conc]["rps_median"], 3)
                     for conc, v in by_conc.items()}
              for name, by_conc in results.items() if name != "ceiling"}
    return {"request_bytes": len(body), "response_bytes": len(hit), "targets": results,
            "vs_ceiling": ratios}


def _conversation(n: int) -> dict[str, Any]:
    system = f"You are the coding agent of project {n % 10}. " + payload.system_prompt(0.05)
    return {"n": n, "tools": payload.openai_tools(payload.anthropic_tools(0.2, seed=n % 10)),
            "messages": [{"role": "system", "content": system}], "served_by": []}


def routing(work: Path, mode: str, turns: int) -> dict[str, Any]:
    """Part 2 for one routing mode: where turns landed and what the backends reused."""
    fakes = [KvFake() for _ in range(3)]
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(serve_app(f.upstream.make_app)) for f in fakes]
        url_index = {s.url: i for i, s in enumerate(servers)}
        port = procs.free_port()
        argv = procs.cachelayer_argv(port, servers[0].url, work / f"data-{mode}",
                                     "--routing", mode, "--log-level", "warning",
                                     "--response-cache", "off")
        for s in servers[1:]:
            argv += ["--upstream", s.url]
        proxy = stack.enter_context(procs.server(f"cachelayer-{mode}", argv, port,
                                                 work / "logs"))
        conversations = [_conversation(n) for n in range(30)]

        def turn(conv: dict[str, Any], k: int) -> None:
            conv["messages"].append({"role": "user", "content": f"conv {conv['n']} turn {k}"})
            body = json.dumps({"model": "m", "messages": conv["messages"],
                               "tools": conv["tools"]}).encode()
            status, _h, raw = procs.post(proxy.url + ROUTE, body, AUTH)
            if status != 200:
                raise RuntimeError(f"turn answered {status}: {raw[:200]!r}")
            conv["messages"].append(json.loads(raw)["choices"][0]["message"])
            marker = f"conv {conv['n']} turn {k}"
            conv["served_by"].append(next(
                i for i, f in enumerate(fakes)
                if any(c["messages"][-1].get("content") == marker for c in f.upstream.calls)))

        started = time.perf_counter()
        rng = random.Random(17)  # the same interleaving for both modes
        with ThreadPoolExecutor(4) as pool:
            for k in range(1, turns + 1):
                order = rng.sample(conversations, len(conversations))
                list(pool.map(lambda c, k=k: turn(c, k), order))
        elapsed = time.perf_counter() - started
        health = procs.get_json(proxy.url + "/health")
    follow = [c["served_by"][i] == c["served_by"][i - 1]
              for c in conversations for i in range(1, turns)]
    per_backend = {str(url_index[b["url"]]): {"requests": b["requests"],
                                              "kvTokensReused": b["kvTokensReused"]}
                   for b in health["backends"]}
    prompt = sum(f.prompt_total for f in fakes)
    reused = sum(f.reused_total for f in fakes)
    return {"turns": len(follow) + len(conversations),
            "share_on_prefix_backend": round(sum(follow) / len(follow), 4),
            "kv_tokens_reused": reused, "prompt_tokens": prompt,
            "reused_share": round(reused / prompt, 4), "prefilled_tokens": prompt - reused,
            "per_backend": per_backend,
            "seconds": round(elapsed, 2)}


def main(argv: list[str] | None = None) -> int:
    """Run both parts; print and write the JSON."""
    parser = argparse.ArgumentParser(prog="tools/bench_scaleout.py")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here")
    parser.add_argument("--only", choices=["store", "routing"], default=None)
    parser.add_argument("--reference", type=Path, default=None,
                        help="another checkout (e.g. /work/main) measured as a fourth store "
                             "target, to show what this change costs on the diskcache path")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None and args.only != "routing":
        parser.error("wrk is not installed (apt-get install wrk)")
    out: dict[str, Any] = {"machine": procs.machine(),
                           "command": "tools/bench_scaleout.py " + " ".join(argv or sys.argv[1:])}

    def parts(work: Path) -> None:
        if args.only in (None, "store"):
            out["store_hits"] = store_hits(work, args.quick, args.reference)
        if args.only in (None, "routing"):
            out["routing"] = {mode: routing(work, mode, 6) for mode in ("prefix", "round-robin")}

    return procs.run_parts("cachelayer-scaleout-", out, parts, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
