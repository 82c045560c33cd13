"""Bias compensation: when a method moves error into a layer's bias, what the layer's new bias is.

A layer computes ``alpha · x W + beta · C`` (MatMul + Add: alpha = beta = 1, C = the Add's
constant; no bias: C = 0). A method finds the change ``delta [N]`` of the bias in the units of
``x W``; the layer then needs ``C' = C + (alpha / beta) · delta``. That is exact whenever C is a
constant (or absent) and beta != 0; ``problem`` says why not otherwise, and the caller leaves
that layer's bias alone. One place writes the new bias into a dense model (``write_dense``: the
calibration copies and verification's masked dense reference); the rewriter gives the
SparseGemm node ``C'`` as its C input.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

if TYPE_CHECKING:
    from ..model.layers import Layer

# --bias-correction's default (SparseGPT only; docs/calibration.md: measured on both models)
BIAS_CORRECTION = True


def problem(layer: "Layer") -> Optional[str]:
    """Why the bias of ``layer`` cannot take an exact compensation (None when it can)."""
    if layer.bias_name and layer.bias is None:
        return f"its bias C '{layer.bias_name}' is computed, not a constant"
    if layer.bias is not None and layer.bias.dtype != np.float32:
        return f"its bias C is {layer.bias.dtype}, not float32"
    if layer.beta == 0:
        return "its Gemm has beta = 0 (C is ignored)"
    return None


def updated(layer: "Layer", delta: np.ndarray) -> np.ndarray:
    """The new bias C' as the layer reads it: ``C + (alpha / beta) · delta``, shaped [N], or
    [M, N] when C has M > 1 rows (Gemm's C of shape [M, N] or [M, 1])."""
    n = layer.N
    shift = (layer.alpha / layer.beta) * np.asarray(delta, dtype=np.float64).reshape(n)
    if layer.bias is None:
        return shift.astype(np.float32)
    c = np.asarray(layer.bias, dtype=np.float64)
    if c.ndim == 2 and c.shape[0] > 1:
        return (np.broadcast_to(c, (c.shape[0], n)) + shift[None, :]).astype(np.float32)
    return (np.broadcast_to(c.reshape(-1), (n,)) + shift).astype(np.float32)


def write_dense(model: onnx.ModelProto, layer: "Layer", value: np.ndarray, name: str) -> None:
    """Make the dense node(s) of ``layer`` in ``model`` (a copy being built) read ``value`` as
    their bias, from a new initializer ``name``: Gemm's C, the fused Add's constant, or a new Add
    after a MatMul that had none. A shared bias stays as it is for its other readers."""
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
    nodes = list(model.graph.node)
    index = {n.name: i for i, n in enumerate(nodes)}
    first = nodes[index[layer.fused_nodes[0]]]
    if layer.op == "Gemm":
        while len(first.input) < 3:
            first.input.append("")
        first.input[2] = name
    elif layer.add_node:
        add = nodes[index[layer.add_node]]
        slot = 1 if add.input[0] == first.output[0] else 0
        add.input[slot] = name
    else:
        product = f"{first.output[0]}__before_bias"
        add = helper.make_node("Add", [product, name], [first.output[0]], name=f"{layer.node}__bias")
        first.output[0] = product
        nodes.insert(index[layer.fused_nodes[0]] + 1, add)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
