"""The one timing harness: callables (a dense session's run, a pruned one's, a baseline's) timed in
interleaved rounds, so that drift in the machine's speed (turbo, other processes, thermal limits)
hits all of them alike.

After ``warmup`` runs of each in turn, each round times a block of runs of every candidate, one
after the other; a block holds enough runs of the slowest to last about BLOCK_SECONDS (at least
``min_runs``), sized once from one timed run of each. Reported: the median of all run times of each
candidate, and ratios as the median over rounds of per-round ratios (each round's ratio compares
runs made moments apart, which is what makes it robust).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import UsageError

BLOCK_SECONDS = 0.05
WARMUP_PAIRS = 10  # warm-up runs of each candidate
MIN_RUNS = 20

Clock = Callable[[], float]
Run = Callable[[], object]


@dataclass(frozen=True)
class Timing:
    seconds: tuple[float, ...]                   # median seconds per run of each candidate
    round_medians: tuple[tuple[float, ...], ...]  # [round][candidate]: median seconds per run in that round
    runs_per_round: int

    def ratio(self, numerator: int, denominator: int) -> float:
        """Median over rounds of candidate ``numerator``'s time / candidate ``denominator``'s
        (> 1: the denominator is faster)."""
        return statistics.median(r[numerator] / max(r[denominator], 1e-12) for r in self.round_medians)


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


def time_interleaved(candidates: Sequence[Run], *, rounds: int, warmup: int = WARMUP_PAIRS,
                     min_runs: int = MIN_RUNS, block_seconds: float = BLOCK_SECONDS,
                     clock: Clock = time.perf_counter) -> Timing:
    """Time every candidate in ``rounds`` interleaved rounds (see the module docstring)."""
    check_rounds(rounds)
    if not candidates:
        raise ValueError("time_interleaved needs at least one candidate")
    for _ in range(warmup):
        for run in candidates:
            run()
    one_run = max(max(_time_block(run, 1, clock)[0] for run in candidates), 1e-6)
    per_round = max(int(min_runs), int(block_seconds / one_run), 1)
    all_times: list[list[float]] = [[] for _ in candidates]
    round_medians = []
    for _ in range(rounds):
        blocks = [_time_block(run, per_round, clock) for run in candidates]
        for times, block in zip(all_times, blocks):
            times += block
        round_medians.append(tuple(statistics.median(b) for b in blocks))
    return Timing(seconds=tuple(statistics.median(t) for t in all_times), round_medians=tuple(round_medians),
                  runs_per_round=per_round)


def time_pair(first: Run, second: Run, *, rounds: int, warmup: int = WARMUP_PAIRS, min_runs: int = MIN_RUNS,
              block_seconds: float = BLOCK_SECONDS, clock: Clock = time.perf_counter) -> PairTiming:
    """``time_interleaved`` of two candidates, ``ratio`` = first / second."""
    t = time_interleaved([first, second], rounds=rounds, warmup=warmup, min_runs=min_runs,
                         block_seconds=block_seconds, clock=clock)
    return PairTiming(first_s=t.seconds[0], second_s=t.seconds[1], ratio=t.ratio(0, 1),
                      runs_per_round=t.runs_per_round)


def _time_block(run: Run, count: int, clock: Clock) -> list[float]:
    times = []
    for _ in range(count):
        start = clock()
        run()
        times.append(clock() - start)
    return times
