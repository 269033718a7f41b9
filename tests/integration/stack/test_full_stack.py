"""The whole product on real mlx-lm inference: proxy -> backend with persistent KV caches."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from cachelayer.proxy.app import make_app
from cachelayer.proxy.prefix.ledger import LEDGER
from tests.integration.stack.conftest import stack_settings
from tests.support import http
from tests.support.processes import ServerProcess
from tests.support.servers import RunningServer, serve_app

pytestmark = pytest.mark.slow  # real mlx inference, child servers or CLIs

SYSTEM = " ".join(f"Rule {i}: read file number {i} before you edit it." for i in range(60))
TOOLS = [
    {"name": f"tool_{i}", "description": f"Tool number {i} does thing {i}.",
     "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}
    for i in range(12)
]


def billing_line() -> str:
    return (f"x-anthropic-billing-header: cc_version=2.1.{secrets.randbelow(999)}; "
            f"cc_entrypoint=cli; cch={secrets.token_hex(5)};")


def claude_turn(client: anthropic.Anthropic, history: list[dict[str, Any]]) -> Any:
    """One Claude-Code-shaped streamed turn: billing block first, 12 tools, growing messages."""
    with client.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=128000,
        system=[{"type": "text", "text": billing_line()},
                {"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}],
        tools=TOOLS,  # type: ignore[arg-type]
        messages=history,  # type: ignore[arg-type]
        metadata={"user_id": "user_abc_session_" + secrets.token_hex(4)},
        extra_headers={"X-Claude-Code-Session-Id": "session-1"},
    ) as stream:
        return stream.get_final_message()


def test_claude_code_turns_with_changing_billing_lines_share_one_prefix_and_reuse_kv(
    stack: RunningServer,
) -> None:
    client = anthropic.Anthropic(base_url=stack.url, api_key="local", max_retries=0)
    history: list[dict[str, Any]] = []
    usages = []
    for turn in range(3):
        history.append({"role": "user", "content": f"Turn {turn}: list the files."})
        message = claude_turn(client, history)
        usages.append(message.usage)
        history.append({"role": "assistant", "content": message.content[0].text or "ok"})
    assert usages[0].cache_read_input_tokens == 0
    assert all(u.cache_read_input_tokens > 0 for u in usages[1:])
    records = stack.call(lambda: stack.app[LEDGER].prefixes.records())
    assert isinstance(records, dict) and len(records) == 1
    [record] = records.values()
    assert record.requests == 3 and record.hits == 2 and record.tools == 12


def test_ledger_totals_equal_the_sums_of_the_backends_usage(stack: RunningServer) -> None:
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="local", max_retries=0)
    prompt_sum = cached_sum = 0
    for turn in range(3):
        response = client.chat.completions.create(
            model="any",
            messages=[{"role": "system", "content": billing_line() + "\n" + SYSTEM},
                      {"role": "user", "content": f"question {turn}"}],
            max_tokens=4,
        )
        assert response.usage is not None
        prompt_sum += response.usage.prompt_tokens
        cached_sum += response.usage.prompt_tokens_details.cached_tokens  # type: ignore[union-attr]
    totals = stack.call(lambda: stack.app[LEDGER].totals())
    assert isinstance(totals, dict)
    assert totals["tokens.input"] == prompt_sum
    assert totals["tokens.reused"] == cached_sum > 0
    assert totals["tokens.created"] == prompt_sum - cached_sum


def test_repeat_through_stock_mlx_lm_server_is_a_hit_with_the_same_answer(
    stock: ServerProcess, tmp_path: Path, stack_model: Path
) -> None:
    settings = stack_settings(tmp_path, stock.url, store_truncated=True)
    body = {"model": str(stack_model), "max_tokens": 8,
            "messages": [{"role": "user", "content": "Say something about caches."}]}
    with serve_app(lambda: make_app(settings)) as proxy:
        first = http.post(proxy.url + "/v1/chat/completions", json=body)
        second = http.post(proxy.url + "/v1/chat/completions", json=body)
        streamed = http.post(proxy.url + "/v1/chat/completions", json={**body, "stream": True})
    assert first.status == 200, first.content
    assert (first.headers["X-Cache-Status"], second.headers["X-Cache-Status"]) == ("MISS", "HIT")
    assert http.answer_of(first.content) == http.answer_of(second.content)
    assert streamed.headers["X-Cache-Status"] == "HIT"
    text = first.json()["choices"][0]["message"]["content"]
    assert text and http.sse_text(streamed.content) == text
