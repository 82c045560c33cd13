"""timing.time_pair with fake runs on a fake clock: the order of the runs and the medians."""
from __future__ import annotations

import statistics

import pytest

from onnx_prune.measure import timing
from onnx_prune.errors import UsageError


class FakeMachine:
    """A clock that only moves when a fake run runs; every run is logged."""

    def __init__(self, durations: dict) -> None:
        self.now = 0.0
        self.log: list[str] = []
        self.durations = durations  # side -> list of run durations, used in turn (the last repeats)

    def clock(self) -> float:
        return self.now

    def runner(self, side: str):
        def run() -> None:
            count = sum(1 for s in self.log if s == side)
            series = self.durations[side]
            self.now += series[min(count, len(series) - 1)]
            self.log.append(side)

        return run


def test_warmup_sizing_then_alternating_blocks():
    m = FakeMachine({"a": [0.01], "b": [0.02]})
    t = timing.time_pair(m.runner("a"), m.runner("b"), rounds=3, warmup=2, min_runs=1, block_seconds=0.05,
                         clock=m.clock)
    # the block is sized from the slower side: 0.05 s / 0.02 s -> 2 runs
    assert t.runs_per_round == 2
    assert "".join(m.log) == "abab" + "ab" + "aabb" * 3


def test_min_runs_bounds_the_block():
    m = FakeMachine({"a": [1.0], "b": [1.0]})
    t = timing.time_pair(m.runner("a"), m.runner("b"), rounds=1, warmup=0, min_runs=4, clock=m.clock)
    assert t.runs_per_round == 4 and m.log[2:] == ["a"] * 4 + ["b"] * 4


def test_medians_of_times_and_of_per_round_ratios():
    # no warm-up; one sizing run each (0.5 s: blocks of min_runs = 3), then 2 rounds of 3 runs each
    a = [0.5, 1.0, 2.0, 3.0, 5.0, 5.0, 9.0]
    b = [0.5, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0]
    m = FakeMachine({"a": a, "b": b})
    t = timing.time_pair(m.runner("a"), m.runner("b"), rounds=2, warmup=0, min_runs=3, block_seconds=0.0,
                         clock=m.clock)
    rounds_a, rounds_b = [a[1:4], a[4:7]], [b[1:4], b[4:7]]
    assert t.first_s == pytest.approx(statistics.median(a[1:]))       # 4.0: median of all timed runs
    assert t.second_s == pytest.approx(statistics.median(b[1:]))      # 1.0
    ratios = [statistics.median(x) / statistics.median(y) for x, y in zip(rounds_a, rounds_b)]
    assert ratios == pytest.approx([2.0, 2.5])
    assert t.ratio == pytest.approx(2.25)                             # median of the per-round ratios
    assert t.ratio != pytest.approx(t.first_s / t.second_s)           # not the ratio of the medians


@pytest.mark.parametrize("rounds", [0, -1, 1.5, True])
def test_rounds_must_be_a_positive_integer(rounds):
    m = FakeMachine({"a": [1.0], "b": [1.0]})
    with pytest.raises(UsageError, match=f"--rounds must be a positive integer, got {rounds}"):
        timing.time_pair(m.runner("a"), m.runner("b"), rounds=rounds, clock=m.clock)
    assert m.log == []


def test_three_candidates_interleaved_with_pairwise_ratios():
    # sizing runs 1 s each (blocks of min_runs = 2), then 2 rounds: a a b b c c
    a = [1.0, 4.0, 4.0, 6.0, 6.0]
    b = [1.0, 2.0, 2.0, 2.0, 2.0]
    c = [1.0, 1.0, 1.0, 4.0, 4.0]
    m = FakeMachine({"a": a, "b": b, "c": c})
    t = timing.time_interleaved([m.runner("a"), m.runner("b"), m.runner("c")], rounds=2, warmup=0, min_runs=2,
                                block_seconds=0.0, clock=m.clock)
    assert "".join(m.log) == "abc" + "aabbcc" * 2
    assert t.runs_per_round == 2
    assert t.round_medians == ((4.0, 2.0, 1.0), (6.0, 2.0, 4.0))
    assert t.ratio(0, 1) == pytest.approx(statistics.median([2.0, 3.0]))
    assert t.ratio(2, 1) == pytest.approx(statistics.median([0.5, 2.0]))
    assert t.seconds == pytest.approx((5.0, 2.0, 2.5))
