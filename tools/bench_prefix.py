#!/usr/bin/env python3
"""Layer-1 overhead per request, side by side with parsing the same body (the reference).

    .venv/bin/python tools/bench_prefix.py [--out docs/benchmarks/prefix.json]

For a ~50 KB Claude-Code-shaped chat body whose billing line changes on every request,
it times, in one run: orjson.loads of the raw body (the cost every proxy pays), layer 1
on a body it has not seen (strip the billing line, hash tools and system), and layer 1 on
a byte-identical repeat (the memo). Target: layer 1 at most 50 us per request.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson
from benchlib import payload
from benchlib.provenance import stamp

from cachelayer.protocol.openai import parse_request
from cachelayer.proxy.memo import Memo, fingerprint
from cachelayer.proxy.prefix.rules import RuleSet, compile_rules
from cachelayer.proxy.prefix.stabilize import stabilize_chat

TARGET_US = 50.0


def bodies(n: int) -> list[bytes]:
    """n raw bodies that differ only in the billing line's per-request hash."""
    rng = random.Random(5)
    base = payload.openai_request()
    system = base["messages"][0]["content"]
    out = []
    for _ in range(n):
        body = dict(base)
        body["messages"] = [{"role": "system",
                             "content": payload.billing_header(rng) + "\n" + system},
                            *base["messages"][1:]]
        out.append(orjson.dumps(body))
    return out


def per_call_us(fn: Callable[[int], Any], n: int, repeats: int) -> float:
    """Median over repeats of the mean time of fn(i) for i in range(n), in microseconds."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        samples.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(samples)


def run(n: int, repeats: int) -> dict[str, Any]:
    """Measure the three paths and their ratios."""
    raws = bodies(n)
    chats = [parse_request("chat", raw) for raw in raws]
    rules = RuleSet(compile_rules([]))
    assert stabilize_chat(chats[0], rules).rewrites, "the billing line was not stripped"
    memo: Memo[Any] = Memo()
    fp = fingerprint(b"/v1/chat/completions", raws[0])
    memo.put(fp, stabilize_chat(chats[0], rules))
    parse_us = per_call_us(lambda i: orjson.loads(raws[i]), n, repeats)
    cold_us = per_call_us(lambda i: stabilize_chat(chats[i], rules), n, repeats)
    repeat_us = per_call_us(
        lambda i: memo.get(fingerprint(b"/v1/chat/completions", raws[0])), n, repeats)
    return {
        "body_bytes": len(raws[0]),
        "requests": n, "repeats": repeats,
        "reference_orjson_loads_us": round(parse_us, 2),
        "layer1_new_body_us": round(cold_us, 2),
        "layer1_repeat_us": round(repeat_us, 2),
        "ratio_new_body_to_parse": round(cold_us / parse_us, 3),
        "ratio_repeat_to_parse": round(repeat_us / parse_us, 3),
        "target_us": TARGET_US,
        "met": cold_us <= TARGET_US,
        "machine": stamp(),  # commit, dirty flag, machine
    }


def main() -> int:
    """Run, print a markdown table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.requests, args.repeats)
    print(f"| path ({result['body_bytes']:,}-byte body) | us/request | vs orjson.loads |")
    print("|---|---:|---:|")
    print(f"| reference: orjson.loads | {result['reference_orjson_loads_us']} | 1.00x |")
    print(f"| layer 1, new body | {result['layer1_new_body_us']} | "
          f"{result['ratio_new_body_to_parse']}x |")
    print(f"| layer 1, byte-identical repeat | {result['layer1_repeat_us']} | "
          f"{result['ratio_repeat_to_parse']}x |")
    print(f"target <= {TARGET_US} us: {'met' if result['met'] else 'missed'}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
