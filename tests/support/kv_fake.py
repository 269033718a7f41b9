"""A scripted upstream that reports KV reuse the way a real prefix-caching backend does:
`cached_tokens` is the longest prefix a request shares with a prompt this backend saw
before (words stand in for tokens; the last `memory` prompts are remembered). Three of
them behind a routing proxy show whether turns land where their prefix is."""

from __future__ import annotations

import json
import threading
from collections import deque
from typing import Any

from tests.support.fake_upstream import FakeUpstream, Reply


def prompt_tokens(body: dict[str, Any]) -> list[str]:
    """The request as a token sequence: tools, then each message in order."""
    parts = [json.dumps(body.get("tools") or [], sort_keys=True)]
    for message in body.get("messages") or []:
        content = message.get("content")
        parts.append(f"<{message.get('role')}> "
                     + (content if isinstance(content, str) else json.dumps(content)))
    return " ".join(parts).split()


def shared_prefix(a: list[str], b: list[str]) -> int:
    """How many leading tokens two sequences share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class KvFake:
    """One backend's remembered prompts and the totals it reported."""

    def __init__(self, memory: int = 256) -> None:
        self.seen: deque[list[str]] = deque(maxlen=memory)
        self.lock = threading.Lock()
        self.prompt_total = 0
        self.reused_total = 0
        self.upstream = FakeUpstream(self.reply)

    def reply(self, body: dict[str, Any]) -> Reply:
        """Answer with usage that counts the longest remembered prefix as cached."""
        tokens = prompt_tokens(body)
        with self.lock:
            cached = max((shared_prefix(tokens, old) for old in self.seen), default=0)
            # What the backend keeps afterwards: this prompt and the answer it generates.
            self.seen.append(tokens)
            self.prompt_total += len(tokens)
            self.reused_total += cached
        last = (body.get("messages") or [{}])[-1].get("content")
        return Reply(text=f"ok: {str(last)[:40]}", prompt_tokens=len(tokens),
                     cached_tokens=cached, completion_tokens=3)

    def stats(self) -> dict[str, int]:
        """Requests, prompt tokens and reused tokens so far."""
        return {"requests": len(self.upstream.calls), "promptTokens": self.prompt_total,
                "reusedTokens": self.reused_total}
