"""A standard-op fallback for SparseGemm, stored inside the pruned file.

onnxruntime runs a model-local function (``ModelProto.functions``) for a custom-domain node when
no kernel is registered for it, and the registered kernel when the SparseGemm library is loaded.
So a pruned file carries one ``SparseGemm`` FunctionProto (domain ``ai.onnx_prune``) whose body
rebuilds the dense ``W [K, N]`` from the format's tensors with standard ONNX ops (the piece the
format supplies: ``SparseFormat.fallback_dense_weight``) and multiplies with it: the file then
runs anywhere, just without the sparse speed-up. There is one function per op name, so all
SparseGemm nodes of a model must use one format for it to be embedded.

One body serves every node of the model. It picks, by the node's attributes only, between ``If``
branches that each hold the plain standard ops for one kind of node:

* ``original_op == "Gemm"`` or ``transA == 1`` (``A`` is 2-D): ``Gemm(A, W, C; alpha, beta, transA)``;
  an absent ``C`` is an empty input name, which ``Gemm`` accepts.
* ``original_op == "MatMul"`` and ``alpha == 1`` (``transA = 0``, ``C`` absent or broadcastable to
  ``[1, N]``, any rank of ``A``; onnx-prune writes no other alpha for MatMul layers):
  ``MatMul(A, W)``, then ``Add`` of ``beta * C`` as ``[N]`` unless that is
  all zeros (an absent ``C`` reads as zeros: ``Gemm`` of zeros with the optional ``C`` builds it,
  since no op may read an absent input otherwise -- not even in a branch that never runs).
* anything else: the general form, ``A`` reshaped to ``[-1, A.shape[-1]]``, ``Gemm``, the output
  reshaped to ``A.shape[:-1] + [N]`` (``[M, N]`` with transA).
* then ``Relu`` when ``activation == "relu"`` (onnxruntime's Relu lets NaN through, like the kernel).

Every condition is a constant once the node's attributes are known, and so is ``W``: onnxruntime
inlines the function, turns the attribute references into constants, folds the conditions and the
rebuild of ``W`` and inlines each ``If`` whose condition is constant (measured with onnxruntime
1.17.3 and 1.32). After its default optimisations a pruned file without the library therefore
runs exactly the Gemm / MatMul (+ Add / Relu) the dense model runs, on a dense ``W``. With
optimisations disabled nothing is folded: every call rebuilds ``W`` and evaluates the conditions
(docs/deployment.md has the measured cost). String attributes are compared through ``Unique``
(one unique element means equal), valid from opset 11; ``Equal`` on strings needs opset 19.

onnxruntime inlines the body with the *model's* ``ai.onnx`` opset, so the function imports exactly
that version and only uses ops whose meaning is the same from opset 12 on (attributes reach the
body through ``Constant`` value_int / value_float / value_string, which opset 12 introduced). For
csr, duplicate ``(k, n)`` entries (never written by onnx-prune) are summed like the kernel does from
opset 16 on (``ScatterND`` reduction ``add``); below that the last one wins.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import onnx
from onnx import AttributeProto, helper

from ..errors import OnnxPruneError
from ..model.graph import iter_nodes, opset_version
from . import contract, formats, formats_used, is_sparse_gemm
from .function_body import (FLOAT_ZERO, FunctionBody, attr_equals, attr_vector, flatten_a_nodes,
                                        output_shape_nodes, ref_attr)

MIN_OPSET = 12  # Constant value_int / value_float / value_string (12); optional Gemm C, ScatterND, Unique (11)
MIN_IR_VERSION = 9  # FunctionProto.attribute_proto (default attribute values)

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
    custom = fmt.fallback_output(b, opset)  # a format whose arithmetic is not Gemm with a dense W
    if custom is not None:
        b.node("Identity", [custom], out=contract.OUTPUT_NAMES[0])
    else:
        _dense_weight_body(b, fmt, opset)
    defaults = [helper.make_attribute(contract.ATTR_ALPHA, 1.0),
                helper.make_attribute(contract.ATTR_BETA, 1.0),
                helper.make_attribute(contract.ATTR_TRANS_A, 0),
                helper.make_attribute(contract.ATTR_ACTIVATION, ""),
                helper.make_attribute(contract.ATTR_FORMAT, contract.DEFAULT_FORMAT),
                helper.make_attribute(contract.ATTR_ORIGINAL_OP, "")]
    without_default = [contract.ATTR_K, contract.ATTR_N, contract.ATTR_NNZ, contract.ATTR_DENSE_SHAPE,
                       contract.ATTR_SPARSITY]
    inputs = [contract.INPUT_A, *fmt.tensor_names, contract.INPUT_C]
    doc = _FUNCTION_DOC.format(format=fmt.name, tensors=" / ".join(fmt.tensor_names))
    return helper.make_function(
        contract.DOMAIN, contract.OP_TYPE, inputs, list(contract.OUTPUT_NAMES),
        b.nodes, [helper.make_opsetid("", opset)], attributes=without_default,
        attribute_protos=defaults, doc_string=doc)


def _dense_weight_body(b: FunctionBody, fmt: formats.SparseFormat, opset: int) -> None:
    """The Gemm / MatMul forms on the dense W the format rebuilds."""
    w = fmt.fallback_dense_weight(b, opset)
    is_relu = attr_equals(b, contract.ATTR_ACTIVATION, contract.ACTIVATION_RELU)
    trans_a = b.node("Equal", [b.attr_scalar(contract.ATTR_TRANS_A, AttributeProto.INT), b.const(np.array(1, np.int64))])
    is_gemm = b.node("Or", [attr_equals(b, contract.ATTR_ORIGINAL_OP, "Gemm"), trans_a])
    alpha_is_1 = b.node("Equal", [b.attr_scalar(contract.ATTR_ALPHA, AttributeProto.FLOAT),
                                  b.const(np.array(1.0, np.float32))])
    is_matmul = b.node("And", [attr_equals(b, contract.ATTR_ORIGINAL_OP, "MatMul"), alpha_is_1])
    b.if_(is_gemm,
          lambda then: _activated(then, is_relu, lambda x: _gemm_form(x, _rank_hidden_a(x, is_gemm), w)),
          lambda other: other.if_(is_matmul,
                                  lambda then: _matmul_form(then, w, is_relu, is_matmul),
                                  lambda general: _general_form(general, w, is_relu)),
          out=contract.OUTPUT_NAMES[0])


# ----------------------------------------------------------------------------- body pieces


def _activated(b: FunctionBody, is_relu: str, compute: Callable[[FunctionBody], str]) -> str:
    """``Relu(compute())`` when ``is_relu``, else ``compute()``: each branch holds its own copy of
    the ops, so that once the condition is folded no Identity or Where remains."""
    return b.if_(is_relu, lambda then: then.node("Relu", [compute(then)]), compute)


def _gemm_form(b: FunctionBody, a: str, w: str) -> str:
    """The node as the Gemm it stands for (2-D A; the optional C stays optional)."""
    return b.node("Gemm", [a, w, contract.INPUT_C],
                  attrs=_gemm_attr_refs())


def _gemm_attr_refs() -> list[AttributeProto]:
    """Gemm's alpha, beta and transA taken from the node's attributes of the same names."""
    return [ref_attr(contract.ATTR_ALPHA, AttributeProto.FLOAT), ref_attr(contract.ATTR_BETA, AttributeProto.FLOAT),
            ref_attr(contract.ATTR_TRANS_A, AttributeProto.INT)]


def _rank_hidden_a(b: FunctionBody, is_gemm: str) -> str:
    """A, with a rank that shape inference cannot know: ``If(is_gemm, A, Flatten(A))``.

    Shape inference checks every branch, the ones a node never takes included, so a plain Gemm
    branch would fail Gemm's rank-2 check for an N-D A that goes to another branch. The If's two
    branches differ in rank, so its output has no known rank; onnxruntime folds it (the condition
    is constant) to ``Identity(A)`` and removes that, so nothing of it runs."""
    return b.if_(is_gemm, lambda then: then.node("Identity", [contract.INPUT_A]),
                 lambda other: other.node("Flatten", [contract.INPUT_A], axis=1))


def _matmul_form(b: FunctionBody, w: str, is_relu: str, is_matmul: str) -> str:
    """``MatMul(A, W)``, plus ``beta * C`` as ``[N]`` unless that is all zeros: any rank of A."""
    bias = _bias_row(b, _bias_factor(b, is_matmul))
    no_bias = b.node("Equal", [b.node("ReduceL1", [bias], keepdims=0), b.const(np.array(0.0, np.float32))])
    return b.if_(no_bias,
                 lambda then: _activated(then, is_relu, lambda x: x.node("MatMul", [contract.INPUT_A, w])),
                 lambda other: _activated(other, is_relu, lambda x: x.node(
                     "Add", [x.node("MatMul", [contract.INPUT_A, w]), bias])))


def _bias_row(b: FunctionBody, zero_a: str) -> str:
    """``beta * C`` as ``[N]``, zeros when C is absent: ``Gemm(zero_a, 0 [1, N], C)`` with
    ``zero_a`` = 0 [1, 1] (:func:`_bias_factor`), since no op may read an optional input that may
    be absent but one whose input is optional. Only MatMul nodes run it: they promise a C
    broadcastable to ``[1, N]``."""
    one_n = b.node("Concat", [b.const(np.array([1], np.int64)), attr_vector(b, contract.ATTR_N)], axis=0)
    zero_b = b.node("ConstantOfShape", [one_n], value=FLOAT_ZERO)
    row = b.node("Gemm", [zero_a, zero_b, contract.INPUT_C], attrs=[ref_attr(contract.ATTR_BETA, AttributeProto.FLOAT)])
    return b.node("Reshape", [row, b.const(np.array([-1], np.int64))])


def _bias_factor(b: FunctionBody, is_matmul: str) -> str:
    """``If(is_matmul, 0 [1, 1], ReduceSum(Flatten(A, 0)) [1, 1])``: the first factor of the bias row's Gemm.

    onnxruntime constant-folds inside every branch before it drops the untaken ones, and
    onnxruntime 1.17 fails the session when such a fold fails -- as the bias row's Gemm would for
    a Gemm node with an ``[M, N]`` C. This factor is a constant for MatMul nodes only, so for the
    others that Gemm is never folded (nor run; its value there is never used). Both branches are
    ``[1, 1]`` so that shape inference knows the Gemm's output shape: onnxruntime 1.32 folds no
    node whose output size it cannot estimate, and would run the bias test at every call."""
    return b.if_(is_matmul, lambda then: then.node("ConstantOfShape", [then.const(np.array([1, 1], np.int64))],
                                                   value=FLOAT_ZERO),
                 lambda other: other.node("ReduceSum", [other.node("Flatten", [contract.INPUT_A], axis=0)]))


def _general_form(b: FunctionBody, w: str, is_relu: str) -> str:
    """Any node the contract allows, whatever its attributes say: ``A`` flattened to 2-D for Gemm
    and the output shaped back; ``Where(is_relu and y < 0, 0, y)`` for the activation."""
    a2d, shape_a = flatten_a_nodes(b)
    gemm = b.node("Gemm", [a2d, w, contract.INPUT_C],
                  attrs=_gemm_attr_refs())
    negative = b.node("Less", [gemm, b.const(np.array(0.0, np.float32))])
    clamp = b.node("And", [negative, is_relu])
    activated = b.node("Where", [clamp, b.const(np.array(0.0, np.float32)), gemm])
    return b.node("Reshape", [activated, output_shape_nodes(b, shape_a)])


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
