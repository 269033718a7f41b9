"""Fixtures for the backend unit tests: one tiny demo model per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachelayer.backend.demo_model import build_demo_model


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight llama model directory built once for the session."""
    return build_demo_model(tmp_path_factory.mktemp("models") / "demo")
