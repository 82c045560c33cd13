"""The one timing harness: two callables (a dense and a pruned session's run) timed in interleaved
rounds, so that drift in the machine's speed (turbo, other processes, thermal limits) hits both
alike.

After ``warmup`` alternating runs, each round times a block of runs of the first callable, then a
block of the second; a block holds enough runs of the slower one to last about BLOCK_SECONDS (at
least ``min_runs``), sized once from one timed run of each. Reported: the median of all run times of each side, and the
median over rounds of the per-round ratio first / second (each round's ratio compares runs made
moments apart, which is what makes it robust).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

from .errors import UsageError

BLOCK_SECONDS = 0.05
WARMUP_PAIRS = 10
MIN_RUNS = 20

Clock = Callable[[], float]


@dataclass(frozen=True)
class PairTiming:
    first_s: float     # median seconds per run of the first callable
    second_s: float    # median seconds per run of the second
    ratio: float       # median over rounds of (first / second), per-round medians
    runs_per_round: int


def check_rounds(rounds: int) -> None:
    """Rounds are a user option (``--rounds``): at least one is needed for a median."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise UsageError(f"--rounds must be a positive integer, got {rounds}")


def time_pair(first: Callable[[], object], second: Callable[[], object], *, rounds: int,
              warmup: int = WARMUP_PAIRS, min_runs: int = MIN_RUNS, block_seconds: float = BLOCK_SECONDS,
              clock: Clock = time.perf_counter) -> PairTiming:
    """Time ``first`` against ``second`` in ``rounds`` interleaved rounds (see the module docstring)."""
    check_rounds(rounds)
    for _ in range(warmup):
        first()
        second()
    one_run = max(_time_block(first, 1, clock)[0], _time_block(second, 1, clock)[0], 1e-6)
    per_round = max(int(min_runs), int(block_seconds / one_run), 1)
    first_times: list[float] = []
    second_times: list[float] = []
    ratios = []
    for _ in range(rounds):
        a = _time_block(first, per_round, clock)
        b = _time_block(second, per_round, clock)
        first_times += a
        second_times += b
        ratios.append(statistics.median(a) / max(statistics.median(b), 1e-12))
    return PairTiming(first_s=statistics.median(first_times), second_s=statistics.median(second_times),
                      ratio=statistics.median(ratios), runs_per_round=per_round)


def _time_block(run: Callable[[], object], count: int, clock: Clock) -> list[float]:
    times = []
    for _ in range(count):
        start = clock()
        run()
        times.append(clock() - start)
    return times
