"""`cachelayer backend`: mlx_lm.server with prompt KV caches persisted on disk.

Rather than fork mlx-lm's server, this reuses its `ModelProvider`,
`ResponseGenerator` and `APIHandler` and changes four things:

* the generator's `prompt_cache` is a `PersistentPromptCache` (mlx-lm's memory
  LRU in front of a paged, content-addressed block store), so a known prefix
  survives restarts;
* every request is served by the one model given on the command line, whatever
  its `model` field says (mlx-lm would try to load that name from the hub);
* its `BatchGenerator` checkpoints long prompts to disk as they prefill, so a
  hang-up or a crash half-way keeps what was computed, and sizes prefill steps so
  other requests are not held up behind a long prompt (`prefill.py`); its
  `ResponseGenerator` reads restores ahead on an I/O thread (`restore.py`) and drops
  a request a step after its client has gone (`stops.py`);
* two routes are added: `GET /v1/cachelayer/kv` (counters) and
  `POST /v1/cachelayer/count_tokens` (prompt length under the chat template).

Tested with mlx-lm >=0.32,<0.33.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import signal
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn

from cachelayer.backend.kv_blocks import chain_seed
from cachelayer.backend.kv_files import model_fingerprint
from cachelayer.backend.limits import (
    MODEL_ROUTE,
    ModelLimits,
    check_request,
    logits_size,
    null_defaults,
)
from cachelayer.backend.logs import configure_backend_logging
from cachelayer.backend.memory_budget import auto_prompt_cache_bytes, physical_memory, weights_bytes
from cachelayer.backend.models import resolve_model_dir, served_name
from cachelayer.backend.request_context import (
    begin_request,
    current_request_id,
    end_request,
    generator_class,
    sane_request_id,
    stream_sink,
)
from cachelayer.backend.settings import BackendSettings, auto_kv_budget
from cachelayer.backend.tenants import (
    TENANT_HEADER,
    TenantRegistry,
    parse_tenant,
    tenant_generator_class,
)
from cachelayer.backend.variant import draft_model_dir, make_model_provider, variant_key
from cachelayer.fs import ensure_private_dir

logger = logging.getLogger(__name__)

KV_ROUTE = "/v1/cachelayer/kv"
COUNT_TOKENS_ROUTE = "/v1/cachelayer/count_tokens"
# The largest body count_tokens accepts; the chat routes keep mlx-lm's rules.
_MAX_COUNT_BODY = 64 << 20



def model_family(model_dir: Path) -> str:
    """The `model_type` of a model directory's config ("" if unreadable)."""
    try:
        return str(json.loads((model_dir / "config.json").read_text()).get("model_type", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def mlx_cli_args(settings: BackendSettings, prompt_cache_bytes: int | None = None,
                 ) -> argparse.Namespace:
    """The namespace mlx_lm.server's own `main()` would build, from our settings
    (`prompt_cache_bytes`: the hot tier's budget as resolved at start-up)."""
    mlx = settings.mlx
    return argparse.Namespace(
        model=settings.model,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        max_tokens=settings.max_tokens,
        chat_template_args=dict(settings.chat_template_args),
        prefill_step_size=settings.prefill_step_size,
        prompt_cache_size=settings.prompt_cache_size,
        **{**vars(mlx), "allowed_origins": list(mlx.allowed_origins),
           "prompt_cache_bytes": mlx.prompt_cache_bytes if prompt_cache_bytes is None
           else prompt_cache_bytes},
    )


def count_prompt_tokens(
    tokenizer: Any, body: dict[str, Any], chat_template_args: dict[str, Any]
) -> int:
    """Tokens of an OpenAI chat-completions body rendered as the server would."""
    from mlx_lm.server import process_message_content

    messages = copy.deepcopy(body.get("messages"))
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    process_message_content(messages)
    args = {**chat_template_args, **(body.get("chat_template_kwargs") or {})}
    prompt = tokenizer.apply_chat_template(
        messages, tools=body.get("tools") or None, add_generation_prompt=True, **args
    )
    return len(prompt)


def make_handler_class(settings: BackendSettings, limits: ModelLimits) -> type:
    """An mlx-lm `APIHandler` subclass with the cachelayer routes and one model."""
    from mlx_lm.server import APIHandler

    public_name = settings.served_name or served_name(settings.model)

    class CachelayerHandler(APIHandler):
        def validate_model_parameters(self) -> None:
            """Our limits (limits.py), mlx-lm's checks, then pin the request to the
            loaded model. A ValueError here is answered 400 by mlx-lm."""
            defaults = null_defaults(self.response_generator.cli_args)
            for name, value in check_request(self.body, limits, defaults).items():
                setattr(self, name, value)
            super().validate_model_parameters()
            # The provider maps this exact string to the loaded model, so no
            # client-chosen name can make the server load something else.
            self.requested_model = settings.model
            self.requested_draft_model = "default_model"
            self.adapter = None

        def handle_chat_completions(self) -> Any:
            """mlx-lm's request, tagged with the tenant whose KV it may reuse."""
            return self._with_tenant(super().handle_chat_completions())

        def handle_text_completions(self) -> Any:
            """mlx-lm's request, tagged with the tenant whose KV it may reuse."""
            return self._with_tenant(super().handle_text_completions())

        def _with_tenant(self, request: Any) -> Any:
            request.cachelayer_tenant = parse_tenant(self.headers.get(TENANT_HEADER))
            return request

        def log_message(self, format: str, *args: Any) -> None:
            """http.server's line per request, at DEBUG (the proxy logs the access line)."""
            logger.debug("%s %s", self.address_string(), format % args)

        def handle_models_request(self) -> None:
            """GET /v1/models: the one model this backend serves, by the name the user
            gave it (mlx-lm would list every hub download and the directory's full path)."""
            self._send_json(200, {"object": "list", "data": [
                {"id": public_name, "object": "model", "created": self.created,
                 "owned_by": "cachelayer"}]})

        def generate_response(self, *args: Any, **kwargs: Any) -> Any:
            """mlx-lm's answer object, naming the model as /v1/models does."""
            response = super().generate_response(*args, **kwargs)
            response["model"] = public_name
            return response

        def completion_usage_response(self, *args: Any, **kwargs: Any) -> Any:
            """mlx-lm's usage chunk, naming the model as /v1/models does."""
            response = super().completion_usage_response(*args, **kwargs)
            response["model"] = public_name
            return response

        def handle_completion(self, request: Any, stop_words: Any) -> None:
            """mlx-lm's completion; a stream also reports its usage right after the
            prefix lookup (backend/request_context.py)."""
            begin_request(current_request_id(), stream_sink(self.wfile) if self.stream
                          else None)
            super().handle_completion(request, stop_words)

        def do_GET(self) -> None:
            """Serve /v1/cachelayer/kv (counters) and the model's limits (MODEL_ROUTE);
            everything else as mlx-lm does."""
            if self.path == KV_ROUTE:
                cache: Any = self.response_generator.prompt_cache
                self._send_json(200, cache.stats())
            elif self.path == MODEL_ROUTE:
                self._send_json(200, limits.info(settings.model))
            else:
                super().do_GET()

        def do_POST(self) -> None:
            """Serve /v1/cachelayer/count_tokens; everything else as mlx-lm does. Log
            lines name the request by the id the proxy forwarded."""
            begin_request(sane_request_id(self.headers.get("X-Request-Id")))
            try:
                self._post()
            finally:
                end_request()

        def _post(self) -> None:
            if self.path != COUNT_TOKENS_ROUTE:
                super().do_POST()
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                if not 0 < length <= _MAX_COUNT_BODY:
                    raise ValueError("missing or oversized body")
                body = json.loads(self.rfile.read(length))
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
                tokenizer = self.response_generator.model_provider.tokenizer
                n = count_prompt_tokens(tokenizer, body, dict(settings.chat_template_args))
            except Exception as e:  # any bad input is the client's error here
                self._send_json(400, {"error": str(e)})
                return
            self._send_json(200, {"input_tokens": n})

        def _send_json(self, status: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self._set_completion_headers(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

    return CachelayerHandler


class BackendServer:
    """One `cachelayer backend` process's running pieces: model provider, generator,
    persistent prompt cache and HTTP server (the proxy's pool of upstreams is another
    thing)."""

    def __init__(self, settings: BackendSettings) -> None:
        """Load the model, rebuild the disk index and bind the socket (not serving yet)."""
        from mlx_lm.models.cache import make_prompt_cache

        from cachelayer.backend.paged_store import PagedStore
        from cachelayer.backend.persistent_cache import PersistentPromptCache
        from cachelayer.backend.prefill import install as install_prefill
        from cachelayer.backend.restore import ResponseGenerator

        self.settings = settings
        ensure_private_dir(settings.kv_dir)
        model_dir = resolve_model_dir(settings.model)
        # Adapter, draft model and KV quantization change what a block means.
        variant = variant_key(settings.mlx)
        fingerprint = chain_seed(model_fingerprint(model_dir), variant)
        # 0 is a budget too (nothing stays in memory; every reuse comes from disk).
        budget = settings.mlx.prompt_cache_bytes
        if budget is None:
            budget = auto_prompt_cache_bytes(
                physical_memory(), weights_bytes(model_dir, draft_model_dir(settings.mlx)))
        store = PagedStore(
            settings.kv_dir,
            fingerprint,
            max_bytes=settings.kv_max_bytes or auto_kv_budget(settings.kv_dir),
            min_tokens=settings.kv_min_tokens,
            block_tokens=settings.kv_block_tokens,
        )
        store.rebuild_index()
        self.prompt_cache = PersistentPromptCache(
            store,
            (settings.model, None, None),  # ModelProvider's key for the default model
            max_size=settings.prompt_cache_size,
            max_bytes=budget,
            model_name=settings.served_name or served_name(settings.model),
            family=model_family(model_dir),
            tenants=TenantRegistry(),
        )
        # Long prompts are checkpointed to disk as they prefill (backend/prefill.py).
        install_prefill(self.prompt_cache, store.block_tokens, settings.prefill_step_seconds)
        provider = make_model_provider(settings, mlx_cli_args(settings, budget))
        # Tenant scoping first in the MRO: its _tokenize (which names the request's tenant
        # for the lookup) runs on the generation thread around the read ahead's tokens.
        generator = type("ResponseGenerator", (tenant_generator_class(), ResponseGenerator), {})
        # Outermost: each request's id and early usage report (backend/request_context.py).
        self.generator = generator_class(generator)(provider, self.prompt_cache)
        # Listen only once the model is loaded, so a successful /health means ready.
        while provider.model_key is None:
            if not self.generator.generation_available():
                raise RuntimeError(f"could not load model {settings.model}")
            time.sleep(0.05)
        # The layer kinds decide what the disk can restore exactly (or nothing);
        # mlx-lm appends a draft model's layers to the main model's in each cache.
        self.prompt_cache.persist_key = provider.model_key
        self.prompt_cache.set_kinds(make_prompt_cache(provider.model) + (
            make_prompt_cache(provider.draft_model) if provider.draft_model is not None else []))
        self.prompt_cache.export_stats()
        self.limits = ModelLimits(vocab_size=logits_size(provider.model, model_dir),
                                  vision=provider.processor is not None)
        handler = make_handler_class(settings, self.limits)
        self.httpd: ThreadingHTTPServer = ThreadingHTTPServer(
            (settings.host, settings.port),
            lambda *a, **kw: handler(self.generator, *a, **kw),
        )
        self.httpd.daemon_threads = True
        logger.info(
            "cachelayer backend on http://%s:%d model=%s kv=%s prompt-cache-bytes=%d%s",
            settings.host,
            self.httpd.server_address[1],
            settings.served_name or served_name(settings.model),
            store.root,
            budget,
            f" variant={variant}" if variant else "",
        )

    def serve_forever(self) -> None:
        """Serve until shutdown() is called from another thread."""
        self.httpd.serve_forever()

    def shutdown(self) -> None:
        """Stop serving, finish queued cache writes, stop the generation thread."""
        self.httpd.shutdown()
        self.httpd.server_close()
        logger.debug("shutdown: http stopped")
        self.generator.stop_and_join()
        logger.debug("shutdown: generation thread joined")
        self.prompt_cache.close()
        logger.info("shutdown: kv writes finished (%d dropped)", self.prompt_cache.writes_dropped)


def serve(settings: BackendSettings) -> NoReturn:
    """Run the backend in this process until SIGINT or SIGTERM, then end the process with
    exit status 0 after a clean shutdown, 1 if the generation thread died or it failed to
    start (model, socket: logged with its traceback). Never returns."""
    configure_backend_logging(settings.log_level)
    stop = threading.Event()
    backend: BackendServer | None = None

    def on_signal(signum: int, _frame: Any) -> None:
        """Ask the main loop to shut down. A repeated signal never aborts: queued kv
        writes that have not started are dropped whole, the one in progress lands."""
        if stop.is_set():
            logger.info("signal %d again: dropping kv writes not yet started", signum)
            if backend is not None:
                backend.prompt_cache.drop_pending()
        else:
            logger.info("signal %d: shutting down", signum)
        stop.set()

    # Installed before the model loads, so a signal during start-up is no abort either.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        backend = BackendServer(settings)
    except Exception:
        # The generation thread (not a daemon) may already run: raising would keep the
        # process alive, and the proxy waiting on a backend that never listens.
        logger.exception("cachelayer backend failed to start")
        leave(1)
    server_thread = threading.Thread(target=backend.serve_forever, name="http", daemon=True)
    server_thread.start()
    # The main thread waits here because Python delivers signals only to it.
    while not stop.wait(0.5):
        if not backend.generator.generation_available():
            logger.error("generation thread died")
            backend.httpd.shutdown()
            backend.prompt_cache.close()
            leave(1)
    backend.shutdown()
    leave(0)


def leave(code: int) -> NoReturn:
    """End the process now that everything worth keeping is on disk, skipping interpreter
    finalization: mlx's native threads are still joinable then, and their destructors
    abort the process ("terminate called without an active exception", exit -6)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
