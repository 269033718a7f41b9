"""Small deterministic chat requests sent to a proxy child, and what came back.

Shared by the scale-out tests, which ask several proxies the same questions.
"""

from __future__ import annotations

from typing import Any

from tests.support import http
from tests.support.proxy_process import ProxyProcess

ROUTE = "/v1/chat/completions"


def chat(text: str, *, stream: bool = False, system: str | None = None) -> dict[str, Any]:
    """A small deterministic chat request."""
    messages = [{"role": "system", "content": system}] if system else []
    body: dict[str, Any] = {"model": "m", "temperature": 0,
                            "messages": [*messages, {"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    return body


def send(proxy: ProxyProcess, body: dict[str, Any], timeout: float = 30) -> http.Answer:
    """One request; it must succeed."""
    answer = http.post(proxy.url + ROUTE, body, timeout=timeout)
    assert answer.status == 200, answer.content
    return answer


def status_of(proxy: ProxyProcess, body: dict[str, Any]) -> tuple[str, bytes]:
    """Send once; (X-Cache-Status, raw body)."""
    answer = send(proxy, body)
    return answer.headers.get("X-Cache-Status", ""), answer.content


def hit(proxy: ProxyProcess, body: dict[str, Any]) -> bytes:
    """Send once; it must be a HIT. The HIT's bytes."""
    status, content = status_of(proxy, body)
    assert status == "HIT", f"{proxy.url} answered {status}"
    return content
