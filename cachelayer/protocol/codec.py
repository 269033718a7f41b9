"""What an API edge must provide: parse a request, render answers, streams and errors."""

from __future__ import annotations

from typing import Protocol

from cachelayer.errors import CachelayerError
from cachelayer.protocol.chat import ChatRequest, ChatResult, ClientApi, Kind, StreamEvent


class StreamRenderer(Protocol):
    """Turns neutral stream events into one client API's SSE bytes."""

    def render(self, event: StreamEvent) -> bytes:
        """The bytes for one event (may be empty)."""
        ...

    def close(self) -> bytes:
        """The bytes that end a complete stream."""
        ...

    def fail(self, error: CachelayerError) -> bytes:
        """The bytes that end a stream that failed after it began."""
        ...

    def keepalive(self, note: str) -> bytes:
        """Bytes that keep a waiting client's stream alive and that it ignores."""
        ...


class Codec(Protocol):
    """One client API (OpenAI or Anthropic) at the edge."""

    api: ClientApi

    def parse_request(self, kind: Kind, raw: bytes) -> ChatRequest:
        """Validate a request body and make it neutral; raises InvalidRequest."""
        ...

    def render_response(self, result: ChatResult, request: ChatRequest) -> bytes:
        """A complete non-streamed answer."""
        ...

    def stream_renderer(self, request: ChatRequest) -> StreamRenderer:
        """A renderer for one streamed answer."""
        ...

    def render_error(self, error: CachelayerError) -> bytes:
        """An error body in this API's shape."""
        ...
