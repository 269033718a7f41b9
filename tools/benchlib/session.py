"""Scenario 4: a recorded 10-turn Claude-Code-shaped session, with and without cachelayer.

The session is generated in code: every turn re-sends the same system prompt and 12
tools, a billing-header block with a fresh `cch=` first, and the conversation so far
(canned assistant answers, so both paths see identical histories). It is replayed:

* through the full stack: `cachelayer serve --model DEMO` (which runs `cachelayer
  backend` as its child) via POST /v1/messages, streamed, as Claude Code sends it;
* straight to stock `mlx_lm server` with the equivalent OpenAI chat body (billing header
  included, as a translator without a cache layer would send it);
* straight to stock with the billing header left out, to show what stock's own
  in-memory prompt cache could do if the client never sent the volatile line.
"""

from __future__ import annotations

import json
import random
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchlib import payload, procs
from benchlib.config import RunConfig

CLIENT_MODEL = "claude-sonnet-4-5"
SEED = 2026


def demo_model(cfg: RunConfig) -> Path:
    """The offline demo model (hidden 64, 2 layers), built once per work dir."""
    sys.path.insert(0, str(procs.REPO))
    from cachelayer.backend.demo_model import build_demo_model

    return build_demo_model(cfg.work_dir / "demo-model")


def stream(url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    """One streamed request: time to first text, total time, usage from either API."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    started = time.perf_counter()
    first: float | None = None
    usage: dict[str, Any] = {}
    with urllib.request.urlopen(request, timeout=900) as response:
        for raw in response:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            if first is None and _has_text(event):
                first = time.perf_counter()
            usage.update(_usage(event))
    total = time.perf_counter() - started
    return {"ttft_s": (first or total) - started if first else total, "total_s": total,
            **usage}


def _has_text(event: dict[str, Any]) -> bool:
    if event.get("type") == "content_block_delta":
        return True
    return any((c.get("delta") or {}).get("content") for c in event.get("choices") or ())


def _usage(event: dict[str, Any]) -> dict[str, Any]:
    """prompt_tokens / cached_tokens, whichever API the event is in."""
    kind = event.get("type")
    if kind in ("message_start", "message_delta"):
        # A live stream's message_start cannot know the counts yet; message_delta has them.
        u = (event.get("message") or {}).get("usage") if kind == "message_start" else None
        u = u or event.get("usage") or {}
        read = u.get("cache_read_input_tokens") or 0
        prompt = ((u.get("input_tokens") or 0) + read
                  + (u.get("cache_creation_input_tokens") or 0))
        return {"prompt_tokens": prompt, "cached_tokens": read} if prompt else {}
    u = event.get("usage")
    if isinstance(u, dict) and "prompt_tokens" in u:
        details = u.get("prompt_tokens_details") or {}
        return {"prompt_tokens": u["prompt_tokens"],
                "cached_tokens": details.get("cached_tokens", 0)}
    return {}


def _replay(name: str, url: str, bodies: list[dict[str, Any]],
            headers: dict[str, str]) -> dict[str, Any]:
    turns = []
    for i, body in enumerate(bodies, 1):
        row = stream(url, body, headers)
        row["turn"] = i
        turns.append(row)
        print(f"  {name} turn {i}: {row['total_s']:.2f}s cached={row.get('cached_tokens')}",
              file=sys.stderr, flush=True)
    return {"turns": turns, "total_s": sum(t["total_s"] for t in turns),
            "turn1_s": turns[0]["total_s"],
            "turns_2_plus_s": sum(t["total_s"] for t in turns[1:])}


def _without_billing(body: dict[str, Any]) -> dict[str, Any]:
    system = body["messages"][0]["content"].split("\n\n", 1)[1]
    return {**body, "messages": [{"role": "system", "content": system}, *body["messages"][1:]]}


def run(cfg: RunConfig) -> dict[str, Any]:
    """Replay the session on every path; returns the scenario's JSON section."""
    if cfg.quick:
        return {"skipped": "skipped in --quick mode (real mlx prefill on three servers)"}
    work = cfg.work_dir / "session"
    work.mkdir(parents=True, exist_ok=True)
    model = demo_model(cfg)
    rng = random.Random(SEED)
    bodies = [payload.session_turn_anthropic(t, cfg.session_scale, rng, model=CLIENT_MODEL,
                                             max_tokens=cfg.session_max_tokens)
              for t in range(1, cfg.session_turns + 1)]
    # Stock mlx_lm loads whatever `model` names; "default_model" is the one it started with.
    openai_bodies = [payload.anthropic_as_openai(b, "default_model") for b in bodies]
    out: dict[str, Any] = {"turns": cfg.session_turns, "max_tokens": cfg.session_max_tokens,
                           "request_bytes_turn1": len(json.dumps(bodies[0])),
                           "request_bytes_last": len(json.dumps(bodies[-1])),
                           "model": "demo llama: hidden 64, 2 layers, 2 heads, random weights",
                           "paths": {}}
    paths = out["paths"]
    port = procs.free_port()
    argv = procs.cachelayer_argv(port, "", work / "cachelayer-data")
    argv[argv.index("--upstream"):argv.index("--upstream") + 2] = ["--model", str(model)]
    started = time.perf_counter()
    with procs.server("session-cachelayer", argv, port, cfg.log_dir, timeout_s=300) as proxy:
        out["cachelayer_startup_s"] = time.perf_counter() - started
        headers = {"x-api-key": "bench", "anthropic-version": "2023-06-01"}
        paths["cachelayer"] = _replay("cachelayer", proxy.url + "/v1/messages?beta=true",
                                      bodies, headers)
    for name, sent in (("stock", openai_bodies),
                       ("stock, no billing header", [_without_billing(b)
                                                     for b in openai_bodies])):
        port = procs.free_port()
        with procs.server(f"session-{name.split(',')[0]}-{len(paths)}",
                          [sys.executable, "-m", "mlx_lm", "server", "--model", str(model),
                           "--port", str(port)], port, cfg.log_dir, timeout_s=300) as stock:
            paths[name] = _replay(name, stock.url + "/v1/chat/completions", sent, {})
    mine, theirs = paths["cachelayer"]["total_s"], paths["stock"]["total_s"]
    out["speedup_vs_stock"] = theirs / mine if mine else None
    out["speedup_vs_stock_no_header"] = (paths["stock, no billing header"]["total_s"] / mine
                                         if mine else None)
    return out
