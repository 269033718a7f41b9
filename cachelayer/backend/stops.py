"""Requests whose client has gone stop within a step or two, not after half a second.

mlx_lm.server's generation thread runs batch steps for up to half a second (`TimeBudget`)
between looks at its request queue, and removes a request whose handler has stopped it
(`ctx.stop()`: the client hung up, a write failed, the answer was sent) only when that
loop ends. A 16-token step of a small model takes a millisecond or two, so a prompt whose
client had gone kept prefilling for hundreds of steps, often to its end: the compute was
wasted, the machine held up, and the abandoned prompt's whole cache kept as if answered.

`StopBudget` is mlx-lm's budget that also watches the requests' contexts: once one is
stopped it lets exactly one more step run (in which mlx-lm sees the stopped request in
that step's responses and marks it for removal) and then ends the loop, so mlx-lm
removes it at once. A context is watched from the moment its handler has it until it is
stopped, which every handler does when it is done (mlx-lm's `finally: ctx.stop()`); an
answer that simply finished ends one loop early, which costs one look at the queue.
"""

from __future__ import annotations

import threading
from typing import Any

from mlx_lm.server import TimeBudget


class StopBudget(TimeBudget):
    """mlx-lm's time budget, cut short one step after a watched request is stopped."""

    def __init__(self) -> None:
        """mlx-lm's defaults (0.5 s a loop), watching nothing yet."""
        super().__init__()
        self._watched: list[Any] = []
        self._lock = threading.Lock()
        self._draining = False

    def watch(self, ctx: Any) -> None:
        """Watch a request's `GenerationContext` until it is stopped (handler thread)."""
        with self._lock:
            self._watched.append(ctx)

    def __iter__(self) -> StopBudget:
        """Start a loop (generation thread)."""
        self._draining = False
        super().__iter__()
        return self

    def __next__(self) -> None:
        """One more step, unless the step after a stop has run (then mlx-lm removes it)."""
        if self._draining:
            raise StopIteration
        with self._lock:
            if any(ctx._should_stop for ctx in self._watched):
                self._watched = [ctx for ctx in self._watched if not ctx._should_stop]
                self._draining = True
        return super().__next__()
