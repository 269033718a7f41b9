#!/usr/bin/env python3
"""Store hits beside bare aiohttp, and what a miss pays for going through cachelayer.

    .venv/bin/python tools/bench_store_hits.py [--quick] [--reference REF]
        [--out docs/benchmarks/store-hits.json]

Part 1 (wrk, 1 thread, 8 and 64 connections): the same ~50 KB Claude-Code-sized request,
warmed into a HIT (a byte-identical repeat, so the fast path answers it), against targets
measured interleaved in one run: the ceiling (a bare aiohttp handler that reads the
request and answers the HIT's bytes), cachelayer on diskcache, on Redis with its hot tier,
and on Redis with `--hot-tier-size 0` (every hit read from Redis). With `--reference REF`
the proxy as of that git ref (e.g. the commit before the fast path) runs on diskcache as
one more target, exported from git into the work dir. The fake upstream counts calls: a
target whose count moved while it was measured was not all hits, and says so. Beside
req/s, each cell records the server process's own CPU time per answer (/proc, user plus
system, all threads; for Redis targets not counting redis-server): on a box shared with
other jobs the req/s ratio also measures how the cores were shared, the CPU ratio does
not.

Part 3: the fast path on and off in one proxy process, alternating (benchlib/
fast_path_ab.py): answers/s and the loop thread's CPU per answer in each mode, so its
own effect is measured without another process or another moment between the two.

Part 2: misses, one request at a time, in turn to the fake upstream directly, through a
bare aiohttp relay (benchlib/targets.py: reads, forwards, answers the bytes: the second
hop alone), through cachelayer (diskcache) and (with `--reference`) the reference proxy.
Every request has a body never sent before (a counter in its last message), so cachelayer
looks it up, misses, forwards, relays and stores it: the whole miss path, the fast path's
hashing and learning included. Reported: p50 and p99 of each, the p50 each adds over
direct and over the bare relay (cachelayer's own work); the reference's beside this
checkout's is what the fast path costs a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path[:0] = [str(TOOLS), str(REPO)]

import aiohttp  # noqa: E402
from bench_scaleout import _WRK_LUA, AUTH, ROUTE, calls, warm, wrk  # noqa: E402
from benchlib import fast_path_ab, payload, procs  # noqa: E402
from benchlib.loadgen import percentile  # noqa: E402

from cachelayer.config import Settings  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

CONNECTIONS = (8, 64)
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS
TARGET_RATIO = 0.8
TARGET_ADDED_MS = 1.0


def resolve_ref(ref: str) -> str:
    """A git ref's short commit hash, resolved once so both parts measure the same code
    (a branch may move while the benchmark runs)."""
    return subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()


def export_ref(commit: str, into: Path) -> str:
    """`git archive` of a commit into a directory (the proxy as of then); the commit."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def _summarise(raw: dict[str, dict[int, list[dict[str, Any]]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, by_conc in raw.items():
        out[name] = {str(conc): {
            "rps_median": statistics.median(p["rps"] for p in points),
            "rps_reps": [p["rps"] for p in points],
            "p50_ms_median": statistics.median(p["p50_ms"] or 0 for p in points),
            "cpu_us_median": statistics.median(p["cpu_us_per_request"] for p in points),
            "non_2xx": sum(p["non_2xx"] for p in points),
            "loadavg_1m": [p["loadavg_1m"] for p in points],
            "upstream_calls": sum(p["upstream_calls"] for p in points)}
            for conc, points in by_conc.items()}
    return out


def store_hits(work: Path, reps: int, duration_s: float,
               reference: tuple[str, str] | None) -> dict[str, Any]:
    """Part 1: req/s of hits per target, interleaved repetitions, medians and ratios."""
    body = json.dumps(payload.openai_request(scale=0.9)).encode()
    body_file = work / "request.json"
    body_file.write_bytes(body)
    lua = work / "post.lua"
    lua.write_text(_WRK_LUA.format(body=body_file))
    logs = work / "logs"
    redis = RedisServer(work / "redis")
    redis.start()
    targets: dict[str, procs.Server] = {}
    info: dict[str, Any] = {}
    try:
        with contextlib.ExitStack() as stack:
            port = procs.free_port()
            fake = stack.enter_context(procs.server(
                "fake", procs.target_argv("fake", port), port, logs))
            variants: dict[str, tuple[list[str], Path | None]] = {
                "diskcache": ([], None),
                "redis (hot tier)": (["--store", redis.url()], None),
                "redis (no hot tier)": (["--store", redis.url(), "--hot-tier-size", "0"], None),
            }
            if reference is not None:
                ref, commit = reference
                checkout = work / "reference"
                export_ref(commit, checkout)
                info["reference"] = {"ref": ref, "commit": commit}
                variants[f"diskcache at {commit} ({ref})"] = ([], checkout)
            hit = b""
            for n, (name, (extra, checkout)) in enumerate(variants.items()):
                port = procs.free_port()
                env = ({"PYTHONPATH": os.pathsep.join([str(checkout), str(TOOLS)])}
                       if checkout else None)
                server = stack.enter_context(procs.server(
                    f"cachelayer-{n}", procs.cachelayer_argv(
                        port, fake.url, work / f"data-{n}", "--log-level", "warning",
                        *extra), port, logs, env=env, cwd=checkout or procs.REPO))
                hit = warm(server.url + ROUTE, body)
                targets[name] = server
            (work / "hit.json").write_bytes(hit)
            port = procs.free_port()
            ceiling = stack.enter_context(procs.server("ceiling", procs.target_argv(
                "ceiling", port, "--body-file", str(work / "hit.json")), port, logs))
            targets = {"ceiling": ceiling, **targets}
            raw: dict[str, dict[int, list[dict[str, Any]]]] = {t: {} for t in targets}
            for _ in range(reps):
                for conc in CONNECTIONS:
                    for name, server in targets.items():
                        before, cpu = calls(fake), cpu_seconds(server.proc.pid)
                        point = wrk(server.url + ROUTE, lua, conc, duration_s)
                        # The server's own CPU per answer: what the noisy box's share
                        # of wrk and of other jobs does not change.
                        point["cpu_us_per_request"] = ((cpu_seconds(server.proc.pid) - cpu)
                                                       / (point["rps"] * duration_s) * 1e6)
                        point["upstream_calls"] = calls(fake) - before
                        point["loadavg_1m"] = os.getloadavg()[0]
                        raw[name].setdefault(conc, []).append(point)
    finally:
        redis.stop()
    results = _summarise(raw)
    ceiling_of = results["ceiling"]
    ratios = {name: {conc: round(v["rps_median"] / ceiling_of[conc]["rps_median"], 3)
                     for conc, v in by_conc.items()}
              for name, by_conc in results.items() if name != "ceiling"}
    cpu_ratios = {name: {conc: round(ceiling_of[conc]["cpu_us_median"] / v["cpu_us_median"], 3)
                         for conc, v in by_conc.items()}
                  for name, by_conc in results.items() if name != "ceiling"}
    return {"request_bytes": len(body), "response_bytes": len(hit), "repetitions": reps,
            "duration_s": duration_s, "targets": results, "vs_ceiling": ratios,
            "cpu_vs_ceiling": cpu_ratios, **info}


def _miss_body(n: int, base: dict[str, Any]) -> bytes:
    """The base request with a last message no request has carried before."""
    messages = [*base["messages"][:-1],
                {"role": "user", "content": f"{base['messages'][-1]['content']} (#{n})"}]
    return json.dumps({**base, "messages": messages}).encode()


async def _misses(urls: dict[str, str], rounds: int) -> dict[str, Any]:
    base = payload.openai_request(scale=0.9)
    headers = {"Content-Type": "application/json", **AUTH}
    times: dict[str, list[float]] = {name: [] for name in urls}
    statuses: dict[str, list[str]] = {name: [] for name in urls}
    sent = 0
    async with aiohttp.ClientSession() as session:
        for n in range(rounds + 5):  # the first 5 rounds warm connections up, unmeasured
            for name, url in urls.items():
                body = _miss_body(sent, base)
                sent += 1
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status = response.headers.get("X-Cache-Status", str(response.status))
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")
                if n >= 5:
                    times[name].append((time.perf_counter() - t0) * 1000)
                    statuses[name].append(status)
    out: dict[str, Any] = {name: {"n": len(ms), "p50_ms": percentile(ms, 50),
                                  "p99_ms": percentile(ms, 99),
                                  "cache_status": {s: statuses[name].count(s)
                                                   for s in sorted(set(statuses[name]))}}
                           for name, ms in times.items()}
    out["added_p50_ms"] = {name: out[name]["p50_ms"] - out["direct"]["p50_ms"]
                           for name in urls if name != "direct"}
    out["over_relay_p50_ms"] = {name: out[name]["p50_ms"] - out["bare relay"]["p50_ms"]
                                for name in urls if name not in ("direct", "bare relay")}
    return out


def misses(work: Path, rounds: int, reference: tuple[str, str] | None) -> dict[str, Any]:
    """Part 2: a miss through cachelayer (and the reference) beside the same kind of
    request sent directly to the upstream, in turn."""
    logs = work / "logs"
    with contextlib.ExitStack() as stack:
        port = procs.free_port()
        fake = stack.enter_context(procs.server(
            "fake-miss", procs.target_argv("fake", port), port, logs))
        port = procs.free_port()
        relay = stack.enter_context(procs.server("relay-miss", procs.target_argv(
            "relay", port, "--upstream", fake.url), port, logs))
        # The bare relay: what the second hop alone adds, before any caching work.
        urls = {"direct": fake.url + ROUTE, "bare relay": relay.url + ROUTE}
        checkouts: dict[str, Path | None] = {"cachelayer": None}
        if reference is not None:
            ref, commit = reference
            checkout = work / "reference-miss"
            export_ref(commit, checkout)
            checkouts[f"cachelayer at {commit} ({ref})"] = checkout
        for n, (name, checkout) in enumerate(checkouts.items()):
            port = procs.free_port()
            env = ({"PYTHONPATH": os.pathsep.join([str(checkout), str(TOOLS)])}
                   if checkout else None)
            proxy = stack.enter_context(procs.server(f"cachelayer-miss-{n}", procs.cachelayer_argv(
                port, fake.url, work / f"data-miss-{n}", "--log-level", "warning"), port, logs,
                env=env, cwd=checkout or procs.REPO))
            urls[name] = proxy.url + ROUTE
        before = calls(fake)
        result = asyncio.run(_misses(urls, rounds))
        result["upstream_calls"] = calls(fake) - before
    return result


def on_and_off(work: Path, reps: int, duration_s: float) -> dict[str, Any]:
    """Part 3: the fast path switched on and off in one proxy process (diskcache),
    alternating, at 8 connections (benchlib/fast_path_ab.py)."""
    body = json.dumps(payload.openai_request(scale=0.9)).encode()
    (work / "ab-request.json").write_bytes(body)
    lua = work / "ab-post.lua"
    lua.write_text(_WRK_LUA.format(body=work / "ab-request.json"))
    with contextlib.ExitStack() as stack:
        port = procs.free_port()
        fake = stack.enter_context(procs.server(
            "fake-ab", procs.target_argv("fake", port), port, work / "logs"))
        settings = Settings(upstream=fake.url, data_dir=work / "data-ab",
                            metrics_file=work / "data-ab" / "metrics.json",
                            port=procs.free_port())
        url = f"http://127.0.0.1:{settings.port}{ROUTE}"
        return fast_path_ab.run(settings, url, lua, lambda u: warm(u, body), reps, 8,
                                duration_s)


def verdicts(out: dict[str, Any]) -> dict[str, Any]:
    """The targets: each store's hits >= 0.8x the ceiling, a miss adds <= 1 ms p50."""
    hits = out.get("store_hits", {}).get("vs_ceiling", {})
    met = {f"{name}, {conc} connections": ratio >= TARGET_RATIO
           for name, by_conc in hits.items() for conc, ratio in by_conc.items()
           if not name.startswith("diskcache at ")}
    if "miss" in out:
        met["a miss adds <= 1 ms p50"] = (out["miss"]["added_p50_ms"]["cachelayer"]
                                          <= TARGET_ADDED_MS)
    return met


def main(argv: list[str] | None = None) -> int:
    """Run both parts; print and write the JSON."""
    parser = argparse.ArgumentParser(prog="tools/bench_store_hits.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--miss-rounds", type=int, default=300)
    parser.add_argument("--reference", default=None,
                        help="a git ref (e.g. the commit before the fast path) measured on "
                             "diskcache as one more target")
    parser.add_argument("--only", choices=["hits", "miss", "ab"], default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None and args.only != "miss":
        parser.error("wrk is not installed (apt-get install wrk)")
    reps, duration, rounds = ((1, 1.0, 30) if args.quick
                              else (args.reps, args.duration, args.miss_rounds))
    reference = (args.reference, resolve_ref(args.reference)) if args.reference else None
    out: dict[str, Any] = {
        "machine": procs.machine(),
        "command": "tools/bench_store_hits.py " + " ".join(argv or sys.argv[1:]),
        "note": "2 cores shared with other sessions' builds and tests, wrk on the same "
                "cores as the servers",
        "targets": {"hits_vs_ceiling": TARGET_RATIO, "miss_added_p50_ms": TARGET_ADDED_MS}}

    def parts(work: Path) -> None:
        if args.only in (None, "hits"):
            out["store_hits"] = store_hits(work, reps, duration, reference)
        if args.only in (None, "miss"):
            out["miss"] = misses(work, rounds, reference)
        if args.only in (None, "ab"):
            out["on_and_off"] = on_and_off(work, max(reps, 2) + 1, duration)

    def finish(out: dict[str, Any]) -> None:
        out["met"] = verdicts(out)

    return procs.run_parts("cachelayer-store-hits-", out, parts, args.out, finish)

if __name__ == "__main__":
    raise SystemExit(main())
