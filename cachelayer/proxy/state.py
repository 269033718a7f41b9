"""What every layer shares: the per-request `Exchange`, its `CacheStatus` and
`PrefixIds`, and the settings key.

Each layer's own app state lives in typed keys in that layer's package, registered by
its layer object (`proxy/layer.py`); this module imports no layer, so every layer can
import it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from aiohttp import web

from cachelayer.config import Settings
from cachelayer.protocol.chat import ChatRequest, ChatResult, Usage
from cachelayer.protocol.codec import Codec
from cachelayer.proxy.identity import ANONYMOUS_TENANT


class CacheStatus(str, enum.Enum):
    """What layer 2 did with a request, as the `X-Cache-Status` header says it."""

    HIT = "HIT"
    MISS = "MISS"
    EXPIRED = "EXPIRED"
    BYPASS = "BYPASS"


@dataclass(frozen=True)
class PrefixIds:
    """The identity of a request's stable prefix: its tools, its system prompt, both
    (layer 1 computes it in prefix/stabilize.py; layer 3 routes by it)."""

    tools_hash: str
    system_hash: str
    prefix_id: str
    tools: int


@dataclass
class Exchange:
    """What the layers learn about one proxied request as it passes through them."""

    chat: ChatRequest
    codec: Codec
    fingerprint: str | None = None  # digest of route + raw body, for the layers' memos
    # The one-way id of the request's credential (proxy/identity.py), computed once at
    # the edge: the store key, layer 1's client, the backend's KV salt and the
    # conversation records all read it from here.
    tenant: str = ANONYMOUS_TENANT
    cache_status: CacheStatus = CacheStatus.BYPASS
    prefix: PrefixIds | None = None
    result: ChatResult | None = None
    oversized: bool = False  # relayed whole, but too large to keep: never stored
    upstream_ms: float | None = None
    early_usage: Usage | None = None  # the backend's report after its prefix lookup
    first_token_ms: float | None = None  # a stream's first content (its prefill's end)


SETTINGS = web.AppKey("settings", Settings)
EXCHANGE = web.RequestKey("exchange", Exchange)
