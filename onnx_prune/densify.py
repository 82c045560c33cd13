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

from . import contract
from .errors import OnnxPruneError
from .fallback import remove_fallback_functions
from .formats import CsrWeight
from .rewrite import unique_name

_WEIGHT_SUFFIX = ".sparse_values"
_RIGHT_BROADCAST_BIAS_RANKS = (0, 1)


@dataclass
class _SparseNode:
    """The attributes and constant weights of one SparseGemm node."""

    node: onnx.NodeProto
    csr: CsrWeight
    alpha: float
    beta: float
    trans_a: int
    activation: str
    original_op: str


def densify_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every SparseGemm node replaced by Gemm or MatMul (+Add) (+Relu)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    _refuse_nested_sparse_gemm(graph)
    constants = {t.name: t for t in graph.initializer}
    ranks = _known_ranks(out)
    taken = _all_names(graph)
    new_nodes: list[onnx.NodeProto] = []
    weight_inputs: set[str] = set()
    for node in graph.node:
        if not _is_sparse_gemm(node):
            new_nodes.append(node)
            continue
        sparse = _read_sparse_node(node, constants)
        weight_inputs.update(node.input[1:4])
        w_name = unique_name(_dense_weight_name(node), taken)
        graph.initializer.append(numpy_helper.from_array(sparse.csr.to_dense(), w_name))
        new_nodes.extend(_dense_nodes(sparse, w_name, ranks.get(node.input[0]), constants, graph,
                                      taken, _opset(out)))
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unread_initializers(graph, weight_inputs)
    remove_fallback_functions(out)
    _drop_domain_if_unused(out)
    return out


# ----------------------------------------------------------------------------- reading


def _read_sparse_node(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> _SparseNode:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    where = f"SparseGemm node '{node.name}'"
    if len(node.input) < 4:
        raise OnnxPruneError(f"{where}: has {len(node.input)} inputs, needs at least 4")
    fmt = attrs.get(contract.ATTR_FORMAT, contract.FORMAT_CSR.encode())
    fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
    if fmt != contract.FORMAT_CSR:
        raise OnnxPruneError(f"{where}: cannot densify format '{fmt}' (known: {contract.FORMAT_CSR})")
    for attr in (contract.ATTR_K, contract.ATTR_N):
        if attr not in attrs:
            raise OnnxPruneError(f"{where}: the required attribute '{attr}' is missing")
    tensors = []
    for name in node.input[1:4]:
        if name not in constants:
            raise OnnxPruneError(f"{where}: its weight '{name}' is not a constant initializer, "
                                 "so it cannot be written out dense")
        tensors.append(numpy_helper.to_array(constants[name]))
    csr = CsrWeight(values=tensors[0], indices=tensors[1], offsets=tensors[2],
                    K=int(attrs[contract.ATTR_K]), N=int(attrs[contract.ATTR_N]))
    _check_csr(csr, where)
    activation = attrs.get(contract.ATTR_ACTIVATION, b"")
    original = attrs.get(contract.ATTR_ORIGINAL_OP, b"")
    return _SparseNode(node=node, csr=csr, alpha=float(attrs.get(contract.ATTR_ALPHA, 1.0)),
                       beta=float(attrs.get(contract.ATTR_BETA, 1.0)),
                       trans_a=int(attrs.get(contract.ATTR_TRANS_A, 0)),
                       activation=activation.decode() if isinstance(activation, bytes) else activation,
                       original_op=original.decode() if isinstance(original, bytes) else original)


def _check_csr(csr: CsrWeight, where: str) -> None:
    """The contract's validity rules, so that bad weights give one clear line, not a numpy error."""
    if csr.K <= 0 or csr.N <= 0:
        raise OnnxPruneError(f"{where}: K and N must be positive, got K={csr.K}, N={csr.N}")
    if csr.values.ndim != 1 or csr.indices.shape != csr.values.shape:
        raise OnnxPruneError(f"{where}: values {list(csr.values.shape)} and indices "
                             f"{list(csr.indices.shape)} must be 1-D of the same length")
    if csr.offsets.shape != (csr.N + 1,):
        raise OnnxPruneError(f"{where}: offsets has shape {list(csr.offsets.shape)}, expected [{csr.N + 1}]")
    offsets = csr.offsets.astype(np.int64)
    if offsets[0] != 0 or offsets[-1] != csr.nnz or np.any(np.diff(offsets) < 0):
        raise OnnxPruneError(f"{where}: offsets must start at 0, never decrease and end at nnz={csr.nnz}")
    indices = csr.indices.astype(np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= csr.K):
        raise OnnxPruneError(f"{where}: an index is outside [0, K={csr.K})")


# ----------------------------------------------------------------------------- writing


def _dense_nodes(sparse: _SparseNode, w_name: str, a_rank: Optional[int],
                 constants: dict[str, onnx.TensorProto], graph: onnx.GraphProto, taken: set[str],
                 opset: int) -> list[onnx.NodeProto]:
    node = sparse.node
    a_name, y_name = node.input[0], node.output[0]
    c_name = node.input[4] if len(node.input) > 4 and node.input[4] else None
    relu = sparse.activation == contract.ACTIVATION_RELU
    pre_relu = unique_name(f"{node.name or y_name}_pre_relu", taken) if relu else y_name
    two_d = sparse.trans_a == 1 or a_rank == 2 or (a_rank is None and sparse.original_op == "Gemm")
    if two_d:
        nodes = [_gemm(node.name, a_name, w_name, c_name, pre_relu, sparse, graph, taken, opset)]
    elif c_name is None or _right_broadcast_bias(constants.get(c_name)):
        nodes = _matmul_add(sparse, a_name, w_name, c_name, pre_relu, constants, graph, taken)
    else:
        nodes = _flattened_gemm(sparse, a_name, w_name, c_name, pre_relu, graph, taken, opset)
    if relu:
        nodes.append(helper.make_node("Relu", [pre_relu], [y_name], name=unique_name(f"{node.name}/relu", taken)))
    for n in nodes:
        n.doc_string = node.doc_string if n is nodes[0] else ""
    return nodes


def _gemm(name: str, a: str, w: str, c: Optional[str], y: str, sparse: _SparseNode,
          graph: onnx.GraphProto, taken: set[str], opset: int) -> onnx.NodeProto:
    if c is None and opset < 11:  # C became optional in opset 11
        c = _add_initializer(graph, taken, f"{name}.zero_bias", np.zeros(sparse.csr.N, np.float32))
    inputs = [a, w] + ([c] if c else [])
    return helper.make_node("Gemm", inputs, [y], name=name, alpha=sparse.alpha, beta=sparse.beta,
                            transA=sparse.trans_a)


def _matmul_add(sparse: _SparseNode, a: str, w: str, c: Optional[str], y: str,
                constants: dict[str, onnx.TensorProto], graph: onnx.GraphProto,
                taken: set[str]) -> list[onnx.NodeProto]:
    name = sparse.node.name
    steps = [(name, "MatMul", [a, w])]
    if sparse.alpha != 1.0:
        alpha = _add_initializer(graph, taken, f"{name}.alpha", np.array(sparse.alpha, np.float32))
        steps.append((f"{name}/alpha", "Mul", [alpha]))
    if c is not None:
        if sparse.beta != 1.0:
            scaled = np.float32(sparse.beta) * numpy_helper.to_array(constants[c]).astype(np.float32)
            c = _add_initializer(graph, taken, f"{c}.times_beta", scaled)
        steps.append((f"{name}/bias", "Add", [c]))
    nodes, previous = [], None
    for i, (step_name, op, extra) in enumerate(steps):
        inputs = extra if previous is None else [previous, *extra]
        out = y if i == len(steps) - 1 else unique_name(f"{step_name}_out", taken)
        nodes.append(helper.make_node(op, inputs, [out], name=unique_name(step_name, taken) if i else step_name))
        previous = out
    return nodes


def _flattened_gemm(sparse: _SparseNode, a: str, w: str, c: str, y: str, graph: onnx.GraphProto,
                    taken: set[str], opset: int) -> list[onnx.NodeProto]:
    """Gemm on ``A`` reshaped to ``[-1, K]``; the result reshaped to ``A.shape[:-1] + [N]``."""
    name = sparse.node.name
    t = lambda stem: unique_name(f"{name}/{stem}", taken)  # noqa: E731
    flat_shape = _add_initializer(graph, taken, f"{name}.flat_shape", np.array([-1, sparse.csr.K], np.int64))
    n_dim = _add_initializer(graph, taken, f"{name}.n_dim", np.array([sparse.csr.N], np.int64))
    zero = _add_initializer(graph, taken, f"{name}.zero", np.array([0], np.int64))
    minus_one = _add_initializer(graph, taken, f"{name}.minus_one", np.array([-1], np.int64))
    a2, g, shape_a, leading, out_shape = t("a_2d"), t("gemm_out"), t("a_shape"), t("leading"), t("out_shape")
    return [
        helper.make_node("Reshape", [a, flat_shape], [a2], name=unique_name(f"{name}/flatten", taken)),
        _gemm(name, a2, w, c, g, sparse, graph, taken, opset),
        helper.make_node("Shape", [a], [shape_a], name=unique_name(f"{name}/shape", taken)),
        helper.make_node("Slice", [shape_a, zero, minus_one], [leading], name=unique_name(f"{name}/leading", taken)),
        helper.make_node("Concat", [leading, n_dim], [out_shape], axis=0, name=unique_name(f"{name}/concat", taken)),
        helper.make_node("Reshape", [g, out_shape], [y], name=unique_name(f"{name}/unflatten", taken)),
    ]


def _right_broadcast_bias(tensor: Optional[onnx.TensorProto]) -> bool:
    """C that broadcasts the same way against [..., N] as against [M, N]."""
    if tensor is None:
        return False
    dims = list(tensor.dims)
    return len(dims) in _RIGHT_BROADCAST_BIAS_RANKS or (len(dims) == 2 and dims[0] == 1)


# ----------------------------------------------------------------------------- bookkeeping


def _is_sparse_gemm(node: onnx.NodeProto) -> bool:
    return node.op_type == contract.OP_TYPE and node.domain == contract.DOMAIN


def _refuse_nested_sparse_gemm(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                if any(_is_sparse_gemm(n) for n in sub.node):
                    raise OnnxPruneError(f"node '{node.name}' holds SparseGemm nodes in a subgraph; "
                                         "densify handles the main graph only")
                _refuse_nested_sparse_gemm(sub)


def _known_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Ranks of the tensors whose shape the model states or onnx shape inference finds."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is a hint only: a model it cannot handle still densifies
        inferred = model
    ranks = {}
    g = inferred.graph
    for value in list(g.input) + list(g.value_info) + list(g.output):
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            ranks[value.name] = len(tensor_type.shape.dim)
    return ranks


def _dense_weight_name(node: onnx.NodeProto) -> str:
    values = node.input[1]
    return values[: -len(_WEIGHT_SUFFIX)] if values.endswith(_WEIGHT_SUFFIX) else f"{node.name}.weight"


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {n.name for n in graph.node}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


def _add_initializer(graph: onnx.GraphProto, taken: set[str], stem: str, array: np.ndarray) -> str:
    name = unique_name(stem, taken)
    graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def _opset(model: onnx.ModelProto) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _drop_unread_initializers(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Remove the sparse weight tensors nothing reads any more (shared ones stay)."""
    read = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    dead = candidates - read
    kept = [t for t in graph.initializer if t.name not in dead]
    kept_inputs = [i for i in graph.input if i.name not in dead]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.input[:]
    graph.input.extend(kept_inputs)


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
