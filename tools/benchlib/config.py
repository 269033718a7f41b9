"""The knobs of one benchmark run: full or quick, where files go, how long to measure."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SCENARIOS = ("store", "miss", "kv", "session")


@dataclass(frozen=True)
class RunConfig:
    """Everything a scenario needs to know about the run it is part of."""

    quick: bool
    out_dir: Path
    work_dir: Path
    only: tuple[str, ...] = SCENARIOS
    concurrencies: tuple[int, ...] = (1, 8, 32)
    repetitions: int = 3
    warmup_s: float = 0.5
    duration_s: float = 3.0
    miss_rounds: int = 20
    miss_per_round: int = 10
    kv_sizes: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384)
    session_turns: int = 10
    session_scale: float = 0.15
    session_max_tokens: int = 16
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        """Where server logs go (kept after the run, for post-mortems)."""
        return self.work_dir / "logs"

    @classmethod
    def make(cls, *, quick: bool, out_dir: Path, work_dir: Path,
             only: tuple[str, ...], extra: dict[str, str] | None = None) -> RunConfig:
        """The full settings, or the quick smoke-test settings (whole run well under 60 s)."""
        extra = {k: v for k, v in (extra or {}).items() if v}
        if not quick:
            return cls(quick=False, out_dir=out_dir, work_dir=work_dir, only=only, extra=extra)
        return cls(quick=True, out_dir=out_dir, work_dir=work_dir, only=only, extra=extra,
                   repetitions=1, warmup_s=0.3, duration_s=0.7, miss_rounds=3, miss_per_round=5)
