"""The store's front over each cold tier: a real diskcache directory, or a real
redis-server (one per module; a child server, so those cases are slow)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cachelayer.config import Settings
from cachelayer.proxy.store.backends import redis as redis_tier
from cachelayer.proxy.store.backends.base import ColdTier, PutOutcome, StoredAnswer
from cachelayer.proxy.store.backends.disk import DiskTier
from tests.support.redis_server import RedisServer, running_redis

TIERS = ["diskcache", pytest.param("redis", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the module, always stopped."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


ColdFactory = Callable[[], ColdTier]


@pytest.fixture(params=TIERS)
async def cold_factory(request: pytest.FixtureRequest, tmp_path: Path
                       ) -> AsyncIterator[ColdFactory]:
    """Opens cold tiers over one shared location (two processes sharing a store)."""
    opened: list[ColdTier] = []
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.client().flushall()
        settings = Settings(store_url=server.url(), data_dir=tmp_path)

        def make() -> ColdTier:
            tier = redis_tier.RedisTier(redis_tier.connect(settings), settings)
            opened.append(tier)
            return tier
    else:
        def make() -> ColdTier:
            tier = DiskTier(tmp_path / "responses", size_limit=1 << 30)
            opened.append(tier)
            return tier
    yield make
    for tier in opened:
        await tier.aclose()


class GatedTier:
    """A real cold tier whose writes wait at a gate: writes in flight, held open."""

    def __init__(self, inner: ColdTier) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.entered = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, key: str, answer: StoredAnswer, body: bytes,
                    ttl_left_s: float) -> PutOutcome:
        """Count the write, wait for the gate, then write for real."""
        self.entered += 1
        await self.gate.wait()
        return await self.inner.write(key, answer, body, ttl_left_s)
