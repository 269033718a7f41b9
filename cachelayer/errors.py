"""One error tree for everything cachelayer can answer with; each error knows its HTTP status.

    CachelayerError                  500  api_error
    ├── StoreUnavailable             503  api_error      (the shared Redis store is down)
    ├── BackendUnavailable           503  api_error      (the embedded backend restarts;
    │                                                     answered with Retry-After)
    ├── ClientError                  400  invalid_request_error
    │   ├── InvalidRequest           400  invalid_request_error
    │   ├── AuthenticationRequired   401  authentication_error
    │   ├── Forbidden                403  permission_error
    │   ├── NotFound                 404  not_found_error
    │   ├── PayloadTooLarge          413  request_too_large
    │   └── UnsupportedMediaType     415  invalid_request_error
    └── UpstreamError                502  api_error
        ├── UpstreamUnreachable      502  api_error
        │   └── BackendDown          502  api_error      (never reached: try another backend)
        ├── UpstreamTimeout          504  timeout_error
        ├── UpstreamProtocolError    502  api_error      (garbage, HTML, a cut stream)
        └── UpstreamStatusError      the upstream's own 4xx/5xx status

The edge renders an error in the shape of the client's API (OpenAI or Anthropic):
`type` below is Anthropic's error type; OpenAI's `type` is derived from the class.
"""

from __future__ import annotations


class CachelayerError(Exception):
    """Base of every error cachelayer answers with."""

    status: int = 500
    anthropic_type: str = "api_error"
    openai_type: str = "server_error"
    # The request field at fault ("messages[2].content"), for OpenAI's `param`.
    param: str | None = None

    def __init__(self, message: str, *, status: int | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if param is not None:
            self.param = param


class ClientError(CachelayerError):
    """The request itself is wrong; repeating it will not help."""

    status = 400
    anthropic_type = "invalid_request_error"
    openai_type = "invalid_request_error"


class InvalidRequest(ClientError):
    """Malformed JSON, a non-object body, a missing or mistyped field."""


class AuthenticationRequired(ClientError):
    """An admin route was called without the admin token."""

    status = 401
    anthropic_type = "authentication_error"
    openai_type = "authentication_error"


class Forbidden(ClientError):
    """An admin route was called from a non-loopback client."""

    status = 403
    anthropic_type = "permission_error"
    openai_type = "permission_error"


class NotFound(ClientError):
    """No such route or resource."""

    status = 404
    anthropic_type = "not_found_error"
    openai_type = "not_found_error"


class PayloadTooLarge(ClientError):
    """The body is over the configured limit."""

    status = 413
    anthropic_type = "request_too_large"
    openai_type = "invalid_request_error"


class UnsupportedMediaType(ClientError):
    """The body is not JSON."""

    status = 415


class StoreUnavailable(CachelayerError):
    """An admin action needs the shared store (Redis), and it does not answer."""

    status = 503


class BackendUnavailable(CachelayerError):
    """The embedded backend is down and being restarted; try again after `retry_after_s`."""

    status = 503

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UpstreamError(CachelayerError):
    """The upstream model server failed us; nothing is stored."""

    status = 502


class UpstreamUnreachable(UpstreamError):
    """The upstream refused or dropped the connection before answering."""


class BackendDown(UpstreamUnreachable):
    """The connection to one backend failed before it took the request. Routing tries
    the next backend; when none is left, `error` (what one upstream alone would have
    answered: unreachable, or a connect timeout) goes to the client."""

    def __init__(self, error: UpstreamError) -> None:
        super().__init__(error.message, status=error.status)
        self.error = error


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the configured timeout."""

    status = 504
    anthropic_type = "timeout_error"
    openai_type = "timeout"


class UpstreamProtocolError(UpstreamError):
    """The upstream answered something that is not a valid completion."""


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status; it is passed on with that status."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message, status=status)
        if status == 529 or status == 503:
            self.anthropic_type = "overloaded_error"
        elif 400 <= status < 500:
            self.anthropic_type = "invalid_request_error"
            self.openai_type = "invalid_request_error"
