"""The backend's log lines: each names its request, and debug stays readable.

mlx-lm logs on the root logger; at DEBUG it dumps every request body whole (a Claude
Code turn is ~40k tokens of JSON), every answer whole, and one line per generated token;
at INFO, five or more lines per request. Here a request body becomes one summary line, an
answer one line with its size, the per-token lines are dropped, the per-request INFO
lines become DEBUG; every record carries the request id the proxy forwarded.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from cachelayer.backend.request_context import current_request_id

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s rid=%(request_id)s %(message)s"
_BODY = "Incoming Request Body: "
_ANSWER = "Outgoing Response: "
# mlx-lm's own DEBUG lines in its completion loop that are worth keeping as they are.
_KEPT = ("Starting stream:", "Starting completion:")
# mlx-lm's INFO lines that come with every request: the prompt cache's contents, and one
# line per prefill chunk. Shown at DEBUG.
_PER_REQUEST = frozenset({"_log_cache_stats", "keepalive_callback"})


def summarize_body(text: str) -> str:
    """One line about a request body: its size, messages, tools, and the settings that
    change an answer; never the prompt itself."""
    try:
        body: Any = json.loads(text)
    except ValueError:
        return f"request body: {len(text)} chars (not JSON)"
    if not isinstance(body, dict):
        return f"request body: {len(text)} chars ({type(body).__name__})"
    messages = body.get("messages")
    roles: dict[str, int] = {}
    for message in messages if isinstance(messages, list) else ():
        role = message.get("role") if isinstance(message, dict) else None
        roles[str(role)] = roles.get(str(role), 0) + 1
    parts = [f"request body: {len(text)} chars"]
    if roles:
        parts.append("messages " + " ".join(f"{r}={n}" for r, n in roles.items()))
    elif isinstance(body.get("prompt"), str):
        parts.append(f"prompt {len(body['prompt'])} chars")
    tools = body.get("tools")
    if isinstance(tools, list):
        parts.append(f"tools={len(tools)}")
    for key in ("stream", "max_tokens", "temperature"):
        if key in body:
            parts.append(f"{key}={body[key]}")
    return ", ".join(parts)


def _is_mlx_server(record: logging.LogRecord) -> bool:
    return record.name == "root" and record.pathname.replace("\\", "/").endswith(
        "mlx_lm/server.py")


class BackendLogFilter(logging.Filter):
    """Adds the request id to every record; shortens or drops mlx-lm's bulky DEBUG lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Attach the id; False for mlx-lm's per-token lines, and for its per-request
        INFO chatter below DEBUG."""
        record.request_id = current_request_id()
        if not _is_mlx_server(record):
            return True
        if record.levelno == logging.INFO and record.funcName in _PER_REQUEST:
            # Each request would add five or more INFO lines; the proxy's access line is
            # the one per request at INFO.
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        if record.levelno != logging.DEBUG:
            return True
        message = record.getMessage()
        if message.startswith(_BODY):
            record.msg, record.args = summarize_body(message[len(_BODY):]), None
            return True
        if message.startswith(_ANSWER):
            record.msg = f"answer: {len(message) - len(_ANSWER)} chars of JSON"
            record.args = None
            return True
        # The completion loop logs each generated token's text: noise, not a log line.
        return record.funcName != "handle_completion" or message in _KEPT


def configure_backend_logging(level: str) -> None:
    """Lines on stderr with the request id, mlx-lm's DEBUG output kept readable."""
    handler = logging.StreamHandler()
    handler.addFilter(BackendLogFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        handlers=[handler], force=True)
