"""Every sampling field that reaches the model, fuzzed over the three APIs against a real
`cachelayer backend`: each answer is a 200 or a 400 in the client's API shape naming the
field, never a crash, and the backend is alive and answering at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachelayer.proxy.app import make_app
from tests.integration.stack.conftest import stack_settings
from tests.support import http
from tests.support.processes import ServerProcess
from tests.support.servers import serve_app

pytestmark = pytest.mark.slow
VOCAB = 2048  # the demo model's
USER = [{"role": "user", "content": "hi"}]

WILD = st.one_of(
    st.none(), st.booleans(), st.text(max_size=4), st.lists(st.integers(), max_size=2),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
)
INTS = st.one_of(st.integers(-3, 40), st.sampled_from([2**31, 2**63, 10**12, -(2**63)]), WILD)
UNIT = st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0, 1, 2, 1e300]), WILD)
TOKEN_IDS = st.one_of(st.integers(0, VOCAB + 2), st.sampled_from([2**31, 2**32 + 5, -1]))
LOGIT_BIAS = st.one_of(
    st.dictionaries(TOKEN_IDS.map(str), st.one_of(st.floats(-150, 150), WILD), max_size=3),
    WILD,
)
OPENAI_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "temperature": st.one_of(st.floats(-1, 3), WILD),
    "top_p": UNIT, "min_p": UNIT, "top_k": st.one_of(INTS, st.sampled_from([VOCAB, VOCAB + 1])),
    "presence_penalty": st.one_of(st.floats(-3, 3), WILD),
    "frequency_penalty": st.one_of(st.floats(-3, 3), WILD),
    "repetition_penalty": st.one_of(st.floats(0, 3), WILD),
    "repetition_context_size": INTS, "presence_context_size": INTS,
    "frequency_context_size": INTS, "xtc_probability": UNIT, "xtc_threshold": UNIT,
    "seed": INTS, "logit_bias": LOGIT_BIAS, "n": INTS, "logprobs": WILD,
    "top_logprobs": INTS, "stop": st.one_of(st.lists(st.text(max_size=3), max_size=3), WILD),
    "max_tokens": st.one_of(st.sampled_from([0, -1, 2**31, "3", 2.5]), st.just(3)),
}
ANTHROPIC_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "temperature": st.one_of(st.floats(-1, 3), WILD), "top_p": UNIT,
    "top_k": st.one_of(INTS, st.sampled_from([VOCAB, VOCAB + 1])),
    "stop_sequences": st.one_of(st.lists(st.text(max_size=3), max_size=3), WILD),
    "max_tokens": st.one_of(st.sampled_from([0, -1, "3", 2.5]), st.just(3)),
}

RESPONSES_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "temperature": st.one_of(st.floats(-1, 3), WILD), "top_p": UNIT,
    "max_output_tokens": st.one_of(st.sampled_from([0, -1, 2**31, "3", 2.5]), st.just(3)),
}


def _subset(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields).filter(bool)


def _check(answer: http.Answer, shape: str) -> None:
    assert answer.status in (200, 400), (answer.status, answer.content[:300])
    if answer.status == 400:
        error = orjson.loads(answer.content)
        if shape == "openai":
            assert error["error"]["param"], error
            assert error["error"]["message"].startswith(error["error"]["param"]) or \
                error["error"]["param"] in error["error"]["message"], error
        elif shape == "anthropic":
            assert error["type"] == "error" and error["error"]["message"], error


def test_fuzzed_sampling_fields_never_take_the_backend_down(
    backend: ServerProcess, tmp_path: Path
) -> None:
    config = stack_settings(tmp_path, backend.url)
    with serve_app(lambda: make_app(config)) as proxy:

        @settings(max_examples=100, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture,
                                         HealthCheck.filter_too_much, HealthCheck.too_slow])
        @given(openai=_subset(OPENAI_FIELDS), anthropic=_subset(ANTHROPIC_FIELDS),
               responses=_subset(RESPONSES_FIELDS), stream=st.booleans())
        def run(openai: dict[str, Any], anthropic: dict[str, Any], responses: dict[str, Any],
                stream: bool) -> None:
            body = {"model": "m", "messages": USER, "max_tokens": 3, **openai}
            if stream:
                body["stream"] = True
            _check(http.post(proxy.url + "/v1/chat/completions", body), "openai")
            # Straight to the backend too: it is run on its own, and must hold by itself.
            direct = http.post(backend.url + "/v1/chat/completions", body)
            assert direct.status in (200, 400), (direct.status, direct.content[:300])
            message = {"model": "m", "max_tokens": 3, "messages": USER, **anthropic}
            _check(http.post(proxy.url + "/v1/messages", message), "anthropic")
            asked = {"model": "m", "input": "hi", "max_output_tokens": 3, "store": False,
                     **responses}
            _check(http.post(proxy.url + "/v1/responses", asked), "openai")
            assert backend.proc.poll() is None, backend.log()[-3000:]

        run()
    assert backend.proc.poll() is None
    after = http.post(backend.url + "/v1/chat/completions",
                           {"messages": USER, "max_tokens": 2})
    assert after.status == 200, after.content


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("logit_bias", {str(VOCAB): 5}),
        ("logit_bias", {"2147483648": 5}),
        ("repetition_context_size", 10**12),
        ("seed", -1),
        ("top_k", VOCAB + 1),
        ("n", 3),
    ],
)
def test_each_reported_crash_is_a_400_naming_the_field_at_both_edges(
    stack: Any, backend: ServerProcess, field: str, value: Any
) -> None:
    body = {"model": "m", "messages": USER, "max_tokens": 3, "repetition_penalty": 1.1,
            field: value}
    answer = http.post(stack.url + "/v1/chat/completions", body)
    assert answer.status == 400, answer.content
    assert orjson.loads(answer.content)["error"]["param"] == field
    direct = http.post(backend.url + "/v1/chat/completions", body)
    assert direct.status == 400 and field in orjson.loads(direct.content)["error"]
    assert backend.proc.poll() is None
    assert http.post(backend.url + "/v1/chat/completions",
                          {"messages": USER, "max_tokens": 2}).status == 200


def test_top_k_past_the_vocabulary_is_a_400_on_the_anthropic_route(stack: Any) -> None:
    answer = http.post(stack.url + "/v1/messages", {
        "model": "m", "max_tokens": 3, "messages": USER, "top_k": VOCAB + 1})
    assert answer.status == 400, answer.content
    assert "top_k" in orjson.loads(answer.content)["error"]["message"]


def test_an_image_for_a_text_only_model_is_a_400_saying_so(stack: Any) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    answer = http.post(stack.url + "/v1/chat/completions", {
        "model": "m", "messages": [{"role": "user", "content": [image]}]})
    assert answer.status == 400
    assert "text only" in orjson.loads(answer.content)["error"]["message"]
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "AAAA"}}
    answer = http.post(stack.url + "/v1/messages", {
        "model": "m", "max_tokens": 3, "messages": [{"role": "user", "content": [block]}]})
    assert answer.status == 400
    assert "text only" in orjson.loads(answer.content)["error"]["message"]
