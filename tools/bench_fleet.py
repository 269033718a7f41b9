#!/usr/bin/env python3
"""What fleet-wide coalescing and read-after-write cost a miss, and what they buy.

    .venv/bin/python tools/bench_fleet.py --reference /tmp/ref [--out docs/benchmarks/fleet.json]

`--reference` is a checkout of the code before the fleet (e.g. `git archive <commit> |
tar -x -C /tmp/ref`); it runs with the same virtualenv and flags.

Part 1, the miss path: one proxy per target in front of the benchmark's fake upstream
(it answers at once, so the proxy's own work is what is measured), a ~50 KB request with
a new last turn each time (a true MISS that is looked up, forwarded and stored), one at
a time on a kept-alive connection, the targets interleaved round by round: this checkout
and the reference, each on Redis (where the fleet's marker adds a round trip to claim
it and one, off the request path, to release it) and on diskcache (no fleet: the
control). Reported: median and p90 latency per target, and this checkout's added
milliseconds over the reference's.

Part 2, read-after-write: two proxies on one Redis; each of N new prompts is sent to
proxy A and, the moment its answer is in, to proxy B; B's answers that were not a HIT
are counted, for this checkout and for the reference (each pair on its own Redis db).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path[:0] = [str(TOOLS), str(REPO)]

from benchlib import payload, procs, provenance  # noqa: E402

from tests.support.redis_server import RedisServer  # noqa: E402

ROUTE = "/v1/chat/completions"
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer bench-tenant"}


def reference_argv(checkout: Path, port: int, upstream: str, data_dir: Path,
                   *extra: str) -> list[str]:
    """`cachelayer serve` from another checkout, same flags."""
    start = (f"import runpy, sys; sys.path.insert(0, {str(checkout)!r}); "
             "sys.argv[0] = 'cachelayer'; "
             "runpy.run_module('cachelayer', run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", start,
            *procs.cachelayer_argv(port, upstream, data_dir, *extra)[3:]]


class Client:
    """One kept-alive connection to a proxy."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                               timeout=60)

    def post(self, body: bytes) -> tuple[float, str]:
        """Milliseconds to the whole answer, and its X-Cache-Status."""
        started = time.perf_counter()
        self.conn.request("POST", ROUTE, body=body, headers=HEADERS)
        response = self.conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"answered {response.status}")
        return (time.perf_counter() - started) * 1000, response.getheader("X-Cache-Status", "")


class Prompts:
    """The same ~50 KB request with a new last turn each time."""

    def __init__(self) -> None:
        self.base = payload.openai_request(scale=0.9)
        self.n = 0

    def next(self) -> bytes:
        """A request no proxy has seen."""
        self.n += 1
        body = dict(self.base)
        body["messages"] = [*self.base["messages"][:-1],
                            {"role": "user", "content": f"new question {self.n} {time.time()}"}]
        return json.dumps(body).encode()


def miss_path(work: Path, reference: Path, redis: RedisServer, fake: procs.Server,
              rounds: int, per_round: int) -> dict[str, Any]:
    """Part 1: latency of true misses per target, interleaved."""
    variants = {"redis": ["--store", redis.url(2)], "diskcache": []}
    samples: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        clients: dict[str, Client] = {}
        for store, extra in variants.items():
            for who in ("this checkout", "reference"):
                name = f"{store}, {who}"
                port = procs.free_port()
                data = work / f"miss-{store}-{who.replace(' ', '-')}"
                flags = ["--log-level", "warning", *extra]
                argv = (procs.cachelayer_argv(port, fake.url, data, *flags) if who != "reference"
                        else reference_argv(reference, port, fake.url, data, *flags))
                server = stack.enter_context(procs.server(name.replace(", ", "-").replace(
                    " ", "-"), argv, port, work / "logs"))
                clients[name] = Client(server.url)
                samples[name] = []
        prompts = Prompts()
        for client in clients.values():  # warm: connections, first imports
            client.post(prompts.next())
        for _ in range(rounds):
            for name, client in clients.items():
                for _ in range(per_round):
                    ms, status = client.post(prompts.next())
                    if status != "MISS":
                        raise RuntimeError(f"{name}: expected a MISS, got {status}")
                    samples[name].append(ms)
    out: dict[str, Any] = {}
    for name, values in samples.items():
        values.sort()
        out[name] = {"p50_ms": round(statistics.median(values), 3),
                     "p90_ms": round(values[int(len(values) * 0.9) - 1], 3),
                     "n": len(values)}
    added = {store: round(out[f"{store}, this checkout"]["p50_ms"]
                          - out[f"{store}, reference"]["p50_ms"], 3) for store in variants}
    return {"targets": out, "added_p50_ms": added}


def read_after_write(work: Path, reference: Path, redis: RedisServer, fake: procs.Server,
                     prompts_n: int) -> dict[str, Any]:
    """Part 2: B's answers right after A sent the same one, per checkout."""
    out: dict[str, Any] = {}
    prompts = Prompts()
    for db, who in ((3, "this checkout"), (4, "reference")):
        with contextlib.ExitStack() as stack:
            pair = []
            for side in ("a", "b"):
                port = procs.free_port()
                data = work / f"raw-{who.replace(' ', '-')}-{side}"
                flags = ["--log-level", "warning", "--store", redis.url(db)]
                argv = (procs.cachelayer_argv(port, fake.url, data, *flags) if who != "reference"
                        else reference_argv(reference, port, fake.url, data, *flags))
                server = stack.enter_context(procs.server(
                    f"raw-{who.replace(' ', '-')}-{side}", argv, port, work / "logs"))
                pair.append(Client(server.url))
            a, b = pair
            statuses: dict[str, int] = {}
            for _ in range(prompts_n):
                body = prompts.next()
                a.post(body)
                _, status = b.post(body)
                statuses[status] = statuses.get(status, 0) + 1
            out[who] = {"sent": prompts_n, "b_statuses": statuses,
                        "b_not_hit": prompts_n - statuses.get("HIT", 0)}
    return out


def main(argv: list[str] | None = None) -> int:
    """Run both parts; print and optionally write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        redis = RedisServer(work / "redis")
        redis.start()
        try:
            port = procs.free_port()
            with procs.server("fake", procs.target_argv("fake", port), port,
                              work / "logs") as fake:
                load_before = os.getloadavg()[0]
                misses = miss_path(work, args.reference, redis, fake, args.rounds,
                                   args.per_round)
                raw = read_after_write(work, args.reference, redis, fake, args.pairs)
                load_after = os.getloadavg()[0]
        finally:
            redis.stop()
    result = {"machine": provenance.stamp(), "command": " ".join(sys.argv),
              "loadavg_1m": [load_before, load_after], "miss_path": misses,
              "read_after_write": raw}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
