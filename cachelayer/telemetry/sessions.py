"""Per-conversation savings: each Claude Code or Codex conversation's turns and reuse.

A conversation is named by what its client sends with every turn: Claude Code's
`X-Claude-Code-Session-Id`, else the conversation key (proxy/conversation.py: Codex's
`prompt_cache_key`, an `x-session-id` header); requests with neither are grouped by
client tenant. Records are merged in memory and written with the
ledger's counters, so they survive restarts like every other figure.

"Prefill seconds saved" is an estimate, and labelled so: the tokens a turn did not
compute times this machine's measured prefill time per token (time to first byte over
tokens computed, on misses that computed enough tokens to time it).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any

import diskcache

log = logging.getLogger(__name__)
SESSION_KEY = "sess:"
RATE_KEY = "meta:prefill_s_per_token"
MAX_SESSIONS = 2000
# Misses computing fewer tokens are timed mostly by overheads, not by prefill.
MIN_TIMED_TOKENS = 256
# Weight of the newest sample in the running prefill rate.
RATE_WEIGHT = 0.2
CLAUDE_CODE_HEADER = "X-Claude-Code-Session-Id"


def name_conversation(claude_session: str | None, conversation_key: str | None,
                      from_body: bool, tenant: str) -> tuple[str, str]:
    """(conversation id, client kind): Claude Code's session header; else the client's
    conversation key (Codex's `prompt_cache_key` in the body, or an `x-session-id`
    header); else one record per credential."""
    if claude_session:
        return claude_session[:64], "claude-code"
    if conversation_key:
        return conversation_key[:64], "codex" if from_body else "session"
    return "tenant:" + tenant[:16], "other"


@dataclass
class SessionRecord:
    """What one conversation asked for and what reuse saved it."""

    client: str = "other"
    first_seen: float = 0.0
    last_seen: float = 0.0
    turns: int = 0
    store_hits: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0  # read from the KV cache, or the whole prompt of a store hit
    computed_tokens: int = 0
    seconds_saved: float = 0.0

    def merge(self, other: SessionRecord) -> None:
        """Add another record's counts into this one."""
        self.client = other.client if other.client != "other" else self.client
        self.first_seen = min(x for x in (self.first_seen, other.first_seen) if x) if (
            self.first_seen or other.first_seen) else 0.0
        self.last_seen = max(self.last_seen, other.last_seen)
        self.turns += other.turns
        self.store_hits += other.store_hits
        self.prompt_tokens += other.prompt_tokens
        self.reused_tokens += other.reused_tokens
        self.computed_tokens += other.computed_tokens
        self.seconds_saved += other.seconds_saved

    @classmethod
    def from_dict(cls, raw: Any) -> SessionRecord:
        """Rebuild from what was stored, ignoring unknown fields."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names}) if isinstance(
            raw, dict) else cls()


class SessionLedger:
    """Conversation records, pending in memory until the ledger's next flush."""

    def __init__(self, cache: diskcache.Cache, io_lock: threading.RLock | None = None) -> None:
        self._cache = cache
        # Held from taking pending records until they are stored, and by records().
        self._io = io_lock or threading.RLock()
        self._pending: dict[str, SessionRecord] = {}
        self._lock = threading.Lock()
        stored = cache.get(RATE_KEY)
        self.seconds_per_token: float = stored if isinstance(stored, float) else 0.0

    def observe_prefill(self, computed_tokens: int, seconds: float) -> None:
        """Fold one timed prefill into the running seconds-per-token figure."""
        if computed_tokens < MIN_TIMED_TOKENS or seconds <= 0:
            return
        sample = seconds / computed_tokens
        with self._lock:
            old = self.seconds_per_token
            self.seconds_per_token = sample if not old else (
                old + RATE_WEIGHT * (sample - old))

    def record(self, conversation: str, client: str, *, now: float, prompt_tokens: int,
               reused_tokens: int, store_hit: bool, turns: int = 1) -> None:
        """Account an answered turn of a conversation (`turns` identical ones at once)."""
        with self._lock:
            delta = SessionRecord(
                client=client, first_seen=now, last_seen=now, turns=turns,
                store_hits=turns * int(store_hit), prompt_tokens=turns * prompt_tokens,
                reused_tokens=turns * reused_tokens,
                computed_tokens=turns * max(0, prompt_tokens - reused_tokens),
                seconds_saved=turns * reused_tokens * self.seconds_per_token)
            self._pending.setdefault(conversation, SessionRecord()).merge(delta)

    def flush(self) -> None:
        """Merge pending records into the stored ones (blocking); keep the newest few."""
        with self._io:
            with self._lock:
                pending, self._pending = self._pending, {}
                rate = self.seconds_per_token
            if not pending:
                return
            try:
                with self._cache.transact():
                    for conversation, delta in pending.items():
                        key = SESSION_KEY + conversation
                        record = SessionRecord.from_dict(self._cache.get(key))
                        record.merge(delta)
                        self._cache.set(key, asdict(record))
                    if rate:
                        self._cache.set(RATE_KEY, rate)
                self._cull()
            except (sqlite3.Error, OSError) as exc:
                log.error("session ledger flush failed, keeping records in memory: %s", exc)
                with self._lock:
                    for conversation, delta in pending.items():
                        newer = self._pending.pop(conversation, None)
                        if newer is not None:
                            delta.merge(newer)
                        self._pending[conversation] = delta

    def _cull(self) -> None:
        keys = [k for k in self._cache.iterkeys()
                if isinstance(k, str) and k.startswith(SESSION_KEY)]
        if len(keys) <= MAX_SESSIONS:
            return
        seen = sorted(keys, key=lambda k: SessionRecord.from_dict(self._cache.get(k)).last_seen)
        for key in seen[:len(keys) - MAX_SESSIONS]:
            self._cache.delete(key)

    def records(self) -> dict[str, SessionRecord]:
        """Every conversation: stored records plus what is pending."""
        with self._io:
            out: dict[str, SessionRecord] = {}
            try:
                for key in self._cache.iterkeys():
                    if isinstance(key, str) and key.startswith(SESSION_KEY):
                        out[key[len(SESSION_KEY):]] = SessionRecord.from_dict(self._cache.get(key))
            except (sqlite3.Error, OSError) as exc:
                log.warning("session ledger read failed: %s", exc)
            with self._lock:
                for conversation, delta in self._pending.items():
                    out.setdefault(conversation, SessionRecord()).merge(delta)
            return out

    def clear(self) -> None:
        """Forget pending records (stored ones go with the cache)."""
        with self._lock:
            self._pending.clear()
            self.seconds_per_token = 0.0


def session_rows(records: dict[str, SessionRecord], limit: int = 50) -> list[dict[str, Any]]:
    """The most recent conversations, as the metrics document lists them."""
    recent = sorted(records.items(), key=lambda kv: -kv[1].last_seen)[:limit]
    return [
        {
            "id": conversation,
            "client": r.client,
            "turns": r.turns,
            "storeHits": r.store_hits,
            "promptTokens": r.prompt_tokens,
            "reusedTokens": r.reused_tokens,
            "computedTokens": r.computed_tokens,
            "reusedPercent": round(100.0 * r.reused_tokens / r.prompt_tokens, 1)
            if r.prompt_tokens else 0.0,
            "prefillSecondsSaved": round(r.seconds_saved, 1),
            "firstSeen": r.first_seen,
            "lastSeen": r.last_seen,
        }
        for conversation, r in recent
    ]
