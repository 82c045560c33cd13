"""Accuracy and latency of pruned models across ratios: the numbers a user needs to pick a ratio.

Dense and pruned sessions run in the same onnxruntime process with the same thread count, timed
in interleaved rounds so that machine noise hits both alike; the median is reported.
"""
from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from .sparse_gemm.contract import DOMAIN
from .errors import OnnxPruneError

ModelOrPath = Union[onnx.ModelProto, str, Path]
Data = Union[str, Path, Mapping[str, np.ndarray]]
LABELS = "labels"
EVAL_CHUNK = 1000  # rows per onnxruntime call while scoring accuracy: bounds memory on big test sets
ROUNDS = 15  # interleaved dense/pruned timing rounds per sweep row
RUNS_PER_ROUND = 10
WARMUP_RUNS = 3
ROW_KEYS = ("method", "ratio", "dense_accuracy", "pruned_accuracy", "accuracy_drop", "dense_ms", "pruned_ms",
            "speedup", "sparse_layers", "sparsity", "size_before", "size_after", "batch", "threads")


# ----------------------------------------------------------------------------- data and sessions

def load_eval_data(data: Data) -> dict[str, np.ndarray]:
    """The .npz (or dict) as arrays; one clear error when it cannot be read or lacks labels."""
    if isinstance(data, Mapping):
        arrays = {k: np.asarray(v) for k, v in data.items()}
    else:
        try:
            with np.load(str(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except FileNotFoundError:
            raise OnnxPruneError(f"evaluation data not found: {data}") from None
        except Exception as exc:  # zip/pickle/format errors all mean "not a usable .npz"
            raise OnnxPruneError(f"cannot read evaluation data {data}: {str(exc).splitlines()[0]}") from None
    if LABELS not in arrays:
        raise OnnxPruneError(f"evaluation data has no 'labels' array (found: {', '.join(sorted(arrays)) or 'none'})")
    if arrays[LABELS].ndim != 1 or not np.issubdtype(arrays[LABELS].dtype, np.integer):
        raise OnnxPruneError(f"'labels' must be a 1-D integer array, got {arrays[LABELS].dtype} "
                             f"{list(arrays[LABELS].shape)}")
    return arrays


def model_feeds(session, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays for every session input, cast to the declared dtype, all as long as the labels."""
    count = len(arrays[LABELS])
    feeds = {}
    for inp in session.get_inputs():
        if inp.name not in arrays:
            raise OnnxPruneError(f"evaluation data has no array for model input '{inp.name}' "
                                 f"(found: {', '.join(sorted(k for k in arrays if k != LABELS))})")
        value = arrays[inp.name]
        if len(value) != count:
            raise OnnxPruneError(f"'{inp.name}' has {len(value)} rows but 'labels' has {count}")
        _check_sample_shape(inp.name, value.shape[1:], inp.shape[1:])
        feeds[inp.name] = value.astype(_np_dtype(inp.type), copy=False)
    return feeds


def _check_sample_shape(name: str, got: tuple, declared: list) -> None:
    """Fixed dims of the model input must match the data (symbolic ones take anything)."""
    fits = len(got) == len(declared) and all(not isinstance(d, int) or d == g for g, d in zip(got, declared))
    if not fits:
        want = ", ".join(str(d) if isinstance(d, int) else "?" for d in declared)
        raise OnnxPruneError(f"'{name}' samples have shape {list(got)} but the model expects [{want}] per sample")


def _np_dtype(ort_type: str) -> np.dtype:
    names = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
    if ort_type not in names:
        raise OnnxPruneError(f"unsupported model input type {ort_type}")
    return np.dtype(names[ort_type])


def uses_sparse_ops(model: onnx.ModelProto) -> bool:
    return any(op.domain == DOMAIN for op in model.opset_import) or any(n.domain == DOMAIN for n in model.graph.node)


def open_session(model: ModelOrPath, session_options=None, *, threads: int = 1):
    """onnxruntime session on the CPU; the SparseGemm library is registered when the model needs it."""
    import onnxruntime as ort

    proto = model if isinstance(model, onnx.ModelProto) else None
    if session_options is None:
        if proto is None:
            proto = _load(model)
        if uses_sparse_ops(proto):
            from .library import session_options as sparse_options

            session_options = sparse_options(intra_op_num_threads=threads)
        else:
            session_options = ort.SessionOptions()
            session_options.intra_op_num_threads = int(threads)
    source = proto.SerializeToString() if proto is not None else str(model)
    try:
        return ort.InferenceSession(source, sess_options=session_options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OnnxPruneError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None


def _load(path: ModelOrPath) -> onnx.ModelProto:
    from .modelio import load_model

    return load_model(path)


# ----------------------------------------------------------------------------- accuracy

def evaluate_accuracy(model: ModelOrPath, data_npz: Data, *, session_options=None, threads: int = 1) -> float:
    """Top-1 accuracy: argmax over the last axis of the model's first output against 'labels'.

    ``data_npz``: .npz path (or dict) with 'labels' [n] and one array per graph input keyed by
    name, first axis = samples. Pruned models get the SparseGemm library registered automatically.
    """
    arrays = load_eval_data(data_npz)
    session = open_session(model, session_options, threads=threads)
    return _accuracy(session, model_feeds(session, arrays), arrays[LABELS])


def _accuracy(session, feeds: Mapping[str, np.ndarray], labels: np.ndarray) -> float:
    if len(labels) == 0:
        raise OnnxPruneError("evaluation data has no samples")
    first = session.get_outputs()[0].name
    hits = 0
    for start in range(0, len(labels), EVAL_CHUNK):
        chunk = {k: v[start:start + EVAL_CHUNK] for k, v in feeds.items()}
        scores = session.run([first], chunk)[0]
        if scores.ndim < 2 or scores.shape[0] != len(next(iter(chunk.values()))):
            raise OnnxPruneError(f"first output '{first}' has shape {list(scores.shape)}; "
                                 "expected [samples, classes]")
        hits += int((scores.argmax(axis=-1) == labels[start:start + EVAL_CHUNK]).sum())
    return hits / len(labels)


# ----------------------------------------------------------------------------- latency

def batch_feeds(feeds: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The first ``batch`` samples, repeated when the data set is smaller than the batch."""
    if batch < 1:
        raise OnnxPruneError(f"batch must be >= 1, got {batch}")
    out = {}
    for name, value in feeds.items():
        reps = -(-batch // len(value))
        out[name] = np.ascontiguousarray(np.concatenate([value] * reps)[:batch]) if reps > 1 else \
            np.ascontiguousarray(value[:batch])
    return out


def _median_ms(session, feeds: Mapping[str, np.ndarray], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def paired_latency_ms(dense, pruned, feeds: Mapping[str, np.ndarray], *, rounds: int = ROUNDS,
                      runs: int = RUNS_PER_ROUND) -> tuple[float, float]:
    """Median latency (ms) of two sessions timed in alternating rounds on the same inputs."""
    for _ in range(WARMUP_RUNS):
        dense.run(None, feeds)
        pruned.run(None, feeds)
    dense_ms, pruned_ms = [], []
    for _ in range(rounds):
        dense_ms.append(_median_ms(dense, feeds, runs))
        pruned_ms.append(_median_ms(pruned, feeds, runs))
    return statistics.median(dense_ms), statistics.median(pruned_ms)


# ----------------------------------------------------------------------------- sweep

def sweep(model_path: Union[str, Path], data_npz: Data, ratios: Sequence[float],
          methods: Sequence[str] = ("magnitude",), batch: int = 64, threads: int = 1,
          calibration: Optional[Union[str, Path, Mapping[str, np.ndarray]]] = None, *,
          rounds: int = ROUNDS, runs: int = RUNS_PER_ROUND) -> list[dict]:
    """One row per method x ratio with the keys in ROW_KEYS.

    Accuracy on the whole data set; latency (ms per call of ``batch`` samples) of dense vs pruned
    sessions in this process with ``threads`` intra-op threads. Calibration (for wanda/sparsegpt)
    is passed through to ``api.prune``.
    """
    from .api import prune
    from .library import session_options

    if not ratios or not methods:
        raise OnnxPruneError("sweep needs at least one ratio and one method")
    arrays = load_eval_data(data_npz)
    dense = open_session(model_path, session_options(intra_op_num_threads=threads))
    feeds = model_feeds(dense, arrays)
    timing_feeds = batch_feeds(feeds, batch)
    dense_accuracy = _accuracy(dense, feeds, arrays[LABELS])
    rows = []
    for method in methods:
        for ratio in ratios:
            pruned_model, report = prune(model_path, ratio=float(ratio), method=method, calibration=calibration)
            pruned = open_session(pruned_model, session_options(intra_op_num_threads=threads))
            pruned_accuracy = _accuracy(pruned, feeds, arrays[LABELS])
            dense_ms, pruned_ms = paired_latency_ms(dense, pruned, timing_feeds, rounds=rounds, runs=runs)
            rows.append(_row(method, float(ratio), dense_accuracy, pruned_accuracy, dense_ms, pruned_ms, report,
                             batch, threads))
    return rows


def _row(method: str, ratio: float, dense_accuracy: float, pruned_accuracy: float, dense_ms: float,
         pruned_ms: float, report, batch: int, threads: int) -> dict:
    sparse = report.sparse_layers
    params = sum(l.params for l in report.layers)
    kept = sum(l.nnz for l in report.layers)
    return dict(method=method, ratio=ratio, dense_accuracy=dense_accuracy, pruned_accuracy=pruned_accuracy,
                accuracy_drop=dense_accuracy - pruned_accuracy, dense_ms=dense_ms, pruned_ms=pruned_ms,
                speedup=dense_ms / pruned_ms if pruned_ms > 0 else float("inf"), sparse_layers=len(sparse),
                sparsity=(1 - kept / params) if params else 0.0, size_before=int(report.size_before),
                size_after=int(report.size_after), batch=int(batch), threads=int(threads))


# ----------------------------------------------------------------------------- output

def plot_sweep(rows: Sequence[Mapping], png_path: Union[str, Path]) -> None:
    """Two panels: top-1 accuracy vs ratio per method (dense as a dashed line), speedup vs ratio."""
    try:
        import matplotlib
    except ImportError:
        raise OnnxPruneError("plotting needs matplotlib: pip install 'onnx-prune[plot]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise OnnxPruneError("nothing to plot: the sweep has no rows")
    fig, (acc_ax, speed_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["ratio"])
        ratios = [r["ratio"] for r in mine]
        acc_ax.plot(ratios, [100 * r["pruned_accuracy"] for r in mine], "o-", label=method)
        speed_ax.plot(ratios, [r["speedup"] for r in mine], "o-", label=method)
    acc_ax.axhline(100 * rows[0]["dense_accuracy"], color="gray", ls="--", label="dense")
    speed_ax.axhline(1.0, color="gray", ls="--", label="dense")
    acc_ax.set(xlabel="pruning ratio", ylabel="top-1 accuracy (%)", title="Accuracy")
    speed_ax.set(xlabel="pruning ratio", ylabel="speedup (dense ms / pruned ms)",
                 title=f"Latency, batch {rows[0]['batch']}, {rows[0]['threads']} thread(s)")
    for ax in (acc_ax, speed_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(str(png_path), dpi=110)
    plt.close(fig)


def machine_description() -> str:
    """CPU model and core count, recorded with every sweep so numbers are never quoted without context."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{name}, {os.cpu_count()} logical cores"


def _load_average() -> Optional[list[float]]:
    """1/5/15-minute load when the sweep ended: other work on the machine skews latency."""
    import os

    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def sweep_table(rows: Sequence[Mapping], title: str = ""):
    from rich.table import Table

    table = Table(title=title or None)
    for header in ("method", "ratio", "sparsity", "accuracy", "Δ acc", "dense ms", "pruned ms", "speedup",
                   "sparse layers", "size"):
        table.add_column(header, justify="left" if header == "method" else "right")
    for r in rows:
        table.add_row(r["method"], f"{r['ratio']:.2f}", f"{100 * r['sparsity']:.1f}%",
                      f"{100 * r['pruned_accuracy']:.2f}%", f"{100 * (r['pruned_accuracy'] - r['dense_accuracy']):+.2f}",
                      f"{r['dense_ms']:.3f}", f"{r['pruned_ms']:.3f}", f"{r['speedup']:.2f}x",
                      str(r["sparse_layers"]), f"{r['size_after'] / 1e6:.2f} MB")
    return table


def run_eval_cli(model: str, data: str, ratios: Sequence[float], methods: Sequence[str] = ("magnitude",),
                 batch: int = 64, threads: int = 1, png: Optional[str] = None, json_path: Optional[str] = None,
                 calibration: Optional[str] = None) -> list[dict]:
    """What ``onnx-prune eval`` does: sweep, print the table, optionally save PNG and JSON."""
    import json

    from rich.console import Console

    rows = sweep(model, data, ratios, methods=methods, batch=batch, threads=threads, calibration=calibration)
    machine = machine_description()
    title = (f"{Path(model).name}: dense accuracy {100 * rows[0]['dense_accuracy']:.2f}%, batch {batch}, "
             f"{threads} thread(s), {machine}")
    Console(width=max(120, Console().width)).print(sweep_table(rows, title))
    if png:
        plot_sweep(rows, png)
    if json_path:
        doc = dict(model=Path(model).name, data=Path(data).name, machine=machine, load_average=_load_average(),
                   batch=batch, threads=threads, rows=rows)
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")
    return rows
