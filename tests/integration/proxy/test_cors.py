"""No CORS headers from the proxy: a web page in the user's browser cannot read answers,
stats or metrics from it (a browser needs Access-Control-Allow-Origin to hand them over)."""

from __future__ import annotations

import pytest

from tests.support import http
from tests.support.servers import RunningServer

PAGE = {"Origin": "https://page.example"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-x", "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}]}
RESPONSES = {"model": "m", "input": "hi"}


def _cors(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower().startswith("access-control-")}


@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT),
                                            ("/v1/messages", MESSAGES),
                                            ("/v1/responses", RESPONSES)])
def test_answers_to_a_page_origin_carry_no_cors_headers(
    proxy: RunningServer, path: str, body: dict[str, object]
) -> None:
    for stream in (False, True):
        answer = http.post(proxy.url + path, json={**body, "stream": stream}, headers=PAGE)
        assert answer.status == 200
        assert _cors(answer.headers) == {}, (path, stream)


@pytest.mark.parametrize("path", ["/health", "/cache/stats", "/metrics"])
def test_read_routes_carry_no_cors_headers(proxy: RunningServer, path: str) -> None:
    answer = http.get(proxy.url + path, headers=PAGE)
    assert answer.status == 200
    assert _cors(answer.headers) == {}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
def test_a_preflight_is_not_granted(proxy: RunningServer, path: str) -> None:
    answer = http.request("OPTIONS", proxy.url + path, headers={
        **PAGE, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert answer.status >= 400
    assert _cors(answer.headers) == {}
