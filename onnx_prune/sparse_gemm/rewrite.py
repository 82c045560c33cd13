"""Graph rewriting: each pruned layer becomes one SparseGemm node (docs/sparse_gemm_op.md).

The new node keeps the original node's name and sits where the last of the nodes it replaces was
(so everything it reads is already computed); weights no other node reads are dropped.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import helper

from .._version import __version__
from ..errors import OnnxPruneError
from ..model.graph import (NameScope, add_initializer, inferred_value_info, keep_known_shapes, remove_dead_nodes,
                           remove_dead_tensors)
from ..model.layers import Layer, name_nodes
from . import PackedWeight, contract, formats, formats_used, make_sparse_gemm, sparse_tensor_names
from .fallback import add_fallback_functions
from .netron_meta import netron_metadata_json


@dataclass
class PrunedLayer:
    """A layer with its kept weights: ``weight`` [K, N] has zeros where ``mask`` is False."""

    layer: Layer
    weight: np.ndarray
    mask: np.ndarray
    packed: Optional[PackedWeight] = None  # set by rewrite: the stored tensors and their byte counts
    bias: Optional[np.ndarray] = None      # a compensated bias: the new C as the node reads it (bias.updated)
    kept_count: Optional[int] = None       # the mask's kept weights, when the mask itself is dropped early
    shares: Optional[str] = None           # the layer whose weight (mask and packed tensors) this one reads

    @property
    def nnz(self) -> int:
        """Stored values: more than ``kept`` where a format stores whole blocks (bcsr's zero padding)."""
        return self.packed.nnz if self.packed is not None else self.kept

    @property
    def kept(self) -> int:
        """Weights the mask keeps: what the pruning decided, whatever the format stores."""
        return self.kept_count if self.kept_count is not None else int(np.count_nonzero(self.mask))


def node_doc_string(layer: Layer, packed: PackedWeight) -> str:
    """The node's doc_string: what netron users want to see at a glance."""
    shape = "x".join(str(d) for d in dense_shape(layer))
    fused = f", fused {' + '.join(layer.fused_nodes[1:])}" if len(layer.fused_nodes) > 1 else ""
    return (f"pruned {layer.op} {shape} -> nnz {packed.nnz} ({100 * packed.sparsity:.1f}% sparse); "
            f"weight {layer.weight_name}, format {packed.format}, values {packed.values_dtype}{fused}")


def dense_shape(layer: Layer) -> list[int]:
    """Shape of the weight as stored in the input model."""
    return [layer.N, layer.K] if layer.trans_b else [layer.K, layer.N]


def sparse_gemm_node(layer: Layer, packed: PackedWeight, names: Sequence[str], bias_name: str | None = None
                     ) -> onnx.NodeProto:
    """The SparseGemm node for ``layer``: inputs A, the packed tensors (``names``) and C."""
    attrs = dict(alpha=layer.alpha, beta=layer.beta, transA=int(layer.trans_a), original_op=layer.op,
                 dense_shape=dense_shape(layer))
    if layer.activation:
        attrs[contract.ATTR_ACTIVATION] = layer.activation
    return make_sparse_gemm(layer.node, layer.input_name, packed, names, bias_name or layer.bias_name,
                            layer.output_name, attrs, doc_string=node_doc_string(layer, packed))


def rewrite(model: onnx.ModelProto, pruned: Sequence[PrunedLayer], *, values_dtype=np.float32,
            format: str = contract.DEFAULT_FORMAT, settings: dict | None = None,
            in_place: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` (``model`` itself when ``in_place``: no second copy of a large model)
    with every layer of ``pruned`` replaced by a SparseGemm node storing its weight in ``format``;
    each PrunedLayer keeps its packed weight (``packed``, packed here unless already set)."""
    fmt = formats.get(format)
    known_shapes = inferred_value_info(model)  # before an in-place rewrite changes ``model``
    out = model if in_place else onnx.ModelProto()
    if not in_place:
        out.CopyFrom(model)
    graph = out.graph
    name_nodes(graph)  # the replacements are found by node name
    names = NameScope.of_graph(graph)

    replacement_at: dict[str, onnx.NodeProto] = {}  # name of the last fused node -> SparseGemm
    removed: set[str] = set()
    stored: dict[int, list[str]] = {}  # id of a packed weight -> its initializers: one copy per weight
    stems: set[str] = set()
    for p in pruned:
        if p.packed is None:
            p.packed = fmt.pack(p.weight, p.mask, values_dtype=values_dtype)
        tensor_names = stored.get(id(p.packed))
        if tensor_names is None:
            stem = _stem(p.layer, stems)
            tensor_names = stored[id(p.packed)] = [names.unique(n) for n in sparse_tensor_names(stem, fmt)]
            for name, array in zip(tensor_names, p.packed.tensors):
                add_initializer(out, name, array)
        bias_name = _new_bias(out, p, names) or _flat_bias(out, p.layer, names)
        replacement_at[p.layer.fused_nodes[-1]] = sparse_gemm_node(p.layer, p.packed, tensor_names, bias_name)
        removed.update(p.layer.fused_nodes)

    nodes = []
    for node in graph.node:
        if node.name in replacement_at:
            nodes.append(replacement_at[node.name])
        elif node.name not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    # the weight's Identity / Transpose / folded nodes, then the constants they read
    remove_dead_nodes(graph, {n for p in pruned for n in p.layer.weight_chain})
    remove_dead_tensors(out, {p.layer.weight_name for p in pruned} |
                        {r for p in pruned for r in p.layer.weight_roots} |
                        {p.layer.bias_name for p in pruned if p.layer.bias_name})
    _drop_stale_value_info(out)
    keep_known_shapes(out, known_shapes)
    if pruned:
        _import_domain(out)
    _record_settings(out, settings or {})
    return out


def _new_bias(model: onnx.ModelProto, p: PrunedLayer, names: NameScope) -> str | None:
    """A compensated bias becomes a new initializer of the layer's own (the old one may be read
    by other nodes; it is dropped when nothing reads it any more)."""
    if p.bias is None:
        return None
    name = names.unique(f"{p.layer.node}.bias")
    add_initializer(model, name, np.asarray(p.bias, dtype=np.float32))
    return name


def _flat_bias(model: onnx.ModelProto, layer: Layer, names: NameScope) -> str | None:
    """A fused MatMul bias of shape [1, ..., N] becomes a new [N] initializer (the contract's C
    shapes); Gemm's C and [N] / [1] biases are read as they are."""
    if layer.op != "MatMul" or layer.bias is None or layer.bias.ndim <= 1:
        return None
    name = names.unique(f"{layer.bias_name}.flat")
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


def _stem(layer: Layer, taken: set[str]) -> str:
    """What a packed weight's tensors are named after: the stored weight it comes from (the
    constant behind Identity / Transpose), or the layer's node when two different packed weights
    come from the same tensor (layers pruned apart by a caller that did not group them)."""
    stem = layer.weight_key[0] if layer.weight_key else layer.weight_name
    stem = layer.node if stem in taken else stem
    taken.add(stem)
    return stem


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
    ``fallback`` is off), when the model has a SparseGemm node."""
    used = formats_used(model.graph.node)
    if not used:
        return
    meta = {p.key: p.value for p in model.metadata_props}
    known = [name for name in used if formats.is_known(name)]
    meta["metadata.json"] = netron_metadata_json(known[0] if known else contract.DEFAULT_FORMAT)
    helper.set_model_props(model, meta)
    if not fallback:
        return
    try:
        add_fallback_functions(model)
    except OnnxPruneError as exc:  # e.g. an opset too old for the fallback's standard ops
        warnings.warn(f"no standard-op fallback embedded ({exc}); the file needs the SparseGemm library",
                      stacklevel=3)
