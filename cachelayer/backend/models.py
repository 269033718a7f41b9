"""Model resolution for the backend and `warm`: a local directory, or a cached hub repo.

Nothing is downloaded: a repo name must already be in the Hugging Face cache.
"""

from __future__ import annotations

from pathlib import Path


def served_name(model: str) -> str:
    """The name clients see for `model`: what the user gave, never a path on this machine.

    A directory (absolute, relative or `~`) is named by its last component (`demo`,
    `Qwen3-8B-4bit`); a hub repo id (`mlx-community/Qwen3-8B-4bit`) is kept as given.
    """
    path = Path(model).expanduser()
    looks_like_path = model.startswith(("/", ".", "~")) or path.is_dir()
    if looks_like_path:
        return path.resolve().name or model
    return model


def resolve_model_dir(model: str) -> Path:
    """The local directory of `model`: a path, or a repo already in the HF cache."""
    path = Path(model)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, local_files_only=True))
