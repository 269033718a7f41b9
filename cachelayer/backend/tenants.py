"""Tenant-scoped prompt-cache reuse: no tenant reuses (or times) another's prefix.

The proxy sends `X-Cachelayer-Tenant: <hex>` (a one-way hash of the client's credential,
never the credential) unless the user chose to share prefixes across credentials. A
request's tenant goes into the chain seed of every block it writes (kv_blocks.chain_seed)
and into the key of its in-memory cache, and lookups follow only that tenant's chains: a
tenant's `cached_tokens` for a guess of another tenant's prompt is what a cold start gives.
No header: the shared namespace "" (the backend used directly, or sharing chosen).

mlx-lm's generation thread calls `fetch_nearest_cache` right after tokenizing a request,
and `insert_cache` later, with only tokens to go by (in batches, without the request).
`TenantRegistry` bridges that: `begin` records (tenant, prompt) as each request is
tokenized; an insert belongs to the tenants whose prompt starts with its tokens (each of
them sent those tokens), else to the one tenant whose prompt it extends (its own answer).
An insert no tenant can be named for is not kept: reuse is lost, never leaked.
"""

from __future__ import annotations

import array
import collections
import re
import threading
from collections.abc import Sequence
from typing import Any

TENANT_HEADER = "X-Cachelayer-Tenant"
_TENANT_RE = re.compile(r"^[0-9a-f]{8,64}$")
# Requests in flight at once are far fewer (mlx-lm batches 32 at most).
RECENT_REQUESTS = 128


def parse_tenant(value: str | None) -> str:
    """The tenant named by the header ("" when absent); ValueError if malformed."""
    if not value:
        return ""
    value = value.strip().lower()
    if not _TENANT_RE.match(value):
        raise ValueError(f"{TENANT_HEADER} must be 8-64 hex digits")
    return value


def _packed(tokens: Sequence[int]) -> bytes:
    # Signed 64-bit: mlx-lm keys images by negative ids.
    return array.array("q", tokens).tobytes()


def scoped(model: Any, tenant: str) -> Any:
    """The in-memory cache key of `model` for `tenant` (the model key itself when shared)."""
    return model if not tenant else (model, "tenant", tenant)


class TenantRegistry:
    """Which tenant asked for which prompt, for the last RECENT_REQUESTS requests."""

    def __init__(self, size: int = RECENT_REQUESTS) -> None:
        """An empty registry remembering `size` prompts."""
        # Prompts as packed bytes: a prefix test is then one memcmp (startswith), which
        # matters at 100k-token prompts times RECENT_REQUESTS on the generation thread.
        self._recent: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=size)
        self._lock = threading.Lock()
        self.current = ""

    def begin(self, tenant: str, tokens: Sequence[int]) -> None:
        """A request of `tenant` for `tokens` is about to look up its cache."""
        with self._lock:
            self.current = tenant
            self._recent.append((tenant, _packed(tokens)))

    def owners(self, tokens: Sequence[int]) -> list[str]:
        """The tenants a cache of `tokens` may be kept for (see the module docstring)."""
        sent: set[str] = set()
        extended: set[str] = set()
        packed = _packed(tokens)
        with self._lock:
            recent = list(self._recent)
        for tenant, prompt in recent:
            if not packed or not prompt:
                continue
            if prompt.startswith(packed):
                sent.add(tenant)
            elif packed.startswith(prompt):
                extended.add(tenant)
        if sent:
            return sorted(sent)
        return list(extended) if len(extended) == 1 else []


def tenant_generator_class() -> type:
    """mlx-lm's `ResponseGenerator`, telling the registry whose prompt it tokenizes."""
    from mlx_lm.server import ResponseGenerator

    class TenantScopedGenerator(ResponseGenerator):
        def _tokenize(self, tokenizer: Any, request: Any, args: Any) -> Any:
            """mlx-lm's tokenization; then the request's tenant is the one looking up."""
            out = super()._tokenize(tokenizer, request, args)
            registry = getattr(self.prompt_cache, "tenants", None)
            if registry is not None:
                vision = out[4]
                key = vision.cache_key if vision is not None else out[0]
                registry.begin(getattr(request, "cachelayer_tenant", ""), key)
            return out

    return TenantScopedGenerator
