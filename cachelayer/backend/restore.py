"""Restores that never hold the generation thread and that pay for themselves.

mlx_lm.server looks a prompt up (`fetch_nearest_cache`) on its one generation thread,
so a restore from disk (reading and checksumming the block files) stalled every other
request for its whole read. Here:

* `ResponseGenerator` (mlx-lm's, extended) hands each request to an I/O thread as it
  arrives: it tokenizes the prompt and reads the disk's longest prefix into host memory
  (`PagedStore.read`, no mlx call). The generation thread takes requests whose read is
  done, in arrival order, skipping ahead of one still reading; its lookup then only
  copies the arrays into mlx memory (`PagedStore.restore`).
* `Restores.worth_reading` skips a restore that costs more than it saves: it compares
  the bytes of the block files the match reads (a 16-token match still reads its whole
  block) at the measured read speed with the tokens it spares at the measured prefill
  speed. Until both are measured every restore is made.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from queue import Empty
from typing import Any

from mlx_lm.server import ResponseGenerator as MlxResponseGenerator

from cachelayer.backend.kv_blocks import Match
from cachelayer.backend.kv_codec import HostArrays
from cachelayer.backend.paged_store import PagedStore
from cachelayer.backend.stops import StopBudget

logger = logging.getLogger(__name__)
# Prompts read ahead and not yet taken, at most (each holds its arrays in host memory).
_STASH = 4
_READERS = 4


@dataclass
class Prefetched:
    """What the read ahead found for one prompt: the arrays read (None: nothing worth
    reading), and how many tokens the disk held (read or not)."""

    host: HostArrays | None
    disk_tokens: int = 0


class Restores:
    """Reads ahead of the generation thread, and the measured speeds that decide whether
    a restore is worth its read."""

    def __init__(self, store: PagedStore) -> None:
        """Read ahead from `store`."""
        self.store = store
        self.read_speed: float | None = None  # bytes per second, smoothed
        self.prefill_speed: float | None = None  # tokens per second, set by the prefill
        self.counts = {"read_ahead": 0, "skipped_not_worth": 0}
        self._lock = threading.Lock()
        self._stash: OrderedDict[tuple[str, tuple[int, ...]], Prefetched] = OrderedDict()

    def worth_reading(self, match: Match) -> bool:
        """Whether reading `match` is faster than prefilling its tokens (True until both
        speeds are measured)."""
        if self.read_speed is None or self.prefill_speed is None:
            return True
        read_s = sum(block.nbytes for block, _ in match.chain) / self.read_speed
        if read_s < match.n_tokens / self.prefill_speed:
            return True
        self.counts["skipped_not_worth"] += 1
        logger.info("kv: %d tokens on disk not restored: reading %.3f s > prefilling them",
                    match.n_tokens, read_s)
        return False

    def prefetch(self, tenant: str, tokens: list[int], kinds: tuple[str, ...],
                 in_memory: int) -> None:
        """Read `tenant`'s longest stored prefix of `tokens` into host memory (I/O
        thread), unless memory holds `in_memory` tokens of it, as many or more."""
        match = self.store.nearest(tokens, kinds, tenant)
        host = None
        if match is not None and match.n_tokens > in_memory and self.worth_reading(match):
            host = self.store.read(match, kinds)
            if host is not None:
                self._measured(host)
                self.counts["read_ahead"] += 1
        with self._lock:
            self._stash[tenant, tuple(tokens)] = Prefetched(host,
                                                            match.n_tokens if match else 0)
            while len(self._stash) > _STASH:
                self._stash.popitem(last=False)

    def take(self, tenant: str, tokens: list[int]) -> Prefetched | None:
        """`tenant`'s read ahead for exactly these tokens, once (None if there was none):
        a read ahead never serves another tenant."""
        with self._lock:
            return self._stash.pop((tenant, tuple(tokens)), None)

    def _measured(self, host: HostArrays) -> None:
        if host.nbytes and host.seconds > 0:
            speed = host.nbytes / host.seconds
            self.read_speed = speed if self.read_speed is None else (self.read_speed + speed) / 2

    def stats(self) -> dict[str, Any]:
        """Counters and speeds for the kv route."""
        return {**self.counts, "read_bytes_per_s": self.read_speed,
                "prefill_tokens_per_s": self.prefill_speed}


class ResponseGenerator(MlxResponseGenerator):
    """mlx-lm's generator, whose requests are tokenized and read ahead on an I/O thread
    before the generation thread takes them, and removed a step after their client has
    gone (`stops.StopBudget`)."""

    def __init__(self, model_provider: Any, prompt_cache: Any) -> None:
        """As mlx-lm's (which starts the generation thread), with an I/O thread."""
        # Several, so a short request's read ahead never waits behind a long restore.
        self._io = concurrent.futures.ThreadPoolExecutor(_READERS, thread_name_prefix="kv-read")
        self._arrived: list[tuple[Any, concurrent.futures.Future[None]]] = []
        self._tokenized: OrderedDict[int, Any] = OrderedDict()
        self._tokenized_lock = threading.Lock()
        super().__init__(model_provider, prompt_cache)
        # Taken by the generation thread from its next loop on.
        self._stops = StopBudget()
        self._time_budget = self._stops

    def generate(self, request: Any, generation_args: Any,
                 progress_callback: Any = None) -> Any:
        """mlx-lm's generate, with the request's context watched for its stop."""
        ctx, inner = super().generate(request, generation_args,
                                      progress_callback=progress_callback)
        self._stops.watch(ctx)
        return ctx, inner

    def _next_request(self, timeout: float | None = None) -> Any:
        """The first arrived request whose read ahead is done (None if there is none
        within `timeout`; no timeout: do not wait)."""
        deadline = time.monotonic() + (timeout or 0.0)
        while True:
            self._take_arrivals(block=False)
            for i, (item, future) in enumerate(self._arrived):
                if future.done():
                    del self._arrived[i]
                    return item
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self._arrived:
                concurrent.futures.wait([f for _, f in self._arrived], timeout=min(left, 0.02),
                                        return_when=concurrent.futures.FIRST_COMPLETED)
            else:
                self._take_arrivals(block=True, timeout=left)

    def _take_arrivals(self, *, block: bool, timeout: float = 0.0) -> None:
        while True:
            try:
                item = self.requests.get(timeout=timeout) if block else self.requests.get_nowait()
            except Empty:
                return
            self._arrived.append((item, self._io.submit(self._read_ahead, item)))
            block = False

    def _read_ahead(self, item: Any) -> None:
        _, request, args = item
        tokenizer = self.model_provider.tokenizer
        if tokenizer is None:
            return  # the model is not loaded yet: the generation thread does it all
        try:
            tokenized = super()._tokenize(tokenizer, request, args)
        except Exception:
            return  # the generation thread tokenizes again and reports the error
        with self._tokenized_lock:
            # The request itself is kept with it, so its id is not reused meanwhile.
            self._tokenized[id(request)] = (request, tokenizer, tokenized)
            while len(self._tokenized) > 64:
                self._tokenized.popitem(last=False)
        prompt, vision = tokenized[0], tokenized[4]
        if vision is None:
            try:
                # Scoped like the lookup it prepares: the request's own tenant.
                tenant = getattr(request, "cachelayer_tenant", "")
                self.prompt_cache.prefetch(self.model_provider.model_key, list(prompt),
                                           tenant)
            except Exception:  # a failed read ahead only means the lookup reads itself
                logger.exception("kv read ahead failed")

    def _tokenize(self, tokenizer: Any, request: Any, args: Any) -> Any:
        """The I/O thread's tokenization of this request if it made one with this
        tokenizer (each used once: the caller changes the segments), else mlx-lm's."""
        with self._tokenized_lock:
            done = self._tokenized.pop(id(request), None)
        if done is not None and done[0] is request and done[1] is tokenizer:
            return done[2]
        return super()._tokenize(tokenizer, request, args)

    def stop_and_join(self) -> None:
        """Stop the generation thread, then the I/O thread."""
        super().stop_and_join()
        self._io.shutdown(wait=True, cancel_futures=True)
