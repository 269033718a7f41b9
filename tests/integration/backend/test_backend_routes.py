"""The backend's HTTP surface: health, models, kv stats, count_tokens, warm --upstream."""

from __future__ import annotations

import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cachelayer.backend.warm import warm_local, warm_upstream

pytestmark = pytest.mark.slow  # real mlx inference, child servers or CLIs

StartBackend = Callable[..., Any]


def test_health_models_and_kv_routes_answer_naming_the_model_by_its_directory(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend, api: Any
) -> None:
    server = start_backend(demo_model, tmp_path / "kv")
    assert api.get_json(server, "/health") == {"status": "ok"}
    models = api.get_json(server, "/v1/models")
    ids = [m["id"] for m in models["data"]]
    assert ids == [demo_model.name]  # the directory's name: no path, no '/'
    assert all("/" not in i for i in ids)
    stats = api.get_json(server, "/v1/cachelayer/kv")
    assert stats["model"] == demo_model.name
    assert stats["blocks"] == 0 and stats["lookups"] == 0
    assert api.chat(server, "who are you").model == demo_model.name


def test_count_tokens_matches_the_prompt_the_server_builds(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend, api: Any
) -> None:
    server = start_backend(demo_model, tmp_path / "kv")
    answer = api.chat(server, "count me")
    body = {
        "messages": [
            {"role": "system", "content": api.system},
            {"role": "user", "content": [{"type": "text", "text": "count me"}]},
        ],
        "tools": api.tools,
    }
    counted = api.post_json(server, "/v1/cachelayer/count_tokens", body)
    assert counted == {"input_tokens": answer.usage.prompt_tokens}
    without_tools = api.post_json(server, "/v1/cachelayer/count_tokens", {**body, "tools": []})
    assert without_tools["input_tokens"] < counted["input_tokens"]
    with pytest.raises(urllib.error.HTTPError) as bad:
        api.post_json(server, "/v1/cachelayer/count_tokens", {"messages": "nope"})
    assert bad.value.code == 400


def test_warm_upstream_makes_the_next_request_a_hit(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend, api: Any
) -> None:
    server = start_backend(demo_model, tmp_path / "kv")
    assert warm_upstream(server.url, api.system, api.tools) == 0
    assert api.cached_tokens(api.chat(server, "first real question")) > 1000


def test_warm_local_makes_the_first_request_after_start_a_hit(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend, api: Any
) -> None:
    kv = tmp_path / "kv"
    assert warm_local(str(demo_model), kv, api.system, api.tools, kv_max_bytes=1 << 30) == 0
    server = start_backend(demo_model, kv)
    answer = api.chat(server, "first real question")
    assert api.cached_tokens(answer) > 1000
    assert api.get_json(server, "/v1/cachelayer/kv")["disk_hits"] == 1
