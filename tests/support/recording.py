"""An httpx transport that records every body chunk a real SDK client receives, and when.

The openai and anthropic SDKs skip SSE comments and pings, so what reached them is read
here, below the SDK, while the SDK itself parses the same bytes as usual."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx2 as httpx


class _RecordingStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, chunks: list[tuple[float, bytes]]) -> None:
        self.inner = inner
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.chunks.append((time.monotonic(), chunk))
            yield chunk

    def close(self) -> None:
        self.inner.close()


class RecordingTransport(httpx.HTTPTransport):
    """httpx's own transport that also keeps each response body chunk with its arrival."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[tuple[float, bytes]] = []
        self.sent_at: float | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send as httpx does; the body is recorded as the client reads it."""
        self.sent_at = time.monotonic()
        response = super().handle_request(request)
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _RecordingStream(response.stream, self.chunks)
        return response

    def body(self) -> bytes:
        """Every byte received so far."""
        return b"".join(chunk for _, chunk in self.chunks)

    def before(self, marker: bytes) -> bytes:
        """The bytes received before `marker` first appeared."""
        body = self.body()
        at = body.find(marker)
        return body if at < 0 else body[:at]

    def client(self) -> httpx.Client:
        """An httpx client for an SDK's `http_client=`."""
        return httpx.Client(transport=self, timeout=120)


KEEPALIVE = re.compile(rb"^: keepalive(?: (\d+)/(\d+))?$", re.MULTILINE)


def keepalives(data: bytes) -> list[tuple[int, int] | None]:
    """The keep-alive comments in SSE bytes: (done, total) where they carry progress."""
    return [(int(m[1]), int(m[2])) if m[1] else None for m in KEEPALIVE.finditer(data)]
