"""Calibration-aware one-shot pruning: Wanda and SparseGPT, N:M patterns (docs/calibration.md).

``sparsify`` is the sparsifier api.py calls whenever the method is not plain magnitude pruning or
a pattern is set. Layers are pruned sequentially in graph order: each wave of layers
(capture.layer_groups) sees activations computed by the model with every earlier layer already
pruned, as in the SparseGPT paper, so later layers compensate for the damage done upstream.

Sparsity follows the floor rule of masking.py: a layer loses exactly ``floor(R * size)`` weights
(``scope="global"``: all layers together lose ``floor(R * total)``). An N:M pattern instead fixes
every layer's sparsity at ``1 - N/M``.
"""
from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from . import capture, masking, modelio
from .capture import FeedPlan, InputStats
from .errors import OnnxPruneError
from .sparsegpt import inverse_hessian_factor, obs_errors, sparsegpt_prune

METHODS = ("magnitude", "wanda", "sparsegpt")
Result = dict[str, tuple[np.ndarray, np.ndarray]]


# ---------------------------------------------------------------------------- calibration data

def load_calibration(path: Union[str, Path], model: onnx.ModelProto, samples: Optional[int] = None
                     ) -> dict[str, np.ndarray]:
    """The .npz at ``path`` (arrays keyed by graph input name, first axis = samples), checked
    against the model's inputs and cut to the first ``samples`` samples."""
    data, _ = checked_calibration(read_npz(path), model, samples, source=f"'{path}'")
    return data


def read_npz(path: Union[str, Path]) -> dict[str, np.ndarray]:
    return modelio.read_npz(path, "calibration data")


def checked_calibration(data: Mapping[str, np.ndarray], model: onnx.ModelProto, samples: Optional[int] = None,
                        source: str = "calibration data") -> tuple[dict[str, np.ndarray], FeedPlan]:
    """Validate calibration arrays against the graph inputs; return them (first ``samples``) and
    how to feed them. An array's first axis is the samples: either the model input's own batch
    axis (same rank) or an extra leading axis (rank + 1, one whole input per sample)."""
    inputs = _model_inputs(model)
    names = list(inputs)
    unknown = [k for k in data if k not in inputs]
    if unknown:
        raise OnnxPruneError(f"{source}: '{unknown[0]}' is not an input of the model (its inputs: {', '.join(names)})")
    missing = [n for n in names if n not in data]
    if missing:
        raise OnnxPruneError(f"{source} lacks the model input '{missing[0]}' (its inputs: {', '.join(names)})")
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

def sparsify(model: onnx.ModelProto, layers: list, ratios: dict[str, float], *, method: str,
             calibration: Optional[Mapping[str, np.ndarray]], samples: Optional[int], pattern: Optional[str],
             scope: str, progress=False) -> Result:
    """node name -> (new weight [K, N] float32, keep mask [K, N] bool) for every layer.

    ``method``: magnitude (only with a pattern), wanda or sparsegpt (these need ``calibration``,
    arrays keyed by graph input name, first axis = samples). ``progress``: True for a rich
    progress bar on stderr, or a ``rich.progress.Progress`` to add the tasks to."""
    if method not in METHODS:
        raise OnnxPruneError(f"--method must be one of {', '.join(METHODS)}, got '{method}'")
    nm = _pattern(pattern, layers, ratios, scope)
    if method == "magnitude":
        return {l.node: _apply(l.weight, _magnitude_mask(l, ratios[l.node], nm)) for l in layers}
    if calibration is None:
        raise OnnxPruneError(f"--method {method} needs --calibration: an .npz of model inputs (first axis = samples)")
    data, plan = checked_calibration(calibration, model, samples)
    drops = _drop_counts(model, layers, ratios, method, data, plan, scope, nm)
    with _progress(progress, method, len(layers)) as bar:
        return _sequential(model, layers, drops, method, data, plan, nm, bar)


def _pattern(pattern: Optional[str], layers: Sequence, ratios: Mapping[str, float], scope: str
             ) -> Optional[tuple[int, int]]:
    if not pattern:
        return None
    try:
        n, m = masking.parse_pattern(pattern)
        for layer in layers:
            masking.check_pattern_fits(layer.K, m, layer.node)
    except ValueError as exc:
        raise OnnxPruneError(str(exc)) from None
    if scope == "global":
        raise OnnxPruneError(f"--pattern {pattern} fixes every layer's sparsity at {1 - n / m:g}; "
                             "it cannot be combined with --scope global")
    other = sorted({r for r in ratios.values() if abs(r - (1 - n / m)) > 1e-9})
    if other:
        warnings.warn(f"--pattern {pattern} removes exactly {m - n} of every {m} weights (sparsity {1 - n / m:g}); "
                      f"the requested ratio {', '.join(f'{r:g}' for r in other)} is not used", stacklevel=3)
    return n, m


def _magnitude_mask(layer, ratio: float, nm: Optional[tuple[int, int]]) -> np.ndarray:
    if nm is not None:
        return masking.nm_mask(masking.magnitude_scores(layer.weight), *nm, layer=layer.node)
    return masking.magnitude_mask(layer.weight, ratio)


def _apply(weight: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.where(keep, weight, np.float32(0)).astype(np.float32), keep


def _drop_counts(model, layers, ratios, method, data, plan, scope, nm) -> dict[str, int]:
    """Weights each layer loses: the floor rule per layer, or the global allocation."""
    if nm is not None or scope != "global":
        return {l.node: masking.removal_count(ratios[l.node], l.size) for l in layers}
    distinct = set(ratios[l.node] for l in layers)
    if len(distinct) > 1:
        raise OnnxPruneError("--layer-ratio cannot be combined with --scope global (one ratio for all layers)")
    stats = capture.capture_stats(model, layers, data, plan, hessian=method == "sparsegpt")
    scores = [normalised_saliency(l.weight, stats[l.node], method, l.node) for l in layers]
    return dict(zip((l.node for l in layers), masking.global_drop_counts(scores, distinct.pop())))


def normalised_saliency(weight: np.ndarray, stats: InputStats, method: str, layer: str = "?") -> np.ndarray:
    """Each weight's share of its layer's total saliency, comparable across layers.

    Saliency estimates the output error caused by removing the weight alone: Wanda's
    ``w² ‖x_k‖²`` (the square of its score), SparseGPT's OBS error ``w² / [H⁻¹]_kk``. Dividing by
    the layer's total makes layers comparable, so one global threshold takes more weights from
    the layers where they matter least."""
    if method == "sparsegpt":
        factor, dead = inverse_hessian_factor(stats.hessian, layer=layer)
        saliency = obs_errors(weight, factor, dead)
    else:
        saliency = np.asarray(weight, dtype=np.float64) ** 2 * stats.sq_norms[:, None]
    total = float(saliency.sum())
    return saliency / total if total > 0 else saliency


def _sequential(model, layers, drops, method, data, plan, nm, bar) -> Result:
    """Prune wave by wave, each wave calibrated on the model with all earlier waves pruned."""
    result: Result = {}
    for wave in capture.layer_groups(model, layers):
        current = capture.with_weights(model, layers, {n: w for n, (w, _) in result.items()})
        stats = capture.capture_stats(current, wave, data, plan, hessian=method == "sparsegpt")
        for layer in wave:
            bar.start_layer(layer.node)
            result[layer.node] = _prune_layer(layer, stats[layer.node], drops[layer.node], method, nm, bar)
            bar.finish_layer()
    return result


def _prune_layer(layer, stats: InputStats, drop: int, method: str, nm, bar) -> tuple[np.ndarray, np.ndarray]:
    try:
        if method == "sparsegpt":
            return sparsegpt_prune(layer.weight, stats.hessian, drop, pattern=nm, layer=layer.node,
                                   on_block=bar.blocks)
        scores = wanda_scores(layer.weight, stats.sq_norms)
        keep = masking.nm_mask(scores, *nm, layer=layer.node) if nm else masking.per_output_mask(scores, drop)
        return _apply(layer.weight, keep)
    except ValueError as exc:
        raise OnnxPruneError(str(exc)) from None


def wanda_scores(weight: np.ndarray, sq_norms: np.ndarray) -> np.ndarray:
    """Wanda (Sun et al. 2023): ``|w_kn| · ‖x_k‖₂``, compared within each output n."""
    return np.abs(np.asarray(weight, dtype=np.float64)) * np.sqrt(np.asarray(sq_norms, dtype=np.float64))[:, None]


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
        self.block_task = progress.add_task("blocks", total=1, visible=method == "sparsegpt")

    def start_layer(self, name: str) -> None:
        self.progress.update(self.block_task, description=f"  {name}", completed=0, total=1)

    def blocks(self, done: int, total: int) -> None:
        self.progress.update(self.block_task, completed=done, total=total)

    def finish_layer(self) -> None:
        self.progress.advance(self.layers)


@contextmanager
def _progress(progress, method: str, layers: int) -> Iterator[_NoBar]:
    if not progress:
        yield _NoBar()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if isinstance(progress, Progress):
        yield _RichBar(progress, method, layers)
        return
    from rich.console import Console

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(file=sys.stderr), transient=True) as bar:
        yield _RichBar(bar, method, layers)
