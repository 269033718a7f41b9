"""The proxy in this test process: make_app(settings) served on a free port in its own
thread (servers.serve_app), and the `start_proxy(**overrides)` factories the suites'
fixtures hand to tests."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from cachelayer.config import Settings
from cachelayer.proxy.app import make_app
from tests.support.servers import RunningServer, serve_app

ProxyFactory = Callable[..., AbstractContextManager[RunningServer]]


def serve_proxy(settings: Settings) -> AbstractContextManager[RunningServer]:
    """`with serve_proxy(settings) as proxy:` the real proxy app, stopped on exit."""
    return serve_app(lambda: make_app(settings))


def proxy_factory(settings_for: Callable[..., Settings]) -> ProxyFactory:
    """start_proxy(**overrides) -> serve_proxy(settings_for(**overrides))."""
    return lambda **overrides: serve_proxy(settings_for(**overrides))
