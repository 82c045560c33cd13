"""Sequential capture that runs each part of the model once, not once per wave.

Sequential pruning captures wave after wave (capture.layer_groups), each on the model with every
earlier wave pruned. Run from the graph inputs every time, a transformer of L blocks with four
waves each costs about 2L full forward passes over the calibration data. But a tensor computed
while capturing wave w never changes again: it is upstream of wave w's inputs only, and no layer
upstream of those is pruned later (that is how waves are made). So this keeps, per calibration
batch, the *frontier*: the tensors computed so far that nodes not yet run still read (in a
transformer, the residual stream and the activation entering the layer being pruned). The next
wave runs only the nodes between the frontier and its own inputs, fed from the cache: the whole
capture costs about one forward pass.

The frontier of all calibration samples is held in memory (for MiniLM-L6 with 256 x 128 tokens,
at most about 250 MB: the FFN activation plus the residual). When it would exceed
FRONTIER_BYTES, or when a tensor's element type is unknown (shape inference found none), the
capture falls back to running each wave from the graph inputs (capture.capture_stats): slower,
same statistics.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import helper

from . import capture
from .capture import FeedPlan, InputStats
from ..model.graph import node_reads

FRONTIER_BYTES = 1 << 30   # cached activations of all calibration samples, at most
FRONTIER_BATCH = 64        # samples per onnxruntime run, at most: the batches are fixed by the first
                           # wave, whose outputs can be much smaller than a later wave's (a transformer's
                           # FFN activation is 4x its residual), and onnxruntime's own intermediates
                           # (attention scores) grow with them


class FrontierCapture:
    """``capture(wave, pruned)`` for the waves of one sequential pass over ``layers``, in order:
    the statistics of the wave's layer inputs on ``model`` with the ``pruned`` layers (node name
    -> sparsifiers.Pruned: all of the earlier waves) written in."""

    def __init__(self, model: onnx.ModelProto, layers: Sequence, calibration: Mapping[str, np.ndarray],
                 plan: FeedPlan, *, hessian: bool) -> None:
        self.model, self.layers = model, list(layers)
        self.calibration, self.plan, self.hessian = calibration, plan, hessian
        self.graph_inputs = {v.name for v in model.graph.input}
        self.types = _element_types(model)
        self.groups = _fused_groups(model.graph, self.layers)
        self.done: set[int] = set()                  # indices of the nodes already run
        self.cache: Optional[capture.Cached] = []    # per batch: frontier tensor -> value
        self.ranges: Optional[list[tuple[int, int]]] = None   # the batches, fixed by the first wave

    def capture(self, wave: Sequence, pruned: Mapping) -> dict[str, InputStats]:
        if self.cache is None:
            current = _written(self.model, self.layers, pruned)
            return capture.capture_stats(current, wave, self.calibration, self.plan, hessian=self.hessian)
        available = set(self.cache[0]) if self.cache else set()
        targets = sorted({layer.input_name for layer in wave} - self.graph_inputs - available)
        nodes = _needed_nodes(self.model.graph, targets, available | self.graph_inputs, self.done, self.groups)
        done = self.done | set(nodes)
        keep = _frontier(self.model.graph, done)
        if any(name not in self.types for name in keep):
            self.cache = None   # a tensor we cannot declare: capture from the graph inputs from now on
            return self.capture(wave, pruned)
        computed = {o for i in nodes for o in self.model.graph.node[i].output}
        outputs = targets + sorted((keep & computed) - set(targets))
        sub = _written(_submodel(self.model, nodes, available, outputs, self.types), self.layers, pruned)
        stats, cache = capture.capture_stats_from(sub, wave, self.calibration, self.plan, hessian=self.hessian,
                                                  cached=self.cache, outputs=outputs, keep=keep,
                                                  ranges=self.ranges, max_batch=FRONTIER_BATCH)
        self.ranges = self.ranges or [span for span, _ in cache]
        self.cache = [values for _, values in cache]
        self.done = done
        if sum(v.nbytes for values in self.cache for v in values.values()) > FRONTIER_BYTES:
            self.cache = None   # too large to hold: the next waves run from the graph inputs
        return stats


def _written(model: onnx.ModelProto, layers: Sequence, pruned: Mapping) -> onnx.ModelProto:
    """``model`` (or the part of it) with the pruned weights and biases of the layers it holds."""
    present = {node.name for node in model.graph.node}
    held = [layer for layer in layers if layer.node in pruned and _nodes_of(layer)[0] in present]
    return capture.with_weights(model, held, {l.node: pruned[l.node].weight for l in held},
                                {l.node: pruned[l.node].bias for l in held if pruned[l.node].bias is not None})


def _nodes_of(layer) -> list[str]:
    return list(getattr(layer, "fused_nodes", None) or [layer.node])


def _fused_groups(graph: onnx.GraphProto, layers: Sequence) -> dict[int, list[int]]:
    """Node index -> the indices of every node of its layer (MatMul, Add, Relu replaced
    together): they run in the same part, so a written bias finds its MatMul and Add together."""
    index = {node.name: i for i, node in enumerate(graph.node) if node.name}
    groups = {}
    for layer in layers:
        members = [index[name] for name in _nodes_of(layer) if name in index]
        for member in members:
            groups[member] = members
    return groups


def _element_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the main graph that onnx's shape inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - no types at all: the caller falls back to the plain capture
        inferred = model
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for v in [*graph.input, *graph.value_info, *graph.output]:
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    return types


def _needed_nodes(graph: onnx.GraphProto, targets: Sequence[str], available: set[str], done: set[int],
                  groups: Mapping[int, list[int]]) -> list[int]:
    """Indices, in graph order, of the nodes not yet run that compute ``targets`` from the
    ``available`` tensors (the cached frontier, the graph inputs) and the initializers (with the
    other nodes of a layer's fused group)."""
    producer = {o: i for i, node in enumerate(graph.node) for o in node.output if o}
    needed: set[int] = set()
    stack = [producer[name] for name in targets if name in producer]
    while stack:
        index = stack.pop()
        if index in needed or index in done:
            continue
        needed.add(index)
        stack.extend(groups.get(index, ()))
        stack.extend(producer[name] for name in node_reads(graph.node[index])
                     if name not in available and name in producer)
    return sorted(needed)


def _frontier(graph: onnx.GraphProto, done: set[int]) -> set[str]:
    """Tensors made by the nodes in ``done`` that a node not yet run reads."""
    made = {o for i in done for o in graph.node[i].output if o}
    return {name for i, node in enumerate(graph.node) if i not in done for name in node_reads(node) if name in made}


def _submodel(model: onnx.ModelProto, nodes: Sequence[int], cached: set[str], outputs: Sequence[str],
              types: Mapping[str, int]) -> onnx.ModelProto:
    """The ``nodes`` of ``model`` as a model of their own: inputs are the graph inputs and cached
    tensors they read, initializers those they read, outputs ``outputs``."""
    graph = model.graph
    chosen = [graph.node[i] for i in nodes]
    reads = {name for node in chosen for name in node_reads(node)}
    made = {o for node in chosen for o in node.output}
    inputs = [v for v in graph.input if v.name in reads]
    inputs += [helper.make_tensor_value_info(name, types[name], None) for name in sorted(cached & reads - made)]
    sub = helper.make_graph(chosen, f"{graph.name}_part", inputs,
                            [helper.make_tensor_value_info(n, types.get(n) or onnx.TensorProto.FLOAT, None)
                             for n in outputs],
                            initializer=[t for t in graph.initializer if t.name in reads])
    out = helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    out.functions.extend(model.functions)
    return out
