"""Keys: cosmetic variants of a request map to one key; every semantic change to another."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cachelayer.proxy.identity import ANONYMOUS_TENANT, canonical_json, tenant_id
from cachelayer.proxy.store.keys import is_deterministic, response_key, semantic_body

BASE: dict[str, Any] = {
    "model": "qwen",
    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    "tools": [{"type": "function", "function": {"name": "ls", "parameters": {"type": "object"}}}],
    "tool_choice": "auto",
    "temperature": 0.2,
    "max_tokens": 100,
}


def key(body: dict[str, Any], tenant: str = ANONYMOUS_TENANT, upstream: str = "http://u") -> str:
    return response_key("chat", body, tenant=tenant, upstream=upstream)


def _shuffled(value: Any, rnd: Any) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: _shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rnd) for v in value]
    return value


@given(st.randoms(use_true_random=False))
def test_json_key_order_does_not_change_the_key(rnd: Any) -> None:
    assert key(_shuffled(BASE, rnd)) == key(BASE)


@given(
    stream=st.booleans(),
    include_usage=st.booleans(),
    user=st.text(max_size=20),
    metadata=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)
def test_client_only_fields_do_not_change_the_key(
    stream: bool, include_usage: bool, user: str, metadata: dict[str, str]
) -> None:
    variant = {**BASE, "stream": stream, "stream_options": {"include_usage": include_usage},
               "user": user, "metadata": metadata}
    assert key(variant) == key(BASE)


def test_whitespace_of_the_wire_json_does_not_change_the_key() -> None:
    compact = json.loads(json.dumps(BASE, separators=(",", ":")))
    pretty = json.loads(json.dumps(BASE, indent=4))
    assert key(compact) == key(pretty)


def test_integer_and_float_sampling_values_are_one_key() -> None:
    assert key({**BASE, "temperature": 0}) == key({**BASE, "temperature": 0.0})
    assert key({**BASE, "stop": "END"}) == key({**BASE, "stop": ["END"]})


SEMANTIC_CHANGES = [
    ("model", "llama"),
    ("temperature", 0.7),
    ("top_p", 0.5),
    ("top_k", 5),
    ("min_p", 0.1),
    ("max_tokens", 101),
    ("stop", ["\n"]),
    ("seed", 7),
    ("response_format", {"type": "json_object"}),
    ("logit_bias", {"42": 1}),
    ("presence_penalty", 0.5),
    ("frequency_penalty", 0.5),
    ("repetition_penalty", 1.1),
    ("n", 2),
    ("tool_choice", "none"),
    ("tools", []),
]


@given(st.sampled_from(SEMANTIC_CHANGES))
def test_each_semantic_field_changes_the_key(change: tuple[str, Any]) -> None:
    name, value = change
    assert key({**BASE, name: value}) != key(BASE)


@settings(max_examples=50)
@given(st.text(min_size=1, max_size=40))
def test_a_changed_message_changes_the_key(text: str) -> None:
    variant = copy.deepcopy(BASE)
    variant["messages"][-1]["content"] = "hi" + text
    assert key(variant) != key(BASE)


def test_tool_definition_changes_change_the_key() -> None:
    variant = copy.deepcopy(BASE)
    variant["tools"][0]["function"]["parameters"] = {"type": "object", "properties": {}}
    assert key(variant) != key(BASE)


def test_tenant_upstream_and_kind_are_part_of_the_key() -> None:
    assert key(BASE, tenant="t-a") != key(BASE, tenant="t-b")
    assert key(BASE, upstream="http://a") != key(BASE, upstream="http://b")
    assert key(BASE, upstream="http://a/") == key(BASE, upstream="http://a")
    assert response_key("text", BASE, tenant="x", upstream="u") != response_key(
        "chat", BASE, tenant="x", upstream="u")


def test_tenant_id_is_one_way_and_header_agnostic() -> None:
    assert tenant_id("Bearer sk-secret", None) == tenant_id(None, "sk-secret")
    assert tenant_id(None, None) == ANONYMOUS_TENANT
    assert "sk-secret" not in tenant_id(None, "sk-secret")
    assert tenant_id(None, "a") != tenant_id(None, "b")


def test_canonical_json_is_sorted_and_compact() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == b'{"a":[1,{"c":3,"d":2}],"b":1}'


def test_semantic_body_drops_nulls_and_client_fields() -> None:
    assert semantic_body({"model": "m", "user": "u", "seed": None}) == {"model": "m"}


def test_determinism_means_greedy_or_seeded() -> None:
    assert is_deterministic({"temperature": 0})
    assert is_deterministic({"temperature": 0.8, "seed": 1})
    assert not is_deterministic({"temperature": 0.8})
    assert not is_deterministic({})
