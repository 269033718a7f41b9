"""`cachelayer backend` with mlx_lm.server's options: the same answers as stock `mlx_lm.server`
with the same option (token ids and logprobs, greedy), blocks keyed by what the option
changes, and reuse across a restart where the option allows it."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.family_models import build_family_model
from tests.support.greedy import SYSTEM, answer, ask_greedy, cached
from tests.support.processes import (
    ServerProcess,
    free_port,
    start_server,
    stock_command,
    stop_server,
)
from tests.support.variant_models import build_lora_adapter

pytestmark = pytest.mark.slow  # real mlx inference, child servers

ROOT = Path(__file__).resolve().parents[3]
def ask(server: ServerProcess, user: str = "What now?", **extra: Any) -> dict[str, Any]:
    """A greedy answer; no model name, so stock serves its default."""
    return ask_greedy(server, SYSTEM, user, **extra)


def stock_answer(model: Path, tmp_path: Path, *flags: str) -> dict[str, Any]:
    """The answer of stock `mlx_lm.server` with `flags`, run as a child on a free port."""
    port = free_port()
    server = start_server(stock_command(model, port, *flags), port, tmp_path / "stock.log",
                          cwd=ROOT)
    try:
        return ask(server)
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random llama, a second one as its draft model, and a LoRA adapter for it."""
    root = tmp_path_factory.mktemp("options")
    llama = build_family_model(root / "llama", "llama")
    return {"llama": llama,
            "draft": build_family_model(root / "draft", "llama", seed=1),
            "adapter": build_lora_adapter(root / "adapter", llama)}


def _same_as_stock_then_reused_after_restart(
    models: dict[str, Path], tmp_path: Path, start_backend: Any, api: Any, *flags: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stock's answer, ours cold, ours after a restart (from disk); (our stats, stock's)."""
    stock = stock_answer(models["llama"], tmp_path, *flags)
    kv = tmp_path / "kv"
    first = start_backend(models["llama"], kv, *flags)
    cold = ask(first)
    assert answer(cold) == answer(stock)
    assert stop_server(first) == 0  # queued writes land
    second = start_backend(models["llama"], kv, *flags)
    warm = ask(second)
    assert cached(warm) == warm["usage"]["prompt_tokens"] - 1  # restored from disk
    assert answer(warm) == answer(stock)
    stats = api.get_json(second, "/v1/cachelayer/kv")
    assert stats["disk_hits"] == 1 and stats["persist_refused"] == {}
    return stats, stock


def test_adapter_answers_as_stock_does_and_is_reused_after_a_restart(
    models: dict[str, Path], tmp_path: Path, start_backend: Any, api: Any
) -> None:
    flags = ("--adapter-path", str(models["adapter"]))
    stats, adapted = _same_as_stock_then_reused_after_restart(models, tmp_path, start_backend,
                                                              api, *flags)
    assert "-" in stats["fingerprint"]  # the chain seed carries the adapter
    # The base model on the same directory reuses none of the adapter's blocks, and
    # answers as the base model (the adapter did change the answer).
    plain = start_backend(models["llama"], tmp_path / "kv")
    base = ask(plain)
    assert cached(base) == 0
    assert answer(base) == answer(stock_answer(models["llama"], tmp_path))
    assert answer(base) != answer(adapted)


def test_draft_model_answers_as_stock_does_and_is_reused_after_a_restart(
    models: dict[str, Path], tmp_path: Path, start_backend: Any, api: Any
) -> None:
    flags = ("--draft-model", str(models["draft"]), "--num-draft-tokens", "2")
    stats, _ = _same_as_stock_then_reused_after_restart(models, tmp_path, start_backend, api,
                                                        *flags)
    assert stats["kinds"] == ["kv"] and stats["blocks"] > 0 and "-" in stats["fingerprint"]


def test_kv_bits_below_the_quantization_start_answers_as_stock_and_is_reused(
    models: dict[str, Path], tmp_path: Path, start_backend: Any, api: Any
) -> None:
    # mlx-lm's default start is 5000 tokens: this ~1200-token prompt stays full precision.
    _same_as_stock_then_reused_after_restart(models, tmp_path, start_backend, api,
                                             "--kv-bits", "8")


def test_quantized_kv_answers_as_stock_and_is_counted_not_persisted(
    models: dict[str, Path], tmp_path: Path, start_backend: Any, api: Any
) -> None:
    flags = ("--kv-bits", "4", "--kv-group-size", "32", "--quantized-kv-start", "256")
    stock = stock_answer(models["llama"], tmp_path, *flags)
    kv = tmp_path / "kv"
    first = start_backend(models["llama"], kv, *flags)
    assert answer(ask(first)) == answer(stock)
    stats = api.wait_for_writes(first)
    assert stats["persist_refused"].get("quantized_kv", 0) >= 1 and stats["blocks"] == 0
    again = ask(first)  # memory still serves it, as in stock mlx-lm
    assert cached(again) > 0 and answer(again) == answer(stock)
    assert stop_server(first) == 0
    assert "quantized_kv" in first.log()  # the reason is logged
    second = start_backend(models["llama"], kv, *flags)
    after = ask(second)
    assert cached(after) == 0 and answer(after) == answer(stock)


def test_every_other_mlx_server_option_is_accepted_and_applied(
    models: dict[str, Path], tmp_path: Path, start_backend: Any, api: Any
) -> None:
    template = json.loads((models["llama"] / "tokenizer_config.json").read_text())
    flags = ("--allowed-origins", "http://localhost:1234", "--trust-remote-code",
             "--chat-template", template["chat_template"], "--use-default-chat-template",
             "--temp", "0.8", "--top-p", "0.9", "--top-k", "5", "--min-p", "0.01",
             "--decode-concurrency", "4", "--prompt-concurrency", "2",
             "--prompt-cache-bytes", "64M", "--kv-group-size", "32",
             "--quantized-kv-start", "4096", "--num-draft-tokens", "2", "--pipeline")
    server = start_backend(models["llama"], tmp_path / "kv", *flags)
    stock = stock_answer(models["llama"], tmp_path, *flags)
    assert answer(ask(server)) == answer(stock)  # the request's temperature 0 wins
    request = urllib.request.Request(f"{server.url}/v1/models",
                                     headers={"Origin": "http://localhost:1234"})
    with urllib.request.urlopen(request, timeout=30) as r:
        assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:1234"
    assert api.get_json(server, "/v1/cachelayer/kv")["memory"]["budget_bytes"] == 64_000_000
