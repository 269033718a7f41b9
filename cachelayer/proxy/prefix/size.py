"""How many tokens a stable prefix (tools + leading system prompt) is: the bar for a hit.

A request counts as a prefix hit only when the backend reused at least this many tokens.
Two sources, best first:

* measured: the upstream's `POST /v1/cachelayer/count_tokens` (cachelayer's backend
  renders the tools and the system prompt with the model's own chat template and
  tokenizer). Asked once per prefix, in the background after its first answer, so no
  request waits for it; the first request of a prefix is never a hit anyway.
* estimated: the prefix's share of the request's bytes times the prompt tokens the
  backend reported for it. Within one request, bytes and tokens are close to
  proportional; used until a measurement arrives, or for upstreams that cannot count.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from cachelayer.proxy.background import BACKGROUND
from cachelayer.proxy.forward.upstream import upstream_count
from cachelayer.proxy.identity import canonical_json
from cachelayer.proxy.prefix.ledger import Ledger
from cachelayer.proxy.prefix.stabilize import system_text

log = logging.getLogger(__name__)
_MAX_ASKED = 4096
# An upstream that failed this many counts in a row, never having answered one, cannot
# count (plain mlx_lm.server, another vendor's server): stop asking it.
_GIVE_UP_AFTER = 3


def leading_system(messages: Any) -> list[dict[str, Any]]:
    """The system messages before the first other message."""
    out: list[dict[str, Any]] = []
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer"):
            break
        out.append(message)
    return out


def prefix_body(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """A chat body holding only the prefix (tools + leading system), to be counted."""
    system = leading_system(body.get("messages"))
    tools = body.get("tools") or None
    if not system and not tools:
        return None
    out: dict[str, Any] = {"model": body.get("model"), "messages": system}
    if tools:
        out["tools"] = tools
    return out


def byte_share_estimate(body: Mapping[str, Any], prompt_tokens: int) -> int:
    """The prefix's share of the body's bytes, applied to the prompt's token count."""
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    assert isinstance(messages, list)
    system = leading_system(messages)
    tools = body.get("tools")
    prefix = (len(canonical_json(tools)) if tools else 0) + len(system_text(system).encode())
    rest = messages[len(system):]
    rest_bytes = len(orjson.dumps(rest)) if rest else 0
    if prefix + rest_bytes == 0:
        return 0
    return round(prompt_tokens * prefix / (prefix + rest_bytes))


class PrefixSizer:
    """Asks the upstream to count each new prefix once, off the request path."""

    def __init__(self) -> None:
        self._asked: OrderedDict[str, None] = OrderedDict()
        self._failures = 0
        self._answered = False

    def measure_later(self, request: web.Request, ledger: Ledger, prefix_id: str,
                      body: Mapping[str, Any]) -> None:
        """Schedule a count of this prefix unless one is known, pending or pointless; the
        count goes into the ledger's record of the prefix."""
        app = request.app
        if prefix_id in self._asked or ledger.prefixes.measured_size(prefix_id):
            return
        if not self._answered and self._failures >= _GIVE_UP_AFTER:
            return
        counted = prefix_body(body)
        if counted is None:
            return
        self._asked[prefix_id] = None
        while len(self._asked) > _MAX_ASKED:
            self._asked.popitem(last=False)
        app[BACKGROUND].spawn(self._measure(request, ledger, prefix_id, counted))

    async def _measure(self, request: web.Request, ledger: Ledger, prefix_id: str,
                       counted: dict[str, Any]) -> None:
        tokens = await upstream_count(request, counted)
        if tokens is None:
            self._failures += 1
            self._asked.pop(prefix_id, None)  # ask again later, unless we give up
            return
        self._answered = True
        ledger.prefixes.set_size(prefix_id, tokens)
        log.debug("prefix %s… is %d tokens", prefix_id[:12], tokens)
