"""Model resolution for the backend and `warm`: a local directory, or a cached hub repo.

Nothing is downloaded: a repo name must already be in the Hugging Face cache.
"""

from __future__ import annotations

from pathlib import Path


def resolve_model_dir(model: str) -> Path:
    """The local directory of `model`: a path, or a repo already in the HF cache."""
    path = Path(model)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, local_files_only=True))
