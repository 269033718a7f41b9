"""The demo model builder: loadable by mlx-lm, deterministic, idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cachelayer.backend.demo_model import MARKER_NAME, build_demo_model, is_complete

pytestmark = pytest.mark.slow  # real mlx inference, child servers or CLIs


def test_demo_model_loads_with_mlx_lm_and_generates_tokens(demo_model: Path) -> None:
    from mlx_lm import load, stream_generate

    model, tokenizer = load(str(demo_model))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True
    )
    tokens = [r.token for r in stream_generate(model, tokenizer, prompt, max_tokens=5)]
    assert len(tokens) == 5
    assert json.loads((demo_model / "config.json").read_text())["model_type"] == "llama"


def test_chat_template_renders_tools_in_the_prefix(demo_model: Path) -> None:
    from mlx_lm import load

    _, tokenizer = load(str(demo_model))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "read_file", "arguments": {"path": "a"}}}],
        },
        {"role": "tool", "content": "file body"},
    ]
    tools = [{"type": "function", "function": {"name": "read_file", "parameters": {}}}]
    with_tools = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    without = tokenizer.apply_chat_template(messages, tokenize=False)
    assert "read_file" in with_tools.split("Be brief.")[0]
    assert "<tool_call>" in without and "file body" in without
    assert with_tools != without
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|assistant|>\n")
    assert tokenizer.has_tool_calling


def test_build_is_deterministic_and_idempotent(demo_model: Path, tmp_path: Path) -> None:
    other = build_demo_model(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (other / name).read_bytes() == (demo_model / name).read_bytes()
    mtime = (other / "model.safetensors").stat().st_mtime_ns
    build_demo_model(other)
    assert (other / "model.safetensors").stat().st_mtime_ns == mtime


def test_half_built_directory_is_rebuilt(tmp_path: Path) -> None:
    target = tmp_path / "m"
    target.mkdir()
    (target / "config.json").write_text("{}")  # no marker: an interrupted build
    build_demo_model(target, hidden_size=32, num_layers=1)
    assert (target / MARKER_NAME).exists()
    assert json.loads((target / "config.json").read_text())["hidden_size"] == 32


def test_different_parameters_rebuild_the_directory(tmp_path: Path) -> None:
    target = build_demo_model(tmp_path / "m", hidden_size=32, num_layers=1, seed=1)
    before = (target / "model.safetensors").read_bytes()
    build_demo_model(target, hidden_size=32, num_layers=1, seed=2)
    assert (target / "model.safetensors").read_bytes() != before
    marker = json.loads((target / MARKER_NAME).read_text())
    assert marker["seed"] == 2 and is_complete(target, marker)


def test_demo_model_answers_the_fixed_reply_and_stops(demo_model: Path) -> None:
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    from cachelayer.backend.demo_model import DEMO_REPLY

    model, tokenizer = load(str(demo_model))
    for question, temp in (("hello", 0.0), ("what is a KV cache?", 0.7)):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True
        )
        out = list(
            stream_generate(
                model, tokenizer, prompt, max_tokens=50, sampler=make_sampler(temp=temp)
            )
        )
        assert "".join(r.text for r in out) == DEMO_REPLY
        assert out[-1].finish_reason == "stop"


def test_is_built_tells_a_finished_default_build_from_anything_else(
    demo_model: Path, tmp_path: Path
) -> None:
    from cachelayer.backend.demo_model import is_built

    assert is_built(demo_model)
    assert not is_built(tmp_path / "nothing-here")
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")
    assert not is_built(half)
