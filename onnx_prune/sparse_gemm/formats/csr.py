"""The ``csr`` format (docs/sparse_gemm_op.md, "Formats"): ``Wᵀ`` stored by output row.

The weights of output feature ``n`` are ``values[offsets[n]:offsets[n+1]]`` at rows
``indices[offsets[n]:offsets[n+1]]`` of ``W [K, N]``, so the kernel walks one output feature's
weights contiguously. Everything Python knows about csr lives here; the C++ side is
csrc/formats/csr.cc.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from onnx import TensorProto

from ...errors import OnnxPruneError
from .. import contract
from ..function_body import FLOAT_ZERO, INT64_MAX, FunctionBody, attr_vector
from .base import PackedWeight, SparseFormat, keep_mask, register

NAME = "csr"
UINT16_INDEX_LIMIT = 65536  # largest K for which 16-bit row indices suffice
SCATTER_ADD_OPSET = 16      # ScatterND reduction "add": duplicates summed like the kernel does
_PACK_BLOCK = 1 << 20       # weights per block of columns packed at once


@dataclass(frozen=True)
class CsrWeight(PackedWeight):
    """A ``K × N`` weight in the ``csr`` format: the three tensors a SparseGemm node stores."""

    values: np.ndarray  # [nnz] float32 (or float16)
    indices: np.ndarray  # [nnz] uint16 or int32: row k of W
    offsets: np.ndarray  # [N + 1] int32 or int64
    K: int
    N: int

    format: str = NAME

    @property
    def tensors(self) -> tuple[np.ndarray, ...]:
        return (self.values, self.indices, self.offsets)


def index_dtype_for(K: int) -> np.dtype:
    """uint16 indices halve index traffic whenever K fits; int32 otherwise."""
    return np.dtype(np.uint16) if K <= UINT16_INDEX_LIMIT else np.dtype(np.int32)


def offset_dtype_for(nnz: int) -> np.dtype:
    return np.dtype(np.int32) if nnz < 2**31 else np.dtype(np.int64)


def dense_to_csr(weight: np.ndarray, mask: np.ndarray | None = None,
                 values_dtype: np.dtype | type = np.float32) -> CsrWeight:
    """Pack a dense ``[K, N]`` weight, keeping entries where ``mask`` is true (only those are read).

    Without a mask the non-zero entries are kept. Entries are ordered by output feature and,
    within one, by increasing ``k`` (the order the kernel reads memory in). The outputs are packed
    a block of columns at a time, so the index arrays of the selection never exceed one block.
    """
    weight = np.asarray(weight)
    keep = keep_mask(weight, mask)
    K, N = weight.shape
    offsets = np.zeros(N + 1, dtype=np.int64)
    np.cumsum(np.count_nonzero(keep, axis=0), out=offsets[1:])
    values = np.empty(int(offsets[-1]), dtype=values_dtype)
    indices = np.empty(int(offsets[-1]), dtype=index_dtype_for(K))
    step = max(1, _PACK_BLOCK // max(K, 1))
    for start in range(0, N, step):
        columns = slice(start, start + step)
        n_idx, k_idx = np.nonzero(keep[:, columns].T)  # row-major over Wᵀ: sorted by n, then k
        stored = slice(offsets[start], offsets[min(start + step, N)])
        values[stored] = weight[:, columns].T[n_idx, k_idx]
        indices[stored] = k_idx
    return CsrWeight(values=values, indices=indices, offsets=offsets.astype(offset_dtype_for(len(values))),
                     K=int(K), N=int(N))


def csr_to_dense(csr: CsrWeight) -> np.ndarray:
    """Rebuild the dense ``[K, N]`` float32 weight (duplicates are summed, as in the kernel)."""
    offsets = np.asarray(csr.offsets, dtype=np.int64)
    n_idx = np.repeat(np.arange(csr.N), np.diff(offsets))
    dense = np.zeros((csr.K, csr.N), dtype=np.float32)
    np.add.at(dense, (np.asarray(csr.indices, dtype=np.int64), n_idx),
              np.asarray(csr.values, dtype=np.float32))
    return dense


def check_csr(csr: CsrWeight, where: str) -> None:
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


# ----------------------------------------------------------------------------- fallback body


def dense_weight_nodes(b: FunctionBody, opset: int) -> str:
    """W [K, N] float32: zeros with ``W[indices[j], n(j)] = values[j]``."""
    values = b.node("Cast", ["values"], to=TensorProto.FLOAT)
    rows_k = b.node("Cast", ["indices"], to=TensorProto.INT64)
    offsets = b.node("Cast", ["offsets"], to=TensorProto.INT64)
    return scatter_dense_nodes(b, opset, rows_k, row_ids_nodes(b, offsets, values), values)


def scatter_dense_nodes(b: FunctionBody, opset: int, rows_k: str, cols_n: str, values: str) -> str:
    """W [K, N] float32: zeros with ``W[rows_k[j], cols_n[j]] = values[j]`` (summed from opset 16,
    like the kernel sums duplicates). Fixed-shape ops only, so onnxruntime folds it."""
    column = b.const(np.array([-1, 1], dtype=np.int64))
    kn = b.node("Concat", [b.node("Reshape", [rows_k, column]), b.node("Reshape", [cols_n, column])],
                axis=1)
    shape = b.node("Concat", [attr_vector(b, contract.ATTR_K), attr_vector(b, contract.ATTR_N)], axis=0)
    zeros = b.node("ConstantOfShape", [shape], value=FLOAT_ZERO)
    reduction = {"reduction": "add"} if opset >= SCATTER_ADD_OPSET else {}
    return b.node("ScatterND", [zeros, kn, values], **reduction)


def row_ids_nodes(b: FunctionBody, offsets: str, values: str) -> str:
    """n(j) for every entry j of the 1-D ``values``: the row of the row pointer ``offsets`` it
    belongs to (for csr the row of Wᵀ, i.e. the column of W; bcsr reuses it for block rows).

    n(j) is the number of rows that end at or before j (``searchsorted(offsets[1:], j, "right")``).
    It is computed with fixed-shape ops only, so that onnxruntime's constant folding can turn the
    whole weight rebuild into one dense initializer at session creation: sort the keys ``2 * end``
    (row ends) and ``2 * j + 1`` (positions) together with TopK; a position's rank in that order
    minus j counts the row ends before it.
    """
    two = b.const(np.array(2, np.int64))
    ends = b.node("Slice", [offsets, b.const(np.array([1], np.int64)),
                            b.const(np.array([INT64_MAX], np.int64))])
    positions = b.node("Range", [b.const(np.array(0, np.int64)), b.node("Size", [values]),
                                 b.const(np.array(1, np.int64))])
    keys = b.node("Concat", [b.node("Mul", [ends, two]),
                             b.node("Add", [b.node("Mul", [positions, two]), b.const(np.array(1, np.int64))])],
                  axis=0)
    count = b.node("Shape", [keys])
    order = b.node2("TopK", [keys, count], axis=0, largest=0, sorted=1)
    all_ranks = b.node("Range", [b.const(np.array(0, np.int64)), b.node("Size", [keys]),
                                 b.const(np.array(1, np.int64))])
    ranks = b.node("ScatterElements", [all_ranks, order, all_ranks], axis=0)
    position_ranks = b.node("Slice", [ranks, b.node("Shape", [ends]), b.const(np.array([INT64_MAX], np.int64))])
    return b.node("Sub", [position_ranks, positions])


# ----------------------------------------------------------------------------- the format


class CsrFormat(SparseFormat):
    name = NAME
    tensor_names = ("values", "indices", "offsets")
    value_types = {"fp32": np.dtype(np.float32), "fp16": np.dtype(np.float16)}
    description = ("format csr: the weights of output n are values[offsets[n]:offsets[n+1]] at rows "
                   "indices[offsets[n]:offsets[n+1]]")
    input_docs = (
        ("values", "V", "The kept weights [nnz], float32 or float16, in storage order."),
        ("indices", "I", "Row k of W of each kept weight [nnz], uint16 or int32."),
        ("offsets", "O", "Row pointer [N + 1]: output n owns values[offsets[n]:offsets[n+1]]."),
    )
    type_constraints = (
        ("V", ("tensor(float)", "tensor(float16)"), "Stored weights."),
        ("I", ("tensor(uint16)", "tensor(int32)"), "Row indices."),
        ("O", ("tensor(int32)", "tensor(int64)"), "Row pointer."),
    )

    def pack(self, weight: np.ndarray, mask: np.ndarray | None = None,
             values_dtype: np.dtype | type = np.float32) -> CsrWeight:
        return dense_to_csr(weight, mask, values_dtype)

    def from_tensors(self, tensors: Sequence[np.ndarray], K: int, N: int) -> CsrWeight:
        values, indices, offsets = tensors
        return CsrWeight(values=values, indices=indices, offsets=offsets, K=int(K), N=int(N))

    def unpack(self, packed: PackedWeight) -> np.ndarray:
        return csr_to_dense(packed)

    def validate(self, packed: PackedWeight, where: str) -> None:
        check_csr(packed, where)

    def fallback_dense_weight(self, body: FunctionBody, opset: int) -> str:
        return dense_weight_nodes(body, opset)


CSR = register(CsrFormat())
