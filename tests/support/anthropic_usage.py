"""Read an Anthropic stream's usage the way a client sees it: through the anthropic SDK's
raw events, message_start's usage (sent before any text) and message_delta's (the final)."""

from __future__ import annotations

from typing import Any

import anthropic

INPUT_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def stream_usages(client: anthropic.Anthropic, **create: Any) -> tuple[Any, Any, str]:
    """(message_start usage, message_delta usage, X-Cache-Status) of one streamed
    messages.create(**create)."""
    raw = client.messages.with_raw_response.create(stream=True, **create)
    start = delta = None
    for event in raw.parse():
        if event.type == "message_start":
            start = event.message.usage
        elif event.type == "message_delta":
            delta = event.usage
    assert start is not None and delta is not None
    return start, delta, raw.headers["X-Cache-Status"]


def input_usage(usage: Any) -> tuple[int, int, int]:
    """The three input figures of a usage, in INPUT_FIELDS' order."""
    return tuple(getattr(usage, name) for name in INPUT_FIELDS)  # type: ignore[return-value]
