"""On real inference: message_start's usage, and the backend's log lines for a request.

`cachelayer backend` reports each stream's usage right after its prefix lookup; the proxy
puts it in message_start. A second turn on the same system prompt reuses part of the
prompt (a MISS with partial reuse), the same turn again is a store HIT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.integration.stack.conftest import stack_backend, stack_proxy
from tests.support import http
from tests.support.anthropic_usage import input_usage, stream_usages
from tests.support.processes import ServerProcess
from tests.support.servers import RunningServer
from tests.support.store_writes import wait_for_writes

pytestmark = pytest.mark.slow  # real mlx inference, child servers or CLIs

SYSTEM = " ".join(f"Rule {i}: keep file {i} tidy and small." for i in range(50))


def _turn(client: anthropic.Anthropic, question: str, rid: str) -> tuple[Any, Any, str]:
    return stream_usages(client, model="claude-x", max_tokens=8, system=SYSTEM,
                         messages=[{"role": "user", "content": question}],
                         extra_headers={"X-Request-Id": rid})


@pytest.fixture
def storing_stack(backend: ServerProcess, tmp_path: Path) -> Any:
    """The proxy in front of the real backend, storing answers cut at max_tokens (a
    random-weight model never stops on its own)."""
    with stack_proxy(tmp_path, backend.url, store_truncated=True) as proxy:
        yield proxy


def test_message_start_usage_is_the_backends_real_figures_for_miss_partial_and_hit(
    storing_stack: RunningServer,
) -> None:
    stack = storing_stack
    client = anthropic.Anthropic(base_url=stack.url, api_key="local", max_retries=0)
    start, delta, status = _turn(client, "first question", "turn-1")
    assert status == "MISS" and input_usage(start) == input_usage(delta)
    assert start.cache_read_input_tokens == 0 and start.cache_creation_input_tokens > 100

    start, delta, status = _turn(client, "second question", "turn-2")
    assert status == "MISS" and input_usage(start) == input_usage(delta)
    assert 0 < start.cache_read_input_tokens < sum(input_usage(start))  # partial reuse

    wait_for_writes(stack)
    start, delta, status = _turn(client, "second question", "turn-3")
    assert status == "HIT" and input_usage(start) == input_usage(delta)
    assert start.cache_creation_input_tokens == 0 == start.input_tokens
    assert start.cache_read_input_tokens > 100


@pytest.fixture
def debug_backend(stack_model: Path, tmp_path: Path) -> Any:
    """A backend logging at DEBUG, the level that used to dump prompts and tokens."""
    with stack_backend(stack_model, tmp_path, "--log-level", "debug") as server:
        yield server


def test_backend_debug_lines_carry_the_request_id_and_summarise_the_prompt(
    debug_backend: ServerProcess, tmp_path: Path,
) -> None:
    with stack_proxy(tmp_path, debug_backend.url) as proxy:
        client = anthropic.Anthropic(base_url=proxy.url, api_key="local", max_retries=0)
        _turn(client, "log me", "trace-log-1")
    log = debug_backend.log()
    mine = [line for line in log.splitlines() if "rid=trace-log-1" in line]
    assert any("request body:" in line and "messages system=1 user=1" in line
               for line in mine), log[-3000:]
    assert SYSTEM[:60] not in log  # the prompt is summarised, never dumped
    # no per-token lines: a handful of lines for the request, not one per token
    assert len(mine) < 30, "\n".join(mine)


def test_models_and_answers_name_the_demo_model_demo_never_a_path(stack: RunningServer) -> None:
    models = http.get(stack.url + "/v1/models").json()
    ids = [m["id"] for m in models["data"]]
    assert ids == ["demo"] and all("/" not in i for i in ids)
    answer = http.post(stack.url + "/v1/chat/completions", json={
        "model": "anything", "max_tokens": 2,
        "messages": [{"role": "user", "content": "name yourself"}]}).json()
    assert answer["model"] == "demo"
