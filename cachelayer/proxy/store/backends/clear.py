"""`cachelayer clear --store URL`: empty the shared Redis store for every proxy on it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from redis.exceptions import RedisError

from cachelayer.config import Settings, check_store_url, redact_url
from cachelayer.proxy.store.backends import redis as redis_store
from cachelayer.proxy.store.backends.redis_ledger import SharedLedger


async def _clear(settings: Settings, what: Sequence[str]) -> list[str]:
    client = redis_store.connect(settings)
    lines: list[str] = []
    try:
        if "responses" in what:
            ns = settings.store_namespace
            removed = await redis_store.wipe_answers(client, f"{ns}:r:", f"{ns}:generation")
            lines.append(f"responses: removed {removed} stored answers from "
                         f"{settings.store_label} (every proxy's memory follows within a "
                         "second)")
        if "ledger" in what:
            await SharedLedger(client, settings.store_namespace).clear()
            lines.append(f"ledger: shared counters and prefix records reset in "
                         f"{settings.store_label}")
    finally:
        await client.aclose()
    return lines


def clear_shared(url: str, password: str | None, what: Sequence[str]) -> list[str]:
    """Clear answers and/or the shared ledger in Redis; ValueError (password-free) if the
    URL is wrong or Redis does not answer."""
    settings = Settings(store_url=check_store_url(url), store_password=password)
    try:
        return asyncio.run(_clear(settings, what))
    except (RedisError, OSError) as exc:
        raise ValueError(f"redis at {redact_url(url)} did not answer: {exc}") from None
