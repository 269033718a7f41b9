"""What layer 2 may look up and store: the mode, the request's Cache-Control, the answer."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cachelayer.config import ResponseCacheMode
from cachelayer.protocol.chat import ChatResult
from cachelayer.proxy.store.keys import is_deterministic

_MAX_AGE = re.compile(r"max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)


@dataclass(frozen=True)
class CacheControl:
    """The request directives cachelayer honours."""

    no_cache: bool = False
    no_store: bool = False
    max_age: float | None = None


def parse_cache_control(header: str | None) -> CacheControl:
    """Parse a request's Cache-Control header; unknown directives are ignored."""
    if not header:
        return CacheControl()
    directives = {part.strip().lower().split("=")[0] for part in header.split(",")}
    match = _MAX_AGE.search(header)
    return CacheControl(
        no_cache="no-cache" in directives,
        no_store="no-store" in directives,
        max_age=float(match.group(1)) if match else None,
    )


@dataclass(frozen=True)
class Decision:
    """Whether to look up and whether to store, for one request."""

    lookup: bool
    store: bool
    max_age: float | None = None


def decide(mode: ResponseCacheMode, control: CacheControl, body: Mapping[str, Any]) -> Decision:
    """Combine the configured mode with the request's own directives."""
    if mode is ResponseCacheMode.OFF or control.no_store:
        return Decision(lookup=False, store=False)
    if mode is ResponseCacheMode.DETERMINISTIC and not is_deterministic(body):
        return Decision(lookup=False, store=False)
    return Decision(lookup=not control.no_cache, store=True, max_age=control.max_age)


def unstorable_reason(result: ChatResult, *, store_truncated: bool) -> str | None:
    """Why a complete answer must not be stored, or None when it may be."""
    if not result.choices:
        return "no choices"
    if result.is_empty:
        return "empty answer"
    reasons = {c.finish_reason for c in result.choices}
    if None in reasons:
        return "a choice never finished"
    if "length" in reasons and not store_truncated:
        return "truncated at max_tokens"
    if "error" in reasons:
        return "upstream reported an error"
    return None
