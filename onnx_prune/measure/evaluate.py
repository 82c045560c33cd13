"""Accuracy and latency of pruned models across ratios: the numbers a user needs to pick a ratio,
next to onnxruntime's own int8 quantization of the same model (what a user who wants speed would
otherwise use).

Dense and pruned (or int8) sessions run in the same onnxruntime process with the same thread count,
timed in interleaved rounds so that machine noise hits both alike; the median is reported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from . import baselines as baseline_models
from ..runtime import session as runtime
from . import timing
from .baselines import Baseline
from ..check.report import KEPT_DENSE
from ..pruning.auto_dense import DENSE_KEEP_THRESHOLD
from ..errors import OnnxPruneError
from .machine import describe, machine_info

ModelOrPath = Union[onnx.ModelProto, str, Path]
Data = Union[str, Path, Mapping[str, np.ndarray]]
LABELS = "labels"
EVAL_CHUNK = 1000  # rows per onnxruntime call while scoring accuracy: bounds memory on big test sets
ROUNDS = 15  # interleaved dense/pruned timing rounds per sweep row
ROW_KEYS = ("method", "ratio", "dense_accuracy", "pruned_accuracy", "accuracy_drop", "top1_agreement", "cosine",
            "max_rel_error", "dense_ms", "pruned_ms", "speedup", "sparse_layers", "dense_layers", "sparsity",
            "size_before", "size_after", "batch", "threads")
BASELINE_KEYS = ("baseline", "what", "accuracy", "accuracy_drop", "top1_agreement", "cosine", "dense_ms", "ms",
                 "speedup", "max_rel_error", "size", "batch", "threads")
Progress = Callable[[str, int, int], None]  # (what is being done, steps done, steps in all)


# ----------------------------------------------------------------------------- data and sessions

def load_eval_data(data: Data) -> dict[str, np.ndarray]:
    """The .npz (or dict) as arrays; one clear error when it cannot be read or lacks labels."""
    from ..model.modelio import read_npz

    if isinstance(data, Mapping):
        arrays = {k: np.asarray(v) for k, v in data.items()}
    else:
        arrays = read_npz(data, "evaluation data")
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


# ----------------------------------------------------------------------------- accuracy

def evaluate_accuracy(model: ModelOrPath, data_npz: Data, *, session_options=None, threads: int = 1) -> float:
    """Top-1 accuracy: argmax over the last axis of the model's first output against 'labels'.

    ``data_npz``: .npz path (or dict) with 'labels' [n] and one array per graph input keyed by
    name, first axis = samples. Pruned models get the SparseGemm library registered automatically.
    """
    arrays = load_eval_data(data_npz)
    session = runtime.open_session(model, options=session_options, threads=threads)
    return _accuracy(session, model_feeds(session, arrays), arrays[LABELS])


def _accuracy(session, feeds: Mapping[str, np.ndarray], labels: np.ndarray) -> float:
    return _accuracy_of(_scores(session, feeds, len(labels)), labels)


def _accuracy_of(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores.argmax(axis=-1) == labels).sum()) / len(labels)


def _scores(session, feeds: Mapping[str, np.ndarray], count: int) -> np.ndarray:
    """The first output over the whole data set, [samples, classes], computed in chunks."""
    if count == 0:
        raise OnnxPruneError("evaluation data has no samples")
    first = session.get_outputs()[0].name
    parts = []
    for start in range(0, count, EVAL_CHUNK):
        chunk = {k: v[start:start + EVAL_CHUNK] for k, v in feeds.items()}
        scores = session.run([first], chunk)[0]
        if scores.ndim < 2 or scores.shape[0] != len(next(iter(chunk.values()))):
            raise OnnxPruneError(f"first output '{first}' has shape {list(scores.shape)}; "
                                 "expected [samples, classes]")
        parts.append(scores)
    return np.concatenate(parts)


def _fidelity(dense_scores: np.ndarray, pruned_scores: np.ndarray) -> dict:
    """The pruned scores against the dense ones on the whole data set (check/fidelity.py): top-1
    agreement, mean cosine of each sample's scores, max relative error."""
    from ..check.fidelity import max_relative_error, mean_cosine

    agreement = float(np.mean(dense_scores.argmax(axis=-1) == pruned_scores.argmax(axis=-1)))
    return dict(top1_agreement=agreement, cosine=mean_cosine(dense_scores, pruned_scores),
                max_rel_error=max_relative_error(dense_scores, pruned_scores))


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


def paired_latency_ms(dense, pruned, feeds: Mapping[str, np.ndarray], *, rounds: int = ROUNDS,
                      runs: int = timing.MIN_RUNS) -> tuple[float, float]:
    """Median latency (ms) of two sessions timed in interleaved rounds on the same inputs."""
    t = timing.time_pair(lambda: dense.run(None, feeds), lambda: pruned.run(None, feeds), rounds=rounds,
                         min_runs=runs)
    return t.first_s * 1e3, t.second_s * 1e3


# ----------------------------------------------------------------------------- sweep

def sweep(model_path: Union[str, Path], data_npz: Data, ratios: Sequence[float],
          methods: Sequence[str] = ("magnitude",), batch: int = 64, threads: int = 1,
          calibration: Optional[Union[str, Path, Mapping[str, np.ndarray]]] = None, *,
          rounds: int = ROUNDS, runs: int = timing.MIN_RUNS, progress: Optional[Progress] = None,
          auto_dense: bool = True) -> list[dict]:
    """One row per method x ratio with the keys in ROW_KEYS.

    Accuracy on the whole data set; latency (ms per call of ``batch`` samples) of dense vs pruned
    sessions in this process with ``threads`` intra-op threads. Calibration (for wanda/sparsegpt)
    is passed through to ``api.prune``. ``progress`` hears of each setting before it runs.
    ``auto_dense`` as in api.prune: a row's ``dense_layers`` counts the layers it kept unpruned (a
    row with no sparse layer times the input model against itself).
    """
    import warnings

    from ..api import NothingPruned, prune

    if not ratios or not methods:
        raise OnnxPruneError("sweep needs at least one ratio and one method")
    timing.check_rounds(rounds)
    dense = _Dense.open(model_path, data_npz, batch, threads)
    settings = [(method, float(ratio)) for method in methods for ratio in ratios]
    rows = []
    for done, (method, ratio) in enumerate(settings):
        if progress:
            progress(f"{method} {ratio:g}: pruning, scoring, timing", done, len(settings))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NothingPruned)  # the row's dense_layers says it
            pruned_model, report = prune(model_path, ratio=ratio, method=method, calibration=calibration,
                                         auto_dense=auto_dense)
        pruned = runtime.open_session(pruned_model, library=True, threads=threads)
        pruned_scores = _scores(pruned, dense.feeds, len(dense.labels))
        pruned_accuracy = _accuracy_of(pruned_scores, dense.labels)
        dense_ms, pruned_ms = paired_latency_ms(dense.session, pruned, dense.timing_feeds, rounds=rounds, runs=runs)
        rows.append(_row(method, ratio, dense.accuracy, pruned_accuracy, dense_ms, pruned_ms, report, batch, threads,
                         _fidelity(dense.scores, pruned_scores)))
    if progress:
        progress("done", len(settings), len(settings))
    return rows


class _Dense:
    """The dense model's session, its accuracy and the feeds every comparison uses."""

    def __init__(self, session, feeds: dict, labels: np.ndarray, batch: int) -> None:
        self.session, self.feeds, self.labels = session, feeds, labels
        self.timing_feeds = batch_feeds(feeds, batch)
        self.scores = _scores(session, feeds, len(labels))  # what each pruned model's fidelity is measured against
        self.accuracy = _accuracy_of(self.scores, labels)

    @classmethod
    def open(cls, model_path: Union[str, Path], data_npz: Data, batch: int, threads: int) -> "_Dense":
        arrays = load_eval_data(data_npz)
        session = runtime.open_session(model_path, library=True, threads=threads)
        return cls(session, model_feeds(session, arrays), arrays[LABELS], batch)


def baseline_points(model_path: Union[str, Path], data_npz: Data, baselines: Sequence[Baseline], *,
                    batch: int = 64, threads: int = 1, rounds: int = ROUNDS, runs: int = timing.MIN_RUNS,
                    progress: Optional[Progress] = None) -> list[dict]:
    """One dict (keys BASELINE_KEYS) per baseline: its accuracy on the same data and its latency
    against dense, timed like a sweep row. ``max_rel_error`` compares its outputs with dense's on
    the timing batch (reported, not enforced: the accuracy shows what quantization costs)."""
    from ..model.modelio import load_model
    from ..check.verify import max_relative_error

    if not baselines:
        return []
    dense = _Dense.open(model_path, data_npz, batch, threads)
    dense_model = load_model(model_path)
    points = []
    for done, baseline in enumerate(baselines):
        if progress:
            progress(f"{baseline.name}: quantizing with onnxruntime, scoring, timing", done, len(baselines))
        try:
            model = baseline.build(dense_model)
        except OnnxPruneError as exc:
            raise OnnxPruneError(f"{exc} (--baseline none skips it)") from exc
        session = runtime.open_session(model, library=False, threads=threads)
        names = [o.name for o in dense.session.get_outputs()]
        errors = {n: max_relative_error(d, c) for n, d, c in
                  zip(names, runtime.run(dense.session, dense.timing_feeds), runtime.run(session, dense.timing_feeds))}
        scores = _scores(session, dense.feeds, len(dense.labels))
        accuracy = _accuracy_of(scores, dense.labels)
        fidelity = _fidelity(dense.scores, scores)
        dense_ms, ms = paired_latency_ms(dense.session, session, dense.timing_feeds, rounds=rounds, runs=runs)
        points.append(dict(baseline=baseline.name, what=baseline.label, accuracy=accuracy,
                           accuracy_drop=dense.accuracy - accuracy, top1_agreement=fidelity["top1_agreement"],
                           cosine=fidelity["cosine"], dense_ms=dense_ms, ms=ms,
                           speedup=dense_ms / ms if ms > 0 else float("inf"), max_rel_error=errors,
                           size=model.ByteSize(), batch=int(batch), threads=int(threads)))
    return points


def _row(method: str, ratio: float, dense_accuracy: float, pruned_accuracy: float, dense_ms: float,
         pruned_ms: float, report, batch: int, threads: int, fidelity: Mapping[str, float]) -> dict:
    sparse = report.sparse_layers
    kept_dense = [l for l in report.layers if l.status == KEPT_DENSE]
    params = sum(l.params for l in report.layers)
    kept = sum(l.nnz for l in report.layers)
    return dict(method=method, ratio=ratio, dense_accuracy=dense_accuracy, pruned_accuracy=pruned_accuracy,
                accuracy_drop=dense_accuracy - pruned_accuracy, **fidelity, dense_ms=dense_ms, pruned_ms=pruned_ms,
                speedup=dense_ms / pruned_ms if pruned_ms > 0 else float("inf"), sparse_layers=len(sparse),
                dense_layers=len(kept_dense),
                sparsity=(1 - kept / params) if params else 0.0, size_before=int(report.size_before),
                size_after=int(report.size_after), batch=int(batch), threads=int(threads))


# ----------------------------------------------------------------------------- output

def check_plotting() -> None:
    """Plotting needs matplotlib, an optional dependency: say so before a sweep, not after it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OnnxPruneError("--png needs matplotlib: pip install matplotlib") from None


def plot_sweep(rows: Sequence[Mapping], png_path: Union[str, Path], baselines: Sequence[Mapping] = ()) -> None:
    """Three panels: top-1 accuracy vs ratio per method (dense as a dashed line), speedup vs ratio,
    and accuracy against latency (one point per method and ratio, dense and each baseline marked).
    Points where auto-dense kept layers unpruned are drawn hollow (KEPT_DENSE_LABEL)."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = sweep_figure(plt, rows, baselines)
    fig.savefig(str(png_path), dpi=110)
    plt.close(fig)


KEPT_DENSE_LABEL = "layers kept dense (auto-dense)"


def sweep_figure(plt, rows: Sequence[Mapping], baselines: Sequence[Mapping] = ()):
    """plot_sweep's figure (pyplot passed in, its backend chosen by the caller)."""
    if not rows:
        raise OnnxPruneError("nothing to plot: the sweep has no rows")
    fig, (acc_ax, speed_ax, trade_ax) = plt.subplots(1, 3, figsize=(15, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["ratio"])
        ratios = [r["ratio"] for r in mine]
        acc_ax.plot(ratios, [100 * r["pruned_accuracy"] for r in mine], "o-", label=method)
        speed_ax.plot(ratios, [r["speedup"] for r in mine], "o-", label=method)
        trade_ax.plot([r["pruned_ms"] for r in mine], [100 * r["pruned_accuracy"] for r in mine], "o-", label=method)
        for r in mine:
            trade_ax.annotate(f"{r['ratio']:g}", (r["pruned_ms"], 100 * r["pruned_accuracy"]), fontsize=7,
                              textcoords="offset points", xytext=(3, 3))
    _mark_kept_dense(rows, acc_ax, speed_ax, trade_ax)
    acc_ax.axhline(100 * rows[0]["dense_accuracy"], color="gray", ls="--", label="dense")
    speed_ax.axhline(1.0, color="gray", ls="--", label="dense")
    dense_ms = float(np.median([r["dense_ms"] for r in [*rows, *baselines]]))
    trade_ax.plot([dense_ms], [100 * rows[0]["dense_accuracy"]], "k*", markersize=12, label="dense")
    for b in baselines:
        trade_ax.plot([b["ms"]], [100 * b["accuracy"]], "D", markersize=9, label=f"onnxruntime {b['baseline']}")
    acc_ax.set(xlabel="pruning ratio", ylabel="top-1 accuracy (%)", title="Accuracy")
    speed_ax.set(xlabel="pruning ratio", ylabel="speedup (dense ms / pruned ms)",
                 title=f"Latency, batch {rows[0]['batch']}, {rows[0]['threads']} thread(s)")
    trade_ax.set(xlabel=f"latency (ms per batch of {rows[0]['batch']})", ylabel="top-1 accuracy (%)",
                 title="Accuracy against latency (labels: ratio)")
    for ax in (acc_ax, speed_ax, trade_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def _mark_kept_dense(rows: Sequence[Mapping], acc_ax, speed_ax, trade_ax) -> None:
    """Hollow markers over the points where auto-dense kept layers unpruned: such a point is (partly)
    the input model, not a pruned one."""
    marked = [r for r in rows if r.get("dense_layers")]
    if not marked:
        return
    style = dict(linestyle="none", marker="o", markersize=10, markerfacecolor="none", color="black")
    acc_ax.plot([r["ratio"] for r in marked], [100 * r["pruned_accuracy"] for r in marked], label=KEPT_DENSE_LABEL,
                **style)
    speed_ax.plot([r["ratio"] for r in marked], [r["speedup"] for r in marked], label=KEPT_DENSE_LABEL, **style)
    trade_ax.plot([r["pruned_ms"] for r in marked], [100 * r["pruned_accuracy"] for r in marked],
                  label=KEPT_DENSE_LABEL, **style)


def _load_average() -> Optional[list[float]]:
    """1/5/15-minute load when the sweep ended: other work on the machine skews latency."""
    import os

    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def sweep_table(rows: Sequence[Mapping], title: str = "", baselines: Sequence[Mapping] = ()):
    from rich.table import Table

    table = Table(title=title or None)
    for header in ("method", "ratio", "sparsity", "accuracy", "Δ acc", "agree", "cosine", "dense ms", "pruned ms",
                   "speedup", "sparse layers", "size"):
        table.add_column(header, justify="left" if header == "method" else "right")
    for r in rows:
        table.add_row(r["method"], f"{r['ratio']:.2f}", f"{100 * r['sparsity']:.1f}%",
                      f"{100 * r['pruned_accuracy']:.2f}%", f"{100 * (r['pruned_accuracy'] - r['dense_accuracy']):+.2f}",
                      f"{100 * r['top1_agreement']:.1f}%", f"{r['cosine']:.4f}", f"{r['dense_ms']:.3f}",
                      f"{r['pruned_ms']:.3f}", f"{r['speedup']:.2f}x",
                      _layers_cell(r), f"{r['size_after'] / 1e6:.2f} MB")
    for b in baselines:
        table.add_row(f"onnxruntime {b['baseline']}", "-", "-", f"{100 * b['accuracy']:.2f}%",
                      f"{-100 * b['accuracy_drop'] + 0.0:+.2f}", f"{100 * b['top1_agreement']:.1f}%",
                      f"{b['cosine']:.4f}", f"{b['dense_ms']:.3f}", f"{b['ms']:.3f}",
                      f"{b['speedup']:.2f}x", "-", f"{b['size'] / 1e6:.2f} MB")
    return table


def _layers_cell(row: Mapping) -> str:
    """Sparse layers, and those auto-dense kept dense when there are any."""
    dense = row.get("dense_layers", 0)
    return f"{row['sparse_layers']}" + (f" ({dense} kept dense)" if dense else "")


def run_eval_cli(model: str, data: str, ratios: Sequence[float], methods: Sequence[str] = ("magnitude",),
                 batch: int = 64, threads: int = 1, png: Optional[str] = None, json_path: Optional[str] = None,
                 calibration: Optional[str] = None, baselines: Sequence[str] = ("int8",),
                 progress: Optional[Progress] = None, auto_dense: bool = True) -> list[dict]:
    """What ``onnx-prune eval`` does: sweep (and time the baselines), print the table, optionally
    save PNG and JSON."""
    import json

    from rich.console import Console

    from ..model.modelio import write_text_atomic

    if png:
        check_plotting()
    chosen = baseline_models.parse(baselines)
    rows = sweep(model, data, ratios, methods=methods, batch=batch, threads=threads, calibration=calibration,
                 progress=progress, auto_dense=auto_dense)
    points = baseline_points(model, data, chosen, batch=batch, threads=threads, progress=progress)
    machine = describe(machine_info())
    title = (f"{Path(model).name}: dense accuracy {100 * rows[0]['dense_accuracy']:.2f}%, batch {batch}, "
             f"{threads} thread(s), {machine}")
    console = Console(width=max(150, Console().width))
    console.print(sweep_table(rows, title, points))
    console.print("fidelity to the dense model on the same data: agree = top-1 agreement with its answers, "
                  "cosine = mean cosine of each sample's scores to its scores", markup=False, highlight=False)
    for point in points:
        console.print(f"{point['baseline']}: {point['what']}")
    if any(r["dense_layers"] for r in rows):
        console.print(f"kept dense: layers auto-dense left unpruned (they would keep more than "
                      f"{DENSE_KEEP_THRESHOLD:.0%} of their weights); --no-auto-dense prunes them", markup=False,
                      highlight=False, soft_wrap=True)
    if png:
        plot_sweep(rows, png, points)
        console.print(f"wrote {png}", markup=False, highlight=False, soft_wrap=True)
    if json_path:
        doc = dict(model=Path(model).name, data=Path(data).name, machine=machine, load_average=_load_average(),
                   batch=batch, threads=threads, rows=rows, baselines=points)
        write_text_atomic(json_path, json.dumps(doc, indent=2) + "\n")
        console.print(f"wrote {json_path}", markup=False, highlight=False, soft_wrap=True)
    return rows
