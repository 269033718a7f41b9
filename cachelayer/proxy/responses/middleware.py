"""Responses requests before and after the layers: chaining, conversation key, storing.

Runs between the edge and layer 1. Before: a `previous_response_id` is replaced by the
stored conversation it names (this tenant's only; unknown is a 404 and nothing is
forwarded or stored), and `prompt_cache_key` becomes the request's conversation key.
After: with `store` true, the answered response's conversation and object are kept
under its id. A stored-answer HIT is kept the same way: it is the same response.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from cachelayer.errors import NotFound
from cachelayer.protocol.chat import ChatResult
from cachelayer.protocol.responses import with_history
from cachelayer.protocol.responses_stream import render_object, response_id
from cachelayer.proxy.conversation import CONVERSATION
from cachelayer.proxy.identity import request_tenant as tenant_of
from cachelayer.proxy.responses.store import ResponseStates, StoredResponse
from cachelayer.proxy.state import EXCHANGE, SETTINGS

log = logging.getLogger(__name__)
RESPONSE_STATES = web.AppKey("response_states", ResponseStates)


def request_tenant(request: web.Request) -> str:
    """The tenant id of the request's credential (GET and DELETE carry no Exchange, so
    they compute it here; the POST reads the edge's)."""
    return tenant_of(request.headers)


def answer_message(result: ChatResult) -> dict[str, Any]:
    """The assistant turn a result adds to the conversation, as the client's next
    request would send it back (its text, then its calls; reasoning left out)."""
    choice = result.choices[0] if result.choices else None
    text = choice.text if choice else ""
    calls = choice.tool_calls if choice else ()
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls
                               else None}
    if calls:
        message["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}}
                                 for c in calls]
    return message


def not_found(ident: str, param: str | None = None) -> NotFound:
    """OpenAI's answer for a response id this tenant has no stored response for."""
    return NotFound(f"Response with id {ident!r} not found.", param=param)


@web.middleware
async def responses_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve previous_response_id before the layers; store the response after them."""
    exchange = request.get(EXCHANGE)
    if exchange is None or exchange.chat.client_api != "responses":
        return await handler(request)
    extra = exchange.chat.extra or {}
    if extra.get("prompt_cache_key"):
        request[CONVERSATION] = str(extra["prompt_cache_key"])
    states, tenant = request.app[RESPONSE_STATES], exchange.tenant
    previous = extra.get("previous_response_id")
    if previous is not None:
        stored = states.get(tenant, previous)
        if stored is None:
            raise not_found(previous, "previous_response_id")
        body = with_history(exchange.chat.body, extra.get("instructions"), stored.messages)
        exchange.chat = dataclasses.replace(exchange.chat, body=body)
        # The raw body no longer says everything the request means: no memo may reuse it.
        exchange.fingerprint = None
    chat = exchange.chat
    response = await handler(request)
    result = exchange.result
    if result is not None and extra.get("store", True):
        messages = list(chat.body["messages"])
        if extra.get("instructions"):
            messages = messages[1:]  # instructions are not carried over to a chained turn
        entry = StoredResponse([*messages, answer_message(result)],
                               render_object(result, chat))
        if not states.put(tenant, response_id(result.id), entry):
            log.info("response %s not kept: its conversation is too large",
                     response_id(result.id))
    return response


async def get_response(request: web.Request) -> web.Response:
    """GET /v1/responses/{id}: a stored response of this tenant, else 404."""
    ident = request.match_info["response_id"]
    stored = request.app[RESPONSE_STATES].get(request_tenant(request), ident)
    if stored is None:
        raise not_found(ident)
    return web.json_response(stored.response)


async def delete_response(request: web.Request) -> web.Response:
    """DELETE /v1/responses/{id}: forget a stored response of this tenant, else 404."""
    ident = request.match_info["response_id"]
    if not await request.app[RESPONSE_STATES].delete(request_tenant(request), ident):
        raise not_found(ident)
    return web.json_response({"id": ident, "object": "response", "deleted": True})


async def response_states_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: open the stored responses; on the way out, finish their writes."""
    states = app[RESPONSE_STATES] = ResponseStates(app[SETTINGS].data_dir / "response-state")
    yield
    await states.aclose()


class ResponsesLayer:
    """The Responses API's stored conversations (previous_response_id, store: true)."""

    name = "responses"

    def setup(self, app: web.Application) -> None:
        """Install the Responses routes and state (the POST goes through the layers)."""
        app.cleanup_ctx.append(response_states_ctx)
        app.router.add_get("/v1/responses/{response_id}", get_response)
        app.router.add_delete("/v1/responses/{response_id}", delete_response)

    def snapshot(self) -> dict[str, Any]:
        """No figures of its own in the metrics file."""
        return {}
