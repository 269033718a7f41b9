"""The rules every field reaching the model follows, at the proxy's edge: a 400 naming
the field (OpenAI's `param`), for the cases that crashed or fooled the backend."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from cachelayer.errors import InvalidRequest
from cachelayer.protocol.openai import parse_request
from cachelayer.protocol.sampling import SamplingError, check_sampling, check_token_ids

USER = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "read", "parameters": {}}}]


def _parse(**fields: Any) -> None:
    parse_request("chat", orjson.dumps({"model": "m", "messages": USER, **fields}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", -1),
        ("repetition_context_size", 10**12),
        ("presence_context_size", -1),
        ("n", 1_000_000),
        ("n", 2),
        ("temperature", 2.5),
        ("top_p", 1.5),
        ("min_p", -0.1),
        ("top_k", -1),
        ("logit_bias", {"x": 1}),
        ("logit_bias", {"5": 500}),
        ("logit_bias", {"-3": 1}),
        ("logit_bias", [1, 2]),
        ("logprobs", "yes"),
        ("top_logprobs", 50),
        ("stop", [""]),
        ("stop", ["a"] * 17),
        ("max_tokens", 2**31),
        ("xtc_probability", 2),
        ("chat_template_kwargs", "x"),
        ("repetition_penalty", "high"),
    ],
)
def test_a_field_out_of_its_rule_is_a_400_naming_it(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _parse(**{field: value})
    assert caught.value.param == field
    assert caught.value.message.startswith(field)


@pytest.mark.parametrize(
    "fields",
    [
        {"seed": 0}, {"seed": 2**64 - 1}, {"n": 1}, {"temperature": 0}, {"temperature": 2},
        {"logit_bias": {"2047": -100}}, {"stop": "END"}, {"top_logprobs": 5, "logprobs": True},
        {"repetition_context_size": 1 << 24}, {"xtc_probability": 0}, {"top_k": None},
    ],
)
def test_sampling_values_inside_their_ranges_are_accepted(fields: dict[str, Any]) -> None:
    _parse(**fields)


def test_token_ids_are_bounded_by_the_vocabulary_when_it_is_known() -> None:
    check_sampling({"logit_bias": {"2048": 1}})  # unknown vocabulary: only the shape
    with pytest.raises(SamplingError, match="outside the model's vocabulary"):
        check_token_ids({"logit_bias": {"2048": 1}}, 2048)
    with pytest.raises(SamplingError, match="vocabulary size"):
        check_token_ids({"top_k": 2049}, 2048)
    check_token_ids({"logit_bias": {"2047": 1}, "top_k": 2048}, 2048)


@pytest.mark.parametrize("part", [{"type": "input_audio", "input_audio": {}},
                                  {"type": "file", "file": {}}, {"type": "weird"}])
def test_an_unknown_content_part_is_a_400_saying_so(part: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest, match="is not supported") as caught:
        _parse(messages=[{"role": "user", "content": [part]}])
    assert caught.value.param == "messages[0].content[0].type"


@pytest.mark.parametrize(
    ("choice", "param"),
    [
        ({"type": "function", "function": {"name": "write"}}, "tool_choice.function.name"),
        ({"type": "function", "function": {}}, "tool_choice.function.name"),
        ({"type": "tool"}, "tool_choice.type"),
        ("sometimes", "tool_choice"),
    ],
)
def test_tool_choice_must_name_one_of_the_tools(choice: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _parse(tools=TOOLS, tool_choice=choice)
    assert caught.value.param == param


def test_a_tool_choice_naming_a_tool_passes() -> None:
    _parse(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "read"}})
    _parse(tools=TOOLS, tool_choice="required")
