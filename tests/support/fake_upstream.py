"""A scripted OpenAI-compatible upstream for what a tiny random model cannot produce:
tool calls, error statuses, garbage, streams cut in the middle, slow or hung streams."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from cachelayer.protocol.early_usage import usage_comment


@dataclass
class Reply:
    """How the fake upstream answers one request."""

    text: str = "Hello from the fake upstream."
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"
    status: int = 200
    raw_body: bytes | None = None
    content_type: str = "application/json"
    cut_after: int | None = None  # stream: close after this many chunks, no [DONE]
    delay_s: float = 0.0  # stream: pause before each chunk
    hang: bool = False
    headers_delay_s: float = 0.0  # silence before anything is answered (a busy backend)
    prompt_tokens: int = 42
    cached_tokens: int | None = 0
    completion_tokens: int = 7
    split_arguments: int = 1  # stream: send each tool call's arguments in this many chunks
    reasoning: str = ""  # a thinking model's reasoning, sent before the text (mlx-lm's field)
    early_usage: bool = False  # stream: report usage first, as `cachelayer backend` does


def default_reply(body: dict[str, Any]) -> Reply:
    """Deterministic text derived from the last message, so different requests differ."""
    messages = body.get("messages") or [{"content": body.get("prompt", "")}]
    last = messages[-1].get("content")
    return Reply(text=f"You said: {json.dumps(last)[:200]}")


def _split_call(call: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """A tool call as stream deltas: id and name first, its arguments cut in `parts`."""
    arguments = str((call.get("function") or {}).get("arguments", ""))
    if parts <= 1 or len(arguments) < parts:
        return [call]
    size = -(-len(arguments) // parts)
    pieces = [arguments[i:i + size] for i in range(0, len(arguments), size)]
    first = {**call, "function": {**call["function"], "arguments": pieces[0]}}
    return [first, *({"function": {"arguments": p}} for p in pieces[1:])]


class FakeUpstream:
    """An aiohttp app answering /v1/chat/completions, /v1/completions and /v1/models."""

    def __init__(self, script: Callable[[dict[str, Any]], Reply] = default_reply) -> None:
        self.script = script
        self.calls: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.disconnects = 0
        self._ids = itertools.count(1)

    def make_app(self) -> web.Application:
        """The aiohttp application to serve."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_get("/v1/models", self._models)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model",
                                                              "object": "model"}]})

    def _usage(self, reply: Reply) -> dict[str, Any]:
        usage: dict[str, Any] = {"prompt_tokens": reply.prompt_tokens,
                                 "completion_tokens": reply.completion_tokens,
                                 "total_tokens": reply.prompt_tokens + reply.completion_tokens}
        if reply.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": reply.cached_tokens}
        return usage

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls.append(body)
        self.headers.append(dict(request.headers))
        reply = self.script(body)
        # The sleeps here are the script (a hung, slow or silent upstream), not waits.
        if reply.hang:
            await asyncio.sleep(3600)
        if reply.headers_delay_s:
            await asyncio.sleep(reply.headers_delay_s)
        if reply.raw_body is not None or reply.status != 200:
            return web.Response(status=reply.status, body=reply.raw_body or b'{"error": '
                                b'{"message": "scripted failure", "type": "server_error"}}',
                                content_type=reply.content_type)
        chat = request.path.endswith("chat/completions")
        ident = f"fake-{next(self._ids)}"
        if body.get("stream"):
            return await self._stream(request, body, reply, chat, ident)
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
            if reply.reasoning:
                message["reasoning"] = reply.reasoning
            if reply.tool_calls:
                message["tool_calls"] = reply.tool_calls
            choice: dict[str, Any] = {"index": 0, "message": message,
                                      "finish_reason": reply.finish_reason}
        else:
            choice = {"index": 0, "text": reply.text, "finish_reason": reply.finish_reason}
        return web.json_response({
            "id": ident, "object": "chat.completion" if chat else "text_completion",
            "created": 1700000000, "model": body.get("model", "fake-model"),
            "choices": [choice], "usage": self._usage(reply),
        })

    async def _stream(self, request: web.Request, body: dict[str, Any], reply: Reply,
                      chat: bool, ident: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        head = {"id": ident, "object": "chat.completion.chunk", "created": 1700000000,
                "model": body.get("model", "fake-model")}
        chunks: list[dict[str, Any]] = []
        if reply.reasoning and chat:
            chunks.append({**head, "choices": [{"index": 0, "finish_reason": None,
                                                "delta": {"reasoning": reply.reasoning}}]})
        words = [w + " " for w in reply.text.split(" ")] if reply.text else []
        if words:
            words[-1] = words[-1][:-1]
        for word in words:
            piece = {"index": 0, "delta": {"content": word}} if chat else {"index": 0,
                                                                            "text": word}
            chunks.append({**head, "choices": [{**piece, "finish_reason": None}]})
        for i, call in enumerate(reply.tool_calls):
            for piece in _split_call(call, reply.split_arguments):
                delta = {"tool_calls": [{"index": i, **piece}]}
                chunks.append({**head, "choices": [{"index": 0, "delta": delta,
                                                    "finish_reason": None}]})
        chunks.append({**head, "choices": [{"index": 0, "delta": {},
                                            "finish_reason": reply.finish_reason}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**head, "choices": [], "usage": self._usage(reply)})
        try:
            if reply.early_usage:
                await response.write(usage_comment(reply.prompt_tokens,
                                                   reply.cached_tokens or 0))
            for n, chunk in enumerate(chunks):
                if reply.cut_after is not None and n >= reply.cut_after:
                    return response  # closes without [DONE]
                if reply.delay_s:
                    await asyncio.sleep(reply.delay_s)
                await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnects += 1
            raise
        await response.write_eof()
        return response
