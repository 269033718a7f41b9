"""Open layer 2's store for the settings: the front over diskcache, or over Redis with
the fleet's markers and the ledger's shared half on the same connection pool."""

from __future__ import annotations

from cachelayer.config import Settings
from cachelayer.proxy.store.backends import redis as redis_tier
from cachelayer.proxy.store.backends.base import AnswerStore, ColdTier
from cachelayer.proxy.store.backends.disk import DiskTier
from cachelayer.proxy.store.backends.redis_fleet import RedisFleet
from cachelayer.proxy.store.backends.redis_ledger import SharedLedger
from cachelayer.proxy.store.front import StoreFront


def open_store(settings: Settings) -> tuple[AnswerStore, SharedLedger | None]:
    """The store for --store (Redis, with the ledger's shared half) or diskcache."""
    cold: ColdTier
    fleet = shared = None
    if settings.store_url:
        client = redis_tier.connect(settings)
        cold = redis_tier.RedisTier(client, settings)
        fleet = RedisFleet(client, settings.store_namespace, lease_s=settings.fleet_lease_s)
        shared = SharedLedger(client, settings.store_namespace)
    else:
        cold = DiskTier(settings.responses_dir, size_limit=settings.response_max_bytes)
    front = StoreFront(cold, ttl_s=settings.response_ttl_s,
                       entry_max_bytes=settings.entry_max_bytes,
                       hot_bytes=settings.hot_tier_bytes,
                       max_pending_writes=settings.max_pending_writes,
                       fleet=fleet, fleet_wait_s=settings.fleet_wait_s)
    return front, shared
