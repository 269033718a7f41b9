"""What, beyond the model's weights, changes what a stored KV block means: the variant.

A LoRA adapter changes every layer's keys and values; a draft model adds its own
layers to each cache (mlx-lm appends them to the main model's); KV quantization
changes the arrays. The variant names all three, and `kv_blocks.chain_seed` mixes it
into the seed of every chain hash, so blocks of one variant are never restored
into another. An empty variant (plain model) leaves the seed, and so the stored
blocks, as they were. Also here: mlx-lm's `ModelProvider`, taught the model's own
name so adapter and draft model apply to the requests pinned to that name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cachelayer.backend.kv_files import model_fingerprint
from cachelayer.backend.models import resolve_model_dir
from cachelayer.backend.settings import BackendSettings, MlxOptions

# As in kv_files.model_fingerprint: both ends of each file identify it cheaply.
_SAMPLE_BYTES = 1 << 20


def dir_fingerprint(directory: Path) -> str:
    """Identify a directory of small files (an adapter) by names, sizes and content samples."""
    digest = hashlib.sha256(b"cachelayer-dir/1")
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no files in {directory}")
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with path.open("rb") as f:
            digest.update(f.read(_SAMPLE_BYTES))
            f.seek(max(0, size - _SAMPLE_BYTES))
            digest.update(f.read(_SAMPLE_BYTES))
    return digest.hexdigest()[:24]


def variant_key(mlx: MlxOptions) -> str:
    """The variant of a backend's blocks ("" for the plain model): adapter and draft model
    by content, KV quantization by its three settings."""
    parts: dict[str, str] = {}
    if mlx.adapter_path:
        parts["adapter"] = dir_fingerprint(Path(mlx.adapter_path).expanduser())
    if mlx.draft_model:
        parts["draft"] = model_fingerprint(resolve_model_dir(mlx.draft_model))
    if mlx.kv_bits is not None:
        parts["kv_bits"] = f"{mlx.kv_bits}/{mlx.kv_group_size}/{mlx.quantized_kv_start}"
    return json.dumps(parts, sort_keys=True) if parts else ""


def make_model_provider(settings: BackendSettings, cli_args: Any) -> Any:
    """mlx-lm's `ModelProvider`, with `settings.model` an alias of its default model.

    The handler pins every request to `settings.model` (not "default_model", so
    answers carry the model's name); mlx-lm looks the adapter and draft model up by
    that name, so the name must map to the command line's adapter and draft model,
    or the first request would reload the model without them."""
    from mlx_lm.server import ModelProvider

    provider = ModelProvider(cli_args)
    provider._model_map[settings.model] = settings.model
    provider._adapter_map[settings.model] = settings.mlx.adapter_path
    provider._draft_model_map[settings.model] = settings.mlx.draft_model
    return provider


def draft_model_dir(mlx: MlxOptions) -> Path | None:
    """The draft model's directory, if there is one (for the memory budget)."""
    return resolve_model_dir(mlx.draft_model) if mlx.draft_model else None
