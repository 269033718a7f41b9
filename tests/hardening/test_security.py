"""Isolation and security: tenants never share answers, credentials never reach disk,
logs or metrics, the data dir is owner-only, admin routes answer only loopback clients
or token holders, and listening beyond loopback is warned about."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from cachelayer.cli.serve import is_loopback
from cachelayer.config import Settings
from cachelayer.errors import AuthenticationRequired, Forbidden
from cachelayer.proxy.routes.admin import require_admin
from cachelayer.proxy.state import SETTINGS
from cachelayer.proxy.store.layer import STORE
from tests.hardening.helpers import (
    SUMMARY,
    CountingUpstream,
    ProxyFactory,
    Upstream,
    error_message,
    raw_tcp_server,
    read_request_head,
)
from tests.support import http
from tests.support.fake_upstream import Reply
from tests.support.proxy_process import (
    running_proxy,
    spawn_proxy,
)
from tests.support.servers import RunningServer, free_port, serve_app
from tests.support.store_writes import wait_for_writes
from tests.support.wait import wait_until

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"

BEARER_SECRET = "sk-hardening-bearer-9f8e7d6c5b4a3921"
APIKEY_SECRET = "sk-ant-hardening-xapikey-1a2b3c4d5e6f"
ADMIN_SECRET = "admin-hardening-token-5e6f7a8b9c0d"
WRONG_ADMIN_SECRET = "wrong-admin-guess-0c0ffee0ddba11"
SESSION_ID = "session-visible-not-secret"
SECRETS = (BEARER_SECRET, APIKEY_SECRET, ADMIN_SECRET, WRONG_ADMIN_SECRET)


def body_for(path: str, text: str, *, stream: bool = False) -> dict[str, Any]:
    """A small valid request for an OpenAI chat or an Anthropic Messages route."""
    if path in (MESSAGES, COUNT):
        body: dict[str, Any] = {"model": "claude-x", "stream": stream,
                                "messages": [{"role": "user", "content": text}]}
        if path == MESSAGES:
            body["max_tokens"] = 64
        else:
            del body["stream"]
        return body
    return {"model": "m", "stream": stream, "messages": [{"role": "user", "content": text}]}


# -- tenants -------------------------------------------------------------------------------

CREDENTIALS: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer key-one"},
    {"Authorization": "Bearer key-two"},
    {"x-api-key": "key-three"},
    {"x-api-key": "key-four"},
    {"x-api-key": "key-five", "Authorization": "Bearer key-six"},
]


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_different_credentials_never_share_a_stored_answer(
    proxy: RunningServer, upstream: Upstream, path: str
) -> None:
    fake, _ = upstream
    body = body_for(path, "the very same prompt for every tenant")
    first: list[bytes] = []
    for headers in CREDENTIALS:
        answer = http.post(proxy.url + path, json=body, headers=headers)
        assert answer.status == 200
        assert answer.headers["X-Cache-Status"] == "MISS", (
            f"{headers} was served another tenant's stored answer")
        first.append(answer.content)
        wait_for_writes(proxy)
    assert len(set(first)) == len(CREDENTIALS)  # each made upstream (ids differ)
    assert len(fake.calls) == len(CREDENTIALS)
    for headers, mine in zip(CREDENTIALS, first, strict=True):
        again = http.post(proxy.url + path, json=body, headers=headers)
        assert again.headers["X-Cache-Status"] == "HIT"
        assert http.answer_of(again.content) == http.answer_of(mine)
    assert len(proxy.app[STORE]) == len(CREDENTIALS)


# -- secrets never written -----------------------------------------------------------------


@dataclass
class SecretRun:
    """A debug-logging proxy subprocess that was sent every kind of request with secrets."""

    tmp: Path
    data_dir: Path
    metrics_file: Path
    live: dict[str, bytes]


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretRun]:
    """Run `cachelayer serve --log-level debug --admin-token ...`, send it requests of
    every kind carrying distinctive secrets in both credential headers, stop it cleanly."""
    tmp = tmp_path_factory.mktemp("secrets")
    fake = CountingUpstream(lambda body: Reply(status=500) if "fail" in str(body)
                            else Reply(text="an answer"))
    both = {"Authorization": f"Bearer {BEARER_SECRET}", "x-api-key": APIKEY_SECRET,
            "X-Claude-Code-Session-Id": SESSION_ID}
    live: dict[str, bytes] = {}
    with serve_app(fake.make_app) as upstream, running_proxy(
            tmp, upstream.url, "--log-level", "debug", "--admin-token", ADMIN_SECRET,
            name="secrets") as child:
        url = child.url
        for path in (CHAT, MESSAGES):
            for headers in ({"Authorization": f"Bearer {BEARER_SECRET}"},
                            {"x-api-key": APIKEY_SECRET}, both):
                for stream in (False, True):
                    assert http.post(url + path, json=body_for(path, "hello", stream=stream),
                                     headers=headers).status == 200
                assert http.post(url + path, json=body_for(path, "fail please"),
                                 headers=headers).status == 500
                assert http.request("POST", url + path, data=b"{broken",
                                    headers=headers).status == 400
        assert http.post(url + COUNT, json=body_for(COUNT, "count me"),
                         headers=both).status == 200
        assert http.post(url + "/cache/clear", headers={
            "Authorization": f"Bearer {WRONG_ADMIN_SECRET}"}).status == 401
        assert http.post(url + "/cache/clear?what=ledger", headers={
            "Authorization": f"Bearer {ADMIN_SECRET}"}).status == 200
        for path in (CHAT, MESSAGES):  # a few more stored after the clear
            http.post(url + path, json=body_for(path, "after clear"), headers=both)
        # A periodic export (interval 0.5 s) that counts every request above has run.
        sent = http.get(url + "/cache/stats", headers=both).json()["metrics"]["totalRequests"]
        wait_until(lambda: _exported_requests(child.metrics_file) >= sent,
                   f"the metrics file to count the {sent} requests sent")
        for route in ("/metrics", "/cache/stats", "/health", "/v1/models"):
            answer = http.get(url + route, headers=both)
            live[route] = answer.content
        child.stop_cleanly()
    yield SecretRun(tmp, child.data_dir, child.metrics_file, live)


def _exported_requests(metrics_file: Path) -> int:
    """totalRequests in the metrics file, 0 before the first export."""
    try:
        return int(json.loads(metrics_file.read_bytes())["metrics"]["totalRequests"])
    except (OSError, ValueError):
        return 0


def test_credentials_never_reach_files_logs_or_metrics(secret_run: SecretRun) -> None:
    files = [p for p in secret_run.tmp.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"secrets.stdout", "secrets.stderr", secret_run.metrics_file.name} <= names
    assert any(p.is_relative_to(secret_run.data_dir) for p in files)
    logs = (secret_run.tmp / "secrets.stderr").read_bytes() + (
        secret_run.tmp / "secrets.stdout").read_bytes()
    assert b"DEBUG" in logs and len(logs) > 1000, "debug logging did not run"
    leaks = [f"{secret} in {place}" for secret in SECRETS
             for place, content in [*((str(p), p.read_bytes()) for p in files),
                                    *secret_run.live.items()]
             if secret.encode() in content]
    scanned = sum(p.stat().st_size for p in files)
    SUMMARY.append(f"secrets: {len(SECRETS)} secrets searched in {len(files)} files "
                   f"({scanned} bytes, logs at debug) and {len(secret_run.live)} live "
                   f"routes: {len(leaks)} hits")
    assert not leaks, leaks


def test_data_dir_is_0700_and_every_file_in_it_0600(secret_run: SecretRun) -> None:
    data = secret_run.data_dir
    wrong = []
    checked = 0
    for path in [data, *data.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        want = 0o700 if path.is_dir() else 0o600
        checked += 1
        if mode != want:
            wrong.append(f"{path.relative_to(data.parent)} {oct(mode)} (want {oct(want)})")
    metrics_mode = stat.S_IMODE(secret_run.metrics_file.stat().st_mode)
    assert checked > 4
    assert not wrong, wrong
    assert metrics_mode == 0o600, oct(metrics_mode)


# -- admin routes --------------------------------------------------------------------------


def _store_one(proxy: RunningServer) -> dict[str, Any]:
    body = body_for(CHAT, "keep me")
    assert http.post(proxy.url + CHAT, json=body).headers["X-Cache-Status"] == "MISS"
    wait_for_writes(proxy)
    return body


def test_cache_clear_with_an_admin_token_needs_exactly_that_token(
    upstream: Upstream, start_proxy: ProxyFactory
) -> None:
    with start_proxy(upstream=upstream[1].url, admin_token="the-admin-token") as proxy:
        body = _store_one(proxy)
        for headers in ({}, {"Authorization": "Bearer wrong"},
                        {"Authorization": "Bearer the-admin-token-but-longer"},
                        {"Authorization": "the-admin-tok"},
                        {"x-api-key": "the-admin-token"},
                        {"X-Forwarded-For": "127.0.0.1"}):
            refused = http.post(proxy.url + "/cache/clear", headers=headers)
            assert refused.status == 401, headers
            error_message(refused, "openai")
        assert http.post(proxy.url + CHAT, json=body).headers["X-Cache-Status"] == "HIT"
        cleared = http.post(proxy.url + "/cache/clear",
                            headers={"Authorization": "Bearer the-admin-token"})
        assert cleared.status == 200 and cleared.json()["cleared"]["responses"] >= 1
        assert http.post(proxy.url + CHAT, json=body).headers["X-Cache-Status"] == "MISS"


def test_cache_clear_without_a_token_answers_a_loopback_client(proxy: RunningServer) -> None:
    body = _store_one(proxy)
    cleared = http.post(proxy.url + "/cache/clear")
    assert cleared.status == 200
    assert http.post(proxy.url + CHAT, json=body).headers["X-Cache-Status"] == "MISS"
    assert http.get(proxy.url + "/cache/clear").status == 405


def _admin_request(remote: str | None, token: str | None,
                   headers: dict[str, str] | None = None) -> web.Request:
    app = web.Application()
    app[SETTINGS] = Settings(upstream="http://127.0.0.1:9", admin_token=token)
    request = make_mocked_request("POST", "/cache/clear", headers=headers or {}, app=app)
    return request.clone(remote=remote) if remote is not None else request


@pytest.mark.parametrize("remote", ["10.0.0.5", "192.168.1.20", "::ffff:10.0.0.5",
                                    "2001:db8::1", "not-an-address", ""])
def test_require_admin_refuses_non_loopback_clients_without_a_token(remote: str) -> None:
    with pytest.raises(Forbidden):
        require_admin(_admin_request(remote, None))
    spoofed = {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1",
               "Forwarded": "for=127.0.0.1"}
    with pytest.raises(Forbidden):
        require_admin(_admin_request(remote, None, spoofed))


@pytest.mark.parametrize("remote", ["127.0.0.1", "127.0.0.9", "::1"])
def test_require_admin_lets_loopback_clients_in_without_a_token(remote: str) -> None:
    require_admin(_admin_request(remote, None))


def test_require_admin_with_a_token_judges_the_token_not_the_address() -> None:
    require_admin(_admin_request("10.0.0.5", "s3cret", {"Authorization": "Bearer s3cret"}))
    for headers in ({}, {"Authorization": "Bearer s3cre"}, {"Authorization": "Bearer x"}):
        with pytest.raises(AuthenticationRequired):
            require_admin(_admin_request("10.0.0.5", "s3cret", headers))
        with pytest.raises(AuthenticationRequired):
            require_admin(_admin_request("127.0.0.1", "s3cret", headers))


# -- listening beyond loopback -------------------------------------------------------------


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("192.168.0.2", False),
    ("example.com", False), ("", False),
])
def test_loopback_addresses_and_localhost_are_loopback_and_others_are_not(
    host: str, loopback: bool
) -> None:
    assert is_loopback(host) is loopback


WARNING = "clients on other machines can reach this proxy"


def test_binding_a_non_loopback_address_prints_a_warning(tmp_path: Path) -> None:
    """Bind 0.0.0.0 for a moment (allowed, warned about); only loopback talks to it."""
    fake = CountingUpstream()
    with serve_app(fake.make_app) as upstream:
        child = spawn_proxy(tmp_path, upstream.url, "--host", "0.0.0.0",
                            port=free_port(), name="wide")
        try:
            wait_until(lambda: WARNING in child.output(), "the wide-bind warning", timeout=5)
            assert "0.0.0.0" in child.output()
        finally:
            child.stop()
        quiet = spawn_proxy(tmp_path, upstream.url, name="narrow")
        try:
            # The warning is logged before the banner, so once the banner is out its
            # absence means it was never written.
            wait_until(lambda: "cachelayer listening on" in quiet.output(), "the banner")
            assert WARNING not in quiet.output()
        finally:
            quiet.stop()


def _echo_the_credential(conn: Any) -> None:
    """An upstream that refuses the key and quotes it back, as some servers do."""
    head = read_request_head(conn).decode("latin-1")
    key = next((line.split(":", 1)[1].strip() for line in head.split("\r\n")
                if line.lower().startswith("authorization:")), "none")
    body = json.dumps({"error": {"message": f"Incorrect API key provided: {key}",
                                 "type": "invalid_request_error"}}).encode()
    conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)


def test_an_upstream_quoting_the_credential_back_does_not_put_it_in_the_logs(
    tmp_path: Path,
) -> None:
    with raw_tcp_server(_echo_the_credential) as url, running_proxy(
            tmp_path, url, "--log-level", "debug", name="echo") as child:
        answer = http.post(child.url + CHAT, json=body_for(CHAT, "hi"),
                           headers={"Authorization": f"Bearer {BEARER_SECRET}"})
        assert answer.status == 401
        child.stop()
        logs = child.output()
    assert "401" in logs
    assert BEARER_SECRET not in logs, "the upstream's error text put the key in the log"
