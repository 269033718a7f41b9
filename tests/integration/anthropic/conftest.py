"""Fixtures for the Anthropic edge: the real anthropic SDK, and a proxy with count_tokens."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from typing import Any

import anthropic
import pytest
from aiohttp import web

from cachelayer.config import Settings
from cachelayer.proxy.forward.upstream import COUNT_ROUTE
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy_app import serve_proxy
from tests.support.servers import RunningServer, serve_app

COUNT_TOKENS_PATH = "/v1/messages/count_tokens"


@pytest.fixture
def client(proxy: RunningServer) -> anthropic.Anthropic:
    """The real anthropic SDK pointed at the proxy, without retries."""
    return anthropic.Anthropic(base_url=proxy.url, api_key="k1", max_retries=0)


@contextmanager
def _counting(
    answer: web.Response | None, settings: Settings
) -> Iterator[tuple[RunningServer, list[Any]]]:
    seen: list[Any] = []

    async def count(request: web.Request) -> web.Response:
        seen.append(await request.json())
        assert answer is not None
        return answer

    def make_upstream() -> web.Application:
        app = FakeUpstream().make_app()
        if answer is not None:
            app.router.add_post(COUNT_ROUTE, count)
        return app

    with serve_app(make_upstream) as upstream:
        proxied = replace(settings, upstream=upstream.url)
        with serve_proxy(proxied) as proxy:
            yield proxy, seen


CountingProxy = Callable[[web.Response | None], AbstractContextManager[
    tuple[RunningServer, list[Any]]]]


@pytest.fixture
def counting_proxy(base_settings: Settings) -> CountingProxy:
    """`with counting_proxy(answer) as (proxy, counted):` an upstream whose count route
    gives `answer` (None: no such route) behind a proxy serving count_tokens."""
    return lambda answer: _counting(answer, base_settings)
