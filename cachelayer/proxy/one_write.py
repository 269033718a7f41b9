"""A stored answer whose head and body leave in one write (the front's HITs).

`web.Response` builds its head through a headers mapping, the response-prepare signal
and the payload writer's framing: about a fifth of the CPU a stored answer costs to send
(tools/bench_store_hits.py). The front's HIT always has one of two shapes, a JSON body of
known length or one SSE replay, with three headers of its own, so `OneWrite` writes the
head and framing aiohttp would have written, with one transport write, and aiohttp's
request handler finishes it as it finishes any response (keep-alive included).
tests/integration/proxy/test_fast_path.py checks that its headers and bytes are the
application's own, for both shapes.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_request import BaseRequest

from cachelayer.protocol.sse import SSE_HEADERS

_JSON_HEAD = ("Content-Type: application/json",)
_SSE_HEAD = tuple(f"{name}: {value}" for name, value in SSE_HEADERS.items())
# Past this many bytes left unsent in the transport, wait for the client to read (the
# size at which aiohttp's payload writer drains).
_DRAIN_ABOVE = 2**16


class OneWrite(web.StreamResponse):
    """A 200 carrying a whole answer: JSON with its length, or an SSE replay (chunked on
    HTTP/1.1, as aiohttp frames a stream of unknown length), in one transport write."""

    def __init__(self, body: bytes, headers: tuple[tuple[str, str], ...], *,
                 stream: bool) -> None:
        super().__init__()
        self._whole = body
        self._own_headers = headers
        self._stream = stream

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        """Write the head and the body (once): the response is then complete."""
        if self._eof_sent:
            return None
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away before its answer")
        version, body = request.version, self._whole
        keep_alive = request.keep_alive
        lines = [f"HTTP/{version.major}.{version.minor} 200 OK",
                 *(_SSE_HEAD if self._stream else _JSON_HEAD),
                 *[f"{name}: {value}" for name, value in self._own_headers]]
        if not self._stream:
            lines.append(f"Content-Length: {len(body)}")
        elif version >= (1, 1):
            lines.append("Transfer-Encoding: chunked")
            body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
        else:
            keep_alive = False  # HTTP/1.0 cannot frame a stream: the close ends it
        lines += [f"Date: {rfc822_formatted_time()}", f"Server: {SERVER_SOFTWARE}"]
        if keep_alive and version == (1, 0):
            lines.append("Connection: keep-alive")
        elif not keep_alive and version == (1, 1):
            lines.append("Connection: close")
        self._keep_alive = keep_alive
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        self._eof_sent = True
        if transport.get_write_buffer_size() > _DRAIN_ABOVE:
            await request.writer.drain()
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        """Nothing is left to write: prepare() wrote it all."""
