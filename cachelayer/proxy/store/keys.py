"""Layer 2's key: a pure function from a neutral request to the identity of its answer.

A key covers everything that changes the answer (model, messages, tools, tool_choice,
sampling settings, stop, response format, the tenant, the upstream) and nothing that
does not (the stream flag, JSON key order, client metadata, request ids). Changing
what goes into a key means bumping KEY_VERSION so old entries simply stop matching.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cachelayer.proxy.identity import canonical_json, digest

KEY_VERSION = 1

# Fields a client may vary without changing what the model answers.
NON_SEMANTIC_FIELDS = frozenset(
    {"stream", "stream_options", "user", "metadata", "store", "service_tier", "request_id"}
)
# Sampling numbers arrive as 0 or 0.0 depending on the client's JSON encoder.
_FLOAT_FIELDS = frozenset(
    {
        "temperature",
        "top_p",
        "min_p",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
    }
)


def semantic_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a request body that can change the answer, in a normal form."""
    out: dict[str, Any] = {}
    for name, value in body.items():
        if name in NON_SEMANTIC_FIELDS or value is None:
            continue
        if name in _FLOAT_FIELDS and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif name == "stop" and isinstance(value, str):
            value = [value]
        out[name] = value
    return out


def response_key(
    kind: str, body: Mapping[str, Any], *, tenant: str, upstream: str
) -> str:
    """Layer 2's key: the request's meaning, for this tenant, on this upstream."""
    material = {
        "v": KEY_VERSION,
        "kind": kind,
        "tenant": tenant,
        "upstream": upstream.rstrip("/"),
        "body": semantic_body(body),
    }
    return digest(canonical_json(material))


def is_deterministic(body: Mapping[str, Any]) -> bool:
    """True when the same request should produce the same answer (greedy or seeded)."""
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)) and temperature == 0:
        return True
    return body.get("seed") is not None
