"""Fixtures for the backend unit tests: one tiny demo model per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.demo_model import build_demo_model


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
