"""With the embedded backend, every client API names the one served model the same way."""

from __future__ import annotations

from pathlib import Path

import orjson

from cachelayer.cli.main import build_parser
from cachelayer.cli.serve import settings_from_args
from cachelayer.config import Settings
from cachelayer.proxy.edge import make_codecs
from cachelayer.proxy.store.keys import response_key


def _embedded(model_dir: Path) -> Settings:
    args = build_parser().parse_args(["serve", "--model", str(model_dir)])
    return settings_from_args(args, {})


def test_unmapped_models_go_upstream_under_the_served_name_not_a_path(tmp_path: Path) -> None:
    model_dir = tmp_path / "Qwen3-8B-4bit"
    model_dir.mkdir()
    assert _embedded(model_dir).default_model == "Qwen3-8B-4bit"


def test_a_responses_request_and_its_chat_twin_share_one_store_key(tmp_path: Path) -> None:
    model_dir = tmp_path / "demo"
    model_dir.mkdir()
    codecs = make_codecs(_embedded(model_dir))
    chat = codecs["openai"].parse_request("chat", orjson.dumps({
        "model": "demo", "temperature": 0, "max_tokens": 16,
        "messages": [{"role": "user", "content": "Say hello."}]}))
    responses = codecs["responses"].parse_request("chat", orjson.dumps({
        "model": "demo", "temperature": 0, "max_output_tokens": 16, "input": "Say hello."}))

    def key(body: dict[str, object]) -> str:
        return response_key("chat", body, tenant="t", upstream="http://127.0.0.1:1")

    assert responses.body["model"] == chat.body["model"] == "demo"
    assert key(responses.body) == key(chat.body)
