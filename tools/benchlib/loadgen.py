"""The in-tree async load generator: one aiohttp client session, keep-alive connections.

Runs as its own process (`python -m benchlib.loadgen`, job spec as JSON on stdin, result
as JSON on stdout) so that it never shares an event loop with the server under test.
Two jobs:

* `throughput`: `concurrency` workers send the same body back to back for a warm-up and
  then a measured window; requests/s counts only requests that finished in the window.
* `latency`: one request at a time, round-robin over several targets (so a slow drift of
  the machine hits every target alike); for streams also the time to the first chunk
  and the chunks per second of each stream.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def _session(limit: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, force_close=False)
    return aiohttp.ClientSession(connector=connector,
                                 timeout=aiohttp.ClientTimeout(total=120))


async def throughput(spec: dict[str, Any]) -> dict[str, Any]:
    """Closed-loop load at a fixed concurrency; req/s and latency percentiles."""
    body = Path(spec["body_file"]).read_bytes()
    headers = {"Content-Type": "application/json", **spec.get("headers", {})}
    concurrency, url = int(spec["concurrency"]), spec["url"]
    start = time.perf_counter()
    measure_from = start + float(spec["warmup_s"])
    stop_at = measure_from + float(spec["duration_s"])
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    cache: Counter[str] = Counter()
    errors: list[str] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status, cstatus = response.status, response.headers.get("X-Cache-Status")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors.append(repr(exc))
                if len(errors) > 100:
                    return
                continue
            t1 = time.perf_counter()
            if t0 >= measure_from and t1 <= stop_at:
                latencies.append((t1 - t0) * 1000)
                statuses[str(status)] += 1
                if cstatus:
                    cache[cstatus] += 1

    async with _session(concurrency) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    window = stop_at - measure_from
    ok = statuses.get("200", 0)
    return {"concurrency": concurrency, "requests": len(latencies), "ok": ok,
            "rps": ok / window, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "mean_ms": sum(latencies) / max(1, len(latencies)),
            "window_s": window, "statuses": dict(statuses), "cache_status": dict(cache),
            "errors": len(errors), "first_error": errors[0] if errors else None}


async def _one(session: aiohttp.ClientSession, url: str, body: bytes,
               headers: dict[str, str], stream: bool) -> dict[str, float]:
    t0 = time.perf_counter()
    first: float | None = None
    chunks = 0
    async with session.post(url, data=body, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}: "
                               f"{(await response.read())[:300]!r}")
        if not stream:
            await response.read()
        else:
            async for piece in response.content.iter_any():
                if first is None:
                    first = time.perf_counter()
                # One SSE event per "data:" line; the closing [DONE] is not a chunk.
                chunks += piece.count(b"data:") - piece.count(b"data: [DONE]")
    t1 = time.perf_counter()
    out = {"ms": (t1 - t0) * 1000}
    if stream:
        out.update(ttfc_ms=((first or t1) - t0) * 1000, chunks=chunks,
                   chunks_per_s=chunks / max(t1 - t0, 1e-9))
    return out


async def latency(spec: dict[str, Any]) -> dict[str, Any]:
    """Sequential requests, round-robin over targets; per-target percentiles."""
    body = Path(spec["body_file"]).read_bytes()
    stream = bool(spec.get("stream"))
    targets = spec["targets"]
    samples: dict[str, list[dict[str, float]]] = {t["name"]: [] for t in targets}
    async with _session(4) as session:
        for rnd in range(int(spec["warmup"]) + int(spec["rounds"])):
            for target in targets:
                headers = {"Content-Type": "application/json", **target.get("headers", {})}
                for _ in range(int(spec["per_round"])):
                    sample = await _one(session, target["url"], body, headers, stream)
                    if rnd >= int(spec["warmup"]):
                        samples[target["name"]].append(sample)
    result: dict[str, Any] = {}
    for name, rows in samples.items():
        ms = [r["ms"] for r in rows]
        entry: dict[str, Any] = {"n": len(rows), "p50_ms": percentile(ms, 50),
                                 "p99_ms": percentile(ms, 99)}
        if stream:
            entry.update(
                ttfc_p50_ms=percentile([r["ttfc_ms"] for r in rows], 50),
                ttfc_p99_ms=percentile([r["ttfc_ms"] for r in rows], 99),
                chunks_per_stream=percentile([r["chunks"] for r in rows], 50),
                chunks_per_s_p50=percentile([r["chunks_per_s"] for r in rows], 50),
            )
        result[name] = entry
    return result


def main() -> int:
    """Read a job from stdin, run it, print its JSON result."""
    spec = json.loads(sys.stdin.read())
    job = {"throughput": throughput, "latency": latency}[spec["mode"]]
    try:
        import uvloop  # optional: a cheaper client loop leaves more CPU to the server
    except ImportError:
        uvloop = None
    if uvloop is not None:
        result, loop_name = uvloop.run(job(spec)), "uvloop"
    else:
        result, loop_name = asyncio.run(job(spec)), "asyncio"
    result["client_loop"] = loop_name
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
