"""Models are named by what the user gave, never by a path on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachelayer.backend.models import served_name


def test_a_directory_is_named_by_its_last_component(tmp_path: Path) -> None:
    model = tmp_path / "models" / "demo"
    model.mkdir(parents=True)
    assert served_name(str(model)) == "demo"
    assert served_name(str(model) + "/") == "demo"


def test_a_relative_or_home_path_is_named_by_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "Qwen3-8B-4bit").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert served_name("./Qwen3-8B-4bit") == "Qwen3-8B-4bit"
    assert served_name("Qwen3-8B-4bit") == "Qwen3-8B-4bit"
    assert served_name("~/Qwen3-8B-4bit") == "Qwen3-8B-4bit"


def test_a_hub_repo_id_is_kept_as_given(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no such directory here
    assert served_name("mlx-community/Qwen3-8B-4bit") == "mlx-community/Qwen3-8B-4bit"
