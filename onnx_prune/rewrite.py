"""Graph rewriting: each pruned layer becomes one SparseGemm node (docs/sparse_gemm_op.md).

The new node keeps the original node's name and sits where the last of the nodes it replaces was
(so everything it reads is already computed); weights no other node reads are dropped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import contract
from ._version import __version__
from .formats import CsrWeight, dense_to_csr
from .layers import GraphIndex, Layer


@dataclass
class PrunedLayer:
    """A layer with its kept weights: ``weight`` [K, N] has zeros where ``mask`` is False."""

    layer: Layer
    weight: np.ndarray
    mask: np.ndarray

    @property
    def nnz(self) -> int:
        return int(self.mask.sum())


def describe(layer: Layer, csr: CsrWeight) -> str:
    """The node's doc_string: what netron users want to see at a glance."""
    shape = "x".join(str(d) for d in dense_shape(layer))
    return (f"pruned {layer.op} {layer.node}: weight {layer.weight_name} {shape}, "
            f"{csr.nnz} of {layer.size} kept ({100 * csr.sparsity:.1f}% sparse), format {csr.format}")


def dense_shape(layer: Layer) -> list[int]:
    """Shape of the weight as stored in the input model."""
    return [layer.N, layer.K] if layer.trans_b else [layer.K, layer.N]


def sparse_gemm_node(layer: Layer, csr: CsrWeight, names: Sequence[str]) -> onnx.NodeProto:
    inputs = [layer.input_name, *names]
    if layer.bias_name:
        inputs.append(layer.bias_name)
    attrs = dict(K=layer.K, N=layer.N, format=csr.format, alpha=layer.alpha, beta=layer.beta,
                 transA=int(layer.trans_a), nnz=csr.nnz, original_op=layer.op,
                 dense_shape=dense_shape(layer), sparsity=float(csr.sparsity))
    if layer.activation:
        attrs["activation"] = layer.activation
    node = helper.make_node(contract.OP_TYPE, inputs, [layer.output_name], name=layer.node,
                            domain=contract.DOMAIN, doc_string=describe(layer, csr), **attrs)
    return node


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    taken.add(candidate)
    return candidate


def rewrite(model: onnx.ModelProto, pruned: Sequence[PrunedLayer], *, values_dtype=np.float32,
            settings: dict | None = None) -> onnx.ModelProto:
    """A copy of ``model`` with every layer of ``pruned`` replaced by a SparseGemm node."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    index = GraphIndex(out)
    taken = set(index.initializers) | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    shared = _weights_read_by_several(pruned)

    replacement_at: dict[str, onnx.NodeProto] = {}  # name of the last fused node -> SparseGemm
    removed: set[str] = set()
    for p in pruned:
        csr = dense_to_csr(p.weight, p.mask, values_dtype=values_dtype)
        stem = p.layer.node if p.layer.weight_name in shared else p.layer.weight_name
        names = [_unique(f"{stem}.sparse_{part}", taken) for part in ("values", "indices", "offsets")]
        for name, array in zip(names, (csr.values, csr.indices, csr.offsets)):
            graph.initializer.append(numpy_helper.from_array(array, name))
            if out.ir_version < 4:  # IR < 4: every initializer must also be a graph input
                graph.input.append(helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape)))
        replacement_at[p.layer.fused_nodes[-1]] = sparse_gemm_node(p.layer, csr, names)
        removed.update(p.layer.fused_nodes)

    nodes = []
    for node in graph.node:
        if node.name in replacement_at:
            nodes.append(replacement_at[node.name])
        elif node.name not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_constants(out, {p.layer.weight_name for p in pruned} |
                          {p.layer.bias_name for p in pruned if p.layer.bias_name})
    _import_domain(out)
    _record_settings(out, settings or {})
    return out


def _weights_read_by_several(pruned: Sequence[PrunedLayer]) -> set[str]:
    seen, shared = set(), set()
    for p in pruned:
        (shared if p.layer.weight_name in seen else seen).add(p.layer.weight_name)
    return shared


def drop_unused_constants(model: onnx.ModelProto, candidates: set[str]) -> None:
    """Remove the initializers and Constant nodes named in ``candidates`` that nothing reads any
    more (a weight shared with a node that stays is kept; unrelated unused tensors are untouched)."""
    graph = model.graph
    read = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    for n in graph.node:  # tensors read from inside subgraphs (If / Loop bodies)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                read |= {name for sn in a.g.node for name in sn.input}
    dead = candidates - read
    keep_nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output and n.output[0] in dead)]
    keep_inits = [t for t in graph.initializer if t.name not in dead]
    keep_inputs = [i for i in graph.input if i.name not in dead]
    for field, kept in ((graph.node, keep_nodes), (graph.initializer, keep_inits), (graph.input, keep_inputs)):
        del field[:]
        field.extend(kept)


def _import_domain(model: onnx.ModelProto) -> None:
    if not any(o.domain == contract.DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(contract.DOMAIN, contract.OP_VERSION))


def _record_settings(model: onnx.ModelProto, settings: dict) -> None:
    meta = {p.key: p.value for p in model.metadata_props}
    meta["onnx_prune.version"] = __version__
    meta["onnx_prune.settings"] = json.dumps(settings, sort_keys=True)
    helper.set_model_props(model, meta)
