"""`cachelayer warm`: precompute the prompt cache of a system prompt and tools.

Locally (`--model`) the prefix is prefilled in this process and written to the
same store the backend reads, so the first real request after a (re)start
skips that prefill. Remotely (`--upstream`) a one-token chat request makes the
running server compute (and, for `cachelayer backend`, persist) it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, TextIO

logger = logging.getLogger(__name__)

_BAR_WIDTH = 40


def _messages(system: str, user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def system_prefix_tokens(
    tokenizer: Any,
    system: str,
    tools: list[dict[str, Any]] | None,
    chat_template_args: dict[str, Any] | None = None,
) -> list[int]:
    """Token ids that every conversation with this system prompt and tools starts with.

    The template is rendered with two different user turns; their common prefix
    is exactly the part no user message can change.
    """
    args = chat_template_args or {}
    a, b = (
        tokenizer.apply_chat_template(
            _messages(system, user), tools=tools, add_generation_prompt=True, **args
        )
        for user in ("a", "b")
    )
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return list(a[:n])


class ProgressBar:
    """A one-line text progress bar; fits generate_step's prompt_progress_callback."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        """Draw on `stream` (stderr by default, so stdout stays machine-readable)."""
        self.label = label
        # Looked up now, not at import, so redirected stderr (tests) is honoured.
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        """Redraw for `done` of `total` tokens."""
        frac = done / total if total else 1.0
        filled = int(frac * _BAR_WIDTH)
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        elapsed = time.monotonic() - self.start
        end = "\n" if done >= total else ""
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total} tokens {elapsed:5.1f}s{end}")
        self.stream.flush()


def warm_local(
    model: str,
    kv_dir: Path,
    system: str,
    tools: list[dict[str, Any]] | None,
    *,
    kv_max_bytes: int | None,
    chat_template_args: dict[str, Any] | None = None,
) -> int:
    """Prefill the prefix with the model in-process and store it; returns an exit code."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache

    from cachelayer.backend.kv_codec import layer_kinds
    from cachelayer.backend.kv_files import model_fingerprint
    from cachelayer.backend.models import resolve_model_dir
    from cachelayer.backend.paged_store import PagedStore
    from cachelayer.backend.settings import auto_kv_budget

    model_dir = resolve_model_dir(model)
    loaded = load(str(model_dir))
    lm, tokenizer = loaded[0], loaded[1]
    kinds = layer_kinds(make_prompt_cache(lm))
    if kinds is None:
        print("this model's cache kinds cannot be stored on disk; nothing to warm",
              file=sys.stderr)
        return 1
    tokens = system_prefix_tokens(tokenizer, system, tools, chat_template_args)
    # min_tokens=1: the user asked for this prefix explicitly, whatever its length.
    store = PagedStore(kv_dir, model_fingerprint(model_dir),
                       max_bytes=kv_max_bytes or auto_kv_budget(kv_dir), min_tokens=1)
    store.rebuild_index()
    found = store.nearest([*tokens, 0], kinds)
    if found is not None and found.n_tokens >= len(tokens):
        print(f"already cached: {len(tokens)} tokens")
        return 0
    prompt_cache = make_prompt_cache(lm)
    bar = ProgressBar("prefill")
    for _ in generate_step(
        mx.array(tokens),
        lm,
        max_tokens=0,
        prompt_cache=prompt_cache,
        prompt_progress_callback=bar,
    ):
        pass
    mx.eval([c.state for c in prompt_cache])
    written = store.save(tuple(tokens), prompt_cache, kinds)
    stored = store.nearest([*tokens, 0], kinds)
    if stored is None or stored.n_tokens < len(tokens):
        print("not stored (larger than --kv-max-bytes?)", file=sys.stderr)
        return 1
    print(f"cached {len(tokens)} tokens in {store.root} ({written} bytes written)")
    return 0


def warm_upstream(
    upstream: str,
    system: str,
    tools: list[dict[str, Any]] | None,
    *,
    model: str | None = None,
    timeout: float = 3600.0,
) -> int:
    """Send the prefix to a running server as a one-token chat request."""
    body: dict[str, Any] = {
        "model": model or "default_model",
        "messages": _messages(system, "."),
        "max_tokens": 1,
        "temperature": 0,
        "stream": False,
    }
    if tools:
        body["tools"] = tools
    url = upstream.rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    request = urllib.request.Request(
        f"{url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    usage = answer.get("usage") or {}
    print(
        f"warmed {usage.get('prompt_tokens', '?')} prompt tokens on {upstream} "
        f"in {time.monotonic() - started:.1f}s"
    )
    return 0
