"""Per-request context in the backend: its request id in log lines, its early usage report.

mlx-lm serves each HTTP request on its own thread and runs every prefix lookup and
prefill on one generation thread, so the request being served is a thread-local:

* the HTTP thread takes the proxy's `X-Request-Id` (`begin_request`);
* the generation thread takes it when it tokenizes that request (`generator_class`'s
  `_tokenize`, which runs right before the prefix lookup), so the lookup's log lines
  ("kv disk hit: ...") name the request too;
* a streamed request gets one `: cachelayer-usage {...}` SSE comment as soon as the
  lookup is done, before prefill (protocol/early_usage.py says why).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

from cachelayer.protocol.early_usage import usage_comment

_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_local = threading.local()
UsageSink = Callable[[int, int], None]


def sane_request_id(offered: str | None) -> str:
    """The id to log for a request: the offered one if it is a sane token, else `-`."""
    return offered if offered and _SANE_ID.match(offered) else "-"


def current_request_id() -> str:
    """The id of the request this thread serves (`-` outside one)."""
    return getattr(_local, "rid", "-")


def begin_request(rid: str, sink: UsageSink | None = None) -> None:
    """This thread now serves request `rid`; `sink` receives its early usage (streams)."""
    _local.rid = rid
    _local.sink = sink


def end_request() -> None:
    """This thread serves no request any more."""
    _local.rid = "-"
    _local.sink = None


def stream_sink(wfile: Any) -> UsageSink:
    """A sink writing the early-usage comment to an HTTP response body, flushed at once."""

    def write(prompt_tokens: int, cached_tokens: int) -> None:
        wfile.write(usage_comment(prompt_tokens, cached_tokens))
        wfile.flush()

    return write


class _Report:
    """Reports one request's usage once, as soon as its generation context knows it."""

    def __init__(self, ctx: Any, sink: UsageSink) -> None:
        self.ctx = ctx
        self.sink = sink
        self.sent = False

    def maybe(self) -> None:
        """Send the report if the lookup is done and it has not been sent yet."""
        if not self.sent and self.ctx.prompt_cache_count >= 0:
            self.sent = True
            self.sink(len(self.ctx.prompt), self.ctx.prompt_cache_count)


def _reporting(inner: Iterator[Any], report: _Report) -> Iterator[Any]:
    # Runs once the response headers are out: a batched request's lookup is already
    # done; a sequential one reports at its first progress call (made right after the
    # lookup, before any prefill), or at the latest before its first token.
    report.maybe()
    for item in inner:
        report.maybe()
        yield item


def generator_class(base: type | None = None) -> type:
    """mlx-lm's `ResponseGenerator` (or `base`, a subclass of it), carrying each request's
    id and early usage."""
    if base is None:
        from mlx_lm.server import ResponseGenerator

        base = ResponseGenerator

    class RequestAwareGenerator(base):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._rids: dict[int, str] = {}
            self._rids_lock = threading.Lock()

        def generate(self, request: Any, generation_args: Any,
                     progress_callback: Callable[[int, int], None] | None = None) -> Any:
            """mlx-lm's generate, with the request's id handed to the generation thread
            and, for a stream, its usage reported as soon as the prefix lookup is done."""
            with self._rids_lock:
                self._rids[id(request)] = current_request_id()
            sink: UsageSink | None = getattr(_local, "sink", None)
            box: list[_Report] = []

            def progress(processed: int, total: int) -> None:
                if box:
                    box[0].maybe()
                if progress_callback is not None:
                    progress_callback(processed, total)

            try:
                ctx, inner = super().generate(request, generation_args,
                                              progress_callback=progress)
            except BaseException:
                with self._rids_lock:
                    self._rids.pop(id(request), None)
                raise
            if sink is None:
                return ctx, inner
            box.append(_Report(ctx, sink))
            return ctx, _reporting(inner, box[0])

        def _tokenize(self, tokenizer: Any, request: Any, args: Any) -> Any:
            """mlx-lm's tokenization; the generation thread now serves this request."""
            with self._rids_lock:
                _local.rid = self._rids.pop(id(request), "-")
            return super()._tokenize(tokenizer, request, args)

    return RequestAwareGenerator
