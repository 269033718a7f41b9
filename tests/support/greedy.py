"""Greedy chat completions with logprobs, sent as raw JSON to a backend (ours or stock).

Raw JSON, not the openai SDK, so the answer is compared as the server wrote it and a
request without a model name reaches stock mlx_lm.server's default model.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from tests.support.processes import ServerProcess

# Long enough to fill several KV blocks, the same for every test that shares a prefix.
SYSTEM = " ".join(f"Rule {i}: read file number {i} before editing it." for i in range(60))


def ask_greedy(server: ServerProcess, system: str, user: str, **extra: Any) -> dict[str, Any]:
    """One greedy, non-streamed chat completion with logprobs (6 tokens unless `extra` says)."""
    body = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": 6, "temperature": 0, "logprobs": True, **extra}
    request = urllib.request.Request(f"{server.url}/v1/chat/completions",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as r:
        return dict(json.loads(r.read()))


def answer(response: dict[str, Any]) -> list[tuple[int, float]]:
    """The answer's token ids with their logprobs: a wrong reuse moves these."""
    return [(t["id"], t["logprob"]) for t in response["choices"][0]["logprobs"]["content"]]


def cached(response: dict[str, Any]) -> int:
    """usage.prompt_tokens_details.cached_tokens."""
    return int(response["usage"]["prompt_tokens_details"]["cached_tokens"])
