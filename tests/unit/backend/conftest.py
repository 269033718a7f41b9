"""Fixtures for the backend unit tests: one tiny demo model per test session, and the
backend's PersistentPromptCache over a test's tmp dir."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.demo_model import build_demo_model

# The model key PersistentPromptCache persists, and the demo llama's layer kinds (two
# attention layers).
KEY = ("model", None, None)
KINDS = ("kv", "kv")


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight llama model directory built once for the session."""
    return build_demo_model(tmp_path_factory.mktemp("models") / "demo")


@pytest.fixture(scope="session")
def loaded_model(demo_model: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of the demo model, loaded once."""
    from mlx_lm import load

    loaded = load(str(demo_model))
    return loaded[0], loaded[1]


@pytest.fixture(scope="session")
def prefill(loaded_model: tuple[Any, Any]) -> Callable[..., list[Any]]:
    """prefill(tokens, prompt_cache=None) -> prompt_cache holding exactly `tokens`."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    model = loaded_model[0]

    def run(tokens: list[int], prompt_cache: list[Any] | None = None) -> list[Any]:
        cache = prompt_cache if prompt_cache is not None else make_prompt_cache(model)
        model(mx.array(tokens)[None], cache=cache)
        mx.eval([c.state for c in cache])
        return cache

    return run


@pytest.fixture(scope="session")
def family_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Any, Any]]:
    """family_model(name) -> (model, tokenizer) of a tiny random-weight model, built once."""
    from mlx_lm import load

    from tests.support.family_models import build_family_model

    root = tmp_path_factory.mktemp("families")
    loaded: dict[str, tuple[Any, Any]] = {}

    def get(family: str) -> tuple[Any, Any]:
        if family not in loaded:
            result = load(str(build_family_model(root / family, family)))
            loaded[family] = (result[0], result[1])
        return loaded[family]

    return get


@pytest.fixture
def make_cache(tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """make_cache() -> a PersistentPromptCache over tmp_path (16-token blocks), its index
    read from disk as at a backend's start; all closed at teardown."""
    from cachelayer.backend.paged_store import PagedStore
    from cachelayer.backend.persistent_cache import PersistentPromptCache

    made: list[PersistentPromptCache] = []

    def make() -> PersistentPromptCache:
        store = PagedStore(tmp_path, "a" * 24, max_bytes=1 << 30, min_tokens=16, block_tokens=16)
        store.rebuild_index()
        cache = PersistentPromptCache(store, KEY, model_name="m", family="llama", kinds=KINDS)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()
