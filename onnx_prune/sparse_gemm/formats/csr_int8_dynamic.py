"""The ``csr_int8_dynamic`` format (docs/sparse_gemm_op.md, "Formats"): csr_int8's tensors run with
int8 arithmetic, as onnxruntime's dynamic quantization runs a dense MatMul, but per row of A'.

The weights are csr_int8's (int8 values, one scale per output, one-byte row indices in 256-row
blocks). At Run every row ``m`` of ``A'`` is quantized on its own -- ``s_m = max_k |A'[m, k]| / 127``,
``q = clip(round_half_to_even(A' / s_m), -127, 127)`` -- so a sample's result never depends on the
rest of the batch; the products are summed exactly in int32 and dequantized as
``((float32(acc) * s_m) * scales[n])`` before alpha, bias and relu. Selected with ``--quantize
dynamic``. Everything Python knows about the format lives here; the C++ side is
csrc/formats/csr_int8_dynamic.cc and the kernels' kernel_int8_dynamic_body.h.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from onnx import AttributeProto, TensorProto

from ...errors import OnnxPruneError
from .. import contract
from ..function_body import (FLOAT_ZERO, FunctionBody, attr_equals, attr_vector, flatten_a_nodes,
                             output_shape_nodes, ref_attr)
from .base import PackedWeight, register
from .csr_int8 import QMAX, CsrInt8Format, CsrInt8Weight, fallback_scatter_nodes

NAME = "csr_int8_dynamic"
# Output n's int32 sum is at most 127 * sum_j |values[j]|: that must stay below 2^31.
MAX_ABS_WEIGHT_SUM = (2**31 - 1) // QMAX
# Max relative error --verify accepts against the masked dense fp32 model (docs/sparse_gemm_op.md:
# activation quantization, measured at most 5.0e-3 on the bundled and Fashion-MNIST models).
VERIFY_TOLERANCE = 5e-2


@dataclass(frozen=True)
class CsrInt8DynamicWeight(CsrInt8Weight):
    """csr_int8's four tensors, marked for the int8 product."""

    format: str = NAME


class CsrInt8DynamicFormat(CsrInt8Format):
    name = NAME
    value_types = {}  # selected by --quantize dynamic, not by a --values choice
    verify_tolerance = VERIFY_TOLERANCE
    description = ("format csr_int8_dynamic: csr_int8's int8 weights (values * scales[n] in 256-row blocks); "
                   "each row of A' is quantized to int8 at run time (scale max|row| / 127), products summed "
                   "in int32, then multiplied by the row's and the output's scales")

    def pack(self, weight: np.ndarray, mask: np.ndarray | None = None,
             values_dtype: np.dtype | type = np.int8) -> CsrInt8DynamicWeight:
        w = super().pack(weight, mask, values_dtype)
        return CsrInt8DynamicWeight(*w.tensors, K=w.K, N=w.N)

    def from_tensors(self, tensors: Sequence[np.ndarray], K: int, N: int) -> CsrInt8DynamicWeight:
        return CsrInt8DynamicWeight(*tensors, K=int(K), N=int(N))

    def validate(self, w: PackedWeight, where: str) -> None:
        """csr_int8's rules, values in [-127, 127] and every output's int32 sums bounded."""
        super().validate(w, where)
        values = np.asarray(w.values, dtype=np.int64)
        if values.size and values.min() < -QMAX:
            raise OnnxPruneError(f"{where}: values[{int(np.argmin(values))}] = {int(values.min())} is outside "
                                 "[-127, 127]")
        per_output = np.add.reduceat(np.abs(values), column_starts(w)) if values.size else np.zeros(0)
        if per_output.size and per_output.max() > MAX_ABS_WEIGHT_SUM:
            raise OnnxPruneError(f"{where}: an output's sum |values| is {int(per_output.max())}, more than "
                                 f"(2^31 - 1) / 127 = {MAX_ABS_WEIGHT_SUM} (its int32 sums could overflow)")

    def integer_weight_nodes(self, b: FunctionBody, opset: int) -> str:
        """The stored integers as a dense float32 ``[K, N]`` (unscaled), for the fallback's MatMulInteger."""
        return fallback_scatter_nodes(b, opset, scaled=False)

    def fallback_output(self, b: FunctionBody, opset: int) -> Optional[str]:
        """The contract's computation in standard ops: A' quantized per row, MatMulInteger with the
        int8 W (constant-folded), dequantized, bias and relu; shaped like the output."""
        a2d, shape_a = flatten_a_nodes(b)
        trans_a = b.node("Equal", [b.attr_scalar(contract.ATTR_TRANS_A, AttributeProto.INT),
                                   b.const(np.array(1, np.int64))])
        a_rows = b.if_(trans_a, lambda t: t.node("Transpose", [a2d]), lambda o: o.node("Identity", [a2d]))
        scale = b.node("Div", [_reduce(b, "ReduceMax", b.node("Abs", [a_rows]), opset),
                               b.const(np.array(QMAX, np.float32))])
        zero = b.const(np.array(0.0, np.float32))
        safe = b.node("Where", [b.node("Equal", [scale, zero]), b.const(np.array(1.0, np.float32)), scale])
        q = b.node("Clip", [b.node("Round", [b.node("Div", [a_rows, safe])]),
                            b.const(np.array(-QMAX, np.float32)), b.const(np.array(QMAX, np.float32))])
        w_int8 = b.node("Cast", [self.integer_weight_nodes(b, opset)], to=TensorProto.INT8)
        acc = b.node("MatMulInteger", [b.node("Cast", [q], to=TensorProto.INT8), w_int8])
        rows_scaled = b.node("Mul", [b.node("Cast", [acc], to=TensorProto.FLOAT), scale])
        # NaN for a row holding inf or NaN (x * 0 is NaN exactly there), 0 elsewhere: the row's outputs
        not_finite = _reduce(b, "ReduceSum", b.node("Mul", [a_rows, zero]), opset)
        d = b.node("Add", [b.node("Mul", [rows_scaled, "scales"]), not_finite])
        y = b.node("Add", [b.node("Mul", [d, b.attr_scalar(contract.ATTR_ALPHA, AttributeProto.FLOAT)]),
                           _bias_nodes(b, a_rows)])
        is_relu = attr_equals(b, contract.ATTR_ACTIVATION, contract.ACTIVATION_RELU)
        clamp = b.node("And", [b.node("Less", [y, zero]), is_relu])
        activated = b.node("Where", [clamp, zero, y])
        return b.node("Reshape", [activated, output_shape_nodes(b, shape_a)])


def column_starts(w: PackedWeight) -> np.ndarray:
    """First entry of every output that has entries (reduceat positions)."""
    B = -(-int(w.K) // 256)
    starts = np.asarray(w.offsets, dtype=np.int64)[:-1:B][: w.N]
    ends = np.asarray(w.offsets, dtype=np.int64)[B::B]
    return starts[starts < ends]


def _reduce(b: FunctionBody, op: str, x: str, opset: int) -> str:
    """``op`` over axis 1 of a 2-D ``x``, keeping dims (axes became an input in opset 13 / 18)."""
    axes_input = opset >= (13 if op == "ReduceSum" else 18)
    if axes_input:
        return b.node(op, [x, b.const(np.array([1], np.int64))], keepdims=1)
    return b.node(op, [x], axes=[1], keepdims=1)


def _bias_nodes(b: FunctionBody, a_rows: str) -> str:
    """``beta * C`` broadcast to ``[M, N]`` (zeros without C): ``Gemm(0 [M, 1], 0 [1, N], C)``, since
    only an op whose input is optional may read the optional C."""
    one = b.const(np.array([1], np.int64))
    m = b.node("Slice", [b.node("Shape", [a_rows]), b.const(np.array([0], np.int64)), one])
    zero_col = b.node("ConstantOfShape", [b.node("Concat", [m, one], axis=0)], value=FLOAT_ZERO)
    zero_row = b.node("ConstantOfShape", [b.node("Concat", [one, attr_vector(b, contract.ATTR_N)], axis=0)],
                      value=FLOAT_ZERO)
    return b.node("Gemm", [zero_col, zero_row, contract.INPUT_C],
                  attrs=[ref_attr(contract.ATTR_BETA, AttributeProto.FLOAT)])


CSR_INT8_DYNAMIC = register(CsrInt8DynamicFormat())
