"""The edge: read and validate a request in its API's shape, and answer errors in it.

Every proxied route is listed in API_ROUTES with the client API it speaks and the kind
of completion it asks for. Errors raised anywhere below are rendered here, in the shape
of the client's API, with the status the error carries.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestPayloadError

from cachelayer.config import Settings
from cachelayer.errors import (
    BackendUnavailable,
    CachelayerError,
    ClientError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from cachelayer.protocol.anthropic import AnthropicCodec
from cachelayer.protocol.chat import ChatRequest, ClientApi, Kind
from cachelayer.protocol.codec import Codec
from cachelayer.protocol.openai import OpenAICodec
from cachelayer.protocol.responses_codec import ResponsesCodec
from cachelayer.proxy.forward.layer import UPSTREAM
from cachelayer.proxy.identity import request_tenant
from cachelayer.proxy.memo import MAX_MEMO_BODY, Memo, fingerprint
from cachelayer.proxy.model_info import MODEL_INFO, ModelInfo, check_against_model
from cachelayer.proxy.state import EXCHANGE, SETTINGS, Exchange

log = logging.getLogger(__name__)

API_ROUTES: dict[str, tuple[ClientApi, Kind]] = {
    "/v1/chat/completions": ("openai", "chat"),
    "/v1/completions": ("openai", "text"),
    "/v1/messages": ("anthropic", "chat"),
    "/v1/responses": ("responses", "chat"),
}
CODECS = web.AppKey("codecs", dict[str, Codec])
PARSE_MEMO = web.AppKey("parse_memo", Memo[ChatRequest])
# The request's tenant, when the fast path named it already (it is named once).
TENANT = web.RequestKey("tenant", str)


def _is_json_type(content_type: str) -> bool:
    return content_type in ("", "application/octet-stream", "application/json") or (
        content_type.endswith("+json")
    )


def client_api_for(path: str) -> ClientApi:
    """Which API shape to answer a path's errors in."""
    return "anthropic" if path.startswith("/v1/messages") else "openai"


def error_response(codec: Codec, error: CachelayerError) -> web.Response:
    """An error answer in the client's API shape with the error's own status."""
    response = web.Response(status=error.status, body=codec.render_error(error),
                            content_type="application/json")
    if isinstance(error, BackendUnavailable):
        response.headers["Retry-After"] = str(error.retry_after_s)
    return response


async def read_body(request: web.Request) -> bytes:
    """The raw JSON body: checked for its content type, its size, and being there at all."""
    if not _is_json_type(request.content_type):
        raise UnsupportedMediaType(
            f"expected Content-Type application/json, got {request.content_type}"
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        limit = request.app[SETTINGS].max_body_bytes
        raise PayloadTooLarge(
            f"request body is over the {limit}-byte limit (--max-body-size)"
        ) from exc
    except (RequestPayloadError, HttpProcessingError, ValueError) as exc:
        # e.g. Content-Encoding: gzip over bytes that are not gzip
        raise InvalidRequest(f"cannot read the request body: {exc}") from exc
    if not raw:
        raise InvalidRequest("request body is empty")
    return raw


async def expect_continue(request: web.Request) -> web.Response | None:
    """`Expect: 100-continue`: a body announced over --max-body-size is refused (413, in
    the client's API shape) before the client sends it; anything else may come."""
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        codec = request.app[CODECS][client_api_for(request.path)]
        response = error_response(codec, PayloadTooLarge(
            f"request body of {request.content_length} bytes is over the {limit}-byte "
            "limit (--max-body-size)"))
        response.force_close()  # the body never comes: this connection is done
        return response
    if request.headers.get("Expect", "").lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"unknown Expect: {request.headers['Expect']}")
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return None


async def read_exchange(request: web.Request, codec: Codec, kind: Kind) -> Exchange:
    """Read, validate and neutralise the request body; name its tenant once."""
    raw = await read_body(request)
    tenant = request.get(TENANT) or request_tenant(request.headers)
    if len(raw) > MAX_MEMO_BODY:
        return Exchange(chat=codec.parse_request(kind, raw), codec=codec, tenant=tenant)
    fp = fingerprint(request.path.encode(), raw)
    memo = request.app[PARSE_MEMO]
    chat = memo.get(fp) or memo.put(fp, codec.parse_request(kind, raw))
    return Exchange(chat=chat, codec=codec, fingerprint=fp, tenant=tenant)


def make_codecs(settings: Settings) -> dict[str, Codec]:
    """The client APIs this proxy speaks, keyed by name."""
    return {"openai": OpenAICodec(settings.model_map), "anthropic": AnthropicCodec(settings),
            "responses": ResponsesCodec(settings)}


class EdgeLayer:
    """The edge: the codecs, the parse memo, the served model's limits."""

    name = "edge"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def setup(self, app: web.Application) -> None:
        """Install the edge's state: the codecs, the parse memo, the model's limits."""
        app[CODECS] = make_codecs(self.settings)
        app[PARSE_MEMO] = Memo()
        app[MODEL_INFO] = ModelInfo(self.settings.backend_urls)

    def snapshot(self) -> dict[str, Any]:
        """No figures of its own in the metrics file."""
        return {}


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Parse proxied requests into an Exchange; render every error in the client's shape."""
    codecs = request.app[CODECS]
    route = API_ROUTES.get(request.path)
    codec = codecs[route[0] if route else client_api_for(request.path)]
    try:
        if route is not None and request.method == "POST":
            request[EXCHANGE] = exchange = await read_exchange(request, codec, route[1])
            await check_against_model(request.app, exchange.chat, request.app[UPSTREAM])
        return await handler(request)
    except CachelayerError as error:
        level = logging.INFO if isinstance(error, ClientError) else logging.WARNING
        log.log(level, "%s %s -> %d %s", request.method, request.path, error.status, error.message)
        return error_response(codec, error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        http_error = (NotFound(exc.reason) if exc.status == 404
                      else ClientError(exc.reason, status=exc.status))
        return error_response(codec, http_error)
