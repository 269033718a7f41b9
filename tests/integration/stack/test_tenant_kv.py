"""The prompt cache is no side channel between credentials: tenant B's cached_tokens (and
Anthropic's cache_read_input_tokens) for a right and a wrong guess of tenant A's secret
system prompt are equal; `share_kv` (--share-kv) shares prefixes on purpose."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.stack.conftest import stack_proxy
from tests.support import http
from tests.support.kv_writes import wait_for_kv_writes
from tests.support.processes import ServerProcess
from tests.support.servers import RunningServer

pytestmark = pytest.mark.slow
SECRET = " ".join(f"Rule {i}: the vault code for door {i} is {i * 7919 % 10007}."
                  for i in range(60))
WRONG = " ".join(f"Zeta {i}: the cafe menu for table {i} is {i * 104729 % 10007}."
                 for i in range(60))
UNRELATED = "Quiet mornings suit careful readers of long manuals."


def _chat(proxy: RunningServer, key: dict[str, str], system: str, user: str) -> int:
    answer = http.post(proxy.url + "/v1/chat/completions", {
        "model": "m", "max_tokens": 2, "temperature": 0,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
    }, headers=key)
    assert answer.status == 200, answer.content
    return int(answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"])


def _message(proxy: RunningServer, key: dict[str, str], system: str, user: str) -> int:
    answer = http.post(proxy.url + "/v1/messages", {
        "model": "m", "max_tokens": 2, "temperature": 0, "system": system,
        "messages": [{"role": "user", "content": user}]}, headers=key)
    assert answer.status == 200, answer.content
    return int(answer.json()["usage"]["cache_read_input_tokens"])


def _probe(proxy: RunningServer, backend: ServerProcess, send: Any) -> tuple[int, int, int]:
    """A stores its secret; B guesses wrong, then right. Returns (A's own repeat, B's
    wrong guess, B's right guess) cached counts."""
    alice, bob = {"Authorization": "Bearer key-alice"}, {"x-api-key": "key-bob"}
    send(proxy, alice, SECRET, "first question")
    wait_for_kv_writes(backend.url)
    own = send(proxy, alice, SECRET, "second question")
    send(proxy, bob, UNRELATED, "warm up")  # B's own template prefix, for both guesses
    wait_for_kv_writes(backend.url)
    wrong = send(proxy, bob, WRONG, "what is the code?")
    wait_for_kv_writes(backend.url)
    right = send(proxy, bob, SECRET, "what is the code?")
    return own, wrong, right


def test_a_tenant_cannot_confirm_another_tenants_prompt_through_cached_tokens(
    backend: ServerProcess, tmp_path: Path
) -> None:
    with stack_proxy(tmp_path, backend.url) as proxy:
        own, wrong, right = _probe(proxy, backend, _chat)
        assert own > 500  # A still reuses its own prefix
        assert right == wrong, (right, wrong)
        assert http.get(proxy.url + "/health").json()["kv_reuse"]["scope"] == "per-credential"


def test_the_anthropic_route_reveals_nothing_either(
    backend: ServerProcess, tmp_path: Path
) -> None:
    with stack_proxy(tmp_path, backend.url) as proxy:
        own, wrong, right = _probe(proxy, backend, _message)
        assert own > 500
        assert right == wrong, (right, wrong)


def test_share_kv_shares_prefixes_across_credentials_on_purpose(
    backend: ServerProcess, tmp_path: Path
) -> None:
    with stack_proxy(tmp_path, backend.url, share_kv=True) as proxy:
        _own, wrong, right = _probe(proxy, backend, _chat)
        assert right > wrong + 500, (right, wrong)
        assert http.get(proxy.url + "/health").json()["kv_reuse"]["scope"] == "shared"


def test_api_key_authorization_and_x_api_key_name_one_tenant(
    backend: ServerProcess, tmp_path: Path
) -> None:
    with stack_proxy(tmp_path, backend.url) as proxy:
        _chat(proxy, {"api-key": "key-carol"}, SECRET, "first question")
        wait_for_kv_writes(backend.url)
        assert _chat(proxy, {"Authorization": "Bearer key-carol"}, SECRET, "again") > 500
        assert _chat(proxy, {"api-key": "key-dave"}, SECRET, "again") < 100
        # A stored answer is the asking tenant's too: the same body under another key misses.
        first = http.post(proxy.url + "/v1/chat/completions", {
            "model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]},
            headers={"api-key": "key-erin"})
        other = http.post(proxy.url + "/v1/chat/completions", {
            "model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]},
            headers={"api-key": "key-frank"})
        assert first.headers["X-Cache-Status"] == "MISS"
        assert other.headers["X-Cache-Status"] == "MISS"


def test_a_stock_upstream_is_reported_as_shared_kv(
    stock: ServerProcess, tmp_path: Path
) -> None:
    with stack_proxy(tmp_path, stock.url) as proxy:
        reuse = http.get(proxy.url + "/health").json()["kv_reuse"]
        assert reuse["scope"] == "shared" and "not a cachelayer backend" in reuse["why"]
