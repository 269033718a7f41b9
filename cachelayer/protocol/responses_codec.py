"""The Responses edge as a Codec: `POST /v1/responses` <-> the neutral chat model.

Parsing (responses.py) and rendering (responses_stream.py) are pure; what depends on
stored state (previous_response_id) is resolved after parsing, by proxy/responses/.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import orjson

from cachelayer.config import Settings
from cachelayer.errors import CachelayerError, InvalidRequest
from cachelayer.protocol.anthropic import upstream_model
from cachelayer.protocol.chat import ChatRequest, ChatResult, ClientApi, Kind
from cachelayer.protocol.openai import load_json_object
from cachelayer.protocol.responses import translate, with_history
from cachelayer.protocol.responses_stream import ResponsesStream, render_error, render_object

log = logging.getLogger(__name__)
# Echoed in the response object as the client sent them.
_ECHOED = ("instructions", "max_output_tokens", "parallel_tool_calls", "previous_response_id",
           "reasoning", "store", "temperature", "text", "tool_choice", "tools", "top_p",
           "metadata", "prompt_cache_key")


class ResponsesCodec:
    """The OpenAI Responses edge."""

    api: ClientApi = "responses"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # How often each hosted tool, reasoning item or unknown field was dropped.
        self.dropped: Counter[str] = Counter()

    def parse_request(self, kind: Kind, raw: bytes) -> ChatRequest:
        """Validate a Responses body and make it a neutral chat request.

        A request with previous_response_id carries only its new messages here; the
        stored conversation is put in front of them before any layer sees the request.
        """
        if kind != "chat":
            raise InvalidRequest("the Responses API only has chat requests")
        body = load_json_object(raw)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' must be a non-empty string", param="model")
        neutral, dropped = translate(body, upstream_model(self.settings, model))
        if dropped:
            self.dropped.update(dropped)
            log.debug("dropped with no local meaning: %s", dict(sorted(dropped.items())))
        instructions = body.get("instructions") or None
        chained = body.get("previous_response_id") is not None
        if not chained:
            neutral = with_history(neutral, instructions, [])
        stream = bool(body.get("stream", False))
        extra: dict[str, Any] = {
            "echo": {k: body[k] for k in _ECHOED if body.get(k) is not None},
            "store": body.get("store", True) is not False,
            "previous_response_id": body.get("previous_response_id"),
            "prompt_cache_key": body.get("prompt_cache_key"),
            "instructions": instructions,
        }
        return ChatRequest(kind="chat", body=neutral, stream=stream, client_api="responses",
                           include_usage=stream, client_model=model, extra=extra)

    def render_response(self, result: ChatResult, request: ChatRequest) -> bytes:
        """The complete response object; same result, same bytes."""
        return orjson.dumps(render_object(result, request))

    def stream_renderer(self, request: ChatRequest) -> ResponsesStream:
        """Responses SSE events for one answer."""
        return ResponsesStream(request)

    def render_error(self, error: CachelayerError) -> bytes:
        """OpenAI's error shape."""
        return render_error(error)
