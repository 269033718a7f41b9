"""Fixtures for the hardening suite: a counting scripted upstream and proxies in front of
it; the measured numbers of the run are printed at the end (pytest_terminal_summary)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.hardening.helpers import (
    SUMMARY,
    CountingUpstream,
    ProxyFactory,
    Upstream,
    hardened_settings,
)
from tests.support.proxy_app import proxy_factory
from tests.support.servers import RunningServer, serve_app


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A scripted, counting OpenAI upstream on a free port."""
    fake = CountingUpstream()
    with serve_app(fake.make_app) as server:
        yield fake, server


@pytest.fixture
def start_proxy(tmp_path: Path) -> ProxyFactory:
    """Start an in-process proxy with settings overrides:
    `with start_proxy(upstream=url) as proxy:`."""

    return proxy_factory(partial(hardened_settings, tmp_path))


@pytest.fixture
def proxy(upstream: Upstream, start_proxy: ProxyFactory) -> Iterator[RunningServer]:
    """An in-process proxy in front of the counting upstream."""
    with start_proxy(upstream=upstream[1].url) as server:
        yield server


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the suite's measured numbers (matrix counts, entries lost, soak) at the end."""
    if SUMMARY:
        terminalreporter.write_sep("-", "hardening summary")
        for line in SUMMARY:
            terminalreporter.write_line(line)
