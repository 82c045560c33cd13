"""End-to-end benchmark: a dense model against its pruned twin in one onnxruntime process.

Both sessions get the same inputs, the same ``intra_op_num_threads`` and the same session settings;
timings are interleaved in rounds (dense block, pruned block, dense block, ...) so that drift in the
machine's speed hits both sides alike, and the reported ratio is the median of per-round ratios.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from .errors import OnnxPruneError
from .library import session_options

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


def machine_info() -> dict:
    """What a reader needs to judge the numbers: CPU, its vector extensions, cores, versions."""
    import onnxruntime as ort

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "onnxruntime": ort.__version__, "python": platform.python_version()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "f16c") if f in flags]
                break
    except OSError:
        pass
    info["kernel_isa"] = os.environ.get("ONNX_PRUNE_ISA") or "auto"
    return info


def make_inputs(model: onnx.ModelProto, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs from the declared shapes, a symbolic first dimension set to ``batch``."""
    from .verify import generated_inputs

    return generated_inputs(model, seed=seed, batch=batch)


def _session(model: onnx.ModelProto, threads: int):
    import onnxruntime as ort

    options = session_options(intra_op_num_threads=threads, inter_op_num_threads=1)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _time_block(run: Callable[[], object], count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def bench_pair(dense: onnx.ModelProto, pruned: onnx.ModelProto, *, batches: Sequence[int] = DEFAULT_BATCHES,
               threads: Sequence[int] = (1,), rounds: int = 5, min_runs: int = 20, warmup: int = 10,
               on_progress: Callable[[str], None] | None = None) -> BenchResult:
    """Median latencies (µs) of ``dense`` and ``pruned`` and their ratio for every batch x threads."""
    rows = []
    for n_threads in threads:
        dense_session, pruned_session = _session(dense, n_threads), _session(pruned, n_threads)
        for batch in batches:
            if on_progress:
                on_progress(f"batch {batch}, {n_threads} thread(s)")
            feeds = make_inputs(dense, batch)
            run_dense = lambda: dense_session.run(None, feeds)  # noqa: E731
            run_pruned = lambda: pruned_session.run(None, feeds)  # noqa: E731
            for _ in range(warmup):
                run_dense()
                run_pruned()
            per_round = max(min_runs, int(0.05 / max(_time_block(run_dense, 1)[0], 1e-6)))
            dense_times, pruned_times, ratios = [], [], []
            for _ in range(rounds):
                d = _time_block(run_dense, per_round)
                p = _time_block(run_pruned, per_round)
                dense_times += d
                pruned_times += p
                ratios.append(statistics.median(d) / statistics.median(p))
            rows.append(BenchRow(batch=batch, threads=n_threads,
                                 dense_us=statistics.median(dense_times) * 1e6,
                                 pruned_us=statistics.median(pruned_times) * 1e6,
                                 speedup=statistics.median(ratios)))
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
    m = result.machine
    console.print(f"{m.get('cpu')} · {m.get('cores')} cores · SIMD {','.join(m.get('simd', []))} · "
                  f"onnxruntime {m.get('onnxruntime')} · kernel ISA {m.get('kernel_isa')}")


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
                raise OnnxPruneError(f"--threads takes a positive number or 'all', got '{v}'") from None
            if n < 1:
                raise OnnxPruneError(f"--threads takes a positive number or 'all', got '{v}'")
            out.append(n)
    return out


def run_bench_cli(dense_path: str, pruned_path: str | None = None, *, ratio: float = 0.9,
                  batches: Sequence[int] = DEFAULT_BATCHES, threads: Sequence[str] = ("1",),
                  rounds: int = 5, json_path: str | None = None, quiet: bool = False) -> BenchResult:
    """`onnx-prune bench`: load (and, without PRUNED, prune in memory at ``ratio``) and compare."""
    from . import api, modelio

    dense = modelio.load_model(dense_path)
    if pruned_path:
        pruned = modelio.load_model(pruned_path)
    else:
        pruned, _ = api.prune(dense, ratio=ratio, verify=False)
    if any(b < 1 for b in batches):
        raise OnnxPruneError(f"--batch takes positive numbers, got {list(batches)}")
    progress = None
    if not quiet:
        from rich.console import Console

        console = Console(stderr=True)
        progress = lambda msg: console.print(f"[dim]timing {msg}…[/dim]")  # noqa: E731
    result = bench_pair(dense, pruned, batches=batches, threads=parse_threads(threads), rounds=rounds,
                        on_progress=progress)
    result.settings.update({"dense": str(dense_path), "pruned": str(pruned_path or f"in memory, ratio {ratio}")})
    if json_path:
        Path(json_path).write_text(result.to_json())
    if not quiet:
        print_table(result, title=f"{Path(dense_path).name}: dense vs pruned (median latency)")
    return result
