#!/usr/bin/env python3
"""Redis reads on the hit path: redis-py beside cachelayer's pipelined connection.

    .venv/bin/python tools/bench_redis_reads.py [--reads 12800] [--out FILE]

One real redis-server (a child, on a free port), one value of a stored answer's size
(47 KB). For each way of reading (redis-py's asyncio client, the way the Redis tier read
before; `RedisPipe`, the way it reads now) and each number of reads in flight (1, 8, 64),
the same reads: a 12-byte GETRANGE (the header a hit asks for) and a whole GET. Reported:
the process's CPU per read and wall time per read; the ratio is redis-py's CPU over the
pipe's. The two ways alternate within one run, three times, and the medians are kept.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path[:0] = [str(TOOLS), str(REPO)]

import redis.asyncio as aioredis  # noqa: E402
from benchlib import procs  # noqa: E402

from cachelayer.proxy.store.backends.redis_pipe import RedisPipe  # noqa: E402
from tests.support.redis_server import running_redis  # noqa: E402

IN_FLIGHT = (1, 8, 64)
VALUE_BYTES = 47_000


async def _measure(read: Callable[[], Awaitable[Any]], reads: int, in_flight: int
                   ) -> dict[str, float]:
    async def worker() -> None:
        for _ in range(reads // in_flight):
            await read()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return {"cpu_us": (time.process_time() - cpu) / reads * 1e6,
            "wall_us": (time.perf_counter() - wall) / reads * 1e6}


async def _run(url: str, reads: int, reps: int) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url)
    await client.set("bench:value", os.urandom(VALUE_BYTES))
    pipe = RedisPipe(client)
    ways: dict[str, dict[str, Callable[[], Awaitable[Any]]]] = {
        "redis-py": {"header": lambda: client.getrange("bench:value", 0, 11),
                     "whole": lambda: client.get("bench:value")},
        "pipe": {"header": lambda: pipe.call(b"GETRANGE", b"bench:value", b"0", b"11"),
                 "whole": lambda: pipe.call(b"GET", b"bench:value")},
    }
    raw: dict[str, list[dict[str, float]]] = {}
    try:
        for _ in range(reps):
            for what in ("header", "whole"):
                for n in IN_FLIGHT:
                    for way, reads_of in ways.items():
                        point = await _measure(reads_of[what], reads, n)
                        raw.setdefault(f"{way}|{what}|{n}", []).append(point)
    finally:
        pipe.close()
        await client.aclose()
    out: dict[str, Any] = {}
    for name, points in raw.items():
        way, what, n = name.split("|")
        out.setdefault(what, {}).setdefault(n, {})[way] = {
            "cpu_us": statistics.median(p["cpu_us"] for p in points),
            "wall_us": statistics.median(p["wall_us"] for p in points)}
    for by_n in out.values():
        for cell in by_n.values():
            cell["cpu_ratio"] = cell["redis-py"]["cpu_us"] / cell["pipe"]["cpu_us"]
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the reads against a child redis-server; print and write the JSON."""
    parser = argparse.ArgumentParser(prog="tools/bench_redis_reads.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=12_800, help="reads per cell")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out: dict[str, Any] = {
        "machine": procs.machine(),
        "command": "tools/bench_redis_reads.py " + " ".join(argv or sys.argv[1:]),
        "value_bytes": VALUE_BYTES, "reads_per_cell": args.reads, "repetitions": args.reps}

    def parts(work: Path) -> None:
        with running_redis(work / "redis") as server:
            out["reads"] = asyncio.run(_run(server.url(), args.reads, args.reps))

    return procs.run_parts("cachelayer-redis-reads-", out, parts, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
