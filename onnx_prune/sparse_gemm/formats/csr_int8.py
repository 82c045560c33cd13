"""The ``csr_int8`` format (docs/sparse_gemm_op.md, "Formats"): int8 weights, one scale per output.

Kept weights are quantized symmetrically per output feature (``scale_n = max |w_kn| / 127`` over
the kept weights of output ``n``, 1 when they are all zero or there are none; ``q = rint(w /
scale_n)`` clipped to [-127, 127], ties to even). Rows of ``W`` are cut into blocks of 256 so a row
index fits one byte: output ``n``'s weights in block ``b`` are
``values[offsets[n*B + b] : offsets[n*B + b + 1]]`` at rows ``256 b + indices[...]``, B = ceil(K / 256).
About 2 bytes per kept weight instead of csr's 6 (fp32 values, uint16 indices). Everything Python
knows about csr_int8 lives here; the C++ side is csrc/formats/csr_int8.cc.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from onnx import TensorProto

from ...errors import OnnxPruneError
from .. import contract
from ..function_body import FunctionBody, attr_vector
from .base import PackedWeight, SparseFormat, keep_mask, register
from .csr import offset_dtype_for, row_ids_nodes, scatter_dense_nodes

NAME = "csr_int8"
BLOCK_ROWS = 256  # rows of W per block: a row within a block fits one uint8 index
QMAX = 127        # symmetric range [-127, 127]
# Largest scale whose dequantized weights (|values| <= 128) stay finite (the kernel checks it too).
MAX_SCALE = float(np.finfo(np.float32).max) / 128


def n_blocks(K: int) -> int:
    return -(-int(K) // BLOCK_ROWS)


@dataclass(frozen=True)
class CsrInt8Weight(PackedWeight):
    """A ``K × N`` weight in the ``csr_int8`` format: the four tensors a SparseGemm node stores."""

    values: np.ndarray   # [nnz] int8
    scales: np.ndarray   # [N] float32
    indices: np.ndarray  # [nnz] uint8: row of W within its 256-row block
    offsets: np.ndarray  # [N * B + 1] int32 or int64
    K: int
    N: int

    format: str = NAME

    @property
    def tensors(self) -> tuple[np.ndarray, ...]:
        return (self.values, self.scales, self.indices, self.offsets)


def quantize(weight: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 [K, N], scales float32 [N]) by the symmetric per-output rule of the module doc."""
    kept = np.where(keep, np.abs(weight.astype(np.float32)), np.float32(0))
    peak = kept.max(axis=0) if kept.size else np.zeros(weight.shape[1], np.float32)
    scales = np.where(peak > 0, peak / np.float32(QMAX), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(weight.astype(np.float32) / scales), -QMAX, QMAX)
    return np.where(keep, q, 0).astype(np.int8), scales


# ----------------------------------------------------------------------------- the format


class CsrInt8Format(SparseFormat):
    name = NAME
    tensor_names = ("values", "scales", "indices", "offsets")
    value_types = {"int8": np.dtype(np.int8)}
    description = ("format csr_int8: output n's weights in 256-row block b are values[offsets[n*B+b]:"
                   "offsets[n*B+b+1]] * scales[n] (int8 times float32) at rows 256*b + indices[...], "
                   "B = ceil(K/256)")
    input_docs = (
        ("values", "Q", "The kept weights quantized [nnz], int8, by output then row."),
        ("scales", "S", "One scale per output [N], float32: W[k, n] = values[j] * scales[n]."),
        ("indices", "I", "Row of each kept weight within its 256-row block [nnz], uint8."),
        ("offsets", "O", "Pointer [N * ceil(K/256) + 1]: block b of output n owns entries "
                         "offsets[n*B+b]:offsets[n*B+b+1]."),
    )
    type_constraints = (
        ("Q", ("tensor(int8)",), "Quantized weights."),
        ("S", ("tensor(float)",), "Per-output scales."),
        ("I", ("tensor(uint8)",), "Row indices within a block."),
        ("O", ("tensor(int32)", "tensor(int64)"), "Block pointer."),
    )

    def pack(self, weight: np.ndarray, mask: np.ndarray | None = None,
             values_dtype: np.dtype | type = np.int8) -> CsrInt8Weight:
        """Quantize and pack a dense ``[K, N]`` weight, keeping entries where ``mask`` is true (non-zeros
        without one); entries ordered by output, then by row (the order the kernel reads)."""
        if np.dtype(values_dtype) != np.int8:
            raise ValueError(f"format {NAME} stores int8 values, not {np.dtype(values_dtype)}")
        weight = np.asarray(weight)
        keep = keep_mask(weight, mask)
        if not np.isfinite(weight[keep]).all():
            raise OnnxPruneError("int8 values need finite weights: a kept weight is inf or NaN")
        K, N = weight.shape
        B = n_blocks(K)
        q, scales = quantize(weight, keep)
        n_idx, k_idx = np.nonzero(keep.T)  # sorted by n, then k: by (n, block), then row in block
        rows = n_idx * B + k_idx // BLOCK_ROWS
        offsets = np.zeros(N * B + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=N * B), out=offsets[1:])
        return CsrInt8Weight(values=np.ascontiguousarray(q.T[n_idx, k_idx]), scales=scales,
                             indices=(k_idx % BLOCK_ROWS).astype(np.uint8),
                             offsets=offsets.astype(offset_dtype_for(len(n_idx))), K=int(K), N=int(N))

    def from_tensors(self, tensors: Sequence[np.ndarray], K: int, N: int) -> CsrInt8Weight:
        return CsrInt8Weight(*tensors, K=int(K), N=int(N))

    def unpack(self, w: PackedWeight) -> np.ndarray:
        """The dequantized dense ``[K, N]`` float32 weight: ``float32(q) * scale_n`` (duplicates summed)."""
        B = n_blocks(w.K)
        rows = np.repeat(np.arange(w.N * B), np.diff(np.asarray(w.offsets, dtype=np.int64)))
        n_idx = rows // B
        k_idx = (rows % B) * BLOCK_ROWS + np.asarray(w.indices, dtype=np.int64)
        dense = np.zeros((w.K, w.N), dtype=np.float32)
        np.add.at(dense, (k_idx, n_idx), np.asarray(w.values, np.float32) * np.asarray(w.scales, np.float32)[n_idx])
        return dense

    def validate(self, w: PackedWeight, where: str) -> None:
        """The contract's validity rules, each a one-line error starting with ``where``."""
        if w.K <= 0 or w.N <= 0:
            raise OnnxPruneError(f"{where}: K and N must be positive, got K={w.K}, N={w.N}")
        if w.values.dtype != np.int8:
            raise OnnxPruneError(f"{where}: values must be int8, got {w.values.dtype}")
        if w.values.ndim != 1 or w.indices.shape != w.values.shape:
            raise OnnxPruneError(f"{where}: values {list(w.values.shape)} and indices "
                                 f"{list(w.indices.shape)} must be 1-D of the same length")
        check_scales(w, where)
        rows = w.N * n_blocks(w.K)
        if w.offsets.shape != (rows + 1,):
            raise OnnxPruneError(f"{where}: offsets has shape {list(w.offsets.shape)}, expected "
                                 f"[N * ceil(K / 256) + 1] = [{rows + 1}]")
        offsets = w.offsets.astype(np.int64)
        if offsets[0] != 0 or offsets[-1] != w.nnz or np.any(np.diff(offsets) < 0):
            raise OnnxPruneError(f"{where}: offsets must start at 0, never decrease and end at nnz={w.nnz}")
        block = np.repeat(np.arange(rows), np.diff(offsets)) % n_blocks(w.K)
        if w.nnz and np.max(block * BLOCK_ROWS + w.indices.astype(np.int64)) >= w.K:
            raise OnnxPruneError(f"{where}: an index is outside [0, K={w.K}) (row = 256 * block + index)")

    def fallback_dense_weight(self, b: FunctionBody, opset: int) -> str:
        """W [K, N] float32: zeros with ``W[256 (r mod B) + indices[j], r div B] += values[j] * scales[r div B]``,
        r being the (output, block) row that entry j belongs to (csr's column-id nodes on the blocked offsets)."""
        return fallback_scatter_nodes(b, opset, scaled=True)


def check_scales(w: PackedWeight, where: str) -> None:
    """``scales`` [N], every one finite, positive and at most FLT_MAX / 128 (every int8 format's rule)."""
    if w.scales.shape != (w.N,):
        raise OnnxPruneError(f"{where}: scales has shape {list(w.scales.shape)}, expected [{w.N}]")
    scales = w.scales.astype(np.float64)
    if not np.all(np.isfinite(scales) & (scales > 0) & (scales <= MAX_SCALE)):
        raise OnnxPruneError(f"{where}: every scale must be finite, positive and at most FLT_MAX / 128")


def fallback_scatter_nodes(b: FunctionBody, opset: int, *, scaled: bool) -> str:
    """The stored weights scattered into a dense float32 ``[K, N]``: ``values * scales[n]`` when
    ``scaled``, the integers ``values`` themselves otherwise."""
    values = b.node("Cast", ["values"], to=TensorProto.FLOAT)
    rows = row_ids_nodes(b, b.node("Cast", ["offsets"], to=TensorProto.INT64), values)
    block_rows = b.const(np.array(BLOCK_ROWS, np.int64))
    k_plus = b.node("Add", [attr_vector(b, contract.ATTR_K), b.const(np.array(BLOCK_ROWS - 1, np.int64))])
    blocks = b.node("Div", [k_plus, block_rows])
    cols_n = b.node("Div", [rows, blocks])
    rows_k = b.node("Add", [b.node("Mul", [b.node("Mod", [rows, blocks]), block_rows]),
                            b.node("Cast", ["indices"], to=TensorProto.INT64)])
    weights = b.node("Mul", [values, b.node("Gather", ["scales", cols_n], axis=0)]) if scaled else values
    return scatter_dense_nodes(b, opset, rows_k, cols_n, weights)


CSR_INT8 = register(CsrInt8Format())
