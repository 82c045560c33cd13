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
import warnings
from typing import Callable, Optional, Sequence

import numpy as np
import onnx

from . import baselines as baseline_models
from ..runtime import session as runtime
from . import timing
from .baselines import Baseline
from ..check.inputs import SEQ_LEN_FOR_GENERATED, generated_inputs
from ..errors import OnnxPruneError, UsageError, first_line
from .machine import describe, machine_info
from ..sparse_gemm import sparse_gemm_summary

DEFAULT_BATCHES = (1, 16, 64, 256)


@dataclass
class BaselineRow:
    us: float         # median latency (NaN when not timed)
    speedup: float    # median over rounds of dense / baseline
    pruned_vs: float  # median over rounds of baseline / pruned (> 1: the pruned model is faster)
    error: Optional[str] = None  # why it was not timed in this row (could not be made, differs from dense)

    @staticmethod
    def not_timed(reason: str) -> "BaselineRow":
        return BaselineRow(us=float("nan"), speedup=float("nan"), pruned_vs=float("nan"), error=reason)


@dataclass
class BenchRow:
    batch: int
    threads: int
    dense_us: float
    pruned_us: float
    speedup: float  # median over rounds of dense / pruned
    baselines: dict[str, BaselineRow] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Flat JSON row: ``int8_us``, ``int8_speedup``, ``pruned_vs_int8`` per baseline (null, with
        ``int8_error`` saying why, where it was not timed)."""
        out = {k: v for k, v in asdict(self).items() if k != "baselines"}
        for name, b in self.baselines.items():
            key = name.replace("-", "_")
            if b.error is not None:
                out.update({f"{key}_us": None, f"{key}_speedup": None, f"pruned_vs_{key}": None,
                            f"{key}_error": b.error})
            else:
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


def make_inputs(model: onnx.ModelProto, batch: int, seed: int = 0,
                seq_len: int = SEQ_LEN_FOR_GENERATED) -> dict[str, np.ndarray]:
    """Generated inputs as the verification makes them (token ids inside the vocabulary, masks of
    ones, normal floats), a symbolic first dimension set to ``batch``, other symbolic ones to
    ``seq_len``."""
    return generated_inputs(model, seed=seed, batch=batch, seq_len=seq_len)


Feeds = Callable[[int], dict]  # batch size -> the inputs of one call


def fixed_batch(model: onnx.ModelProto) -> Optional[int]:
    """The batch size a model's inputs fix (every input's first dimension the same number), or None
    when the batch dimension is symbolic."""
    firsts = [dims[0] for dims in (_declared_dims(v) for v in _graph_inputs(model)) if dims]
    if firsts and all(isinstance(d, int) for d in firsts) and len(set(firsts)) == 1:
        return firsts[0]
    return None


def batches_for(model: onnx.ModelProto, requested: Sequence[int]) -> list[int]:
    """The batch sizes to time: ``requested``, or only the model's own when its batch is fixed (a
    fixed batch of 1 timed as "batch 64" would be batch 1 sixty-four times mislabelled)."""
    fixed = fixed_batch(model)
    if fixed is None or list(requested) == [fixed]:
        return list(requested)
    warnings.warn(f"the model's batch dimension is fixed at {fixed}: timing batch {fixed} only "
                  f"(asked for {', '.join(map(str, requested))})", stacklevel=2)
    return [fixed]


def inputs_from_file(path: str, model: onnx.ModelProto, batches: Sequence[int]) -> Feeds:
    """Batches cut from the rows of a real-input .npz (``bench --inputs``): batch N is the first N
    rows of every array, cast to the dtype the model declares. Checked for every batch up front."""
    from ..check.verify import load_inputs

    arrays = load_inputs(path, model)
    declared = {v.name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
                for v in _graph_inputs(model)}
    for name, value in arrays.items():
        if value.ndim == 0:
            raise UsageError(f"--inputs '{path}': '{name}' is a scalar; bench cuts batches along the first axis")
        short = [b for b in batches if b > len(value)]
        if short:
            raise UsageError(f"--inputs '{path}' has {len(value)} rows of '{name}' but --batch {max(short)} needs "
                             f"{max(short)}; give more rows or smaller --batch values")
    arrays = {n: np.asarray(v, dtype=declared.get(n, v.dtype)) for n, v in arrays.items()}
    return lambda batch: {n: np.ascontiguousarray(v[:batch]) for n, v in arrays.items()}


def check_same_inputs(dense: onnx.ModelProto, pruned: onnx.ModelProto, dense_path: str, pruned_path: str) -> None:
    """PRUNED must take the inputs IN takes (names, types, fixed sizes): a pruned file of another
    model would fail inside onnxruntime or, worse, time something else."""
    mine, theirs = _signature(dense), _signature(pruned)
    if mine != theirs:
        raise UsageError(f"'{pruned_path}' takes {_describe_signature(theirs)} but '{dense_path}' takes "
                         f"{_describe_signature(mine)}; PRUNED.onnx must be IN.onnx pruned")


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def _declared_dims(value: onnx.ValueInfoProto) -> list:
    """Each dimension as its number, or '?' when symbolic or unknown."""
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else "?"
            for d in value.type.tensor_type.shape.dim]


def _signature(model: onnx.ModelProto) -> list[tuple]:
    return [(v.name, onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type), _declared_dims(v))
            for v in _graph_inputs(model)]


def _describe_signature(signature: Sequence[tuple]) -> str:
    if not signature:
        return "no inputs"
    return "inputs " + ", ".join(f"{name} {dtype.lower()} [{', '.join(map(str, dims))}]"
                                 for name, dtype, dims in signature)


def _session(model: onnx.ModelProto, threads: int):
    return runtime.open_session(model, library=True, threads=threads, inter_op_num_threads=1)


def bench_pair(dense: onnx.ModelProto, pruned: onnx.ModelProto, *, batches: Sequence[int] = DEFAULT_BATCHES,
               threads: Sequence[int] = (1,), rounds: int = 5, min_runs: int = timing.MIN_RUNS,
               warmup: int = timing.WARMUP_PAIRS, baselines: Sequence[Baseline] = (),
               on_progress: Callable[[str], None] | None = None, feeds: Optional[Feeds] = None,
               seq_len: int = SEQ_LEN_FOR_GENERATED) -> BenchResult:
    """Median latencies (µs) of ``dense``, ``pruned`` and each baseline (made from ``dense``) and
    their ratios for every batch x threads (only the model's own batch when it is fixed). ``feeds``
    gives one call's inputs per batch size (default: generated, sequences of ``seq_len``). A
    baseline's outputs are checked against dense on each batch's inputs before it is timed; one that
    cannot be made or differs is marked in its rows, not timed, and the others go on."""
    timing.check_rounds(rounds)
    batches = batches_for(dense, batches)
    feeds = feeds or (lambda batch: make_inputs(dense, batch, seq_len=seq_len))
    if on_progress and baselines:
        on_progress("making the baselines with onnxruntime: " + ", ".join(b.name for b in baselines))
    extra, failed = _build_baselines(dense, baselines)
    checked: dict[str, dict[str, float]] = {b.name: {} for b in baselines}
    rows = []
    for n_threads in threads:
        sessions = [_session(m, n_threads) for m in (dense, pruned)]
        extra_sessions = {name: _session(m, n_threads) for name, m in extra.items()}
        for batch in batches:
            if on_progress:
                on_progress(f"timing batch {batch}, {n_threads} thread(s)")
            batch_feeds = feeds(batch)
            reference = _check_runs(sessions, batch_feeds)
            marked = dict(failed)
            timed = {}
            for b in baselines:
                if b.name in extra_sessions:
                    reason = _check_baseline(b, extra_sessions[b.name], batch_feeds, reference, sessions[0], checked)
                    if reason:
                        marked[b.name] = reason
                    else:
                        timed[b.name] = extra_sessions[b.name]
            candidates = [*sessions, *timed.values()]
            t = timing.time_interleaved([lambda s=s: s.run(None, batch_feeds) for s in candidates], rounds=rounds,
                                        warmup=warmup, min_runs=min_runs)
            index = {name: i for i, name in enumerate(timed, start=2)}
            rows.append(BenchRow(batch=batch, threads=n_threads, dense_us=t.seconds[0] * 1e6,
                                 pruned_us=t.seconds[1] * 1e6, speedup=t.ratio(0, 1),
                                 baselines={b.name: BaselineRow.not_timed(marked[b.name]) if b.name in marked else
                                            BaselineRow(us=t.seconds[index[b.name]] * 1e6,
                                                        speedup=t.ratio(0, index[b.name]),
                                                        pruned_vs=t.ratio(index[b.name], 1))
                                            for b in baselines}))
    settings = {"rounds": rounds, "warmup": warmup, "batches": list(batches), "threads": list(threads),
                "seq_len": seq_len,
                "baselines": [dict(name=b.name, what=b.label, per_channel=b.per_channel, tolerance=b.tolerance,
                                   max_rel_error=checked[b.name], **({"error": failed[b.name]} if b.name in failed
                                                                     else {}))
                              for b in baselines]}
    return BenchResult(rows=rows, machine=machine_info(), settings=settings)


def _build_baselines(dense: onnx.ModelProto, baselines: Sequence[Baseline]
                     ) -> tuple[dict[str, onnx.ModelProto], dict[str, str]]:
    """(name -> baseline model, name -> why it could not be made)."""
    built, failed = {}, {}
    for b in baselines:
        try:
            built[b.name] = b.build(dense)
        except OnnxPruneError as exc:
            failed[b.name] = f"not made: {first_line(exc)}"
    return built, failed


def _check_runs(sessions: Sequence, feeds: dict) -> list[np.ndarray]:
    """One run of the dense and the pruned model (a clear error instead of a failure mid-timing);
    the dense outputs, which baselines are checked against."""
    reference = runtime.run(sessions[0], feeds, error="onnxruntime could not run the dense model on these inputs")
    runtime.run(sessions[1], feeds, error="onnxruntime could not run the pruned model on these inputs")
    return reference


def _check_baseline(baseline: Baseline, session, feeds: dict, reference: Sequence[np.ndarray], dense_session,
                    checked: dict[str, dict[str, float]]) -> Optional[str]:
    """Why the baseline is not timed on these inputs (it fails, or its outputs differ from dense's),
    or None; the worst error per output is kept in ``checked``."""
    names = [o.name for o in dense_session.get_outputs()]
    try:
        outputs = runtime.run(session, feeds, error=f"onnxruntime could not run the {baseline.name} baseline")
        errors = baseline_models.check_outputs(baseline, reference, outputs, names)
    except OnnxPruneError as exc:
        return first_line(exc)
    for name, error in errors.items():
        checked[baseline.name][name] = max(error, checked[baseline.name].get(name, 0.0))
    return None


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
    not_timed: dict[tuple[str, str], list[str]] = {}  # (baseline, why) -> the rows it was not timed in
    for r in result.rows:
        cells = [str(r.threads), str(r.batch), f"{r.dense_us:.1f}", f"{r.pruned_us:.1f}", f"{r.speedup:.2f}x"]
        for name in names:
            b = r.baselines[name]
            if b.error is not None:
                cells += ["[red]not timed[/red]", "-", "-"]
                not_timed.setdefault((name, b.error), []).append(f"{r.batch}")
            else:
                cells += [f"{b.us:.1f}", f"{b.speedup:.2f}x", f"{b.pruned_vs:.2f}x"]
        table.add_row(*cells)
    console = Console(width=max(Console().width, 100 + 30 * len(names)))
    console.print(table)
    for b in result.settings.get("baselines", []):
        if b["max_rel_error"]:
            worst = max(b["max_rel_error"].values(), default=0.0)
            console.print(f"{b['name']}: {b['what']}; its outputs within {worst:.1e} (relative) of dense",
                          markup=False)
    for (name, why), batches in not_timed.items():
        console.print(f"{name}: not timed at batch {', '.join(batches)} ({why})", markup=False)
    if result.settings.get("inputs"):
        console.print(f"inputs: {result.settings['inputs']}", markup=False)
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


def run_bench_cli(dense_path: str, pruned_path: str | None = None, *, ratio: float = 0.8,
                  batches: Sequence[int] = DEFAULT_BATCHES, threads: Sequence[str] = ("1",),
                  rounds: int = 5, json_path: str | None = None, quiet: bool = False,
                  baselines: Sequence[str] = (), inputs: str | None = None,
                  seq_len: int = SEQ_LEN_FOR_GENERATED) -> BenchResult:
    """`onnx-prune bench`: load (and, without PRUNED, prune in memory at ``ratio``) and compare, on
    the rows of ``inputs`` (an .npz) or on generated inputs. The table prints even when ``quiet``
    (which drops the progress lines)."""
    from .. import api
    from ..check.inputs import check_seq_len, describe as describe_plans, input_plans
    from ..model import modelio

    timing.check_rounds(rounds)
    check_seq_len(seq_len)
    if any(b < 1 for b in batches):
        raise UsageError(f"--batch takes positive numbers, got {list(batches)}")
    thread_counts = parse_threads(threads)
    chosen = baseline_models.parse(baselines)
    dense = modelio.load_model(dense_path)
    if pruned_path:
        pruned = modelio.load_model(pruned_path)
        check_roles(dense, pruned, dense_path, pruned_path)
        check_same_inputs(dense, pruned, dense_path, pruned_path)
    else:
        check_roles(dense, None, dense_path, None)
        pruned, _ = api.prune(dense, ratio=ratio, verify=False)
    timed = batches_for(dense, batches)
    if inputs:
        feeds, described = inputs_from_file(inputs, dense, timed), f"the first rows of {inputs}"
    else:
        feeds = None
        plans = input_plans(dense, batch=timed[0], seq_len=seq_len)
        described = f"{describe_plans(plans)}, shown at batch {timed[0]}"
    progress = None
    if not quiet:
        from rich.console import Console

        console = Console(stderr=True)
        progress = lambda msg: console.print(f"[dim]{msg}…[/dim]")  # noqa: E731
    result = bench_pair(dense, pruned, batches=timed, threads=thread_counts, rounds=rounds,
                        baselines=chosen, on_progress=progress, feeds=feeds, seq_len=seq_len)
    result.settings.update({"dense": str(dense_path), "pruned": str(pruned_path or f"in memory, ratio {ratio}"),
                            "inputs": described})
    if json_path:
        modelio.write_text_atomic(json_path, result.to_json())
    print_table(result, title=f"{Path(dense_path).name}: dense vs pruned (median latency)")
    if json_path and not quiet:
        print(f"wrote {json_path}")
    return result
