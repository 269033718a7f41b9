"""Scenario 2, misses: what going through cachelayer adds to a request it must forward.

The same ~50 KB request goes straight to the fake upstream and through cachelayer with
`Cache-Control: no-store` (never looked up, never stored, always forwarded), one request
at a time, alternating between the two paths in rounds. The fake upstream answers 256
words at once, so the streamed rows measure cachelayer's relay, not the upstream.
"""

from __future__ import annotations

import json
from typing import Any

from benchlib import payload, procs
from benchlib.config import RunConfig

ROUTE = "/v1/chat/completions"
HEADERS = {"Authorization": "Bearer bench-tenant"}


def _latency(cfg: RunConfig, targets: list[dict[str, Any]], body_file: str,
             stream: bool) -> dict[str, Any]:
    return procs.run_loadgen({
        "mode": "latency", "targets": targets, "body_file": body_file, "stream": stream,
        "rounds": cfg.miss_rounds, "per_round": cfg.miss_per_round, "warmup": 2})


def run(cfg: RunConfig) -> dict[str, Any]:
    """Direct vs proxied, non-streamed and streamed; returns the scenario's JSON section."""
    work = cfg.work_dir / "miss"
    work.mkdir(parents=True, exist_ok=True)
    plain, streamed = work / "request.json", work / "request-stream.json"
    plain.write_bytes(json.dumps(payload.openai_request(scale=0.9)).encode())
    streamed.write_bytes(json.dumps(payload.openai_request(scale=0.9, stream=True)).encode())
    fake_port = procs.free_port()
    with procs.server("fake-upstream-miss", procs.target_argv("fake", fake_port), fake_port,
                      cfg.log_dir) as fake:
        port = procs.free_port()
        with procs.server("cachelayer-miss", procs.cachelayer_argv(
                port, fake.url, work / "cachelayer-data"), port, cfg.log_dir) as proxy:
            targets = [
                {"name": "direct", "url": fake.url + ROUTE, "headers": HEADERS},
                {"name": "cachelayer", "url": proxy.url + ROUTE,
                 "headers": {**HEADERS, "Cache-Control": "no-store"}},
            ]
            before = int(procs.get_json(fake.url + "/bench/calls")["calls"])
            non_stream = _latency(cfg, targets, str(plain), stream=False)
            stream = _latency(cfg, targets, str(streamed), stream=True)
            forwarded = int(procs.get_json(fake.url + "/bench/calls")["calls"]) - before
    sent = 2 * 2 * (cfg.miss_rounds + 2) * cfg.miss_per_round
    return {"non_stream": non_stream, "stream": stream, "summary": summary(non_stream, stream),
            "requests_sent": sent, "upstream_calls": forwarded,
            "request_bytes": plain.stat().st_size}


def summary(non_stream: dict[str, Any], stream: dict[str, Any]) -> dict[str, Any]:
    """Added milliseconds and ratios, proxied over direct."""
    d, c = non_stream["direct"], non_stream["cachelayer"]
    sd, sc = stream["direct"], stream["cachelayer"]
    return {
        "added_p50_ms": c["p50_ms"] - d["p50_ms"],
        "latency_ratio_p50": c["p50_ms"] / d["p50_ms"] if d["p50_ms"] else None,
        "added_ttfc_p50_ms": sc["ttfc_p50_ms"] - sd["ttfc_p50_ms"],
        "ttfc_ratio_p50": sc["ttfc_p50_ms"] / sd["ttfc_p50_ms"] if sd["ttfc_p50_ms"] else None,
        "chunks_per_s_ratio": (sc["chunks_per_s_p50"] / sd["chunks_per_s_p50"]
                               if sd["chunks_per_s_p50"] else None),
    }
