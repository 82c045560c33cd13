"""Graph rewriting: each pruned layer becomes one SparseGemm node (docs/sparse_gemm_op.md).

The new node keeps the original node's name and sits where the last of the nodes it replaces was
(so everything it reads is already computed); weights no other node reads are dropped.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import contract
from ._version import __version__
from .formats import CsrWeight, dense_to_csr
from .layers import GraphIndex, Layer, subgraph_reads


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
    fused = f", fused {' + '.join(layer.fused_nodes[1:])}" if len(layer.fused_nodes) > 1 else ""
    return (f"pruned {layer.op} {shape} -> nnz {csr.nnz} ({100 * csr.sparsity:.1f}% sparse); "
            f"weight {layer.weight_name}, format {csr.format}, values {csr.values.dtype}{fused}")


def dense_shape(layer: Layer) -> list[int]:
    """Shape of the weight as stored in the input model."""
    return [layer.N, layer.K] if layer.trans_b else [layer.K, layer.N]


def sparse_gemm_node(layer: Layer, csr: CsrWeight, names: Sequence[str], bias_name: str | None = None
                     ) -> onnx.NodeProto:
    """The SparseGemm node for ``layer``: inputs A, values, indices, offsets (``names``) and C."""
    inputs = [layer.input_name, *names]
    if bias_name or layer.bias_name:
        inputs.append(bias_name or layer.bias_name)
    attrs = dict(K=layer.K, N=layer.N, format=csr.format, alpha=layer.alpha, beta=layer.beta,
                 transA=int(layer.trans_a), nnz=csr.nnz, original_op=layer.op,
                 dense_shape=dense_shape(layer), sparsity=float(csr.sparsity))
    if layer.activation:
        attrs["activation"] = layer.activation
    node = helper.make_node(contract.OP_TYPE, inputs, [layer.output_name], name=layer.node,
                            domain=contract.DOMAIN, doc_string=describe(layer, csr), **attrs)
    return node


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2``, … whichever is not yet in ``taken`` (then taken)."""
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
        names = [unique_name(f"{stem}.sparse_{part}", taken) for part in ("values", "indices", "offsets")]
        for name, array in zip(names, (csr.values, csr.indices, csr.offsets)):
            add_initializer(out, name, array)
        bias_name = _flat_bias(out, p.layer, taken)
        replacement_at[p.layer.fused_nodes[-1]] = sparse_gemm_node(p.layer, csr, names, bias_name)
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
    _drop_stale_value_info(out)
    if pruned:
        _import_domain(out)
    _record_settings(out, settings or {})
    return out


def add_initializer(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    """A new initializer (also declared as a graph input where IR < 4 requires it)."""
    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
    if model.ir_version < 4:
        model.graph.input.append(helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape)))


def _flat_bias(model: onnx.ModelProto, layer: Layer, taken: set[str]) -> str | None:
    """A fused MatMul bias of shape [1, ..., N] becomes a new [N] initializer (the contract's C
    shapes); Gemm's C and [N] / [1] biases are read as they are."""
    if layer.op != "MatMul" or layer.bias is None or layer.bias.ndim <= 1:
        return None
    name = unique_name(f"{layer.bias_name}.flat", taken)
    add_initializer(model, name, layer.bias.reshape(-1).astype(np.float32))
    return name


def _drop_stale_value_info(model: onnx.ModelProto) -> None:
    """Shape annotations of tensors that no node produces any more (fused intermediates)."""
    graph = model.graph
    alive = {o for n in graph.node for o in n.output} | {i.name for i in graph.input} | \
            {t.name for t in graph.initializer}
    kept = [v for v in graph.value_info if v.name in alive]
    del graph.value_info[:]
    graph.value_info.extend(kept)


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
    read |= subgraph_reads(graph)  # tensors read from inside If / Loop bodies
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


def add_optional_parts(model: onnx.ModelProto, *, fallback: bool = True) -> None:
    """netron's description of SparseGemm (always) and the standard-op fallback function (unless
    ``fallback`` is off), each only when its module is part of this installation and the model
    has a SparseGemm node."""
    if not any(n.op_type == contract.OP_TYPE and n.domain == contract.DOMAIN for n in model.graph.node):
        return
    try:
        from .netron_meta import netron_metadata_json
    except ImportError:
        pass
    else:
        meta = {p.key: p.value for p in model.metadata_props}
        meta["metadata.json"] = netron_metadata_json()
        helper.set_model_props(model, meta)
    if not fallback:
        return
    try:
        from .fallback import add_fallback_functions
    except ImportError:
        return
    from .errors import OnnxPruneError

    try:
        add_fallback_functions(model)
    except OnnxPruneError as exc:  # e.g. an opset too old for the fallback's standard ops
        warnings.warn(f"no standard-op fallback embedded ({exc}); the file needs the SparseGemm library",
                      stacklevel=3)
