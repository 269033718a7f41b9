"""Pure identifiers every layer shares: canonical JSON, the xxh3 digest, the tenant id."""

from __future__ import annotations

import functools
from typing import Any

import orjson
import xxhash

ANONYMOUS_TENANT = "anonymous"


def canonical_json(value: Any) -> bytes:
    """Serialise to one byte form: sorted keys, no whitespace."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def digest(data: bytes) -> str:
    """The xxh3_128 hex digest every key in cachelayer is made of."""
    return xxhash.xxh3_128_hexdigest(data)


@functools.lru_cache(maxsize=1024)  # pure, and asked twice per request
def tenant_id(authorization: str | None, api_key: str | None) -> str:
    """A one-way id for the client's credential; the credential itself is never kept.

    `Authorization: Bearer K` and `x-api-key: K` name the same tenant.
    """
    credential = api_key or authorization or ""
    if credential.lower().startswith("bearer "):
        credential = credential[7:]
    credential = credential.strip()
    if not credential:
        return ANONYMOUS_TENANT
    return "t-" + xxhash.xxh3_64_hexdigest(b"cachelayer-tenant\x00" + credential.encode())
