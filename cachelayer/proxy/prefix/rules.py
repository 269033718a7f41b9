"""Layer 1's volatile rules: what a client varies in the prompt prefix, made stable.

Each rule is a pure rewrite of prompt text (a regex and its replacement) with a name,
so what it did is counted per rule and visible in `cachelayer stats`. The rules run on
every system message and on every tool's descriptions, before the prefix is hashed and
before the body is forwarded: the backend sees the same prefix bytes turn after turn.

Default rules (all seen in Claude Code 2.1.197's requests):

* `billing-line`: the `x-anthropic-billing-header: cc_version=...;` line at the top of the
  system prompt; its version suffix changes on every request. Removed.
* `context-size`: " (1M context)" after the model's display name ("Opus 4.8 (1M context)")
  in a new session, absent in a resumed one (`--continue`, `--resume`). Removed.
* `model-id-suffix`: the `[1m]` after a model id (`claude-opus-4-8[1m]`), new vs resumed
  the same way. Removed, keeping the id.

A local model is not the one named there anyway; what stays is the name without the
context size, the same in every session. `--volatile-pattern REGEX` adds rules that
remove what they match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash

from cachelayer.proxy.identity import canonical_json, digest
from cachelayer.proxy.memo import Memo

BILLING_LINE = "billing-line"
CONTEXT_SIZE = "context-size"
MODEL_ID_SUFFIX = "model-id-suffix"
CUSTOM = "custom"


@dataclass(frozen=True)
class Rule:
    """A named rewrite: every match of `pattern` becomes `replacement` (a re template).

    `literal` is a string every match contains: text without it is skipped with one
    substring search. `anchored` says the match starts at the literal, so the pattern
    is only tried there (a multiline regex walking every line of a 20 KB prompt costs
    more than the whole rest of the layer).
    """

    name: str
    pattern: re.Pattern[str]
    replacement: str = ""
    literal: str = ""
    anchored: bool = False


@dataclass(frozen=True)
class Rewrite:
    """One change a rule made: which rule and the text it replaced."""

    rule: str
    before: str


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(BILLING_LINE, re.compile(r"(?m)^x-anthropic-billing-header:[^\n]*(?:\n+|$)"),
         literal="x-anthropic-billing-header:", anchored=True),
    # "Opus 4.8 (1M context)": only right after a version number, so prose that happens to
    # say "(1M context)" elsewhere is left alone.
    Rule(CONTEXT_SIZE, re.compile(r"(?<=\d) \(\d+(?:\.\d+)?[KkMm] context\)"),
         literal=" context)"),
    # "claude-opus-4-8[1m]" -> "claude-opus-4-8"; a bare "[1m]" in prose is not an id.
    Rule(MODEL_ID_SUFFIX, re.compile(r"\b(claude-[a-z0-9][a-z0-9.-]*)\[\d+[km]\]"),
         replacement=r"\1", literal="claude-", anchored=True),
)


def compile_rules(patterns: Sequence[str]) -> tuple[Rule, ...]:
    """The default rules followed by the user's --volatile-pattern regexes (removed)."""
    return (*DEFAULT_RULES, *(Rule(f"{CUSTOM}:{p}", re.compile(p)) for p in patterns))


def apply_rules(text: str, rules: Sequence[Rule]) -> tuple[str, list[Rewrite]]:
    """Apply every rule in order; returns the stable text and what each rule changed."""
    done: list[Rewrite] = []
    for rule in rules:
        if rule.literal and rule.literal not in text:
            continue
        if rule.anchored:
            text = _apply_at_literal(rule, text, done)
        else:
            text = _apply_everywhere(rule, text, done)
    return text, done


def _apply_everywhere(rule: Rule, text: str, done: list[Rewrite]) -> str:
    def _sub(match: re.Match[str]) -> str:
        done.append(Rewrite(rule.name, match.group(0)))
        return match.expand(rule.replacement)

    return rule.pattern.sub(_sub, text)


def _apply_at_literal(rule: Rule, text: str, done: list[Rewrite]) -> str:
    pieces: list[str] = []
    last = 0
    pos = text.find(rule.literal)
    while pos != -1:
        match = rule.pattern.match(text, pos)
        if match is not None and match.end() > pos:
            pieces.append(text[last:pos])
            pieces.append(match.expand(rule.replacement))
            done.append(Rewrite(rule.name, match.group(0)))
            last = match.end()
            pos = text.find(rule.literal, last)
        else:
            pos = text.find(rule.literal, pos + 1)
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


def _rewrite_content(content: Any, rules: Sequence[Rule], done: list[Rewrite]) -> Any:
    if isinstance(content, str):
        text, changes = apply_rules(content, rules)
        done.extend(changes)
        return text
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                text, changes = apply_rules(part["text"], rules)
                if changes:
                    done.extend(changes)
                    part = {**part, "text": text}
            out.append(part)
        return out
    return content


def _rewrite_descriptions(value: Any, rules: Sequence[Rule], done: list[Rewrite]) -> Any:
    # Claude Code's Bash tool names the model in its commit trailer; any description in a
    # tool (the function's or a parameter's) may do the same.
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "description" and isinstance(item, str):
                item, changes = apply_rules(item, rules)
                done.extend(changes)
            elif isinstance(item, (dict, list)):
                item = _rewrite_descriptions(item, rules, done)
            out[key] = item
        return out
    if isinstance(value, list):
        return [_rewrite_descriptions(item, rules, done) for item in value]
    return value


def stabilize_body(
    body: Mapping[str, Any], rules: Sequence[Rule]
) -> tuple[dict[str, Any], list[Rewrite]]:
    """The body with every rule applied to system messages and tool descriptions.

    User and assistant turns are never rewritten: they are the conversation itself.
    Returns the body unchanged (a copy of the mapping) when no rule matched.
    """
    done: list[Rewrite] = []
    out = dict(body)
    messages = body.get("messages")
    if isinstance(messages, list):
        before = len(done)
        stable = []
        for message in messages:
            if isinstance(message, dict) and message.get("role") in ("system", "developer"):
                content = _rewrite_content(message.get("content"), rules, done)
                if content is not message.get("content"):
                    message = {**message, "content": content}
            stable.append(message)
        if len(done) > before:
            out["messages"] = stable
    tools = body.get("tools")
    if isinstance(tools, list):
        before = len(done)
        rewritten = _rewrite_descriptions(tools, rules, done)
        if len(done) > before:
            out["tools"] = rewritten
    return out, done


class RuleSet:
    """The rules, with their results remembered by content digest.

    Claude Code re-sends the same 15 KB system prompt and 60 KB of tools on every turn;
    scanning them for each rule's literal costs more than the rest of layer 1. The
    anchored rules (the billing line, which changes on every request) run every time;
    the others run once per distinct text, and once per distinct tool list.
    """

    def __init__(self, rules: Sequence[Rule], entries: int = 64) -> None:
        self.rules = tuple(rules)
        self._every_time = tuple(r for r in self.rules if r.name == BILLING_LINE)
        self._memoised = tuple(r for r in self.rules if r not in self._every_time)
        self._texts: Memo[tuple[str, tuple[Rewrite, ...]]] = Memo(entries)
        self._tools: Memo[tuple[list[Any] | None, tuple[Rewrite, ...], str]] = Memo(entries)

    def text(self, text: str) -> tuple[str, list[Rewrite]]:
        """apply_rules(text, self.rules), remembered past the per-request rules."""
        text, done = apply_rules(text, self._every_time)
        key = xxhash.xxh3_128_hexdigest(text.encode())
        known = self._texts.get(key)
        if known is None:
            stable, changes = apply_rules(text, self._memoised)
            known = self._texts.put(key, (stable, tuple(changes)))
        return known[0], [*done, *known[1]]

    def tools(self, tools: list[Any]) -> tuple[list[Any] | None, list[Rewrite], str]:
        """The tools with their descriptions rewritten (None: unchanged), what changed, and
        the digest of the result's canonical JSON (the prefix's tools hash)."""
        blob = canonical_json(tools)
        key = digest(blob)
        known = self._tools.get(key)
        if known is None:
            changes: list[Rewrite] = []
            rewritten = _rewrite_descriptions(tools, self.rules, changes)
            if changes:
                known = (rewritten, tuple(changes), digest(canonical_json(rewritten)))
            else:
                known = (None, (), key)
            self._tools.put(key, known)
        return known[0], list(known[1]), known[2]

    def stabilize(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], list[Rewrite], str]:
        """stabilize_body with the memos; also returns the tools hash it computed."""
        done: list[Rewrite] = []
        out = dict(body)
        messages = body.get("messages")
        if isinstance(messages, list):
            stable = []
            for message in messages:
                if isinstance(message, dict) and message.get("role") in ("system", "developer"):
                    content = message.get("content")
                    if isinstance(content, str):
                        text, changes = self.text(content)
                        if changes:
                            done.extend(changes)
                            message = {**message, "content": text}
                    elif isinstance(content, list):
                        before = len(done)
                        content = _rewrite_content(content, self.rules, done)
                        if len(done) > before:
                            message = {**message, "content": content}
                stable.append(message)
            if done:
                out["messages"] = stable
        tools = body.get("tools")
        rewritten, changes, tools_hash = self.tools(tools if isinstance(tools, list) else [])
        if rewritten is not None:
            out["tools"] = rewritten
            done.extend(changes)
        return out, done, tools_hash
