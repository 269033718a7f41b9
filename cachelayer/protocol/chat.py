"""The neutral request, result and stream-event model every layer works on.

The upstream always speaks OpenAI's chat or text completions API, so a neutral request
carries an OpenAI-shaped `body`; the client's API (OpenAI or Anthropic) exists only in
how the answer is rendered. One stored ChatResult replays as either API, streamed or not.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Kind = Literal["chat", "text"]
ClientApi = Literal["openai", "anthropic", "responses"]


@dataclass(frozen=True)
class ChatRequest:
    """A validated request, ready for the layers: what to send and how to answer."""

    kind: Kind
    body: dict[str, Any]
    stream: bool
    client_api: ClientApi = "openai"
    include_usage: bool = False
    client_model: str = ""
    # What the client's API needs besides the neutral body to answer (Responses: the
    # fields a response object echoes, previous_response_id, store); never sent upstream
    # and never part of a key.
    extra: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ToolCall:
    """One complete function call the model made."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Choice:
    """One complete answer choice."""

    index: int
    text: str
    finish_reason: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str = ""


@dataclass(frozen=True)
class Usage:
    """Token counts as the upstream measured them; cached_tokens None means not reported."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None


@dataclass(frozen=True)
class ChatResult:
    """A complete answer in the one canonical form layer 2 stores."""

    kind: Kind
    id: str
    created: int
    model: str
    choices: tuple[Choice, ...]
    usage: Usage | None = None
    system_fingerprint: str | None = None

    def to_bytes(self) -> bytes:
        """Serialise for the store."""
        return orjson.dumps(self, option=orjson.OPT_SERIALIZE_DATACLASS)

    @classmethod
    def from_bytes(cls, data: bytes) -> ChatResult:
        """Rebuild a stored result; raises ValueError on anything malformed."""
        try:
            raw = orjson.loads(data)
            return cls(
                kind=raw["kind"],
                id=raw["id"],
                created=raw["created"],
                model=raw["model"],
                choices=tuple(
                    Choice(
                        index=c["index"],
                        text=c["text"],
                        finish_reason=c["finish_reason"],
                        tool_calls=tuple(ToolCall(**t) for t in c["tool_calls"]),
                        reasoning=c.get("reasoning", ""),
                    )
                    for c in raw["choices"]
                ),
                usage=Usage(**raw["usage"]) if raw.get("usage") else None,
                system_fingerprint=raw.get("system_fingerprint"),
            )
        except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"malformed stored result: {exc}") from exc

    @property
    def is_empty(self) -> bool:
        """No choices, or choices with neither text nor tool calls."""
        return not self.choices or not any(c.text or c.tool_calls for c in self.choices)


# -- stream events: what one upstream chunk means, independent of any wire format ------


@dataclass(frozen=True)
class Start:
    """The stream's identity: sent once, before any content."""

    id: str
    model: str
    created: int
    system_fingerprint: str | None = None


@dataclass(frozen=True)
class TextDelta:
    """A piece of a choice's text (or, with reasoning=True, its reasoning)."""

    index: int
    text: str
    reasoning: bool = False


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of one tool call; id and name come with its first piece."""

    index: int
    call_index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class Finish:
    """A choice ended, and why."""

    index: int
    reason: str | None


@dataclass(frozen=True)
class UsageReport:
    """Token counts for the whole answer."""

    usage: Usage


StreamEvent = Start | TextDelta | ToolCallDelta | Finish | UsageReport


@dataclass
class _ChoiceParts:
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: dict[int, list[str | None]] = field(default_factory=dict)
    call_args: dict[int, list[str]] = field(default_factory=dict)
    finish_reason: str | None = None


class ResultBuilder:
    """Folds stream events into the ChatResult they add up to."""

    def __init__(self, kind: Kind, max_chars: int | None = None) -> None:
        self.kind: Kind = kind
        self.max_chars = max_chars
        self.oversized = False
        self._chars = 0
        self._start = Start(id="", model="", created=0)
        self._choices: dict[int, _ChoiceParts] = {}
        self._usage: Usage | None = None

    def _over_limit(self, piece: str) -> bool:
        # Past the cap the answer is relayed but no longer kept: it will not be stored,
        # and memory stays bounded however long the stream runs.
        self._chars += len(piece)
        if self.max_chars is not None and self._chars > self.max_chars:
            self.oversized = True
        return self.oversized

    def add(self, event: StreamEvent) -> None:
        """Take one event into account."""
        if isinstance(event, Start):
            if not self._start.id:
                self._start = event
        elif isinstance(event, TextDelta):
            if self._over_limit(event.text):
                return
            parts = self._choice(event.index)
            (parts.reasoning if event.reasoning else parts.text).append(event.text)
        elif isinstance(event, ToolCallDelta):
            if self._over_limit(event.arguments):
                return
            parts = self._choice(event.index)
            ident = parts.calls.setdefault(event.call_index, [None, None])
            if event.id:
                ident[0] = event.id
            if event.name:
                ident[1] = event.name
            parts.call_args.setdefault(event.call_index, []).append(event.arguments)
        elif isinstance(event, Finish):
            self._choice(event.index).finish_reason = event.reason
        elif isinstance(event, UsageReport):
            self._usage = event.usage

    def _choice(self, index: int) -> _ChoiceParts:
        return self._choices.setdefault(index, _ChoiceParts())

    def result(self) -> ChatResult:
        """The answer so far, in canonical form."""
        choices = []
        for index in sorted(self._choices):
            parts = self._choices[index]
            calls = tuple(
                ToolCall(
                    # Ids must differ across turns when the upstream sends none.
                    id=parts.calls[i][0] or f"call_{self._start.id}_{index}_{i}",
                    name=parts.calls[i][1] or "",
                    arguments="".join(parts.call_args.get(i, [])),
                )
                for i in sorted(parts.calls)
            )
            choices.append(
                Choice(
                    index=index,
                    text="".join(parts.text),
                    finish_reason=parts.finish_reason,
                    tool_calls=calls,
                    reasoning="".join(parts.reasoning),
                )
            )
        start = self._start
        return ChatResult(
            kind=self.kind,
            id=start.id,
            created=start.created,
            model=start.model,
            choices=tuple(choices),
            usage=self._usage,
            system_fingerprint=start.system_fingerprint,
        )


def split_text(text: str, size: int = 24) -> Iterator[str]:
    """Cut text into stream-sized pieces at whitespace where possible, so replays look live."""
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            space = text.rfind(" ", start + 1, end)
            if space > start:
                end = space
        yield text[start:end]
        start = end


def result_events(result: ChatResult) -> Iterator[StreamEvent]:
    """Replay a stored result as the stream events that would have produced it."""
    yield Start(result.id, result.model, result.created, result.system_fingerprint)
    for choice in result.choices:
        for piece in split_text(choice.reasoning):
            yield TextDelta(choice.index, piece, reasoning=True)
        for piece in split_text(choice.text):
            yield TextDelta(choice.index, piece)
        for i, call in enumerate(choice.tool_calls):
            yield ToolCallDelta(choice.index, i, call.id, call.name, call.arguments)
        yield Finish(choice.index, choice.finish_reason)
    if result.usage is not None:
        yield UsageReport(result.usage)
