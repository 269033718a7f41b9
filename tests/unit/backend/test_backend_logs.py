"""The backend's log lines: request ids, prompts summarised, no per-token or per-request noise."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from cachelayer.backend.logs import BackendLogFilter, summarize_body
from cachelayer.backend.request_context import begin_request, end_request, sane_request_id

MLX_SERVER = "/venv/lib/python3.11/site-packages/mlx_lm/server.py"
PROMPT = "Rule 1: never dump me. " * 500


def _mlx_record(level: int, message: str, func: str) -> logging.LogRecord:
    return logging.LogRecord("root", level, MLX_SERVER, 1, message, None, None, func=func)


@pytest.fixture
def root_at(request: pytest.FixtureRequest) -> Iterator[None]:
    root = logging.getLogger()
    before = root.level
    root.setLevel(request.param)
    yield
    root.setLevel(before)


def test_records_carry_the_request_id_of_their_thread() -> None:
    begin_request(sane_request_id("trace-9"))
    try:
        record = logging.LogRecord("cachelayer.backend.x", logging.INFO, __file__, 1, "m",
                                   None, None)
        assert BackendLogFilter().filter(record)
        assert record.request_id == "trace-9"  # type: ignore[attr-defined]
    finally:
        end_request()
    outside = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    BackendLogFilter().filter(outside)
    assert outside.request_id == "-"  # type: ignore[attr-defined]


def test_an_insane_request_id_is_not_logged() -> None:
    assert sane_request_id("bad id\nwith newline") == "-"
    assert sane_request_id(None) == "-"


def test_a_request_body_becomes_one_summary_without_the_prompt() -> None:
    body = {"messages": [{"role": "system", "content": PROMPT},
                         {"role": "user", "content": "hi"}],
            "tools": [{"type": "function"}] * 3, "stream": True, "max_tokens": 64}
    record = _mlx_record(logging.DEBUG, "Incoming Request Body: " + json.dumps(body, indent="\t"),
                         "do_POST")
    assert BackendLogFilter().filter(record)
    line = record.getMessage()
    assert "never dump me" not in line and "\n" not in line
    assert "messages system=1 user=1" in line and "tools=3" in line and "stream=True" in line
    assert summarize_body("[1, 2]").endswith("(list)")


def test_per_token_lines_are_dropped_but_stream_markers_kept() -> None:
    assert not BackendLogFilter().filter(_mlx_record(logging.DEBUG, " the", "handle_completion"))
    assert BackendLogFilter().filter(
        _mlx_record(logging.DEBUG, "Starting stream:", "handle_completion"))


@pytest.mark.parametrize("root_at", [logging.INFO], indirect=True)
def test_per_request_info_chatter_is_debug(root_at: None) -> None:
    for func, message in (("_log_cache_stats", "Prompt Cache: 0 sequences, 0.00 GB"),
                          ("keepalive_callback", "Prompt processing progress: 10/11")):
        record = _mlx_record(logging.INFO, message, func)
        assert not BackendLogFilter().filter(record)
        assert record.levelno == logging.DEBUG
    kept = _mlx_record(logging.INFO, "Starting httpd at 127.0.0.1 on port 8080...", "run")
    assert BackendLogFilter().filter(kept)
