"""Prefill that is kept and shared: mlx-lm's `BatchGenerator`, checkpointing long prompts
to disk as they prefill, in steps sized so other requests are not held up.

mlx-lm's server prefills a batch of prompts in steps of `prefill_step_size` tokens
(`BatchGenerator._next`), but it hands a prompt's KV cache to the prompt cache only at
the end of a segment or of the answer. A client that hangs up, a timeout or a kill -9
half-way through a ten-minute first turn threw all of it away. This subclass adds one
thing after each step: every prompt still prefilling that has passed a block boundary
(256 tokens by default) since its last checkpoint has the attention KV of the tokens
since that checkpoint copied out (only those, so a whole prefill copies its cache once)
and queued for the `PersistentPromptCache` writer, which appends them as blocks to the
chain already on disk. The re-sent request then restores them and prefills only the rest.

The queue is bounded (`PersistentPromptCache.checkpoint`): when the disk is behind, a
checkpoint is skipped and the next one covers its tokens. For a model with sliding-window
or recurrent layers a checkpoint is also the whole state of those layers at the block
boundary (their state is not a window of tokens), so such a prompt's steps end exactly
at block boundaries (below).

Prefill that shares the machine. mlx-lm prefills every prompt of the batch in lockstep,
padded to the longest chunk, and a step is `prefill_step_size` tokens (2048) whatever
that costs: a short request arriving during a long prompt's step waits for that step,
then is padded to a full step next to it, then waits one more step before its first
token. This class sizes each step instead:

* by time: a step holds about `step_seconds` of prefill at the speed measured so far
  (never more than `prefill_step_size`), so a newcomer waits about that long, whatever
  the model;
* without padding: all prompts in the batch advance by the shortest current segment, so
  a short prompt costs its own length next to a long one, not a full padded step;
* a prompt that has just finished (its first token is next) makes that step one token
  long for the others, so its first token comes after a tiny step, not a long one.

Models with sliding-window or recurrent layers (gemma3, gpt_oss, qwen3_next, nemotron_h)
take fixed, block-aligned steps instead: every step of such a prompt ends at the next
multiple of `block_tokens` or of `prefill_step_size` in absolute token positions, or at
a segment end, so a cold prefill and one resumed from a checkpoint at a block boundary run
the very same model calls (same tokens, same starting state) and answer bit for bit
alike. Why: Mamba-2's chunked scan (nemotron_h) sums over the tokens of one call in one
matrix product, so its result depends on where calls start and end (logprobs differ by
~1e-6 between 256-token and 100-token calls, measured); the windows (RotatingKVCache)
and the gated delta net (qwen3_next) did not change with the chunking in that
experiment, but get the same rule, since an answer must never depend on timing. The
steps are not timed (a timed length would change the boundaries) and not cut to the
shortest prompt of the batch; a newcomer waits for at most one block of them.

`install` makes mlx_lm.server build this class instead of its own.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator as MlxBatchGenerator
from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache

from cachelayer.backend.persistent_cache import PersistentPromptCache

logger = logging.getLogger(__name__)


def aligned_pieces(segments: list[list[int]], start: int, units: tuple[int, ...],
                   ) -> tuple[list[list[int]], set[int]]:
    """`segments` (of a prompt whose first `start` tokens are cached) cut at every
    multiple of each of `units` in absolute positions; also the real segment ends,
    counted in tokens from the first segment's start, as mlx-lm reports progress."""
    pieces: list[list[int]] = []
    ends: set[int] = set()
    pos = start
    for segment in segments:
        i = 0
        while i < len(segment):
            take = min(len(segment) - i, *(u - pos % u for u in units))
            pieces.append(segment[i:i + take])
            i += take
            pos += take
        ends.add(pos - start)
    return pieces, ends


def kv_window(layer: Any, idx: int, lo: int, hi: int) -> KVCache | None:
    """A single-sequence KVCache holding tokens [lo, hi) of sequence `idx` of a batch
    layer, copied out (None for a layer that is not a batch attention cache)."""
    if not isinstance(layer, BatchKVCache) or layer.keys is None:
        return None
    pad = int(layer.left_padding[idx].item())
    window = KVCache()
    window.keys = mx.contiguous(layer.keys[idx:idx + 1, :, pad + lo:pad + hi])
    window.values = mx.contiguous(layer.values[idx:idx + 1, :, pad + lo:pad + hi])
    window.offset = hi - lo
    return window


class BatchGenerator(MlxBatchGenerator):
    """mlx-lm's continuous batching, with prompts checkpointed to disk as they prefill."""

    # Set by `install`: where checkpoints go, their granularity in tokens, and the time
    # a prefill step should take (0: mlx-lm's fixed steps).
    persistent: PersistentPromptCache | None = None
    block_tokens: int = 256
    step_seconds: float = 0.5
    # Until a speed is measured, steps are this long (short enough for any model).
    first_step_tokens: int = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """As mlx-lm's; also tracks how far each prompt has been checkpointed."""
        super().__init__(*args, **kwargs)
        self._kept: dict[int, int] = {}
        self._max_step = self.prefill_step_size
        self._speed: float | None = None  # prefill tokens per second, smoothed
        # Only attention-only models take time-sized steps: with a recurrent layer the
        # answer depends on where steps cut (see the module docstring), and it must
        # never depend on timing.
        attention_only = all(type(c) is KVCache for c in make_prompt_cache(self.model))
        self._reschedule = attention_only
        # The others take block-aligned steps (see the module docstring), unless mlx-lm's
        # own fixed steps were asked for (step_seconds 0: nothing of this class's
        # scheduling, and no mid-prompt checkpoints for them).
        self._aligned = not attention_only and self.step_seconds > 0
        # Cuts at every block boundary (checkpoints) and every step (mlx-lm's limit).
        self._units = (self.block_tokens, max(1, self.prefill_step_size))
        self._segment_ends: dict[int, set[int]] = {}

    def insert_segments(self, segments: Any, max_tokens: Any = None, caches: Any = None,
                        all_tokens: Any = None, *args: Any, **kwargs: Any) -> list[int]:
        """As mlx-lm's; what a prompt restored from a cache is already kept up to its
        last whole block (the store holds it, or the chain ends there anyway)."""
        uids: list[int] = super().insert_segments(segments, max_tokens, caches, all_tokens,
                                                  *args, **kwargs)
        for uid, restored in zip(uids, all_tokens or [[] for _ in uids], strict=True):
            self._kept[uid] = len(restored) // self.block_tokens * self.block_tokens
        if self._aligned:
            self._align(uids, [len(r) for r in all_tokens or [[] for _ in uids]])
        return uids

    def _align(self, uids: list[int], starts: list[int]) -> None:
        """Cut the newly queued prompts' segments at absolute multiples of the units."""
        starts_of = dict(zip(uids, starts, strict=True))
        for seq in self._unprocessed_sequences:
            uid = seq[0]
            if uid in starts_of:
                # mlx-lm's entry holds its segment list; cut it in place.
                pieces, ends = aligned_pieces(seq[1], starts_of[uid], self._units)
                seq[1][:] = pieces
                self._segment_ends[uid] = ends

    def remove(self, uids: Any, return_prompt_caches: bool = False) -> Any:
        """As mlx-lm's; forgets the removed prompts' checkpoint marks."""
        for uid in uids:
            self._kept.pop(uid, None)
            self._segment_ends.pop(uid, None)
        return super().remove(uids, return_prompt_caches)

    def step_tokens(self) -> int:
        """How many tokens each prompt in the batch advances by in the next step."""
        step = self._max_step
        if not self._reschedule:
            return step  # block-aligned pieces (or mlx-lm's fixed steps) set the length
        if self.step_seconds > 0:
            timed = (self.first_step_tokens if self._speed is None
                     else int(self._speed * self.step_seconds))
            step = min(step, max(16, timed // 16 * 16))
        # The prompts the next step will hold: those prefilling and those about to join.
        joining = min(self.prefill_batch_size - len(self._prompt_batch),
                      self.completion_batch_size - len(self._generation_batch),
                      len(self._unprocessed_sequences))
        segments = [seq[0] for seq in self._currently_processing]
        segments += [seq[1] for seq in itertools.islice(self._unprocessed_sequences,
                                                        max(joining, 0))]
        if len(segments) > 1:
            # No padding: the shortest current segment sets the step (a prompt left
            # with only its last token, about to start answering, makes it 1 token).
            step = min(step, *(len(s[0]) for s in segments if s))
        return max(1, step)

    def _next(self) -> Any:
        self.prefill_step_size = self._prompt_batch.prefill_step_size = self.step_tokens()
        tokens, seconds = self._counters.prompt_tokens, self._counters.prompt_time
        try:
            prompt_responses, generation_responses = super()._next()
        finally:
            self.prefill_step_size = self._prompt_batch.prefill_step_size = self._max_step
        self._measure(self._counters.prompt_tokens - tokens,
                      self._counters.prompt_time - seconds)
        for r in prompt_responses:
            ends = self._segment_ends.get(r.uid)
            if ends is not None and r.end_of_segment and not r.end_of_prompt:
                # A cut of ours is not one of the prompt's segments: mlx-lm's server
                # saves the prompt cache at segment ends only.
                r.end_of_segment = r.progress[0] in ends
            if r.end_of_prompt:
                self._kept.pop(r.uid, None)
                self._segment_ends.pop(r.uid, None)
        if self.persistent is not None and len(self._prompt_batch):
            self._checkpoint(self.persistent)
        return prompt_responses, generation_responses

    def _measure(self, tokens: int, seconds: float) -> None:
        """Fold one step's prefill speed in (steps too short to time say little)."""
        if tokens >= 16 and seconds > 0.005:
            speed = tokens / seconds
            self._speed = speed if self._speed is None else 0.5 * self._speed + 0.5 * speed
            if self.persistent is not None:  # what a restore must beat to be worth it
                self.persistent.restores.prefill_speed = self._speed

    def _checkpoint(self, persistent: PersistentPromptCache) -> None:
        """Queue the new whole blocks of every prompt still prefilling (with, for
        sliding-window and recurrent layers, their whole state at the boundary)."""
        batch = self._prompt_batch
        kinds = persistent.kinds
        if kinds is None or len(kinds) != len(batch.prompt_cache):
            return
        stateful = any(k != "kv" for k in kinds)
        if stateful and not self._aligned:
            return  # mlx-lm's fixed steps end anywhere: no state at a boundary to keep
        for idx, uid in enumerate(batch.uids):
            tokens = batch.tokens[idx]
            kept = self._kept.get(uid, 0)
            aligned = len(tokens) // self.block_tokens * self.block_tokens
            if aligned <= kept or aligned < persistent.store.min_tokens:
                continue
            if stateful and aligned != len(tokens):
                continue  # the state is at len(tokens): only a boundary can be kept
            if not persistent.checkpoint_ready():
                return  # the disk is behind: the next step's checkpoint covers these
            window: list[Any] = [kv_window(layer, idx, kept, aligned) if kind == "kv"
                                 else layer.extract(idx)
                                 for layer, kind in zip(batch.prompt_cache, kinds, strict=True)]
            if any(w is None for w in window):
                self.persistent = None  # not the batch caches expected: never checkpointed
                return
            mx.eval([w.state for w in window])
            if persistent.checkpoint(tuple(tokens[:aligned]), window, kept):
                self._kept[uid] = aligned
                logger.debug("prefill checkpoint: tokens %d-%d queued", kept, aligned)


def install(persistent: PersistentPromptCache, block_tokens: int,
            step_seconds: float) -> None:
    """Make mlx_lm.server's generation thread build this module's `BatchGenerator`.

    mlx_lm.server creates its BatchGenerator by that module-level name when the first
    batchable request arrives, so this must run before the server takes requests."""
    import mlx_lm.server as mlx_server

    generator = type("BatchGenerator", (BatchGenerator,),
                     {"persistent": persistent, "block_tokens": block_tokens,
                      "step_seconds": step_seconds})
    mlx_server.BatchGenerator = generator  # type: ignore[misc,assignment]
