"""The ``bcsr_int8_dynamic`` format (docs/sparse_gemm_op.md, "Formats"): bcsr's ``R × 1`` blocks of
int8 weights with one scale per output, run with csr_int8_dynamic's int8 arithmetic.

The weights are quantized as csr_int8 quantizes them (symmetric, per output) and stored in bcsr's
block layout (block row ``b`` holds outputs ``b·R .. b·R + R``; its blocks ``values[j] [R]`` sit at
rows ``indices[j]``). At Run each row of ``A'`` is quantized per row exactly as for
csr_int8_dynamic; the kernel takes a block row's kept rows four at a time, interleaves their
activations once into VNNI order and feeds all ``R`` outputs from it, so int8 products on a block
pattern cost less than the same pruning in float32. Selected by ``--quantize dynamic`` with an
``R x 1`` block pattern. The C++ side is csrc/formats/bcsr_int8_dynamic.cc and
csrc/kernels/block_int8_body.h.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ...errors import OnnxPruneError
from ..function_body import FunctionBody
from .base import PackedWeight, keep_mask, register
from .bcsr import best_block_size, bcsr_to_dense, check_bcsr, dense_to_bcsr, dense_weight_nodes
from .csr_int8 import QMAX, check_scales, quantize
from .csr_int8_dynamic import MAX_ABS_WEIGHT_SUM, CsrInt8DynamicFormat

NAME = "bcsr_int8_dynamic"


@dataclass(frozen=True)
class BcsrInt8DynamicWeight(PackedWeight):
    """A ``K × N`` weight in the ``bcsr_int8_dynamic`` format: the four tensors a SparseGemm node stores."""

    values: np.ndarray   # [n_blocks, R] int8: unkept weights of a stored block are zeros
    scales: np.ndarray   # [N] float32: W[k, n] = values[j, r] * scales[n]
    indices: np.ndarray  # [n_blocks] uint16 or int32: row k of W of each block
    offsets: np.ndarray  # [ceil(N / R) + 1] int32 or int64: block row pointer
    K: int
    N: int

    format: str = NAME

    @property
    def R(self) -> int:
        return int(self.values.shape[1])

    @property
    def block_rows(self) -> int:
        return -(-self.N // self.R)

    @property
    def tensors(self) -> tuple[np.ndarray, ...]:
        return (self.values, self.scales, self.indices, self.offsets)

    @property
    def nnz(self) -> int:
        """Stored weights of outputs < N (a partial last block row's padding is not counted)."""
        offsets = np.asarray(self.offsets, dtype=np.int64)
        last_row_blocks = int(offsets[-1] - offsets[-2])
        return int(self.values.shape[0]) * self.R - last_row_blocks * (self.block_rows * self.R - self.N)


def output_abs_sums(w: BcsrInt8DynamicWeight) -> np.ndarray:
    """Σ |values| of every output b·R + r (padding included: it is zero), [ceil(N / R) · R]."""
    offsets = np.asarray(w.offsets, dtype=np.int64)
    block_row = np.repeat(np.arange(w.block_rows), np.diff(offsets))
    sums = np.zeros((w.block_rows, w.R), dtype=np.int64)
    np.add.at(sums, block_row, np.abs(np.asarray(w.values, dtype=np.int64)))
    return sums.reshape(-1)


class BcsrInt8DynamicFormat(CsrInt8DynamicFormat):
    """csr_int8_dynamic's arithmetic, fallback and verification tolerance on bcsr's blocks."""

    name = NAME
    tensor_names = ("values", "scales", "indices", "offsets")
    value_types = {}  # selected by --quantize dynamic with an R x 1 block pattern, not by a --values choice
    description = ("format bcsr_int8_dynamic: block row b (outputs b*R .. b*R+R) stores int8 blocks values[j] [R] "
                   "at rows indices[j] for offsets[b] <= j < offsets[b+1], W = values * scales[n]; each row of A' "
                   "is quantized to int8 at run time (scale max|row| / 127), products summed in int32, then "
                   "multiplied by the row's and the output's scales")
    input_docs = (
        ("values", "Q", "The stored R x 1 blocks [n_blocks, R] (R = 4 or 8), int8 in [-127, 127]; unkept weights are zeros."),
        ("scales", "S", "One scale per output [N], float32: W[k, n] = values[j, r] * scales[n]."),
        ("indices", "I", "Row k of W of each block [n_blocks], uint16 or int32."),
        ("offsets", "O", "Block row pointer [ceil(N / R) + 1]: block row b owns blocks offsets[b]..offsets[b+1]."),
    )
    type_constraints = (
        ("Q", ("tensor(int8)",), "Quantized weights."),
        ("S", ("tensor(float)",), "Per-output scales."),
        ("I", ("tensor(uint16)", "tensor(int32)"), "Row indices."),
        ("O", ("tensor(int32)", "tensor(int64)"), "Block row pointer."),
    )

    def pack(self, weight: np.ndarray, mask: np.ndarray | None = None,
             values_dtype: np.dtype | type = np.int8) -> BcsrInt8DynamicWeight:
        """Quantize per output (csr_int8's rule) and pack in the block size bcsr would choose."""
        if np.dtype(values_dtype) != np.int8:
            raise ValueError(f"format {NAME} stores int8 values, not {np.dtype(values_dtype)}")
        weight = np.asarray(weight)
        keep = keep_mask(weight, mask)
        if not np.isfinite(weight[keep]).all():
            raise OnnxPruneError("int8 values need finite weights: a kept weight is inf or NaN")
        q, scales = quantize(weight, keep)
        blocks = dense_to_bcsr(q.astype(np.float32), keep, best_block_size(weight, keep), np.int8)
        return BcsrInt8DynamicWeight(values=blocks.values, scales=scales, indices=blocks.indices,
                                     offsets=blocks.offsets, K=blocks.K, N=blocks.N)

    def from_tensors(self, tensors: Sequence[np.ndarray], K: int, N: int) -> BcsrInt8DynamicWeight:
        return BcsrInt8DynamicWeight(*tensors, K=int(K), N=int(N))

    def unpack(self, w: PackedWeight) -> np.ndarray:
        """The dequantized dense ``[K, N]`` float32 weight: ``float32(values) * scales[n]``."""
        return bcsr_to_dense(w) * np.asarray(w.scales, dtype=np.float32)

    def validate(self, w: PackedWeight, where: str) -> None:
        """bcsr's block rules with int8 values, csr_int8's scale rule, values in [-127, 127] and every
        output's int32 sums bounded (csrc/formats/bcsr_int8_dynamic.cc checks the same)."""
        check_bcsr(w, where, value_dtypes=(np.int8,))
        check_scales(w, where)
        values = np.asarray(w.values, dtype=np.int64)
        if values.size and values.min() < -QMAX:
            j, r = np.unravel_index(int(np.argmin(values)), values.shape)
            raise OnnxPruneError(f"{where}: values[{j}, {r}] = {int(values.min())} is outside [-127, 127]")
        sums = output_abs_sums(w)
        if sums.size and sums.max() > MAX_ABS_WEIGHT_SUM:
            raise OnnxPruneError(f"{where}: output {int(np.argmax(sums))} has sum |values| = {int(sums.max())}, "
                                 f"more than (2^31 - 1) / 127 = {MAX_ABS_WEIGHT_SUM} (its int32 sums could overflow)")

    def integer_weight_nodes(self, b: FunctionBody, opset: int) -> str:
        return dense_weight_nodes(b)

    def fallback_dense_weight(self, b: FunctionBody, opset: int) -> str:
        return b.node("Mul", [dense_weight_nodes(b), "scales"])


BCSR_INT8_DYNAMIC = register(BcsrInt8DynamicFormat())
