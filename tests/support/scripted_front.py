"""A scripted front for a real backend: every request is answered by the real backend
(its real prefill, its real KV reuse and usage), but where the script says so the answer's
content is replaced by a tool call the tiny model could never produce on cue.

So a client can be made to call a tool (Claude Code's Agent) while every prompt it sends
is still prefilled, cached and counted by a real `cachelayer backend`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

# What the proxy sends that the backend reads (tenant salt, request id); the rest is the
# front's own business (length, encoding).
PASSED_HEADERS = ("x-cachelayer-tenant", "x-request-id", "content-type")
Script = Callable[[dict[str, Any]], "dict[str, Any] | None"]


@dataclass
class Seen:
    """One request as the front forwarded it, and the backend's usage for it."""

    body: dict[str, Any]
    prompt_tokens: int = 0
    cached_tokens: int = 0
    scripted: bool = False


def _usage_of(chunks: bytes) -> dict[str, Any]:
    """The usage object of an OpenAI stream (its last chunk carrying one) or JSON body."""
    usage: dict[str, Any] = {}
    text = chunks.decode(errors="replace")
    if not text.lstrip().startswith("{"):
        for line in text.splitlines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
        return usage
    return dict(json.loads(text).get("usage") or {})


@dataclass
class ScriptedFront:
    """An aiohttp app for /v1/chat/completions in front of `backend_url`.

    `script(body)` returns None (pass the backend's answer through) or one OpenAI tool call
    (answer with it, after the backend has prefilled and answered the same request).
    """

    backend_url: str
    script: Script
    seen: list[Seen] = field(default_factory=list)

    def make_app(self) -> web.Application:
        """The application to serve."""
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._models)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as session, session.get(
                self.backend_url + request.path) as answer:
            return web.Response(status=answer.status, body=await answer.read(),
                                content_type="application/json")

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw)
        seen = Seen(body)
        self.seen.append(seen)
        call = self.script(body)
        headers = {k: v for k, v in request.headers.items() if k.lower() in PASSED_HEADERS}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
                self.backend_url + request.path, data=raw, headers=headers) as answer:
            if call is not None or answer.status != 200:
                content = await answer.read()
                self._record(seen, content)
                if answer.status != 200:
                    return web.Response(status=answer.status, body=content,
                                        content_type="application/json")
                seen.scripted = True
                return await self._tool_call(request, body, call, _usage_of(content))
            response = web.StreamResponse(
                headers={"Content-Type": answer.headers.get("Content-Type", "")})
            await response.prepare(request)
            content = b""
            try:
                async for piece in answer.content.iter_any():
                    content += piece
                    await response.write(piece)
                await response.write_eof()
            finally:
                # the proxy may hang up as soon as it has read [DONE]: record regardless
                self._record(seen, content)
            return response

    @staticmethod
    def _record(seen: Seen, content: bytes) -> None:
        usage = _usage_of(content)
        seen.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        seen.cached_tokens = int((usage.get("prompt_tokens_details") or {})
                                 .get("cached_tokens") or 0)

    async def _tool_call(self, request: web.Request, body: dict[str, Any],
                         call: dict[str, Any], usage: dict[str, Any]) -> web.StreamResponse:
        """The scripted tool call, streamed as the backend would, with its usage."""
        head = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk",
                "created": 1700000000, "model": body.get("model", "")}
        if not body.get("stream"):
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            return web.json_response({**head, "object": "chat.completion", "choices": [
                {"index": 0, "message": message, "finish_reason": "tool_calls"}],
                "usage": usage})
        chunks = [
            {**head, "choices": [{"index": 0, "delta": {"role": "assistant"},
                                  "finish_reason": None}]},
            {**head, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, **call}]},
                                  "finish_reason": None}]},
            {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        ]
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**head, "choices": [], "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
