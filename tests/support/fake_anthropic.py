"""A scripted Anthropic Messages server that records every request Claude Code sends.

For what a tiny local model cannot do (call Claude Code's Agent tool on cue), and to
capture Claude Code's real request bodies and headers at test time (nothing of its prompt
is committed to this repository).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Captured:
    """One request as Claude Code sent it."""

    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class ToolUse:
    """Answer with one tool_use block."""

    name: str
    input: dict[str, Any]


Script = Callable[[dict[str, Any]], "str | ToolUse"]


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


@dataclass
class FakeAnthropic:
    """An aiohttp app answering POST /v1/messages (streamed) by a script, recording all."""

    script: Script
    captured: list[Captured] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def make_app(self) -> web.Application:
        """The application to serve."""
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count)
        return app

    async def _count(self, request: web.Request) -> web.Response:
        return web.json_response({"input_tokens": 1000})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.captured.append(Captured(body, dict(request.headers)))
        n = next(self._ids)
        answer = self.script(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_sse("message_start", {"type": "message_start", "message": {
            "id": f"msg_fake_{n}", "type": "message", "role": "assistant",
            "model": body.get("model", ""), "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}}))
        if isinstance(answer, ToolUse):
            block = {"type": "tool_use", "id": f"toolu_fake_{n}", "name": answer.name,
                     "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(answer.input)}
            stop = "tool_use"
        else:
            block, delta, stop = ({"type": "text", "text": ""},
                                  {"type": "text_delta", "text": answer}, "end_turn")
        await response.write(_sse("content_block_start", {
            "type": "content_block_start", "index": 0, "content_block": block}))
        await response.write(_sse("content_block_delta", {
            "type": "content_block_delta", "index": 0, "delta": delta}))
        await response.write(_sse("content_block_stop", {"type": "content_block_stop",
                                                          "index": 0}))
        await response.write(_sse("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": 5}}))
        await response.write(_sse("message_stop", {"type": "message_stop"}))
        await response.write_eof()
        return response
