"""Tiny random-weight models of the families people run, built offline for tests and benchmarks.

Each family is built from mlx-lm's own `Model(ModelArgs.from_dict(config))`, so it
has the real cache kinds of that family (`KVCache`, `RotatingKVCache` for sliding
windows, `ArraysCache` for linear attention and Mamba layers). The tokenizer and
chat template are the demo model's, so prompts tokenize the same way for every
family. Weights are random: answers are noise, but greedy noise is deterministic,
which is what a cache test compares. Nothing is downloaded and nothing is committed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cachelayer.backend.demo_model import EOS_TOKEN, save_model_files, train_tokenizer

MARKER_NAME = ".cachelayer-family-model.json"
BUILDER_VERSION = 2  # 2: special_tokens_map.json written, as for the demo model
_VOCAB = 2048
_HIDDEN = 64

# Per family: the config keys beyond the shared ones. Windows and layer counts are
# small so a ~1.6k-token prompt rotates every sliding window and crosses every kind.
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
    },
    "qwen3_moe": {
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "moe_intermediate_size": 32,
        "norm_topk_prob": True,
    },
    "gpt_oss": {
        "num_hidden_layers": 2,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "sliding_window": 128,
        "layer_types": ["sliding_attention", "full_attention"],
    },
    "gemma3_text": {
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "query_pre_attn_scalar": 32,
        "sliding_window": 128,
        "sliding_window_pattern": 2,
    },
    "qwen3_next": {
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "linear_num_value_heads": 2,
        "linear_num_key_heads": 1,
        "linear_key_head_dim": 32,
        "linear_value_head_dim": 32,
        "linear_conv_kernel_dim": 4,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "decoder_sparse_step": 1,
        "shared_expert_intermediate_size": 32,
        "mlp_only_layers": [],
        "moe_intermediate_size": 32,
        "partial_rotary_factor": 0.25,
        "full_attention_interval": 2,
    },
    "nemotron_h": {
        "intermediate_size": 128,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "attention_bias": False,
        "mamba_num_heads": 4,
        "mamba_head_dim": 16,
        "mamba_proj_bias": False,
        "ssm_state_size": 16,
        "conv_kernel": 4,
        "n_groups": 1,
        "mlp_bias": False,
        "layer_norm_epsilon": 1e-5,
        "use_bias": False,
        "use_conv_bias": True,
        "hybrid_override_pattern": ["M", "*", "-"],
    },
}


def family_config(family: str, vocab_size: int, eos_id: int, bos_id: int) -> dict[str, Any]:
    """The config.json of a tiny model of `family`."""
    return {
        "model_type": family,
        "hidden_size": _HIDDEN,
        "vocab_size": vocab_size,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
        "eos_token_id": eos_id,
        "bos_token_id": bos_id,
        "torch_dtype": "float32",
        **FAMILIES[family],
    }


def _write(out: Path, family: str, seed: int) -> None:
    import importlib

    import mlx.core as mx
    from mlx.utils import tree_flatten

    tokenizer = train_tokenizer(_VOCAB)
    vocab_size = max(_VOCAB, tokenizer.get_vocab_size())
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    config = family_config(family, vocab_size, eos_id, tokenizer.token_to_id("<|begin|>"))
    arch = importlib.import_module(f"mlx_lm.models.{family}")
    mx.random.seed(seed)
    model = arch.Model(arch.ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    save_model_files(out, weights, config, tokenizer)


def family_model_in_memory(family: str, *, seed: int = 0) -> Any:
    """A random-weight mlx model of `family` built in memory: no files, no tokenizer, so
    a quick test can prefill token ids in milliseconds (ids below 2048)."""
    import importlib

    import mlx.core as mx

    config = family_config(family, _VOCAB, eos_id=1, bos_id=0)
    arch = importlib.import_module(f"mlx_lm.models.{family}")
    mx.random.seed(seed)
    model = arch.Model(arch.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    return model


def build_family_model(path: Path, family: str, *, seed: int = 0) -> Path:
    """Build (or reuse) a random-weight model directory of `family` at `path`."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {sorted(FAMILIES)}")
    path = Path(path)
    marker = {"builder_version": BUILDER_VERSION, "family": family, "seed": seed}
    try:
        if json.loads((path / MARKER_NAME).read_text()) == marker:
            return path
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        _write(tmp, family, seed)
        (tmp / MARKER_NAME).write_text(json.dumps(marker))
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# A real model's KV geometry (Qwen3-30B-A3B class: 48 layers x 4 KV heads x head_dim 128,
# bf16 = 96 KiB per token) on a tiny hidden size, so CPU prefill stays tractable.
GEOMETRY = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 48,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "rms_norm_eps": 1e-5,
    "vocab_size": _VOCAB,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}


def geometry_model(seed: int = 0) -> Any:
    """An in-memory random-weight bf16 llama with `GEOMETRY`'s KV width (no files)."""
    import mlx.core as mx
    from mlx_lm.models import llama

    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(GEOMETRY))
    model.set_dtype(mx.bfloat16)
    mx.eval(model.parameters())
    return model
