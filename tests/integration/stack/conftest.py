"""Fixtures for full-stack tests: the proxy in front of real mlx-lm servers on a tiny model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from cachelayer.backend.demo_model import build_demo_model
from cachelayer.config import Settings
from tests.support.processes import (
    ServerProcess,
    backend_command,
    free_port,
    running_server,
    stock_command,
)
from tests.support.proxy_app import serve_proxy
from tests.support.servers import RunningServer

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def stack_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random-weight demo model, built once for these tests."""
    return build_demo_model(tmp_path_factory.mktemp("stack-models") / "demo")


@contextmanager
def stack_backend(model: Path, tmp_path: Path, *flags: str) -> Iterator[ServerProcess]:
    """A real `cachelayer backend` on `model` with `flags`, its KV files and log under
    tmp_path; stopped on exit."""
    port = free_port()
    argv = backend_command(model, port, tmp_path / "kv", *flags)
    with running_server(argv, port, tmp_path / "backend.log", cwd=ROOT) as server:
        yield server


@pytest.fixture
def backend(stack_model: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """A real `cachelayer backend` with its KV files under the test's tmp dir."""
    with stack_backend(stack_model, tmp_path, "--kv-min-tokens", "128") as server:
        yield server


@pytest.fixture
def stock(stack_model: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """A real, unmodified `mlx_lm.server`."""
    port = free_port()
    (tmp_path / "hf").mkdir()
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    with running_server(stock_command(stack_model, port), port, tmp_path / "stock.log",
                        cwd=ROOT, env=env) as server:
        yield server


def stack_settings(tmp_path: Path, upstream: str, **overrides: object) -> Settings:
    """Proxy settings with every file under tmp_path."""
    base = Settings(upstream=upstream, data_dir=tmp_path / "data",
                    metrics_file=tmp_path / "metrics.json", metrics_interval_s=0.2)
    return replace(base, **overrides)  # type: ignore[arg-type]


@contextmanager
def stack_proxy(tmp_path: Path, upstream: str, **overrides: object) -> Iterator[RunningServer]:
    """The proxy (in this process) in front of `upstream`, settings from stack_settings."""
    with serve_proxy(stack_settings(tmp_path, upstream, **overrides)) as proxy:
        yield proxy


@pytest.fixture
def stack(backend: ServerProcess, tmp_path: Path) -> Iterator[RunningServer]:
    """The proxy in front of the real backend."""
    with stack_proxy(tmp_path, backend.url) as proxy:
        yield proxy
