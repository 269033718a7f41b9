"""Reading an upstream SSE stream: data payloads and the backend's comment lines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from cachelayer.protocol.sse import Comment, sse_batches


class _Body:
    """What sse_batches reads of an aiohttp response: `content.iter_any()`."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.content = self
        self.pieces = pieces

    async def iter_any(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def _batches(pieces: list[bytes]) -> list[list[Any]]:
    async def run() -> list[list[Any]]:
        return [batch async for batch in sse_batches(_Body(pieces))]  # type: ignore[arg-type]
    return asyncio.run(run())


def test_comments_are_kept_in_order_with_the_data() -> None:
    batches = _Body([b": keepalive 16/48\n\n: keep", b"alive 32/48\r\n\r\n",
                     b'data: {"a": 1}\n\n: keepalive 48/48\n\ndata: [DONE]\n\n'])
    got = _batches(batches.pieces)
    flat = [item for batch in got for item in batch]
    assert flat == [Comment("keepalive 16/48"), Comment("keepalive 32/48"), b'{"a": 1}',
                    Comment("keepalive 48/48"), b"[DONE]"]


def test_the_first_data_event_is_not_held_behind_later_ones() -> None:
    got = _batches([b": keepalive 1/2\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n"])
    assert got[0] == [Comment("keepalive 1/2"), b"1"]
    assert got[1] == [b"2", b"3"]
