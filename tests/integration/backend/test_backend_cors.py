"""`cachelayer backend` grants no origin: no Access-Control-Allow-Origin on any answer, so a
web page cannot read answers from it. Stock mlx_lm.server, asked the same, grants `*`
(the control that shows the check can see the header)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import http
from tests.support.processes import (
    ServerProcess,
    free_port,
    start_server,
    stock_command,
    stop_server,
)

pytestmark = pytest.mark.slow  # real mlx model loads, child servers

StartBackend = Callable[..., Any]
PAGE = {"Origin": "https://page.example"}
CHAT = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}


def _allow_origin(server: ServerProcess) -> dict[str, str | None]:
    """The Access-Control-Allow-Origin each kind of answer carries for a page's origin."""
    answers = {
        "GET /v1/models": http.get(server.url + "/v1/models", headers=PAGE),
        "POST chat": http.post(server.url + "/v1/chat/completions", json=CHAT, headers=PAGE),
        "POST chat stream": http.post(server.url + "/v1/chat/completions",
                                      json={**CHAT, "stream": True}, headers=PAGE),
        "OPTIONS preflight": http.request("OPTIONS", server.url + "/v1/chat/completions",
                                          headers={**PAGE,
                                                   "Access-Control-Request-Method": "POST"}),
    }
    return {name: {k.lower(): v for k, v in a.headers.items()}.get(
        "access-control-allow-origin") for name, a in answers.items()}


@pytest.fixture
def stock(demo_model: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """Unmodified mlx_lm.server on the demo model."""
    port = free_port()
    server = start_server(stock_command(demo_model, port), port, tmp_path / "stock.log")
    try:
        yield server
    finally:
        stop_server(server)


def test_no_answer_of_the_backend_grants_an_origin_where_stock_grants_any(
    demo_model: Path, tmp_path: Path, start_backend: StartBackend, stock: ServerProcess
) -> None:
    ours = _allow_origin(start_backend(demo_model, tmp_path / "kv"))
    assert ours == dict.fromkeys(ours)
    assert set(_allow_origin(stock).values()) == {"*"}
