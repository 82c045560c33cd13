"""A standard-op fallback for SparseGemm, stored inside the pruned file.

onnxruntime runs a model-local function (``ModelProto.functions``) for a custom-domain node when
no kernel is registered for it, and the registered kernel when the SparseGemm library is loaded.
So a pruned file carries one ``SparseGemm`` FunctionProto (domain ``ai.onnx_prune``) whose body
rebuilds the dense ``W [K, N]`` from the format's tensors with standard ONNX ops (the piece the
format supplies: ``SparseFormat.fallback_dense_weight``) and applies ``Gemm``: the file then runs
anywhere, just without the sparse speed-up. There is one function per op name, so all SparseGemm
nodes of a model must use one format for it to be embedded.

One body serves every node of the model, whatever its attributes and inputs:

* ``C`` absent: the body's ``Gemm`` gets an empty input name, which ``Gemm`` accepts (opset >= 11).
* N-D ``A`` is reshaped to ``[-1, A.shape[-1]]`` (a no-op for 2-D ``A``, so ``transA`` still
  works) and the output is reshaped to ``A.shape[start:end] + [N]`` with ``start = transA *
  (rank - 1)``, ``end = rank - 1 + transA``: ``A.shape[:-1]`` without transA, ``[M]`` with it.
* ``activation`` is a string attribute; ``Equal`` on strings needs opset 19, so the body compares
  it with ``"relu"`` through ``Unique`` (one unique element means equal), valid from opset 11.
* the format's piece uses fixed-shape ops only (no Compress / NonZero, whose data-dependent
  shapes onnxruntime does not constant-fold): onnxruntime folds the whole rebuild of ``W`` into
  one dense initializer when the session is created.

onnxruntime inlines the body with the *model's* ``ai.onnx`` opset (checked with onnxruntime
1.32; the tests pass on 1.20.1 too), so the function imports exactly that version and only uses ops whose meaning is the same
from opset 12 on (attributes reach the body through ``Constant`` value_int / value_string,
which opset 12 introduced). For csr, duplicate ``(k, n)`` entries (never written by onnx-prune) are
summed like the kernel does from opset 16 on (``ScatterND`` reduction ``add``); below that the last
one wins.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import onnx
from onnx import AttributeProto, helper, numpy_helper

from .errors import OnnxPruneError
from .graph import iter_nodes, opset_version
from .sparse_gemm import contract, formats, formats_used, is_sparse_gemm

MIN_OPSET = 12  # Constant value_int / value_string (12); optional Gemm C, ScatterND, CumSum (11)
MIN_IR_VERSION = 9  # FunctionProto.attribute_proto (default attribute values)
_INT64_MAX = np.iinfo(np.int64).max

_FUNCTION_DOC = (
    "Standard-op fallback of the onnx-prune SparseGemm op: rebuilds the dense weight W [K, N] "
    "from the {format} tensors ({tensors}) and computes act(alpha * A' W + beta * C). "
    "onnxruntime uses it only when the onnx-prune library is not registered; with the library "
    "the sparse kernel runs instead. See docs/sparse_gemm_op.md."
)


def add_fallback_functions(model: onnx.ModelProto) -> None:
    """Embed the SparseGemm fallback function in ``model`` (in place) when it has SparseGemm nodes.

    Replaces an existing SparseGemm function (so re-running is safe) and raises the IR version to
    9 where lower, since default attribute values of functions need it. Below opset 12 the body
    cannot read attributes: no function is added and a warning says the file needs the library
    (or ``onnx-prune densify``) -- pruning such a model must still succeed.
    """
    if not any(is_sparse_gemm(n) for n in iter_nodes(model.graph)):
        return
    opset = opset_version(model)
    if opset is None:
        raise OnnxPruneError("the model imports no ai.onnx opset")
    if opset < MIN_OPSET:
        warnings.warn(f"no standard-op fallback embedded: it needs ai.onnx opset >= {MIN_OPSET} and the "
                      f"model imports opset {opset}; the pruned file runs only with the onnx-prune "
                      "library registered (or after `onnx-prune densify`)", stacklevel=2)
        return
    fmt = model_format(model)
    remove_fallback_functions(model)
    model.functions.append(build_sparse_gemm_function(opset, fmt))
    if model.ir_version < MIN_IR_VERSION:
        model.ir_version = MIN_IR_VERSION


def remove_fallback_functions(model: onnx.ModelProto) -> None:
    """Drop the SparseGemm function(s) of ``model`` (in place)."""
    keep = [f for f in model.functions if not _is_sparse_gemm_function(f)]
    if len(keep) != len(model.functions):
        del model.functions[:]
        model.functions.extend(keep)


def has_fallback_function(model: onnx.ModelProto) -> bool:
    return any(_is_sparse_gemm_function(f) for f in model.functions)


def build_sparse_gemm_function(opset: int, format: str = contract.DEFAULT_FORMAT) -> onnx.FunctionProto:
    """The SparseGemm FunctionProto for nodes storing ``format`` in a model importing ai.onnx
    ``opset`` (>= 12)."""
    fmt = formats.get(format)
    b = FunctionBody()
    dense_w = fmt.fallback_dense_weight(b, opset)
    a2d, shape_a = _flatten_a_nodes(b)
    gemm = b.node("Gemm", [a2d, dense_w, "C"],
                  attrs=[_ref("alpha", AttributeProto.FLOAT), _ref("beta", AttributeProto.FLOAT),
                         _ref("transA", AttributeProto.INT)])
    activated = _activation_nodes(b, gemm)
    out_shape = _output_shape_nodes(b, shape_a)
    b.node("Reshape", [activated, out_shape], out="Y")
    defaults = [helper.make_attribute(contract.ATTR_ALPHA, 1.0),
                helper.make_attribute(contract.ATTR_BETA, 1.0),
                helper.make_attribute(contract.ATTR_TRANS_A, 0),
                helper.make_attribute(contract.ATTR_ACTIVATION, ""),
                helper.make_attribute(contract.ATTR_FORMAT, contract.DEFAULT_FORMAT)]
    without_default = [contract.ATTR_K, contract.ATTR_N, contract.ATTR_NNZ, contract.ATTR_ORIGINAL_OP,
                contract.ATTR_DENSE_SHAPE, contract.ATTR_SPARSITY]
    inputs = [contract.INPUT_A, *fmt.tensor_names, contract.INPUT_C]
    doc = _FUNCTION_DOC.format(format=fmt.name, tensors=" / ".join(fmt.tensor_names))
    return helper.make_function(
        contract.DOMAIN, contract.OP_TYPE, inputs, list(contract.OUTPUT_NAMES),
        b.nodes, [helper.make_opsetid("", opset)], attributes=without_default,
        attribute_protos=defaults, doc_string=doc)


# ----------------------------------------------------------------------------- body pieces


class FunctionBody:
    """Collects body nodes with short unique intermediate names (t1, t2, ...: the body is stored
    in every pruned file)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}

    def node(self, op: str, inputs: Sequence[str], out: str | None = None,
             attrs: Sequence[AttributeProto] = (), **kwargs: object) -> str:
        self._count += 1
        name = out or f"t{self._count}"
        node = helper.make_node(op, list(inputs), [name], **kwargs)
        node.attribute.extend(attrs)
        self.nodes.append(node)
        return name

    def node2(self, op: str, inputs: Sequence[str], **kwargs: object) -> str:
        """A two-output node (TopK) of which only the second output is used."""
        self._count += 1
        first, second = f"t{self._count}", f"t{self._count}_1"
        self.nodes.append(helper.make_node(op, list(inputs), [first, second], **kwargs))
        return second

    def const(self, array: np.ndarray) -> str:
        """One Constant node per distinct value (keeps the stored function small)."""
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes() if array.dtype != object else repr(array.tolist()))
        if key not in self._consts:
            self._consts[key] = self.node("Constant", [], value=numpy_helper.from_array(array))
        return self._consts[key]

    def attr_scalar(self, attr: str, attr_type: int) -> str:
        """A Constant holding the caller's attribute ``attr`` as a scalar tensor."""
        field = {AttributeProto.INT: "value_int", AttributeProto.STRING: "value_string"}[attr_type]
        ref = AttributeProto(name=field, ref_attr_name=attr, type=attr_type)
        return self.node("Constant", [], attrs=[ref])


def _ref(attr: str, attr_type: int) -> AttributeProto:
    return AttributeProto(name=attr, ref_attr_name=attr, type=attr_type)


def _flatten_a_nodes(b: FunctionBody) -> tuple[str, str]:
    """A as [-1, A.shape[-1]] (unchanged for 2-D A) and A's shape."""
    shape_a = b.node("Shape", ["A"])
    last = b.node("Slice", [shape_a, b.const(np.array([-1], np.int64)),
                            b.const(np.array([_INT64_MAX], np.int64))])
    target = b.node("Concat", [b.const(np.array([-1], np.int64)), last], axis=0)
    return b.node("Reshape", ["A", target]), shape_a


def _activation_nodes(b: FunctionBody, y: str) -> str:
    """``Where(is_relu and y < 0, 0, y)``: Relu that lets NaN through, identity otherwise."""
    one = b.const(np.array([1], np.int64))
    activation = b.node("Reshape", [b.attr_scalar(contract.ATTR_ACTIVATION, AttributeProto.STRING), one])
    relu = b.const(np.array([contract.ACTIVATION_RELU], dtype=object))
    unique = b.node("Unique", [b.node("Concat", [activation, relu], axis=0)])
    is_relu = b.node("Equal", [b.node("Size", [unique]), b.const(np.array(1, np.int64))])
    negative = b.node("Less", [y, b.const(np.array(0.0, np.float32))])
    clamp = b.node("And", [negative, is_relu])
    return b.node("Where", [clamp, b.const(np.array(0.0, np.float32)), y])


def _output_shape_nodes(b: FunctionBody, shape_a: str) -> str:
    """``A.shape[t*(r-1) : r-1+t] + [N]`` with ``t = transA``, ``r = rank(A)``."""
    one = b.const(np.array([1], np.int64))
    trans = b.node("Reshape", [b.attr_scalar(contract.ATTR_TRANS_A, AttributeProto.INT), one])
    rank_minus_1 = b.node("Sub", [b.node("Reshape", [b.node("Size", [shape_a]), one]), one])
    start = b.node("Mul", [trans, rank_minus_1])
    end = b.node("Add", [rank_minus_1, trans])
    leading = b.node("Slice", [shape_a, start, end])
    n1 = b.node("Reshape", [b.attr_scalar(contract.ATTR_N, AttributeProto.INT), one])
    return b.node("Concat", [leading, n1], axis=0)


# ----------------------------------------------------------------------------- checks


def _is_sparse_gemm_function(func: onnx.FunctionProto) -> bool:
    return func.name == contract.OP_TYPE and func.domain == contract.DOMAIN


def model_format(model: onnx.ModelProto) -> str:
    """The one format all SparseGemm nodes of ``model`` use (the fallback function is built for it)."""
    used = formats_used(iter_nodes(model.graph))
    for name, node in used.items():
        if not formats.is_known(name):
            known = ", ".join(f"'{known}'" for known in formats.names())
            raise OnnxPruneError(f"SparseGemm node '{node}': the fallback supports format {known} only, "
                                 f"got '{name}'")
    if len(used) > 1:
        listed = ", ".join(f"'{name}' (node '{node}')" for name, node in used.items())
        raise OnnxPruneError(f"SparseGemm nodes use several formats ({listed}); the fallback function "
                             "serves one format per model")
    return next(iter(used), contract.DEFAULT_FORMAT)
