"""Tiny random-weight models for the memory budget and the mlx_lm.server options, built
offline: a llama of a chosen KV width (the budget's subject), and a LoRA adapter for
any model (`--adapter-path`). A draft model is any other model with the same tokenizer,
e.g. `family_models.build_family_model(path, "llama", seed=1)`.

The tokenizer and chat template are the demo model's, as for `family_models`.
Nothing is downloaded and nothing is committed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cachelayer.backend.demo_model import EOS_TOKEN, save_model_files, train_tokenizer

_VOCAB = 2048
MARKER_NAME = ".cachelayer-variant-model.json"


def _fresh(path: Path, marker: dict[str, Any]) -> bool:
    try:
        return bool(json.loads((path / MARKER_NAME).read_text()) == marker)
    except (OSError, ValueError):
        return False


def _publish(tmp: Path, path: Path, marker: dict[str, Any]) -> Path:
    (tmp / MARKER_NAME).write_text(json.dumps(marker))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def build_wide_model(path: Path, *, layers: int, kv_heads: int, head_dim: int,
                     dtype: str = "float32", seed: int = 0) -> Path:
    """A llama of hidden size 64 whose KV cache is `layers` x `kv_heads` x `head_dim` wide
    (e.g. 48 x 4 x 128 in bfloat16: 96 KiB per token, a 30B model's); reused if built."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    marker = {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim,
              "dtype": dtype, "seed": seed, "version": 1}
    path = Path(path)
    if _fresh(path, marker):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tokenizer = train_tokenizer(_VOCAB)
        config: dict[str, Any] = {
            "model_type": "llama", "hidden_size": 64, "num_hidden_layers": layers,
            "intermediate_size": 128, "num_attention_heads": kv_heads,
            "num_key_value_heads": kv_heads, "head_dim": head_dim, "rms_norm_eps": 1e-5,
            "vocab_size": max(_VOCAB, tokenizer.get_vocab_size()),
            "max_position_embeddings": 131072, "rope_theta": 10000.0,
            "tie_word_embeddings": False, "eos_token_id": tokenizer.token_to_id(EOS_TOKEN),
            "bos_token_id": tokenizer.token_to_id("<|begin|>"), "torch_dtype": dtype,
        }
        mx.random.seed(seed)
        model = llama.Model(llama.ModelArgs.from_dict(config))
        model.set_dtype(getattr(mx, dtype))
        save_model_files(tmp, dict(tree_flatten(model.parameters())), config, tokenizer)
        return _publish(tmp, path, marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_lora_adapter(path: Path, model_dir: Path, *, rank: int = 4, scale: float = 4.0,
                       seed: int = 0) -> Path:
    """A random LoRA adapter for every layer of `model_dir`, as `mlx_lm.lora` saves one
    (adapter_config.json + adapters.safetensors). Both LoRA matrices are random, so the
    adapter changes every answer (a trained one starts with lora_b at zero)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    marker = {"model": str(model_dir), "rank": rank, "scale": scale, "seed": seed}
    path = Path(path)
    if _fresh(path, marker):
        return path
    loaded: Any = load(str(model_dir))
    model = loaded[0]
    n_layers = len(model.layers)
    lora = {"rank": rank, "scale": scale, "dropout": 0.0}
    model.freeze()
    linear_to_lora_layers(model, n_layers, lora)
    mx.random.seed(seed)
    trainable: Any = tree_flatten(model.trainable_parameters())
    weights = {name: mx.random.normal(w.shape, dtype=w.dtype) * 0.05 for name, w in trainable}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        mx.save_safetensors(str(tmp / "adapters.safetensors"), weights)
        (tmp / "adapter_config.json").write_text(json.dumps({
            "fine_tune_type": "lora", "num_layers": n_layers, "lora_parameters": lora,
        }, indent=2))
        return _publish(tmp, path, marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
