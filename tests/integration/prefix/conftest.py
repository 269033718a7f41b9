"""Fixtures for layer 1's integration tests: the anthropic SDK against the proxy."""

from __future__ import annotations

import anthropic
import pytest

from tests.support.servers import RunningServer


@pytest.fixture
def client(proxy: RunningServer) -> anthropic.Anthropic:
    """The real anthropic SDK pointed at the proxy, without retries."""
    return anthropic.Anthropic(base_url=proxy.url, api_key="k1", max_retries=0)
