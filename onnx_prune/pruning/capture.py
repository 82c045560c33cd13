"""Calibration statistics of the layers' inputs, gathered by running the model in onnxruntime.

For each layer input ``X`` (the tensor A feeding a layer, N-D flattened to ``[-1, K]``, Aᵀ for
transA layers) it accumulates, in float64 over all calibration samples, ``H = XᵀX`` (SparseGPT's
Hessian), the squared column norms ``Σ x_k²`` (Wanda) and the column sums ``Xᵀ1`` (bias
compensation). Data is fed in batches sized so the
captured activations stay under CAPTURE_BYTES: memory is bounded whatever the sample count.

Sequential pruning (as in the SparseGPT paper) needs each layer's inputs computed by the model
whose earlier layers are already pruned: ``layer_groups`` orders the layers in waves (a layer
joins a wave once every layer upstream of it is done) and ``with_weights`` writes the pruned
weights, as masked dense tensors, into a copy of the model for the next wave's capture.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Collection, Iterator, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..runtime import session as runtime
from .bias import write_dense
from ..model.graph import node_reads
from ..errors import OnnxPruneError

CAPTURE_BYTES = 256 * 2**20     # activations captured per onnxruntime run, at most (after the first)
FIRST_BATCH = 8                 # samples in the first run, which measures the bytes per sample
MAX_BATCH = 1024
ACCUMULATE_ROWS = 4096          # rows of X converted to float64 and accumulated at a time


@dataclass
class InputStats:
    """What calibration says about one layer input X [rows, K]."""

    rows: int
    sq_norms: np.ndarray                 # [K] float64, Σ_rows x_k²
    hessian: Optional[np.ndarray]        # [K, K] float64, XᵀX (None when not asked for)
    input_sum: Optional[np.ndarray] = None  # [K] float64, Xᵀ1 = Σ_rows x_k (for bias compensation)


@dataclass(frozen=True)
class FeedPlan:
    """How calibration arrays become onnxruntime feeds: ``step`` samples per run (None: any),
    and the inputs whose arrays hold one whole model input per sample (fed one at a time)."""

    samples: int
    step: Optional[int]
    per_sample: frozenset


def capture_stats(model: onnx.ModelProto, layers: Sequence, calibration: Mapping[str, np.ndarray],
                  plan: FeedPlan, *, hessian: bool) -> dict[str, InputStats]:
    """Run ``model`` over all calibration samples; node name -> stats of that layer's input."""
    graph_inputs = {v.name for v in model.graph.input}
    exposed = sorted({layer.input_name for layer in layers} - graph_inputs)
    stats, _ = capture_stats_from(_exposing(model, exposed) if exposed else model, layers, calibration, plan,
                                  hessian=hessian, outputs=exposed)
    return stats


Cached = list[dict[str, np.ndarray]]   # per calibration batch: tensor name -> value (frontier.py)


def capture_stats_from(model: onnx.ModelProto, layers: Sequence, calibration: Mapping[str, np.ndarray],
                       plan: FeedPlan, *, hessian: bool, outputs: Sequence[str], cached: Optional[Cached] = None,
                       keep: Collection[str] = (), ranges: Optional[Sequence[tuple[int, int]]] = None,
                       max_batch: int = MAX_BATCH) -> tuple[dict[str, InputStats], list[tuple[tuple[int, int], dict[str, np.ndarray]]]]:
    """capture_stats on a ``model`` whose graph outputs are ``outputs`` (the layer inputs first),
    fed the calibration inputs and, per batch, the tensors of ``cached`` it reads. Returns the
    stats, and per batch its sample range and the values of the ``keep`` tensors (from the cache
    or from this run). ``ranges``: the batches to use (those of an earlier call with a cache);
    else batches of at most ``max_batch`` samples."""
    keys = {layer.node: (layer.input_name, bool(layer.trans_a)) for layer in layers}
    sizes = {keys[layer.node]: layer.K for layer in layers}
    session = _Session(model) if outputs else None
    wanted = set(session.input_names) if session is not None else set()
    acc = {key: _Accumulator(k, hessian) for key, k in sizes.items()}
    kept = []
    for index, (span, feeds) in enumerate(_batches(calibration, plan, session, ranges, max_batch)):
        known = {**feeds, **(cached[index] if cached else {})}
        values = dict(zip(outputs, session.run(outputs, {n: v for n, v in known.items() if n in wanted})))\
            if session is not None else {}
        for (name, trans_a), a in acc.items():
            tensor = values[name] if name in values else known[name]
            a.add(_as_rows(tensor, trans_a, sizes[(name, trans_a)], name))
        kept.append((span, {n: values[n] if n in values else known[n] for n in keep}))
        del values, known
    stats = {key: a.result() for key, a in acc.items()}
    for layer in layers:
        _check_finite(stats[keys[layer.node]], layer.node)
    return {layer.node: stats[keys[layer.node]] for layer in layers}, kept


class _Accumulator:
    def __init__(self, k: int, hessian: bool) -> None:
        self.rows = 0
        self.sq = np.zeros(k, dtype=np.float64)
        self.sum = np.zeros(k, dtype=np.float64)
        self.h = np.zeros((k, k), dtype=np.float64) if hessian else None

    def add(self, x: np.ndarray) -> None:
        # in slices of ACCUMULATE_ROWS rows: the float64 copy of a whole batch of wide activations
        # (32k tokens x 1536) alone would take 400 MB
        for start in range(0, x.shape[0], ACCUMULATE_ROWS):
            part = x[start:start + ACCUMULATE_ROWS].astype(np.float64)
            self.rows += part.shape[0]
            self.sq += np.einsum("ij,ij->j", part, part)
            self.sum += part.sum(axis=0)
            if self.h is not None:
                self.h += part.T @ part    # numpy takes this as one syrk

    def result(self) -> InputStats:
        return InputStats(self.rows, self.sq, self.h, self.sum)


def _as_rows(tensor: np.ndarray, trans_a: bool, k: int, name: str) -> np.ndarray:
    """The layer's X as [rows, K]: Aᵀ for transA, N-D A flattened over its leading dims."""
    t = np.asarray(tensor)
    if trans_a:
        if t.ndim != 2 or t.shape[0] != k:
            raise OnnxPruneError(f"calibration: tensor '{name}' has shape {list(t.shape)}, expected [{k}, M]")
        return t.T
    if t.ndim == 0 or t.shape[-1] != k:
        raise OnnxPruneError(f"calibration: tensor '{name}' has shape {list(t.shape)}, expected [..., {k}]")
    return t.reshape(-1, k)


def _check_finite(stats: InputStats, node: str) -> None:
    if not np.all(np.isfinite(stats.sq_norms)):
        raise OnnxPruneError(f"calibration: the inputs of layer {node} contain NaN or inf "
                             "(check the calibration data)")
    if stats.rows == 0:
        raise OnnxPruneError(f"calibration: layer {node} received no input rows")


def _batches(calibration: Mapping[str, np.ndarray], plan: FeedPlan, session,
             ranges: Optional[Sequence[tuple[int, int]]] = None, max_batch: int = MAX_BATCH
             ) -> Iterator[tuple[tuple[int, int], dict[str, np.ndarray]]]:
    """(sample range, feeds) covering every sample once: the given ``ranges``, or with no fixed
    step a small first run that measures how many samples fit in CAPTURE_BYTES of captured
    activations."""
    start, step = 0, plan.step or FIRST_BATCH
    for number in itertools.count():
        if ranges is not None:
            if number == len(ranges):
                return
            start, stop = ranges[number]
        elif start >= plan.samples:
            return
        else:
            stop = min(start + step, plan.samples)
        feeds = {}
        for name, array in calibration.items():
            part = array[start:stop]
            feeds[name] = part.reshape(part.shape[1:]) if name in plan.per_sample else part
        yield (start, stop), feeds
        if plan.step is None and start == 0:
            step = min(max_batch, _batch_for_budget(session, feeds, stop - start))
        start = stop


def _batch_for_budget(session, feeds: Mapping[str, np.ndarray], done: int) -> int:
    """Samples per run so that one run's feeds and captured tensors take about CAPTURE_BYTES."""
    captured = session.last_bytes if session is not None else 0
    per_sample = (captured + sum(v.nbytes for v in feeds.values())) / max(done, 1)
    return int(max(1, min(MAX_BATCH, CAPTURE_BYTES // max(per_sample, 1))))


def _exposing(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are exactly ``names`` (nothing else is computed for
    nothing)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.output[:]
    out.graph.output.extend([helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names])
    return out


class _Session:
    """An onnxruntime session on a copy of the model exposing the layer inputs; remembers how many
    bytes its last run returned (to size the next batches)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        # log_severity_level 3: the replaced dense weights are unused, no warning for each;
        # no spinning: between runs the numpy accumulation and solves need the cores onnxruntime's
        # idle workers would otherwise spin on
        self._session = runtime.open_session(model, log_severity_level=3,
                                             config={"session.intra_op.allow_spinning": "0"},
                                             error="calibration: onnxruntime cannot load the model")
        self.last_bytes = 0
        self.input_names = [i.name for i in self._session.get_inputs()]

    def run(self, names, feeds):
        values = runtime.run(self._session, feeds, names,
                             error="calibration: onnxruntime could not run the model on the calibration data")
        self.last_bytes = sum(np.asarray(v).nbytes for v in values)
        return values


# ---------------------------------------------------------------------------- sequential order

def layer_groups(model: onnx.ModelProto, layers: Sequence) -> list[list]:
    """Waves of layers in graph order: a layer's wave comes after every layer upstream of its
    input, so capturing a wave on the model with all earlier waves pruned is sequential pruning
    (layers reading the same tensor, like q/k/v projections, share one wave and one run)."""
    producer = {o: node for node in model.graph.node for o in node.output}
    layer_of_node = {layer.fused_nodes[0] if getattr(layer, "fused_nodes", None) else layer.node: layer
                     for layer in layers}
    upstream = {layer.node: _upstream_layers(layer.input_name, producer, layer_of_node) for layer in layers}
    done: set[str] = set()
    waves = []
    left = list(layers)
    while left:
        wave = [l for l in left if upstream[l.node] <= done]
        if not wave:  # a cycle cannot happen in a valid graph; do the rest one by one
            wave = left[:1]
        waves.append(wave)
        done |= {l.node for l in wave}
        left = [l for l in left if l.node not in done]
    return waves


def _upstream_layers(tensor: str, producer: Mapping[str, onnx.NodeProto], layer_of_node: Mapping) -> set[str]:
    seen_tensors, found, stack = set(), set(), [tensor]
    while stack:
        name = stack.pop()
        if name in seen_tensors or name not in producer:
            continue
        seen_tensors.add(name)
        node = producer[name]
        if node.name in layer_of_node:
            found.add(layer_of_node[node.name].node)
        stack.extend(node_reads(node))
    return found


def with_weights(model: onnx.ModelProto, layers: Sequence, weights: Mapping[str, np.ndarray],
                 biases: Optional[Mapping[str, np.ndarray]] = None) -> onnx.ModelProto:
    """A copy of ``model`` where each layer named in ``weights`` reads that [K, N] weight (stored
    the way the layer stores it) from a fresh initializer of its own (shared weights stay intact
    for the other readers), and each layer named in ``biases`` that new bias (bias.write_dense)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = {n.name: n for n in out.graph.node}
    for i, layer in enumerate(l for l in layers if l.node in weights):
        w = np.asarray(weights[layer.node], dtype=np.float32)
        stored = np.ascontiguousarray(w.T if getattr(layer, "trans_b", False) else w)
        name = f"{layer.weight_name}__onnx_prune_calibrated_{i}"
        out.graph.initializer.append(numpy_helper.from_array(stored, name))
        node_name = layer.fused_nodes[0] if getattr(layer, "fused_nodes", None) else layer.node
        nodes[node_name].input[1] = name
    for i, layer in enumerate(l for l in layers if l.node in (biases or {})):
        write_dense(out, layer, biases[layer.node], f"{layer.node}__onnx_prune_calibrated_bias_{i}")
    return out
