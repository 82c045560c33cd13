"""End-to-end benchmark: a dense model against its pruned twin in one onnxruntime process.

Both sessions get the same inputs, the same ``intra_op_num_threads`` and the same session settings;
timings are interleaved in rounds (dense block, pruned block, dense block, ...) so that drift in the
machine's speed hits both sides alike, and the reported ratio is the median of per-round ratios.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from . import runtime, timing
from .errors import UsageError
from .machine import describe, machine_info

DEFAULT_BATCHES = (1, 16, 64, 256)


@dataclass
class BenchRow:
    batch: int
    threads: int
    dense_us: float
    pruned_us: float
    speedup: float  # median over rounds of dense / pruned


@dataclass
class BenchResult:
    rows: list[BenchRow]
    machine: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"machine": self.machine, "settings": self.settings,
                           "rows": [asdict(r) for r in self.rows]}, indent=2)


def make_inputs(model: onnx.ModelProto, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs from the declared shapes, a symbolic first dimension set to ``batch``."""
    from .verify import generated_inputs

    return generated_inputs(model, seed=seed, batch=batch)


def _session(model: onnx.ModelProto, threads: int):
    return runtime.open_session(model, library=True, threads=threads, inter_op_num_threads=1)


def bench_pair(dense: onnx.ModelProto, pruned: onnx.ModelProto, *, batches: Sequence[int] = DEFAULT_BATCHES,
               threads: Sequence[int] = (1,), rounds: int = 5, min_runs: int = timing.MIN_RUNS,
               warmup: int = timing.WARMUP_PAIRS, on_progress: Callable[[str], None] | None = None) -> BenchResult:
    """Median latencies (µs) of ``dense`` and ``pruned`` and their ratio for every batch x threads."""
    timing.check_rounds(rounds)
    rows = []
    for n_threads in threads:
        dense_session, pruned_session = _session(dense, n_threads), _session(pruned, n_threads)
        for batch in batches:
            if on_progress:
                on_progress(f"batch {batch}, {n_threads} thread(s)")
            feeds = make_inputs(dense, batch)
            t = timing.time_pair(lambda: dense_session.run(None, feeds), lambda: pruned_session.run(None, feeds),
                                 rounds=rounds, warmup=warmup, min_runs=min_runs)
            rows.append(BenchRow(batch=batch, threads=n_threads, dense_us=t.first_s * 1e6,
                                 pruned_us=t.second_s * 1e6, speedup=t.ratio))
    settings = {"rounds": rounds, "warmup": warmup, "batches": list(batches), "threads": list(threads)}
    return BenchResult(rows=rows, machine=machine_info(), settings=settings)


def print_table(result: BenchResult, title: str = "dense vs pruned") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("threads", "batch", "dense µs", "pruned µs", "speedup"):
        table.add_column(column, justify="right")
    for r in result.rows:
        table.add_row(str(r.threads), str(r.batch), f"{r.dense_us:.1f}", f"{r.pruned_us:.1f}", f"{r.speedup:.2f}x")
    console = Console()
    console.print(table)
    console.print(describe(result.machine))


def parse_threads(values: Sequence[str]) -> list[int]:
    """``1``, ``4`` or ``all`` (every core of this machine)."""
    out = []
    for v in values:
        if str(v).strip().lower() == "all":
            out.append(os.cpu_count() or 1)
        else:
            try:
                n = int(v)
            except ValueError:
                raise UsageError(f"--threads takes a positive number or 'all', got '{v}'") from None
            if n < 1:
                raise UsageError(f"--threads takes a positive number or 'all', got '{v}'")
            out.append(n)
    return out


def run_bench_cli(dense_path: str, pruned_path: str | None = None, *, ratio: float = 0.9,
                  batches: Sequence[int] = DEFAULT_BATCHES, threads: Sequence[str] = ("1",),
                  rounds: int = 5, json_path: str | None = None, quiet: bool = False) -> BenchResult:
    """`onnx-prune bench`: load (and, without PRUNED, prune in memory at ``ratio``) and compare."""
    from . import api, modelio

    timing.check_rounds(rounds)
    if any(b < 1 for b in batches):
        raise UsageError(f"--batch takes positive numbers, got {list(batches)}")
    thread_counts = parse_threads(threads)
    dense = modelio.load_model(dense_path)
    if pruned_path:
        pruned = modelio.load_model(pruned_path)
    else:
        pruned, _ = api.prune(dense, ratio=ratio, verify=False)
    progress = None
    if not quiet:
        from rich.console import Console

        console = Console(stderr=True)
        progress = lambda msg: console.print(f"[dim]timing {msg}…[/dim]")  # noqa: E731
    result = bench_pair(dense, pruned, batches=batches, threads=thread_counts, rounds=rounds,
                        on_progress=progress)
    result.settings.update({"dense": str(dense_path), "pruned": str(pruned_path or f"in memory, ratio {ratio}")})
    if json_path:
        Path(json_path).write_text(result.to_json())
    if not quiet:
        print_table(result, title=f"{Path(dense_path).name}: dense vs pruned (median latency)")
    return result
