"""A tiny blocking HTTP client for raw-byte assertions (the SDKs hide bytes and headers)."""

from __future__ import annotations

import contextlib
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Answer:
    """Status, headers and the raw body of one HTTP exchange."""

    status: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.content)


def request(method: str, url: str, *, json_body: Any = None, data: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 60) -> Answer:
    """Send one request; HTTP error statuses are returned, not raised."""
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if json_body is not None:
        data = json.dumps(json_body).encode()
    req = urllib.request.Request(url, data=data, headers=hdrs, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return Answer(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, dict(exc.headers.items()), exc.read())


def post(url: str, json: Any = None, **kwargs: Any) -> Answer:
    """POST a JSON body."""
    return request("POST", url, json_body=json, **kwargs)


def get(url: str, **kwargs: Any) -> Answer:
    """GET a URL."""
    return request("GET", url, **kwargs)


@contextlib.contextmanager
def streaming(url: str, json_body: Any, timeout: float = 60
              ) -> Iterator[http.client.HTTPResponse]:
    """POST a JSON body and hold the answer open, to read an SSE body as it arrives."""
    req = urllib.request.Request(url, data=json.dumps(json_body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        yield response


def read_until(response: http.client.HTTPResponse, marker: bytes) -> bytes:
    """Lines of an open answer up to the one holding marker (all of it if none does)."""
    content = b""
    while marker not in content:
        line = response.readline()
        if not line:
            break
        content += line
    return content


def sse_events(content: bytes) -> list[Any]:
    """The JSON payloads of an SSE body, in order (`[DONE]` excluded)."""
    events = []
    for line in content.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[6:]))
    return events


def sse_text(content: bytes) -> str:
    """The text an OpenAI chat SSE body adds up to."""
    return "".join(
        choice.get("delta", {}).get("content") or ""
        for event in sse_events(content) for choice in event.get("choices", [])
    )


def _strip_usage(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_usage(v) for k, v in value.items() if k != "usage"}
    if isinstance(value, list):
        return [_strip_usage(v) for v in value]
    return value


def answer_of(content: bytes) -> Any:
    """A JSON or SSE answer without its usage: what a replay must repeat exactly (a store
    HIT's usage differs by design: it read its whole prompt from cache)."""
    text = content.decode()
    if text.lstrip().startswith("{"):
        return _strip_usage(json.loads(text))
    return [_strip_usage(event) for event in sse_events(content)
            if event.get("choices") != [] or "usage" not in event]
