"""``onnx-prune densify``: turn every SparseGemm node back into standard ONNX ops.

The result is the masked-dense model (the pruned weights written out with their zeros): it runs in
any ONNX runtime without the onnx-prune library, for tools that cannot run custom ops or model-local
functions, and as a way back from a pruned file when the original is lost.

Each node becomes

* ``Gemm(A, W, C)`` (alpha, beta, transA kept) when ``A`` is 2-D: transA = 1, an original ``Gemm``,
  or a rank of 2 known from shape inference;
* otherwise ``MatMul(A, W)`` (N-D ``A`` broadcasts like MatMul), then ``Mul`` by alpha when alpha
  != 1 and ``Add`` of ``beta * C`` when ``C`` is a constant broadcastable from the right
  (``[]``, ``[1]``, ``[N]``, ``[1, N]``);
* for the rare rest (N-D or unknown-rank ``A`` with a computed ``C`` or one of shape ``[M, 1]`` /
  ``[M, N]``, M being the flattened leading dims), ``A`` is reshaped to ``[-1, K]``, fed to a Gemm
  and the result reshaped back, exactly as the contract defines;

followed by ``Relu`` when ``activation`` is ``"relu"``. The first node keeps the SparseGemm node's
name and the last one writes its output, so names and graph outputs stay the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import OnnxPruneError
from .fallback import remove_fallback_functions
from ..model.graph import (NameScope, add_initializer, inferred_value_info, iter_nodes, opset_version, remove_dead_tensors,
                    subgraphs)
from . import PackedWeight, SparseGemmNode, contract, formats, is_sparse_gemm

_RIGHT_BROADCAST_BIAS_RANKS = (0, 1)


@dataclass
class _SparseNode:
    """One SparseGemm node with its constant weight, read and checked."""

    node: SparseGemmNode
    packed: PackedWeight


@dataclass
class _Target:
    """Where dense nodes are written: the model, its initializers by name and its name scope."""

    model: onnx.ModelProto
    constants: dict[str, onnx.TensorProto]
    names: NameScope
    opset: int

    def add(self, stem: str, array: np.ndarray) -> str:
        """A new initializer named after ``stem`` (made unique); returns its name."""
        name = self.names.unique(stem)
        add_initializer(self.model, name, array)
        return name


def densify_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every SparseGemm node replaced by Gemm or MatMul (+Add) (+Relu)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    _refuse_nested_sparse_gemm(graph)
    target = _Target(out, {t.name: t for t in graph.initializer}, NameScope.of_graph(graph),
                     opset_version(out) or 0)
    ranks = _known_ranks(out)
    new_nodes: list[onnx.NodeProto] = []
    weight_inputs: set[str] = set()
    dense_of: dict[tuple[str, ...], str] = {}  # packed tensors -> their dense weight: one per shared weight
    for node in graph.node:
        if not is_sparse_gemm(node):
            new_nodes.append(node)
            continue
        sparse = _read_sparse_node(node, target.constants)
        weight_inputs.update(sparse.node.tensor_inputs)
        packed_names = tuple(sparse.node.tensor_inputs)
        if packed_names not in dense_of:
            dense_of[packed_names] = target.add(sparse.node.weight_stem(), sparse.packed.to_dense())
        w_name = dense_of[packed_names]
        new_nodes.extend(_dense_nodes(sparse, w_name, ranks.get(sparse.node.a), target))
    del graph.node[:]
    graph.node.extend(new_nodes)
    remove_dead_tensors(out, weight_inputs)
    remove_fallback_functions(out)
    _drop_domain_if_unused(out)
    return out


# ----------------------------------------------------------------------------- reading


def _read_sparse_node(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> _SparseNode:
    sparse = SparseGemmNode(node)
    if not formats.is_known(sparse.format_name):
        raise OnnxPruneError(f"{sparse.where}: cannot densify format '{sparse.format_name}' "
                             f"(known: {', '.join(formats.names())})")
    return _SparseNode(node=sparse, packed=sparse.packed(constants))


# ----------------------------------------------------------------------------- writing


def _dense_nodes(sparse: _SparseNode, w_name: str, a_rank: Optional[int], t: _Target) -> list[onnx.NodeProto]:
    node = sparse.node
    a_name, y_name, c_name = node.a, node.y, node.c
    relu = node.activation == contract.ACTIVATION_RELU
    pre_relu = t.names.unique(f"{node.name or y_name}_pre_relu") if relu else y_name
    two_d = node.trans_a == 1 or a_rank == 2 or (a_rank is None and node.original_op == "Gemm")
    if two_d:
        nodes = [_gemm(node.name, a_name, w_name, c_name, pre_relu, sparse, t)]
    elif c_name is None or _right_broadcast_bias(t.constants.get(c_name)):
        nodes = _matmul_add(sparse, a_name, w_name, c_name, pre_relu, t)
    else:
        nodes = _flattened_gemm(sparse, a_name, w_name, c_name, pre_relu, t)
    if relu:
        nodes.append(helper.make_node("Relu", [pre_relu], [y_name], name=t.names.unique(f"{node.name}/relu")))
    for n in nodes:
        n.doc_string = node.proto.doc_string if n is nodes[0] else ""
    return nodes


def _gemm(name: str, a: str, w: str, c: Optional[str], y: str, sparse: _SparseNode, t: _Target) -> onnx.NodeProto:
    if c is None and t.opset < 11:  # C became optional in opset 11
        c = t.add(f"{name}.zero_bias", np.zeros(sparse.packed.N, np.float32))
    inputs = [a, w] + ([c] if c else [])
    return helper.make_node("Gemm", inputs, [y], name=name, alpha=sparse.node.alpha, beta=sparse.node.beta,
                            transA=sparse.node.trans_a)


def _matmul_add(sparse: _SparseNode, a: str, w: str, c: Optional[str], y: str, t: _Target) -> list[onnx.NodeProto]:
    node = sparse.node
    name = node.name
    steps = [(name, "MatMul", [a, w])]
    if node.alpha != 1.0:
        alpha = t.add(f"{name}.alpha", np.array(node.alpha, np.float32))
        steps.append((f"{name}/alpha", "Mul", [alpha]))
    if c is not None:
        if node.beta != 1.0:
            scaled = np.float32(node.beta) * numpy_helper.to_array(t.constants[c]).astype(np.float32)
            c = t.add(f"{c}.times_beta", scaled)
        steps.append((f"{name}/bias", "Add", [c]))
    nodes, previous = [], None
    for i, (step_name, op, extra) in enumerate(steps):
        inputs = extra if previous is None else [previous, *extra]
        out = y if i == len(steps) - 1 else t.names.unique(f"{step_name}_out")
        nodes.append(helper.make_node(op, inputs, [out], name=t.names.unique(step_name) if i else step_name))
        previous = out
    return nodes


def _flattened_gemm(sparse: _SparseNode, a: str, w: str, c: str, y: str, t: _Target) -> list[onnx.NodeProto]:
    """Gemm on ``A`` reshaped to ``[-1, K]``; the result reshaped to ``A.shape[:-1] + [N]``."""
    name = sparse.node.name
    unique = lambda stem: t.names.unique(f"{name}/{stem}")  # noqa: E731
    flat_shape = t.add(f"{name}.flat_shape", np.array([-1, sparse.packed.K], np.int64))
    n_dim = t.add(f"{name}.n_dim", np.array([sparse.packed.N], np.int64))
    zero = t.add(f"{name}.zero", np.array([0], np.int64))
    minus_one = t.add(f"{name}.minus_one", np.array([-1], np.int64))
    a2, g, shape_a, leading, out_shape = (unique("a_2d"), unique("gemm_out"), unique("a_shape"), unique("leading"),
                                          unique("out_shape"))
    return [
        helper.make_node("Reshape", [a, flat_shape], [a2], name=unique("flatten")),
        _gemm(name, a2, w, c, g, sparse, t),
        helper.make_node("Shape", [a], [shape_a], name=unique("shape")),
        helper.make_node("Slice", [shape_a, zero, minus_one], [leading], name=unique("leading")),
        helper.make_node("Concat", [leading, n_dim], [out_shape], axis=0, name=unique("concat")),
        helper.make_node("Reshape", [g, out_shape], [y], name=unique("unflatten")),
    ]


def _right_broadcast_bias(tensor: Optional[onnx.TensorProto]) -> bool:
    """C that broadcasts the same way against [..., N] as against [M, N]."""
    if tensor is None:
        return False
    dims = list(tensor.dims)
    return len(dims) in _RIGHT_BROADCAST_BIAS_RANKS or (len(dims) == 2 and dims[0] == 1)


# ----------------------------------------------------------------------------- bookkeeping


def _refuse_nested_sparse_gemm(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        if any(is_sparse_gemm(n) for body in subgraphs(node) for n in iter_nodes(body)):
            raise OnnxPruneError(f"node '{node.name}' holds SparseGemm nodes in a subgraph; "
                                 "densify handles the main graph only")


def _known_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Ranks of the tensors whose shape the model states or onnx shape inference finds (on the
    graph without its weights: inferred_value_info)."""
    ranks = {}
    g = model.graph
    for value in [*g.input, *g.value_info, *inferred_value_info(model).values(), *g.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            ranks[value.name] = len(tensor_type.shape.dim)
    return ranks


def _drop_domain_if_unused(model: onnx.ModelProto) -> None:
    used = {n.domain for n in model.graph.node} | {f.domain for f in model.functions}
    for func in model.functions:
        used.update(n.domain for n in func.node)
    if contract.DOMAIN not in used:
        kept = [o for o in model.opset_import if o.domain != contract.DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(kept)
        kept_props = [p for p in model.metadata_props if p.key != "metadata.json"]
        del model.metadata_props[:]
        model.metadata_props.extend(kept_props)
