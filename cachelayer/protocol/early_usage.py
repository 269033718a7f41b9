"""Prompt usage known before the answer: the backend's early report, and a replay's.

Anthropic's `message_start` carries the prompt's usage (input, cache creation, cache
read) before any content, so a client that reads it (Claude Code's cache-hit ratio does)
must get the real figures there, not zeros. An upstream OpenAI stream reports usage only
in its last chunk, so `cachelayer backend` also writes one SSE comment line as soon as
its prefix lookup is done, before prefill:

    : cachelayer-usage {"prompt_tokens": N, "cached_tokens": M}

Standard SSE clients ignore comments; the proxy reads it (`parse_usage_comment`) and
hands it to the stream renderer (`announce`) before the first content event. A stored
answer replayed from layer 2 recomputed nothing, so its usage says so (`as_replayed`):
every prompt token was read from cache, none created, in every API.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from cachelayer.protocol.chat import ChatResult, Usage

USAGE_COMMENT = b": cachelayer-usage "


def usage_comment(prompt_tokens: int, cached_tokens: int) -> bytes:
    """The SSE comment event the backend writes once its prefix lookup is done."""
    body = orjson.dumps({"prompt_tokens": prompt_tokens, "cached_tokens": cached_tokens})
    return USAGE_COMMENT + body + b"\n\n"


def parse_usage_comment(line: bytes) -> Usage | None:
    """The usage an early-usage comment line carries; None for anything else or malformed."""
    if not line.startswith(USAGE_COMMENT):
        return None
    try:
        raw = orjson.loads(line[len(USAGE_COMMENT):])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(raw, dict):
        return None
    prompt, cached = raw.get("prompt_tokens"), raw.get("cached_tokens")
    if not isinstance(prompt, int) or prompt < 0:
        return None
    if not isinstance(cached, int) or cached < 0:
        return Usage(prompt_tokens=prompt)
    return Usage(prompt_tokens=prompt, cached_tokens=min(cached, prompt))


def announce(renderer: Any, usage: Usage | None) -> None:
    """Tell a stream renderer the prompt's usage before its first event, if it wants it.

    Only renderers whose API puts usage at the start (Anthropic's `message_start`) have
    a `prompt_usage` method; the others read usage from the final event alone.
    """
    hook = getattr(renderer, "prompt_usage", None)
    if usage is not None and callable(hook):
        hook(usage)


def replayed_usage(usage: Usage | None) -> Usage | None:
    """A stored answer's usage as its replay reports it: the whole prompt read from cache."""
    if usage is None:
        return None
    return dataclasses.replace(usage, cached_tokens=usage.prompt_tokens)


def as_replayed(result: ChatResult) -> ChatResult:
    """The stored result with the usage a replay reports (nothing computed, nothing created)."""
    usage = replayed_usage(result.usage)
    return result if usage == result.usage else dataclasses.replace(result, usage=usage)
