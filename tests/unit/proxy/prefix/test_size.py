"""The prefix's size: what is counted, and the byte-share estimate used until then."""

from __future__ import annotations

from cachelayer.proxy.prefix.size import byte_share_estimate, prefix_body

TOOLS = [{"type": "function", "function": {"name": "ls", "parameters": {}}}]


def test_only_tools_and_leading_system_are_counted() -> None:
    body = {"model": "m", "tools": TOOLS, "messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "u"},
        {"role": "system", "content": "later"}]}
    assert prefix_body(body) == {"model": "m", "tools": TOOLS,
                                 "messages": [{"role": "system", "content": "S"}]}


def test_no_tools_and_no_system_is_no_prefix() -> None:
    assert prefix_body({"model": "m", "messages": [{"role": "user", "content": "u"}]}) is None


def test_estimate_is_the_prefix_share_of_the_prompt() -> None:
    system = "s" * 900
    body = {"messages": [{"role": "system", "content": system},
                         {"role": "user", "content": "u" * 80}]}
    estimate = byte_share_estimate(body, prompt_tokens=1000)
    assert 850 < estimate < 950
    assert byte_share_estimate({"messages": []}, prompt_tokens=10) == 0
    no_prefix = {"messages": [{"role": "user", "content": "u"}]}
    assert byte_share_estimate(no_prefix, prompt_tokens=10) == 0
