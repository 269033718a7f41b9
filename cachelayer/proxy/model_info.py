"""What the served model can take, learnt from the backend, checked at the edge.

`cachelayer backend` publishes its limits at GET /v1/cachelayer/model (vocabulary size,
whether it takes images, that its KV reuse is scoped by tenant). The proxy reads them
once, and again a while after a failure, so an out-of-vocabulary `logit_bias` id or an
image for a text-only model is answered 400 in the client's API shape, naming the field,
before it is stored or forwarded. A stock upstream (mlx_lm.server, anything else) has no
such route: only the model-independent rules apply (protocol/sampling.py), and /health
says its KV reuse is shared between credentials.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from cachelayer.protocol.chat import ChatRequest
from cachelayer.protocol.sampling import SamplingError, check_token_ids
from cachelayer.protocol.validate import field_error

log = logging.getLogger(__name__)

MODEL_ROUTE = "/v1/cachelayer/model"
IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
_TIMEOUT = aiohttp.ClientTimeout(total=3.0)
# How long an answer (or the lack of one) is trusted before asking again.
RETRY_S = 10.0


@dataclass(frozen=True)
class Limits:
    """The served model's limits; None where the upstream does not say."""

    vocab_size: int | None = None
    vision: bool | None = None
    tenant_scoped_kv: bool = False


class ModelInfo:
    """The upstreams' published limits, fetched lazily and kept (all of them must say)."""

    def __init__(self, urls: tuple[str, ...]) -> None:
        """Limits of the upstreams at `urls` (nothing is fetched yet)."""
        self.urls = urls
        self.limits: Limits | None = None
        self._fetched_at = -RETRY_S
        self._lock = asyncio.Lock()

    def forget(self) -> None:
        """Ask again on the next request (the backend was restarted)."""
        self.limits = None
        self._fetched_at = -RETRY_S

    async def get(self, session: aiohttp.ClientSession) -> Limits:
        """The limits; empty ones (nothing known) when no upstream answers."""
        if self.limits is not None and time.monotonic() - self._fetched_at < RETRY_S * 30:
            return self.limits
        if time.monotonic() - self._fetched_at < RETRY_S:
            return self.limits or Limits()
        async with self._lock:
            if time.monotonic() - self._fetched_at >= RETRY_S:
                found = [await _fetch(session, url) for url in self.urls]
                self._fetched_at = time.monotonic()
                self.limits = _combine(found)
        return self.limits or Limits()


async def _fetch(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    """One upstream's published limits; {} for a stock upstream, None if unreachable."""
    try:
        async with session.get(url + MODEL_ROUTE, timeout=_TIMEOUT) as response:
            if response.status != 200:
                return {}
            data = orjson.loads(await response.read())
            return data if isinstance(data, dict) else {}
    except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError):
        return None


def _combine(found: list[dict[str, Any] | None]) -> Limits | None:
    """The strictest limits across upstreams; None while one of them is unreachable."""
    if any(f is None for f in found) or not found:
        return None
    infos = [f for f in found if f is not None]
    vocabs = [i.get("vocab_size") for i in infos]
    visions = [i.get("vision") for i in infos]
    return Limits(
        vocab_size=min(vocabs) if all(isinstance(v, int) for v in vocabs) else None,  # type: ignore[type-var]
        vision=all(visions) if all(isinstance(v, bool) for v in visions) else None,
        tenant_scoped_kv=all(i.get("tenant_scoped_kv") is True for i in infos),
    )


def check_parts(body: dict[str, Any], vision: bool | None) -> None:
    """Images for a model that takes text only are a 400 naming the part."""
    if vision is not False:
        return
    for i, message in enumerate(body.get("messages") or ()):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in IMAGE_PARTS:
                raise field_error(f"messages[{i}].content[{j}]",
                                  f"content part type {kind!r} is not supported: the "
                                  "model takes text only")


MODEL_INFO = web.AppKey("model_info", ModelInfo)


async def check_against_model(app: web.Application, chat: ChatRequest,
                              session: aiohttp.ClientSession) -> None:
    """The checks that need the served model's limits; raises InvalidRequest (400)."""
    limits = await app[MODEL_INFO].get(session)
    if limits.vocab_size is not None:
        try:
            check_token_ids(chat.body, limits.vocab_size)
        except SamplingError as exc:
            raise field_error(exc.field, exc.problem) from exc
    check_parts(chat.body, limits.vision)
