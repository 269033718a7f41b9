"""Scenario 1, store hits: cachelayer replaying a stored answer vs the ceiling vs LiteLLM.

Every target gets the same ~50 KB Claude-Code-sized OpenAI chat request, the same
Authorization header and the same closed-loop load at 1, 8 and 32 clients. The fake
upstream counts the requests that reach it: a measurement where that count moved was
not all hits, and is reported as such.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import litellm, payload, procs
from benchlib.config import RunConfig


@dataclass
class Target:
    """One server under test: where to send, what, with which headers."""

    url: str
    body_file: Path
    headers: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)

ROUTE = "/v1/chat/completions"
AUTH = {"Authorization": "Bearer bench-tenant"}


def _point(url: str, body_file: Path, headers: dict[str, str], concurrency: int,
           cfg: RunConfig) -> dict[str, Any]:
    result = procs.run_loadgen({
        "mode": "throughput", "url": url, "body_file": str(body_file), "headers": headers,
        "concurrency": concurrency, "warmup_s": cfg.warmup_s, "duration_s": cfg.duration_s})
    result["loadavg_1m"] = os.getloadavg()[0]
    return result


def _median_point(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """The repetition with the median req/s, with every repetition's req/s beside it."""
    ordered = sorted(reps, key=lambda r: r["rps"])
    point = dict(ordered[len(ordered) // 2])
    point["rps_reps"] = [r["rps"] for r in reps]
    point["upstream_calls"] = sum(r.get("upstream_calls", 0) for r in reps)
    return point


def measure_interleaved(targets: dict[str, Target], cfg: RunConfig,
                        fake: procs.Server) -> dict[str, Any]:
    """Every (repetition, concurrency, target) in turn, so the machine's other load (the
    box is shared, and has 2 cores) falls on every target alike; median of repetitions."""
    raw: dict[str, dict[int, list[dict[str, Any]]]] = {n: {} for n in targets}
    for _rep in range(cfg.repetitions):
        for concurrency in cfg.concurrencies:
            for name, target in targets.items():
                before = _calls(fake)
                point = _point(target.url, target.body_file, target.headers, concurrency, cfg)
                point["upstream_calls"] = _calls(fake) - before
                raw[name].setdefault(concurrency, []).append(point)
    out: dict[str, Any] = {}
    for name, by_conc in raw.items():
        points = [_median_point(by_conc[c]) for c in cfg.concurrencies]
        out[name] = {"points": points,
                     "upstream_calls_during_measurement": sum(p["upstream_calls"]
                                                              for p in points)}
    return out


def _warm(url: str, body: bytes, headers: dict[str, str], tries: int = 50) -> bytes:
    """Send until the answer is a HIT (the first send stores it); return the hit's bytes."""
    for _ in range(tries):
        status, got, raw = procs.post(url, body, headers)
        if status != 200:
            raise RuntimeError(f"{url} answered {status}: {raw[:300]!r}")
        if got.get("X-Cache-Status") == "HIT":
            return raw
        time.sleep(0.05)
    raise RuntimeError(f"{url} never answered a HIT after {tries} tries")


def _calls(fake: procs.Server) -> int:
    return int(procs.get_json(fake.url + "/bench/calls")["calls"])


def run(cfg: RunConfig) -> dict[str, Any]:
    """Start every target, warm them, measure them interleaved; the scenario's JSON."""
    work = cfg.work_dir / "store"
    work.mkdir(parents=True, exist_ok=True)
    body = json.dumps(payload.openai_request(scale=0.9)).encode()
    anthropic = payload.session_turn_anthropic(3, 0.9, random.Random(5),
                                               model="claude-bench", max_tokens=64)
    anthropic["stream"] = False
    body_file, anthropic_file = work / "request.json", work / "request-anthropic.json"
    body_file.write_bytes(body)
    anthropic_file.write_bytes(json.dumps(anthropic).encode())
    out: dict[str, Any] = {"request_bytes": len(body),
                           "anthropic_request_bytes": anthropic_file.stat().st_size}
    targets: dict[str, Target] = {}
    notes: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        fake_port = procs.free_port()
        fake = stack.enter_context(procs.server(
            "fake-upstream", procs.target_argv("fake", fake_port), fake_port, cfg.log_dir))
        port = procs.free_port()
        proxy = stack.enter_context(procs.server("cachelayer", procs.cachelayer_argv(
            port, fake.url, work / "cachelayer-data"), port, cfg.log_dir))
        hit = _warm(proxy.url + ROUTE, body, AUTH)
        targets["cachelayer"] = Target(proxy.url + ROUTE, body_file, AUTH)
        out["response_bytes"] = len(hit)
        ceiling_body = work / "ceiling-body.json"
        ceiling_body.write_bytes(hit)
        port = procs.free_port()
        ceiling = stack.enter_context(procs.server(
            "ceiling", procs.target_argv("ceiling", port, "--body-file", str(ceiling_body)),
            port, cfg.log_dir))
        targets["ceiling"] = Target(ceiling.url + ROUTE, body_file, AUTH)
        reference = cfg.extra.get("reference")
        if reference:
            targets["cachelayer (reference)"] = _start_reference(
                Path(reference), stack, fake, body, body_file, work, cfg)
        if cfg.quick or cfg.extra.get("no_litellm"):
            notes["litellm"] = {"skipped": "not run in --quick mode or with --no-litellm"}
        else:
            started = _start_litellm(cfg, stack, fake, body, work)
            if isinstance(started, Target):
                targets["litellm"] = started
            else:
                notes["litellm"] = started
        anthropic_headers = {"x-api-key": "bench-tenant", "anthropic-version": "2023-06-01"}
        try:
            _warm(proxy.url + "/v1/messages", anthropic_file.read_bytes(), anthropic_headers)
            targets["cachelayer /v1/messages"] = Target(proxy.url + "/v1/messages",
                                                        anthropic_file, anthropic_headers)
        except RuntimeError as exc:
            notes["cachelayer /v1/messages"] = {"error": str(exc)}
        results = measure_interleaved(targets, cfg, fake)
    results.update(notes)
    if "litellm" in targets:
        results["litellm"].update(targets["litellm"].info)
    out["targets"] = results
    out["ratios"] = ratios(results)
    return out


def _start_reference(checkout: Path, stack: contextlib.ExitStack, fake: procs.Server,
                     body: bytes, body_file: Path, work: Path, cfg: RunConfig) -> Target:
    """The same proxy built from another checkout (e.g. before a change), warmed: its
    package comes first on the path and it runs from its own directory."""
    port = procs.free_port()
    env = {"PYTHONPATH": os.pathsep.join([str(checkout), str(procs.TOOLS)])}
    server = stack.enter_context(procs.server(
        "cachelayer-reference", procs.cachelayer_argv(port, fake.url, work / "reference-data"),
        port, cfg.log_dir, env=env, cwd=checkout))
    _warm(server.url + ROUTE, body, AUTH)
    return Target(server.url + ROUTE, body_file, AUTH, {"checkout": str(checkout)})


def _start_litellm(cfg: RunConfig, stack: contextlib.ExitStack, fake: procs.Server,
                   body: bytes, work: Path) -> Target | dict[str, Any]:
    """LiteLLM's proxy with its disk cache, warmed; or the error that kept it from running."""
    try:
        version = litellm.ensure_installed()
        key = litellm.master_key()
        config = litellm.write_config(work / "litellm-config.yaml", fake.url,
                                      work / "litellm-cache")
        port = procs.free_port()
        env = {**litellm.ENV, "LITELLM_MASTER_KEY": key}
        headers = {"Authorization": f"Bearer {key}"}
        server = stack.enter_context(procs.server(
            "litellm", litellm.argv(port, config), port, cfg.log_dir,
            ready_path="/health/liveliness", timeout_s=240, env=env))
        url = server.url + ROUTE
        before = _calls(fake)
        for _ in range(5):  # the first stores; the disk write lands in the background
            status, _h, raw = procs.post(url, body, headers)
            if status != 200:
                raise litellm.LiteLLMUnavailable(f"answered {status}: {raw[:300]!r}")
            time.sleep(0.2)
        info = {"version": version, "warm_up_upstream_calls": _calls(fake) - before,
                "config": "disk cache; max_messages lifted (its default of 4 skips agents)"}
        return Target(url, work / "request.json", headers, info)
    except (litellm.LiteLLMUnavailable, RuntimeError, TimeoutError, OSError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[-2000:]}


def ratios(targets: dict[str, Any]) -> dict[str, Any]:
    """cachelayer's req/s over the ceiling's and over LiteLLM's, per concurrency."""
    def by_conc(name: str) -> dict[int, dict[str, Any]]:
        return {p["concurrency"]: p for p in targets.get(name, {}).get("points", [])}

    mine = by_conc("cachelayer")
    others = {"vs_ceiling": by_conc("ceiling"), "vs_litellm": by_conc("litellm"),
              "vs_reference": by_conc("cachelayer (reference)")}
    out: dict[str, Any] = {}
    for conc, point in mine.items():
        row: dict[str, Any] = {}
        for label, other in others.items():
            if conc in other and other[conc]["rps"] > 0:
                row[label] = point["rps"] / other[conc]["rps"]
        out[str(conc)] = row
    return out
