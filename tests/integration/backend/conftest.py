"""Fixtures: a demo model and real `cachelayer backend` processes on free ports."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.demo_model import build_demo_model
from tests.support.kv_writes import wait_for_kv_writes
from tests.support.processes import (
    ServerProcess,
    backend_command,
    free_port,
    start_server,
    stop_server,
)

ROOT = Path(__file__).resolve().parents[3]
# ~1000 tokens of system prompt: long enough to persist (min 256), quick to prefill.
SYSTEM = " ".join(f"Rule {i}: read file number {i} before editing it." for i in range(90))
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file.",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
]
StartBackend = Callable[..., ServerProcess]


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random-weight demo model, built once per session."""
    return build_demo_model(tmp_path_factory.mktemp("models") / "demo")


@pytest.fixture
def start_backend(tmp_path: Path) -> Iterator[StartBackend]:
    """start_backend(model, kv_dir, *flags) -> a healthy backend; all stopped at teardown."""
    started: list[ServerProcess] = []

    def start(model: Path, kv_dir: Path, *flags: str) -> ServerProcess:
        port = free_port()
        log = tmp_path / f"backend-{len(started)}.log"
        argv = backend_command(model, port, kv_dir, "--kv-min-tokens", "256", *flags)
        server = start_server(argv, port, log, cwd=ROOT)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_server(server)


def chat(server: ServerProcess, user: str, *, system: str = SYSTEM, **extra: Any) -> Any:
    """One non-streamed chat completion through the openai SDK."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    extra.setdefault("max_tokens", 4)
    return client.chat.completions.create(
        model="claude-sonnet-4",  # a client's name: the backend must ignore it
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        tools=TOOLS,  # type: ignore[arg-type]
        temperature=0,
        **extra,
    )


def get_json(server: ServerProcess, path: str) -> Any:
    """GET a JSON route of the server."""
    with urllib.request.urlopen(f"{server.url}{path}", timeout=30) as r:
        return json.loads(r.read())


def post_json(server: ServerProcess, path: str, body: Any) -> Any:
    """POST JSON to a route of the server and decode the JSON answer."""
    request = urllib.request.Request(
        f"{server.url}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


def cached_tokens(response: Any) -> int:
    """usage.prompt_tokens_details.cached_tokens of an openai response."""
    return int(response.usage.prompt_tokens_details.cached_tokens)


class Api:
    """Helpers handed to tests as a fixture (conftest modules are not importable)."""

    system = SYSTEM
    tools = TOOLS
    chat = staticmethod(chat)
    get_json = staticmethod(get_json)
    post_json = staticmethod(post_json)
    cached_tokens = staticmethod(cached_tokens)


@pytest.fixture(scope="session")
def api() -> type[Api]:
    """Request helpers and the shared prompt."""
    return Api


@pytest.fixture(scope="session")
def family_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """family_model_dir(name) -> a tiny random-weight model directory, built once."""
    from tests.support.family_models import build_family_model

    root = tmp_path_factory.mktemp("families")
    return lambda family: build_family_model(root / family, family)


def wait_for_writes(server: ServerProcess, timeout: float = 60.0) -> dict[str, Any]:
    """The backend's KV writes are on disk (tests/support/kv_writes.py); its kv stats."""
    return wait_for_kv_writes(server.url, timeout)


Api.wait_for_writes = staticmethod(wait_for_writes)  # type: ignore[attr-defined]
