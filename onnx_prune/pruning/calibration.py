"""Calibration-aware one-shot pruning: Wanda and SparseGPT (docs/calibration.md).

``read_calibration`` reads and checks the calibration data once; ``sparsify_calibrated`` drives
the sparsifiers (sparsifiers.py) that need calibration statistics, for api.py (the methods that
read only the weights, with or without a pattern, are sparsifiers.prune_by_weights; the parsed
--pattern comes from patterns.py). Layers are pruned sequentially in graph order: each
wave of layers (capture.layer_groups) sees activations computed by the model with every earlier
layer already pruned, as in the SparseGPT paper, so later layers compensate for the damage done
upstream.

Sparsity follows the floor rule of masking.py: a layer loses exactly ``floor(R * size)`` weights
(``scope="global"``: all layers together lose ``floor(R * total)``). An N:M pattern instead fixes
every layer's sparsity at ``1 - N/M``; an RxC pattern removes ``floor(R * blocks)`` whole blocks.

``bias_correction``: a method that refits the kept weights (``Sparsifier.refits``: SparseGPT) also
moves error into each layer's bias (bias.py); the next waves are then calibrated on the model with
those biases too.
"""
from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from . import bias as bias_terms
from . import capture, sparsifiers
from ..model import modelio
from .capture import FeedPlan, InputStats
from .frontier import FrontierCapture
from ..errors import OnnxPruneError, UsageError
from .sparsifiers import Pruned, Sparsifier, wanda_scores  # noqa: F401  (wanda_scores: public here too)

Result = dict[str, Pruned]


# ---------------------------------------------------------------------------- calibration data

@dataclass(frozen=True)
class CalibrationData:
    """Calibration arrays checked against a model: ``arrays`` (graph input name -> the samples a
    method uses), how to feed them (``plan``; ``plan.samples`` are used) and how many samples the
    source ``held``, so that the report can say how much of the data went in."""

    arrays: dict[str, np.ndarray]
    plan: FeedPlan
    held: int


def read_calibration(source: Union[str, Path, Mapping[str, np.ndarray]], model: onnx.ModelProto,
                     samples: Optional[int] = None) -> CalibrationData:
    """The calibration data of a run, from a dict of arrays or an .npz file (arrays keyed by graph
    input name, first axis = samples; one clear error when unreadable), checked against the
    model's inputs and cut to the first ``samples`` samples."""
    if isinstance(source, Mapping):
        data = {str(k): np.asarray(v) for k, v in source.items()}
    else:
        data = modelio.read_npz(source, "calibration data")
    arrays, plan = checked_calibration(data, model, samples)
    return CalibrationData(arrays, plan, int(np.shape(data[next(iter(arrays))])[0]))


def checked_calibration(data: Mapping[str, np.ndarray], model: onnx.ModelProto, samples: Optional[int] = None,
                        source: str = "calibration data") -> tuple[dict[str, np.ndarray], FeedPlan]:
    """Validate calibration arrays against the graph inputs; return them (first ``samples``) and
    how to feed them. An array's first axis is the samples: either the model input's own batch
    axis (same rank) or an extra leading axis (rank + 1, one whole input per sample)."""
    inputs = _model_inputs(model)
    names = list(inputs)
    unknown = ", ".join(f"'{k}'" for k in data if k not in inputs)
    missing = [n for n in names if n not in data]
    if missing:
        also = f"; it also holds {unknown}, not an input" if unknown else ""
        raise OnnxPruneError(f"{source} lacks the model input '{missing[0]}' (its inputs: {', '.join(names)}{also})")
    if unknown:  # typically the labels kept next to the inputs: not the model's business
        warnings.warn(f"{source}: ignoring {unknown}, not an input of the model (its inputs: {', '.join(names)})",
                      stacklevel=2)
    arrays = {n: np.asarray(data[n]) for n in names}
    counts = {n: (a.shape[0] if a.ndim else 0) for n, a in arrays.items()}
    if len(set(counts.values())) > 1:
        raise OnnxPruneError(f"{source}: the inputs have different sample counts (first axis): "
                             + ", ".join(f"{n} {c}" for n, c in counts.items()))
    steps, per_sample = set(), set()
    for name, (dtype, dims) in inputs.items():
        fixed_batch = _check_array(source, name, arrays[name], dtype, dims)
        if len(dims) == arrays[name].ndim - 1:
            per_sample.add(name)
            steps.add(1)
        elif fixed_batch is not None:
            steps.add(fixed_batch)
    if len(steps) > 1:
        raise OnnxPruneError(f"{source}: the model's inputs have fixed batch sizes that differ ({sorted(steps)})")
    step = steps.pop() if steps else None
    total = next(iter(counts.values()))
    use = total if samples is None else min(int(samples), total)
    if step:
        use -= use % step
    if use == 0:
        raise OnnxPruneError(f"{source} holds no samples" if not total else
                             f"{source}: {total} samples cannot fill one batch of the model's fixed batch size {step}")
    return {n: a[:use] for n, a in arrays.items()}, FeedPlan(use, step, frozenset(per_sample))


def _model_inputs(model: onnx.ModelProto) -> dict[str, tuple[np.dtype, list]]:
    """Graph inputs that are not initializers: name -> (numpy dtype, dims: int or None if free)."""
    initializers = {t.name for t in model.graph.initializer}
    out = {}
    for v in model.graph.input:
        if v.name in initializers:
            continue
        t = v.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)) if t.elem_type else None
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim] \
            if t.HasField("shape") else None
        out[v.name] = (dtype, dims)
    return out


def _check_array(source: str, name: str, array: np.ndarray, dtype, dims) -> Optional[int]:
    """Dtype and shape of one array; returns the model's fixed batch size when it has one."""
    if dtype is not None and array.dtype != dtype:
        raise OnnxPruneError(f"{source}: '{name}' is {array.dtype}, the model input is {dtype}")
    if dims is None:
        return None
    if array.ndim == len(dims) + 1:
        expected, got = dims, list(array.shape[1:])
        fixed = None
    elif array.ndim == len(dims) and array.ndim >= 1:
        expected, got = dims[1:], list(array.shape[1:])
        fixed = dims[0]
    else:
        raise OnnxPruneError(f"{source}: '{name}' has shape {list(array.shape)}, the model input has rank "
                             f"{len(dims)} (expected samples first, then {_dims_text(dims)})")
    if any(e is not None and e != g for e, g in zip(expected, got)):
        raise OnnxPruneError(f"{source}: '{name}' has shape {list(array.shape)}, which does not match the model "
                             f"input {_dims_text(dims)} (first axis = samples)")
    return fixed


def _dims_text(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


# ---------------------------------------------------------------------------- the sparsifier

def sparsify_calibrated(model: onnx.ModelProto, layers: list, ratios: dict[str, float], *, method: str,
                        calibration: Optional[CalibrationData], pattern: sparsifiers.Pattern = None,
                        scope: str = "layer", bias_correction: bool = bias_terms.BIAS_CORRECTION,
                        progress=False) -> Result:
    """node name -> Pruned (new weight [K, N] float32, keep mask [K, N] bool, new bias or None)
    for every layer, by a method that needs calibration statistics.

    ``method``: a sparsifiers name; ``calibration``: read_calibration's answer (None: the error
    asking for --calibration); ``pattern``: patterns.layer_pattern's answer. ``bias_correction``:
    let a refitting method compensate through the biases where that is exact (a warning names the
    other layers). ``progress``: True for a rich progress bar on stderr, a ``rich.progress.Progress``
    to add the tasks to, or a ``(message, done, total)`` callback (api.Progress, which the CLI draws)."""
    sparsifier = sparsifiers.get(method)
    if calibration is None:
        raise UsageError(f"--method {method} needs --calibration: an .npz of model inputs (first axis = samples)")
    data, plan = calibration.arrays, calibration.plan

    def saliency() -> list[np.ndarray]:  # --scope global scores the weights on the unpruned model
        stats = capture.capture_stats(model, layers, data, plan, hessian=sparsifier.statistics == sparsifiers.HESSIAN)
        return [sparsifier.saliency(l, stats[l.node]) for l in layers]

    drops = sparsifiers.drop_counts(layers, ratios, scope=scope, saliency=saliency, pattern=pattern)
    biased = _bias_layers(layers, bias_correction and sparsifier.refits)
    with _progress(progress, method, len(layers)) as bar:
        return _sequential(model, layers, drops, sparsifier, data, plan, pattern, bar, biased)


def _bias_layers(layers: Sequence, wanted: bool) -> set[str]:
    """The layers whose bias takes the compensation; a warning names those where it would not be
    exact (their bias stays as it is)."""
    if not wanted:
        return set()
    exact = set()
    for layer in layers:
        why = bias_terms.problem(layer)
        if why:
            warnings.warn(f"bias correction skipped for layer {layer.node}: {why}", stacklevel=4)
        else:
            exact.add(layer.node)
    return exact


def _sequential(model, layers, drops, sparsifier: Sparsifier, data, plan, nm, bar, biased: set[str]) -> Result:
    """Prune wave by wave, each wave calibrated on the model with all earlier waves pruned (and
    their biases compensated)."""
    result: Result = {}
    capturing = FrontierCapture(model, layers, data, plan, hessian=sparsifier.statistics == sparsifiers.HESSIAN)
    for wave in capture.layer_groups(model, layers):
        stats = capturing.capture(wave, result)
        for layer in wave:
            result[layer.node] = _prune_layer(sparsifier, layer, stats[layer.node], drops[layer.node], nm, bar,
                                              layer.node in biased)
    return result


def _prune_layer(sparsifier: Sparsifier, layer, stats: Optional[InputStats], drop: int, nm, bar, bias: bool
                 ) -> Pruned:
    bar.start_layer(layer.node)
    try:
        pruned = sparsifier.update_mask(layer, stats, drop, pattern=nm, on_block=bar.blocks, bias=bias)
    except ValueError as exc:
        raise OnnxPruneError(str(exc)) from None
    bar.finish_layer()
    return pruned


# ---------------------------------------------------------------------------- progress

class _NoBar:
    def start_layer(self, name: str) -> None:
        pass

    def blocks(self, done: int, total: int) -> None:
        pass

    def finish_layer(self) -> None:
        pass


class _RichBar(_NoBar):
    """One task for the layers, one for the blocks of the layer being pruned."""

    def __init__(self, progress, method: str, layers: int) -> None:
        self.progress = progress
        self.layers = progress.add_task(f"{method}: layers", total=layers)
        self.block_task = progress.add_task("blocks", total=1, visible=sparsifiers.get(method).refits)

    def start_layer(self, name: str) -> None:
        self.progress.update(self.block_task, description=f"  {name}", completed=0, total=1)

    def blocks(self, done: int, total: int) -> None:
        self.progress.update(self.block_task, completed=done, total=total)

    def finish_layer(self) -> None:
        self.progress.advance(self.layers)


class _CallbackBar(_NoBar):
    """The same events as ``(message, done, total)`` calls: layers done until a layer reports its
    blocks (SparseGPT), then that layer's blocks done; the message names the layer."""

    def __init__(self, report, method: str, layers: int) -> None:
        self.report, self.method, self.layers = report, method, layers
        self.done, self.name = 0, ""

    def start_layer(self, name: str) -> None:
        self.name = f"layer {self.done + 1}/{self.layers} {name}"
        self.report(self._message(), self.done, self.layers)

    def blocks(self, done: int, total: int) -> None:
        self.report(self._message(), done, total)

    def finish_layer(self) -> None:
        self.done += 1
        self.report(self._message(), self.done, self.layers)

    def _message(self) -> str:
        return f"{self.method}: {self.name}"


@contextmanager
def _progress(progress, method: str, layers: int) -> Iterator[_NoBar]:
    if not progress:
        yield _NoBar()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if callable(progress) and not isinstance(progress, Progress):
        yield _CallbackBar(progress, method, layers)
        return

    if isinstance(progress, Progress):
        yield _RichBar(progress, method, layers)
        return
    from rich.console import Console

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(file=sys.stderr), transient=True) as bar:
        yield _RichBar(bar, method, layers)
