"""System placement: system turns before the first answer move into the leading system
prompt, in order, and nothing the model is told is lost."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cachelayer.proxy.prefix.placement import hoist_system
from cachelayer.proxy.prefix.stabilize import prefix_ids


def sys(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def test_claude_code_default_shape_moves_the_agent_list_up() -> None:
    messages = [sys("main prompt"), user("ctx + Say hello."), sys("agent types; skills")]
    out, moved = hoist_system(messages)
    assert moved == 1
    assert out == [sys("main prompt\n\nagent types; skills"), user("ctx + Say hello.")]


def test_later_turns_keep_the_same_leading_prompt() -> None:
    first, _ = hoist_system([sys("S"), user("u1"), sys("A")])
    later, moved = hoist_system([sys("S"), user("u1"), sys("A"), assistant("a1"), user("u2"),
                                 sys("mid-conversation note")])
    assert moved == 1
    assert later[0] == first[0]
    # a system turn after the first answer stays where it was
    assert later[-1] == sys("mid-conversation note")


def test_new_sessions_share_the_whole_system_prompt() -> None:
    a, _ = hoist_system([sys("S"), user("first prompt"), sys("A")])
    b, _ = hoist_system([sys("S"), user("another prompt"), sys("A")])
    body_a, body_b = {"messages": a}, {"messages": b}
    assert prefix_ids(body_a) == prefix_ids(body_b)
    assert a[0] == b[0] and a[1] != b[1]


def test_nothing_to_move_leaves_the_list_alone() -> None:
    messages = [sys("S"), user("u"), assistant("a"), sys("note"), user("u2")]
    assert hoist_system(messages) == (messages, 0)


def test_a_conversation_without_a_leading_system_prompt_gets_one_first() -> None:
    out, moved = hoist_system([user("u"), sys("A"), sys("B")])
    assert moved == 2 and out == [sys("A\n\nB"), user("u")]


def test_text_parts_are_kept_as_text() -> None:
    parts = [{"type": "text", "text": "part one "}, {"type": "text", "text": "part two"}]
    out, _ = hoist_system([sys("S"), user("u"), {"role": "system", "content": parts}])
    assert out[0]["content"] == "S\n\npart one part two"


roles = st.sampled_from(["system", "user", "assistant"])


@given(st.lists(st.tuples(roles, st.text(min_size=1, max_size=8)), min_size=1, max_size=12))
def test_every_instruction_still_reaches_the_model_in_its_order(
    turns: list[tuple[str, str]]
) -> None:
    messages = [{"role": r, "content": f"<{i}:{t}>"} for i, (r, t) in enumerate(turns)]
    out, moved = hoist_system(messages)
    systems = [m["content"] for m in messages if m["role"] == "system"]
    rendered = "".join(m["content"] for m in out if m["role"] == "system")
    # every system text arrives, and the system texts keep their relative order
    pos = [rendered.find(s) for s in systems if s in out[0]["content"]]
    assert all(s in rendered for s in systems)
    assert pos == sorted(pos)
    # the conversation itself (user and assistant turns) is untouched and in order
    assert [m for m in out if m["role"] != "system"] == [
        m for m in messages if m["role"] != "system"]
    # at most one system message before the first user or assistant turn
    lead = 0
    while lead < len(out) and out[lead]["role"] == "system":
        lead += 1
    assert lead <= 1 or moved == 0
