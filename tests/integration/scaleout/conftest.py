"""Fixtures for scale-out tests: a real redis-server and `cachelayer serve` processes on it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy_process import ProxyProcess, spawn_proxy
from tests.support.redis_server import RedisServer, running_redis
from tests.support.servers import RunningServer, serve_app


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """redis-server on a free port in the test's tmp dir, always stopped."""
    with running_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def fake() -> Iterator[tuple[FakeUpstream, RunningServer]]:
    """A scripted upstream every proxy fronts."""
    upstream = FakeUpstream()
    with serve_app(upstream.make_app) as server:
        yield upstream, server


SpawnProxies = Callable[..., list[ProxyProcess]]


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[SpawnProxies]:
    """spawn(n, upstream_url, *extra): n serve processes, each with its own data dir;
    every one started here is stopped at the end of the test."""
    started: list[ProxyProcess] = []

    def spawn(n: int, upstream_url: str, *extra: str, first: int = 0,
              **kwargs: Any) -> list[ProxyProcess]:
        children = []
        for i in range(first, first + n):
            name = f"proxy{i}"
            child = spawn_proxy(tmp_path, upstream_url, *extra, name=name,
                                data_dir=tmp_path / f"data-{name}", **kwargs)
            started.append(child)
            children.append(child)
        return children

    yield spawn
    for child in started:
        with contextlib.suppress(Exception):
            child.stop()
