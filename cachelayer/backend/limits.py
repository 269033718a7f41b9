"""What a request may ask of the served model, checked inside `cachelayer backend`.

The proxy checks the same rules at its edge (protocol/sampling.py), but people run the
backend directly, and one request must never crash or wedge it: a `logit_bias` id at or
past the vocabulary segfaulted mlx, a `repetition_context_size` of 10**12 killed the
generation thread, a negative `seed` dropped the connection. mlx-lm's own checks run
after these.

`GET /v1/cachelayer/model` publishes the limits (vocabulary size, whether images are
taken, that KV reuse is scoped by tenant), so the proxy can answer out-of-vocabulary ids
in the client's API shape before anything is forwarded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachelayer.backend.tenants import TENANT_HEADER
from cachelayer.protocol.sampling import check_sampling

logger = logging.getLogger(__name__)

MODEL_ROUTE = "/v1/cachelayer/model"
# Part types mlx-lm turns into images (server._image_url); "text" is the only other one.
IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
# Fields mlx-lm insists are floats; a client's 0 or 1 means the same.
_FLOAT_FIELDS = ("xtc_probability", "xtc_threshold")


@dataclass(frozen=True)
class ModelLimits:
    """What the loaded model can take."""

    vocab_size: int
    vision: bool

    def info(self, model: str) -> dict[str, Any]:
        """The body of GET /v1/cachelayer/model."""
        return {"model": model, "vocab_size": self.vocab_size, "vision": self.vision,
                "tenant_scoped_kv": True, "tenant_header": TENANT_HEADER}


def _config_vocab(model_dir: Path) -> int | None:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for holder in (config, config.get("text_config") or {}):
        value = holder.get("vocab_size") if isinstance(holder, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def logits_size(model: Any, model_dir: Path) -> int:
    """How many logits the model produces per position: the bound on a token id.

    Measured with a one-token forward pass (exact whatever the architecture); the
    config's vocab_size when the model cannot be called that way."""
    try:
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        logits = model(mx.array([[0]]), cache=make_prompt_cache(model))
        return int(logits.shape[-1])
    except Exception:  # an architecture that needs more than tokens: use its config
        logger.debug("one-token forward failed; vocab size from config", exc_info=True)
    size = _config_vocab(model_dir)
    if size is None:
        raise RuntimeError(f"cannot tell the vocabulary size of {model_dir}")
    return size


def _check_parts(messages: Any, vision: bool) -> None:
    if not isinstance(messages, list):
        return  # mlx-lm answers that itself
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            where = f"messages[{i}].content[{j}]"
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise ValueError(f"{where}.text must be a string")
            elif kind in IMAGE_PARTS:
                if not vision:
                    raise ValueError(f"{where}: content part type {kind!r} is not supported: "
                                     "this model takes text only")
            else:
                raise ValueError(f"{where}: content part type {kind!r} is not supported")


def null_defaults(cli_args: Any) -> dict[str, Any]:
    """What mlx-lm uses for each sampling field a request leaves out: a null one means
    the same (OpenAI's reading), where mlx-lm would refuse it."""
    return {
        "temperature": cli_args.temp, "top_p": cli_args.top_p, "top_k": cli_args.top_k,
        "min_p": cli_args.min_p, "max_tokens": cli_args.max_tokens,
        "num_draft_tokens": cli_args.num_draft_tokens, "repetition_penalty": 0.0,
        "repetition_context_size": 20, "presence_penalty": 0.0, "presence_context_size": 20,
        "frequency_penalty": 0.0, "frequency_context_size": 20, "xtc_probability": 0.0,
        "xtc_threshold": 0.1, "logprobs": False, "top_logprobs": -1,
    }


def check_request(body: Mapping[str, Any], limits: ModelLimits,
                  defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Raise ValueError (mlx-lm answers it as a 400) for anything the model cannot take;
    returns the handler attributes to overwrite before mlx-lm's own checks: ints where
    it wants floats, `defaults` for fields sent as null."""
    check_sampling(body, limits.vocab_size)
    _check_parts(body.get("messages"), limits.vision)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise ValueError("tools: must be a list")
    overrides = {name: value for name, value in defaults.items()
                 if name in body and body[name] is None}
    if "max_completion_tokens" in body and body["max_completion_tokens"] is None:
        overrides["max_tokens"] = body.get("max_tokens") or defaults["max_tokens"]
    overrides.update({name: float(body[name]) for name in _FLOAT_FIELDS
                      if isinstance(body.get(name), int)
                      and not isinstance(body.get(name), bool)})
    return overrides
