"""Pure identifiers every layer shares: canonical JSON, the xxh3 digest, the tenant id."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
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


def tenant_id(authorization: str | None, api_key: str | None) -> str:
    """A one-way id for the client's credential; the credential is never stored or logged.

    `Authorization: Bearer K`, `x-api-key: K` and `api-key: K` (Azure's) name the same
    tenant. It is computed once per request (the front or the edge, `edge.TENANT`), in
    half a microsecond: nothing remembers credentials to save that.
    """
    credential = api_key or authorization or ""
    if credential.lower().startswith("bearer "):
        credential = credential[7:]
    credential = credential.strip()
    if not credential:
        return ANONYMOUS_TENANT
    return "t-" + xxhash.xxh3_64_hexdigest(b"cachelayer-tenant\x00" + credential.encode())


def request_tenant(headers: Mapping[str, str]) -> str:
    """The tenant of a request's headers: its Authorization, x-api-key or api-key (the
    edge computes it once per request, into `Exchange.tenant`)."""
    return tenant_id(headers.get("Authorization"),
                     headers.get("x-api-key") or headers.get("api-key"))


@functools.lru_cache(maxsize=1024)
def kv_salt(tenant: str) -> str:
    """What the backend is told (X-Cachelayer-Tenant) to scope KV reuse by: a one-way hash
    of the tenant id, itself a hash of the credential. Written into KV block headers, so
    it must not reveal even the tenant id."""
    return hashlib.sha256(b"cachelayer-kv-tenant\x00" + tenant.encode()).hexdigest()[:32]
