"""Deterministic Claude-Code-shaped request bodies, built in code (nothing recorded on disk).

Claude Code sends a ~50 KB body: a billing-header system block, a long system prompt,
12 tool definitions with JSON schemas, and a few messages. The text here is filler drawn
from a seeded generator, so every run (and every machine) builds byte-identical bodies.
`scale` shrinks or grows the prompt text so the same shapes fit a tiny demo model.
"""

from __future__ import annotations

import random
from typing import Any

TOOL_NAMES = ("Task", "Bash", "Glob", "Grep", "Read", "Edit", "MultiEdit", "Write",
              "NotebookEdit", "WebFetch", "TodoWrite", "WebSearch")
_VOCAB = ("the agent file repository function test cache prompt token request server "
          "model answer user tool command directory path read write edit search result "
          "error output input stream context system message assistant code review change "
          "commit branch python rust javascript import return class async await yield "
          "always never should must when before after each every only first last")
_WORDS = tuple(_VOCAB.split())
BILLING_TEMPLATE = ("x-anthropic-billing-header: cc_version=2.1.330; cc_entrypoint=cli; "
                    "cch={cch};")
ASSISTANT_TEXT = "I will look at the files first, then make the smallest change that works."


def filler(rng: random.Random, n_words: int) -> str:
    """n_words of pseudo-prose, in sentences and paragraphs, from rng."""
    out: list[str] = []
    sentence = 0
    for i in range(n_words):
        word = rng.choice(_WORDS)
        out.append(word.capitalize() if sentence == 0 else word)
        sentence += 1
        if sentence > 8 and rng.random() < 0.2:
            out[-1] += "."
            sentence = 0
            if rng.random() < 0.15 and i < n_words - 1:
                out[-1] += "\n\n"
    text = " ".join(out).replace("\n\n ", "\n\n")
    return text if text.endswith(".") else text + "."


def _schema(rng: random.Random, scale: float) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for j in range(rng.randint(3, 6)):
        props[f"{rng.choice(_WORDS)}_{j}"] = {
            "type": rng.choice(["string", "integer", "boolean"]),
            "description": filler(rng, max(4, int(40 * scale))),
        }
    return {"type": "object", "properties": props, "required": sorted(props)[:2],
            "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"}


def anthropic_tools(scale: float = 1.0, seed: int = 7) -> list[dict[str, Any]]:
    """The 12 tools in Anthropic's shape (name, description, input_schema)."""
    rng = random.Random(seed)
    return [{"name": name, "description": filler(rng, max(10, int(220 * scale))),
             "input_schema": _schema(rng, scale)} for name in TOOL_NAMES]


def openai_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anthropic tool definitions as OpenAI function tools (the same names and schemas)."""
    return [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                              "parameters": t["input_schema"]}} for t in tools]


def system_prompt(scale: float = 1.0, seed: int = 11) -> str:
    """The long, stable system prompt."""
    return "You are Claude Code, a coding agent.\n\n" + filler(random.Random(seed),
                                                               max(20, int(2200 * scale)))


def billing_header(rng: random.Random) -> str:
    """The volatile first system block, with a fresh cch= value."""
    return BILLING_TEMPLATE.format(cch=f"{rng.getrandbits(20):05x}")


def user_turn(turn: int, scale: float, seed: int = 13) -> str:
    """The text of user turn `turn` (deterministic per turn number)."""
    rng = random.Random(seed * 1000 + turn)
    return (f"<system-reminder>Turn {turn}. {filler(rng, max(5, int(60 * scale)))}"
            f"</system-reminder>\n{filler(rng, max(5, int(120 * scale)))}")


def openai_request(scale: float = 1.0, *, model: str = "bench-model",
                   stream: bool = False, max_tokens: int = 64) -> dict[str, Any]:
    """A ~50 KB (at scale 1) OpenAI chat request: system + 12 tools + a few messages."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt(scale)}]
    for turn in range(1, 4):
        messages.append({"role": "user", "content": user_turn(turn, scale)})
        if turn < 3:
            messages.append({"role": "assistant", "content": ASSISTANT_TEXT})
    body: dict[str, Any] = {"model": model, "messages": messages,
                            "tools": openai_tools(anthropic_tools(scale)),
                            "max_tokens": max_tokens, "temperature": 0}
    if stream:
        body["stream"] = True
    return body


def session_turn_anthropic(turn: int, scale: float, rng: random.Random, *,
                           model: str, max_tokens: int) -> dict[str, Any]:
    """Turn `turn` (1-based) of the recorded session as a Claude Code Messages body."""
    messages: list[dict[str, Any]] = []
    for t in range(1, turn + 1):
        content: list[dict[str, Any]] = [{"type": "text", "text": user_turn(t, scale)}]
        if t == turn:
            content[-1]["cache_control"] = {"type": "ephemeral"}
        messages.append({"role": "user", "content": content})
        if t < turn:
            messages.append({"role": "assistant",
                             "content": [{"type": "text", "text": ASSISTANT_TEXT}]})
    return {
        "model": model, "max_tokens": max_tokens, "stream": True, "temperature": 0,
        "system": [{"type": "text", "text": billing_header(rng)},
                   {"type": "text", "text": system_prompt(scale),
                    "cache_control": {"type": "ephemeral"}}],
        "tools": anthropic_tools(scale), "messages": messages,
        "metadata": {"user_id": "bench-user"},
    }


def anthropic_as_openai(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The equivalent OpenAI chat body of a text-only Messages body (what a client-side
    translator without a cache layer would send a stock server: billing header included)."""
    system = "\n\n".join(b["text"] for b in body["system"])
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for m in body["messages"]:
        messages.append({"role": m["role"],
                         "content": "".join(b["text"] for b in m["content"])})
    return {"model": model, "messages": messages, "tools": openai_tools(body["tools"]),
            "max_tokens": body["max_tokens"], "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
