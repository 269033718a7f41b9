"""Prefill progress: what the backend's `: keepalive N/M` comments say, made visible.

mlx-lm's server writes one `: keepalive N/M` SSE comment after each prefill step of a
streamed request (N of the M prompt tokens it has to compute are done). The relay feeds
them here: each in-flight prefill is listed (for `/cache/stats` and `cachelayer stats`),
and a long one logs one INFO line every few seconds, such as
`prefill 12288/44680 tokens, 410 tok/s, eta 79 s` (the log line carries the request id).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)
_KEEPALIVE = re.compile(r"^keepalive (\d+)/(\d+)$")


def parse_keepalive(comment: str) -> tuple[int, int] | None:
    """(done, total) from a backend's `keepalive N/M` comment text; None for any other."""
    match = _KEEPALIVE.match(comment.strip())
    if match is None:
        return None
    done, total = int(match.group(1)), int(match.group(2))
    return (done, total) if 0 <= done <= total else None


@dataclass
class PrefillProgress:
    """One request's prefill as the proxy has heard of it so far."""

    request_id: str
    model: str
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    total: int = 0
    # The first report is the baseline of the speed: time before it was queueing,
    # restoring or the first step, and tokens before it were not timed.
    first_at: float | None = None
    first_done: int = 0
    last_at: float | None = None
    logged_at: float | None = None

    def update(self, done: int, total: int, now: float) -> None:
        """Record one progress report."""
        if self.first_at is None:
            self.first_at, self.first_done = now, done
        self.done, self.total, self.last_at = done, total, now

    def rate(self) -> float | None:
        """Prefill tokens per second measured so far (None before two reports)."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return None
        return (self.done - self.first_done) / (self.last_at - self.first_at)

    def eta_s(self) -> float | None:
        """Seconds left at the measured speed (None while unknown)."""
        rate = self.rate()
        if not rate:
            return None
        return (self.total - self.done) / rate

    def line(self) -> str:
        """The progress log line: `prefill 12288/44680 tokens, 410 tok/s, eta 79 s`."""
        rate, eta = self.rate(), self.eta_s()
        speed = f"{rate:.0f} tok/s" if rate is not None else "? tok/s"
        left = f"eta {eta:.0f} s" if eta is not None else "eta ?"
        return f"prefill {self.done}/{self.total} tokens, {speed}, {left}"

    def as_dict(self, now: float) -> dict[str, Any]:
        """The entry shown in `/cache/stats` under `prefills`."""
        rate, eta = self.rate(), self.eta_s()
        return {
            "requestId": self.request_id,
            "model": self.model,
            "doneTokens": self.done,
            "totalTokens": self.total,
            "tokensPerSecond": round(rate, 1) if rate is not None else None,
            "etaSeconds": round(eta, 1) if eta is not None else None,
            "elapsedSeconds": round(now - self.started, 1),
        }


class Prefills:
    """Every streamed request still waiting for its first token, with its progress."""

    def __init__(self, log_interval_s: float = 5.0) -> None:
        self.log_interval_s = log_interval_s
        self._active: dict[int, PrefillProgress] = {}

    def begin(self, request_id: str, model: str) -> PrefillProgress:
        """Track a request from now until `end`."""
        entry = PrefillProgress(request_id, model)
        self._active[id(entry)] = entry
        return entry

    def report(self, entry: PrefillProgress, done: int, total: int) -> None:
        """A progress report from the backend; logs at most once per log interval."""
        now = time.monotonic()
        entry.update(done, total, now)
        since = entry.logged_at if entry.logged_at is not None else entry.started
        if now - since >= self.log_interval_s and done < total:
            entry.logged_at = now
            log.info("%s", entry.line())

    def end(self, entry: PrefillProgress) -> None:
        """The request got its first token, or ended; it is no longer listed."""
        if self._active.pop(id(entry), None) is not None and entry.logged_at is not None:
            # A prefill long enough to be logged also logs how long it took in all.
            log.info("prefill of %d tokens done after %.1f s", entry.total,
                     time.monotonic() - entry.started)

    def snapshot(self) -> list[dict[str, Any]]:
        """The in-flight prefills, oldest first (safe from the export thread: the list
        is copied in one step under the GIL before the loop can change it)."""
        now = time.monotonic()
        entries = sorted(list(self._active.values()), key=lambda e: e.started)
        return [e.as_dict(now) for e in entries]

    def __len__(self) -> int:
        return len(self._active)
