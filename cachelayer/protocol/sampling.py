"""The sampling and generation fields that reach the model: one rule set for both edges.

The proxy checks these on every OpenAI body (and on what an Anthropic body is translated
into) before anything is stored or forwarded; `cachelayer backend` checks them again,
since people run it directly. A value outside its rule never reaches mlx: a `logit_bias`
id at or past the vocabulary used to segfault the backend, a huge
`repetition_context_size` killed its generation thread, a negative `seed` dropped the
connection.

The ranges are OpenAI's where OpenAI documents one (temperature 0-2, penalties -2..2,
logit_bias values -100..100), mlx-lm's otherwise, and bounded everywhere: a context size
is at most CONTEXT_SIZE_MAX tokens, a seed fits in 64 unsigned bits, `n` must be 1 (one
answer per request is all the backend makes). No mlx import: the proxy uses this.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Far beyond any context window, far below what overflows mlx's 32-bit slicing.
CONTEXT_SIZE_MAX = 1 << 24
SEED_MAX = (1 << 64) - 1
TOKENS_MAX = (1 << 31) - 1
LOGIT_BIAS_MAX_ENTRIES = 1024
STOP_MAX = 16


class SamplingError(ValueError):
    """A field that reaches the model is out of its rule; `field` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


@dataclass(frozen=True)
class Rule:
    """One field: integer or number, and its inclusive range."""

    integer: bool
    low: float
    high: float

    def check(self, name: str, value: Any) -> None:
        """Raise SamplingError unless value has the right type and is in range."""
        if self.integer and not _is_int(value):
            raise SamplingError(name, "must be an integer")
        if not self.integer and not _is_number(value):
            raise SamplingError(name, "must be a finite number")
        if not self.low <= value <= self.high:
            raise SamplingError(name, f"must be between {_show(self.low)} and "
                                      f"{_show(self.high)}, got {value}")


def _show(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


# OpenAI-shaped fields as the backend (mlx_lm.server) reads them.
RULES: dict[str, Rule] = {
    "temperature": Rule(False, 0, 2),
    "top_p": Rule(False, 0, 1),
    "min_p": Rule(False, 0, 1),
    "top_k": Rule(True, 0, TOKENS_MAX),  # also at most the vocabulary, see check_sampling
    "presence_penalty": Rule(False, -2, 2),
    "frequency_penalty": Rule(False, -2, 2),
    "repetition_penalty": Rule(False, 0, 10),
    "repetition_context_size": Rule(True, 0, CONTEXT_SIZE_MAX),
    "presence_context_size": Rule(True, 0, CONTEXT_SIZE_MAX),
    "frequency_context_size": Rule(True, 0, CONTEXT_SIZE_MAX),
    "xtc_probability": Rule(False, 0, 1),
    "xtc_threshold": Rule(False, 0, 1),
    "seed": Rule(True, 0, SEED_MAX),
    "max_tokens": Rule(True, 1, TOKENS_MAX),
    "max_completion_tokens": Rule(True, 1, TOKENS_MAX),
    "top_logprobs": Rule(True, -1, 11),  # mlx-lm's own bounds (-1: off)
    "num_draft_tokens": Rule(True, 0, 64),
    "n": Rule(True, 1, TOKENS_MAX),
}


def _check_logit_bias(value: Any, vocab_size: int | None) -> None:
    if not isinstance(value, Mapping):
        raise SamplingError("logit_bias", "must be an object of token id -> bias")
    if len(value) > LOGIT_BIAS_MAX_ENTRIES:
        raise SamplingError("logit_bias", f"at most {LOGIT_BIAS_MAX_ENTRIES} entries")
    for key, bias in value.items():
        text = str(key)
        if not text.isascii() or not text.isdigit() or len(text) > 12:
            raise SamplingError("logit_bias", f"key {text[:40]!r} is not a token id")
        token = int(text)
        if vocab_size is not None and token >= vocab_size:
            raise SamplingError("logit_bias", f"token id {token} is outside the model's "
                                              f"vocabulary (0..{vocab_size - 1})")
        if not _is_number(bias) or not -100 <= bias <= 100:
            raise SamplingError("logit_bias", f"bias of token {token} must be a number "
                                              "between -100 and 100")


def _check_stop(value: Any) -> None:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise SamplingError("stop", "must be a string or a list of strings")
    if len(stops) > STOP_MAX:
        raise SamplingError("stop", f"at most {STOP_MAX} stop sequences")
    if any(not s for s in stops):
        raise SamplingError("stop", "a stop sequence must not be empty")


def _check_bool(name: str) -> Callable[[Any, int | None], None]:
    def check(value: Any, _vocab: int | None) -> None:
        if not isinstance(value, bool):
            raise SamplingError(name, "must be a boolean")
    return check


def _check_template_kwargs(value: Any, _vocab: int | None) -> None:
    if not isinstance(value, Mapping):
        raise SamplingError("chat_template_kwargs", "must be an object")


_SPECIAL: dict[str, Callable[[Any, int | None], None]] = {
    "logit_bias": _check_logit_bias,
    "stop": lambda value, _vocab: _check_stop(value),
    "logprobs": _check_bool("logprobs"),
    "chat_template_kwargs": _check_template_kwargs,
}


def check_sampling(body: Mapping[str, Any], vocab_size: int | None = None) -> None:
    """Check every generation field of an OpenAI-shaped body; raise SamplingError (naming
    the field) on the first one out of its rule. `vocab_size` bounds token ids when known.
    null means "the default" for every field, as OpenAI's API reads it."""
    for name, rule in RULES.items():
        value = body.get(name)
        if value is not None:
            rule.check(name, value)
    if body.get("n") not in (None, 1):
        raise SamplingError("n", "only n=1 is supported: the backend makes one answer "
                                 "per request")
    top_k = body.get("top_k")
    if top_k is not None and vocab_size is not None and top_k > vocab_size:
        raise SamplingError("top_k", f"must be at most the vocabulary size {vocab_size}")
    for name, check in _SPECIAL.items():
        value = body.get(name)
        if value is not None:
            check(value, vocab_size)


def check_token_ids(body: Mapping[str, Any], vocab_size: int) -> None:
    """The checks that need the model's vocabulary (logit_bias ids, top_k); the rest of
    check_sampling has passed already at the edge."""
    if body.get("logit_bias") is not None:
        _check_logit_bias(body["logit_bias"], vocab_size)
    top_k = body.get("top_k")
    if isinstance(top_k, int) and top_k > vocab_size:
        raise SamplingError("top_k", f"must be at most the vocabulary size {vocab_size}")


FIELDS = frozenset(RULES) | frozenset(_SPECIAL)


def without_nulls(body: dict[str, Any]) -> dict[str, Any]:
    """The body without sampling fields set to null: OpenAI reads null as "the default",
    mlx-lm would refuse it, and null and absent are then one cache key."""
    if not any(body.get(name, 0) is None for name in FIELDS):
        return body
    return {k: v for k, v in body.items() if not (v is None and k in FIELDS)}
