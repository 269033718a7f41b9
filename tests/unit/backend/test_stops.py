"""`StopBudget`: a stopped request ends mlx-lm's loop of steps one step later."""

from __future__ import annotations

from dataclasses import dataclass

from cachelayer.backend.stops import StopBudget


@dataclass
class _Ctx:
    _should_stop: bool = False

    def stop(self) -> None:
        self._should_stop = True


def _steps(budget: StopBudget, stop_at: int | None = None, ctx: _Ctx | None = None,
           most: int = 100) -> int:
    """Steps one loop of `budget` runs (at most `most`), stopping `ctx` before step
    `stop_at`."""
    steps = 0
    for _ in budget:
        if steps == stop_at and ctx is not None:
            ctx.stop()
        steps += 1
        if steps == most:
            break
    return steps


def test_a_loop_with_nothing_stopped_runs_on() -> None:
    budget = StopBudget()
    budget.watch(_Ctx())
    assert _steps(budget) == 100


def test_a_stop_lets_exactly_one_more_step_run_then_ends_the_loop() -> None:
    budget = StopBudget()
    ctx = _Ctx()
    budget.watch(ctx)
    budget.watch(_Ctx())
    # Stopped during step 5 (index 4): step 6 runs (mlx-lm sees the stop in its
    # responses and marks the request), then the loop ends for mlx-lm to remove it.
    assert _steps(budget, stop_at=4, ctx=ctx) == 6


def test_a_stop_ends_one_loop_only() -> None:
    budget = StopBudget()
    ctx = _Ctx()
    budget.watch(ctx)
    assert _steps(budget, stop_at=0, ctx=ctx) == 2
    assert _steps(budget) == 100  # the stopped context is no longer watched


def test_a_context_stopped_before_the_loop_ends_it_after_one_step() -> None:
    budget = StopBudget()
    ctx = _Ctx()
    budget.watch(ctx)
    ctx.stop()
    assert _steps(budget) == 1
