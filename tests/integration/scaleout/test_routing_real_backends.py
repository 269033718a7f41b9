"""Prefix-affinity routing over three real `cachelayer backend` processes (demo model): every
later turn of a conversation lands where its prefix is cached, so the backend reuses it.

Round-robin over the same three, as the control, sends later turns to backends that never
saw the prefix: their reuse drops, which is what the affinity check would catch.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.demo_model import build_demo_model
from cachelayer.config import RoutingMode, Settings
from cachelayer.proxy.app import make_app
from tests.support import http
from tests.support.processes import (
    ServerProcess,
    backend_command,
    free_port,
    start_server,
    stop_server,
)
from tests.support.servers import serve_app

pytestmark = pytest.mark.slow  # three mlx backends
ROOT = Path(__file__).resolve().parents[3]
PROJECTS = 6
TURNS = 3


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Three backends on the demo model, each with its own kv dir."""
    root = tmp_path_factory.mktemp("trio")
    model = build_demo_model(root / "demo")
    started: list[ServerProcess] = []
    try:
        for i in range(3):
            port = free_port()
            started.append(start_server(backend_command(model, port, root / f"kv{i}"), port,
                                        root / f"backend{i}.log", cwd=ROOT))
        yield started
    finally:
        for server in started:
            stop_server(server)


def _system(project: int) -> str:
    return f"You are the agent of project {project}. " + " ".join(
        f"Rule {i}: read file {i} of project {project} before editing it." for i in range(60))


def _conversation(proxy_url: str, project: int, label: str) -> list[tuple[int, int]]:
    """TURNS growing turns of one conversation; (prompt tokens, cached tokens) per turn."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": _system(project)}]
    usage = []
    for turn in range(TURNS):
        messages.append({"role": "user", "content": f"{label}: turn {turn}, what next?"})
        answer = http.post(proxy_url + "/v1/chat/completions",
                           json={"model": "m", "messages": messages, "max_tokens": 4,
                                 "temperature": 0}, timeout=120)
        assert answer.status == 200, answer.content
        body = answer.json()
        messages.append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})
        details = body["usage"].get("prompt_tokens_details") or {}
        usage.append((body["usage"]["prompt_tokens"], details.get("cached_tokens") or 0))
    return usage


def _run(tmp_path: Path, trio: list[ServerProcess], mode: RoutingMode,
         label: str) -> tuple[list[list[tuple[int, int]]], dict[str, Any]]:
    settings = Settings(upstream=trio[0].url, upstreams=tuple(s.url for s in trio),
                        routing=mode, data_dir=tmp_path / f"data-{label}",
                        metrics_file=tmp_path / f"metrics-{label}.json",
                        read_timeout_s=120.0)
    with serve_app(lambda: make_app(settings)) as proxy, ThreadPoolExecutor(3) as pool:
        runs = list(pool.map(lambda p: _conversation(proxy.url, p, label), range(PROJECTS)))
        health = http.get(proxy.url + "/health").json()
    return runs, health


def _lookups(trio: list[ServerProcess]) -> list[int]:
    return [http.get(s.url + "/v1/cachelayer/kv").json()["lookups"] for s in trio]


def test_later_turns_land_where_their_prefix_is_cached_and_reuse_it(
        tmp_path: Path, trio: list[ServerProcess]) -> None:
    before = _lookups(trio)
    runs, health = _run(tmp_path, trio, RoutingMode.PREFIX, "affinity")
    served = [a - b for a, b in zip(_lookups(trio), before, strict=True)]
    assert sum(served) == PROJECTS * TURNS
    assert sum(1 for n in served if n) >= 2  # six projects spread over the backends
    for project, usage in enumerate(runs):
        for turn, (prompt, cached) in enumerate(usage[1:], start=1):
            previous_prompt = usage[turn - 1][0]
            # Everything the previous turn sent is reused (the backend keeps one token).
            assert cached >= previous_prompt - 1, (project, turn, usage)
            assert cached < prompt
    rows = health["backends"]
    assert sum(r["requests"] for r in rows) == PROJECTS * TURNS
    assert sum(r["kvTokensReused"] for r in rows) == sum(c for u in runs for _, c in u)

    # The control: round-robin spreads each conversation over all three.
    control, _ = _run(tmp_path, trio, RoutingMode.ROUND_ROBIN, "control")
    missed = [(p, t) for p, usage in enumerate(control)
              for t, (_, cached) in enumerate(usage[1:], start=1)
              if cached < usage[t - 1][0] - 1]
    assert missed, "round-robin reused every prefix: this test could not see a bad route"
