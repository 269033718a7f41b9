"""The family matrix for tools/bench_kv_paged.py: turn-2 reuse in memory vs after a restart.

Per family (tiny random-weight models of mlx-lm's own classes): a backend answers turn 1,
its kv dir is copied once the writes are done, then turn 2 is asked in the same process
(reuse from memory), after a restart on the copy (reuse from disk) and on an empty kv dir
(cold). The restored answer must equal the cold one token for token and logprob for logprob.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.family_models import FAMILIES, build_family_model
from tests.support.processes import backend_command, free_port, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = " ".join(f"Rule {i}: read file number {i} before editing it." for i in range(90))
TURN1, TURN2 = "What is in README.md?", "And what is in setup.py?"


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as r:
        return json.loads(r.read())


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def _chat(server: Any, user: str) -> dict[str, Any]:
    body = {"model": "x", "max_tokens": 6, "temperature": 0, "logprobs": True,
            "top_logprobs": 3, "messages": [{"role": "system", "content": SYSTEM},
                                            {"role": "user", "content": user}]}
    answer = _post(f"{server.url}/v1/chat/completions", body)
    return {"prompt": answer["usage"]["prompt_tokens"],
            "cached": answer["usage"]["prompt_tokens_details"]["cached_tokens"],
            "logprobs": answer["choices"][0]["logprobs"]}


def _wait_for_writes(url: str) -> None:
    """Until the writer is idle twice in a row (an answer's cache is inserted after it)."""
    last = None
    while True:
        stats = _get(f"{url}/v1/cachelayer/kv")
        now = (stats["blocks_written"], stats["checkpoints_written"])
        if stats["pending_writes"] == 0 and now == last:
            return
        last = now if stats["pending_writes"] == 0 else None
        time.sleep(0.3)


def _start(model: Path, kv: Path, log: Path) -> Any:
    port = free_port()
    return start_server(backend_command(model, port, kv, "--kv-min-tokens", "256"), port, log,
                        cwd=ROOT)


def one_family(family: str, work: Path) -> dict[str, Any]:
    """The matrix row of one family."""
    model = build_family_model(work / "models" / family, family)
    kv, copy, cold_kv = (work / family / name for name in ("kv", "kv-after-turn1", "kv-cold"))
    server = _start(model, kv, work / f"{family}-1.log")
    try:
        _chat(server, TURN1)
        _wait_for_writes(server.url)
        shutil.copytree(kv, copy, ignore=shutil.ignore_patterns(".tmp-*"))
        in_memory = _chat(server, TURN2)
        kinds = _get(f"{server.url}/v1/cachelayer/kv")["kinds"]
    finally:
        stop_server(server)
    server = _start(model, copy, work / f"{family}-2.log")
    try:
        restarted = _chat(server, TURN2)
    finally:
        stop_server(server)
    server = _start(model, cold_kv, work / f"{family}-3.log")
    try:
        cold = _chat(server, TURN2)
    finally:
        stop_server(server)
    return {"family": family, "kinds": kinds, "prompt_tokens": in_memory["prompt"],
            "in_memory": in_memory["cached"], "after_restart": restarted["cached"],
            "equal_to_cold": restarted["logprobs"] == cold["logprobs"]}


def family_matrix(work: Path) -> list[dict[str, Any]]:
    """Every family's row."""
    return [one_family(family, work) for family in sorted(FAMILIES)]
