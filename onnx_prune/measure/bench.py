"""End-to-end benchmark: a dense model against its pruned twin (and, when asked, onnxruntime's own
int8 quantization of it) in one onnxruntime process.

All sessions get the same inputs, the same ``intra_op_num_threads`` and the same session settings;
timings are interleaved in rounds (dense block, pruned block, baseline block, dense block, ...) so
that drift in the machine's speed hits all alike, and every reported ratio is the median of
per-round ratios.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from . import baselines as baseline_models
from ..runtime import session as runtime
from . import timing
from .baselines import Baseline
from ..errors import UsageError
from .machine import describe, machine_info
from ..sparse_gemm import sparse_gemm_summary

DEFAULT_BATCHES = (1, 16, 64, 256)


@dataclass
class BaselineRow:
    us: float         # median latency
    speedup: float    # median over rounds of dense / baseline
    pruned_vs: float  # median over rounds of baseline / pruned (> 1: the pruned model is faster)


@dataclass
class BenchRow:
    batch: int
    threads: int
    dense_us: float
    pruned_us: float
    speedup: float  # median over rounds of dense / pruned
    baselines: dict[str, BaselineRow] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Flat JSON row: ``int8_us``, ``int8_speedup``, ``pruned_vs_int8`` per baseline."""
        out = {k: v for k, v in asdict(self).items() if k != "baselines"}
        for name, b in self.baselines.items():
            key = name.replace("-", "_")
            out.update({f"{key}_us": b.us, f"{key}_speedup": b.speedup, f"pruned_vs_{key}": b.pruned_vs})
        return out


@dataclass
class BenchResult:
    rows: list[BenchRow]
    machine: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"machine": self.machine, "settings": self.settings,
                           "rows": [r.as_dict() for r in self.rows]}, indent=2)


def make_inputs(model: onnx.ModelProto, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs from the declared shapes, a symbolic first dimension set to ``batch``."""
    from ..check.verify import generated_inputs

    return generated_inputs(model, seed=seed, batch=batch)


def _session(model: onnx.ModelProto, threads: int):
    return runtime.open_session(model, library=True, threads=threads, inter_op_num_threads=1)


def bench_pair(dense: onnx.ModelProto, pruned: onnx.ModelProto, *, batches: Sequence[int] = DEFAULT_BATCHES,
               threads: Sequence[int] = (1,), rounds: int = 5, min_runs: int = timing.MIN_RUNS,
               warmup: int = timing.WARMUP_PAIRS, baselines: Sequence[Baseline] = (),
               on_progress: Callable[[str], None] | None = None) -> BenchResult:
    """Median latencies (µs) of ``dense``, ``pruned`` and each baseline (made from ``dense``) and
    their ratios for every batch x threads. A baseline's outputs are checked against dense on each
    batch's inputs before it is timed."""
    timing.check_rounds(rounds)
    if on_progress and baselines:
        on_progress("making the baselines with onnxruntime: " + ", ".join(b.name for b in baselines))
    extra = {b.name: b.build(dense) for b in baselines}
    checked: dict[str, dict[str, float]] = {b.name: {} for b in baselines}
    rows = []
    for n_threads in threads:
        sessions = [_session(m, n_threads) for m in (dense, pruned, *extra.values())]
        for batch in batches:
            if on_progress:
                on_progress(f"timing batch {batch}, {n_threads} thread(s)")
            feeds = make_inputs(dense, batch)
            _check_baselines(baselines, sessions, feeds, checked)
            t = timing.time_interleaved([lambda s=s: s.run(None, feeds) for s in sessions], rounds=rounds,
                                        warmup=warmup, min_runs=min_runs)
            rows.append(BenchRow(batch=batch, threads=n_threads, dense_us=t.seconds[0] * 1e6,
                                 pruned_us=t.seconds[1] * 1e6, speedup=t.ratio(0, 1),
                                 baselines={b.name: BaselineRow(us=t.seconds[i] * 1e6, speedup=t.ratio(0, i),
                                                                pruned_vs=t.ratio(i, 1))
                                            for i, b in enumerate(baselines, start=2)}))
    settings = {"rounds": rounds, "warmup": warmup, "batches": list(batches), "threads": list(threads),
                "baselines": [dict(name=b.name, what=b.label, per_channel=b.per_channel, tolerance=b.tolerance,
                                   max_rel_error=checked[b.name]) for b in baselines]}
    return BenchResult(rows=rows, machine=machine_info(), settings=settings)


def _check_baselines(baselines: Sequence[Baseline], sessions: Sequence, feeds: dict,
                     checked: dict[str, dict[str, float]]) -> None:
    """Each baseline's outputs against dense on these inputs; the worst error per output is kept."""
    if not baselines:
        return
    names = [o.name for o in sessions[0].get_outputs()]
    reference = runtime.run(sessions[0], feeds, error="onnxruntime could not run the dense model")
    for baseline, session in zip(baselines, sessions[2:]):
        outputs = runtime.run(session, feeds, error=f"onnxruntime could not run the {baseline.name} baseline")
        for name, error in baseline_models.check_outputs(baseline, reference, outputs, names).items():
            checked[baseline.name][name] = max(error, checked[baseline.name].get(name, 0.0))


def print_table(result: BenchResult, title: str = "dense vs pruned") -> None:
    from rich.console import Console
    from rich.table import Table

    names = [b["name"] for b in result.settings.get("baselines", [])]
    table = Table(title=title)
    columns = ["threads", "batch", "dense µs", "pruned µs", "speedup"]
    for name in names:
        columns += [f"{name} µs", f"{name} vs dense", f"pruned vs {name}"]
    for column in columns:
        table.add_column(column, justify="right")
    for r in result.rows:
        cells = [str(r.threads), str(r.batch), f"{r.dense_us:.1f}", f"{r.pruned_us:.1f}", f"{r.speedup:.2f}x"]
        for name in names:
            b = r.baselines[name]
            cells += [f"{b.us:.1f}", f"{b.speedup:.2f}x", f"{b.pruned_vs:.2f}x"]
        table.add_row(*cells)
    console = Console(width=max(Console().width, 100 + 30 * len(names)))
    console.print(table)
    for b in result.settings.get("baselines", []):
        worst = max(b["max_rel_error"].values(), default=0.0)
        console.print(f"{b['name']}: {b['what']}; its outputs within {worst:.1e} (relative) of dense")
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


def check_roles(dense: onnx.ModelProto, pruned: onnx.ModelProto | None, dense_path: str,
                pruned_path: str | None) -> None:
    """IN must be the dense model and PRUNED a pruned one: timing them the other way round would
    print a 'speedup' that means nothing."""
    in_sparse = sparse_gemm_summary(dense)
    pruned_sparse = sparse_gemm_summary(pruned) if pruned is not None else None
    usage = "onnx-prune bench DENSE.onnx [PRUNED.onnx]"
    if in_sparse and pruned is not None and not pruned_sparse:
        raise UsageError(f"the arguments look swapped: '{dense_path}' is pruned ({in_sparse}) and "
                         f"'{pruned_path}' is not; {usage}")
    if in_sparse:
        raise UsageError(f"'{dense_path}' is already pruned ({in_sparse}); bench takes the dense model first: {usage}")
    if pruned is not None and not pruned_sparse:
        raise UsageError(f"'{pruned_path}' has no SparseGemm node, so it is not a pruned model; {usage}")


def run_bench_cli(dense_path: str, pruned_path: str | None = None, *, ratio: float = 0.9,
                  batches: Sequence[int] = DEFAULT_BATCHES, threads: Sequence[str] = ("1",),
                  rounds: int = 5, json_path: str | None = None, quiet: bool = False,
                  baselines: Sequence[str] = ()) -> BenchResult:
    """`onnx-prune bench`: load (and, without PRUNED, prune in memory at ``ratio``) and compare."""
    from .. import api
    from ..model import modelio

    timing.check_rounds(rounds)
    if any(b < 1 for b in batches):
        raise UsageError(f"--batch takes positive numbers, got {list(batches)}")
    thread_counts = parse_threads(threads)
    chosen = baseline_models.parse(baselines)
    dense = modelio.load_model(dense_path)
    if pruned_path:
        pruned = modelio.load_model(pruned_path)
        check_roles(dense, pruned, dense_path, pruned_path)
    else:
        check_roles(dense, None, dense_path, None)
        pruned, _ = api.prune(dense, ratio=ratio, verify=False)
    progress = None
    if not quiet:
        from rich.console import Console

        console = Console(stderr=True)
        progress = lambda msg: console.print(f"[dim]{msg}…[/dim]")  # noqa: E731
    result = bench_pair(dense, pruned, batches=batches, threads=thread_counts, rounds=rounds,
                        baselines=chosen, on_progress=progress)
    result.settings.update({"dense": str(dense_path), "pruned": str(pruned_path or f"in memory, ratio {ratio}")})
    if json_path:
        modelio.write_text_atomic(json_path, result.to_json())
    if not quiet:
        print_table(result, title=f"{Path(dense_path).name}: dense vs pruned (median latency)")
        if json_path:
            print(f"wrote {json_path}")
    return result
