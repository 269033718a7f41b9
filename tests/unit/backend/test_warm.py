"""warm: the system prefix, and a local warm-up that the store finds later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.kv_files import model_fingerprint
from cachelayer.backend.paged_store import PagedStore
from cachelayer.backend.warm import system_prefix_tokens, warm_local

pytestmark = pytest.mark.slow  # real mlx inference, child servers or CLIs

SYSTEM = "You are a careful assistant. " * 20
TOOLS = [{"type": "function", "function": {"name": "grep", "parameters": {"type": "object"}}}]


def test_system_prefix_starts_every_conversation(loaded_model: tuple[Any, Any]) -> None:
    tokenizer = loaded_model[1]
    prefix = system_prefix_tokens(tokenizer, SYSTEM, TOOLS)
    for user in ("hello", "a different question", "x"):
        full = tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
            tools=TOOLS,
            add_generation_prompt=True,
        )
        assert full[: len(prefix)] == prefix
    assert len(prefix) > 100
    assert system_prefix_tokens(tokenizer, SYSTEM, None) != prefix


def test_warm_local_stores_the_prefix_for_the_backend(
    demo_model: Path, tmp_path: Path, loaded_model: tuple[Any, Any], capsys: Any
) -> None:
    assert warm_local(str(demo_model), tmp_path, SYSTEM, TOOLS, kv_max_bytes=1 << 30) == 0
    prefix = system_prefix_tokens(loaded_model[1], SYSTEM, TOOLS)
    store = PagedStore(tmp_path, model_fingerprint(demo_model), max_bytes=1 << 30, min_tokens=1)
    store.rebuild_index()
    match = store.nearest([*prefix, 42], ("kv", "kv"))
    assert match is not None and match.n_tokens == len(prefix)
    assert "prefill [" in capsys.readouterr().err
    assert warm_local(str(demo_model), tmp_path, SYSTEM, TOOLS, kv_max_bytes=1 << 30) == 0
    assert "already cached" in capsys.readouterr().out
