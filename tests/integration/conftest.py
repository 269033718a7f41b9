"""Fixtures for integration tests: a scripted upstream and a real proxy in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from cachelayer.config import Settings
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy_app import ProxyFactory, proxy_factory
from tests.support.servers import RunningServer, serve_app


@pytest.fixture
def upstream() -> Iterator[tuple[FakeUpstream, RunningServer]]:
    """A scripted OpenAI upstream on a free port."""
    fake = FakeUpstream()
    with serve_app(fake.make_app) as server:
        yield fake, server


@pytest.fixture
def base_settings(tmp_path: Path) -> Settings:
    """Settings with every file under the test's tmp dir."""
    return Settings(
        upstream="http://127.0.0.1:9",
        data_dir=tmp_path / "data",
        metrics_file=tmp_path / "metrics.json",
        metrics_interval_s=0.2,
        connect_timeout_s=2.0,
        read_timeout_s=5.0,
    )


@pytest.fixture
def start_proxy(base_settings: Settings) -> ProxyFactory:
    """Start a proxy with settings overrides: `with start_proxy(upstream=url) as proxy:`."""
    return proxy_factory(lambda **overrides: replace(base_settings, **overrides))


@pytest.fixture
def proxy(
    upstream: tuple[FakeUpstream, RunningServer], start_proxy: ProxyFactory
) -> Iterator[RunningServer]:
    """A proxy in front of the scripted upstream."""
    with start_proxy(upstream=upstream[1].url) as server:
        yield server
