"""The ``bcsr`` format (docs/sparse_gemm_op.md, "Formats"): block CSR of ``Wᵀ`` with ``R × 1`` blocks.

A block is ``R`` consecutive outputs times one row ``k`` of ``W [K, N]``; block row ``b`` (outputs
``b·R .. b·R + R``) stores its blocks ``values[j] [R]`` at rows ``indices[j]`` for
``offsets[b] <= j < offsets[b+1]``. One load of an activation row then feeds ``R`` multiply-adds,
which unstructured csr cannot do. Any mask packs: a block is stored when any of its weights is
kept, the others in it are stored zeros. ``R`` (4 or 8) is the second dimension of ``values``.
Everything Python knows about bcsr lives here; the C++ side is csrc/formats/bcsr.cc.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from onnx import TensorProto

from ...errors import OnnxPruneError
from .. import contract
from ..function_body import FLOAT_ZERO, FunctionBody, attr_vector
from .base import PackedWeight, SparseFormat, register
from .csr import index_dtype_for, offset_dtype_for, row_ids_nodes

NAME = "bcsr"
BLOCK_SIZES = (4, 8)  # R: outputs per block the kernels implement


@dataclass(frozen=True)
class BcsrWeight(PackedWeight):
    """A ``K × N`` weight in the ``bcsr`` format: the three tensors a SparseGemm node stores."""

    values: np.ndarray   # [n_blocks, R] float32 (or float16)
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
        return (self.values, self.indices, self.offsets)

    @property
    def nnz(self) -> int:
        """Stored weights of outputs < N (a partial last block row's padding is not counted)."""
        offsets = np.asarray(self.offsets, dtype=np.int64)
        last_row_blocks = int(offsets[-1] - offsets[-2])
        return int(self.values.shape[0]) * self.R - last_row_blocks * (self.block_rows * self.R - self.N)

    @property
    def values_dtype(self) -> np.dtype:
        return self.values.dtype


def _padded(array: np.ndarray, columns: int) -> np.ndarray:
    """``array [K, N]`` with zero (False) columns appended up to ``columns``."""
    out = np.zeros((array.shape[0], columns), dtype=array.dtype)
    out[:, :array.shape[1]] = array
    return out


def dense_to_bcsr(weight: np.ndarray, mask: np.ndarray | None, R: int,
                  values_dtype: np.dtype | type = np.float32) -> BcsrWeight:
    """Pack ``weight [K, N]`` in ``R × 1`` blocks: every block holding a kept entry (a non-zero
    without a mask) is stored, its other entries as zeros; blocks ordered by block row, then k."""
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D [K, N], got shape {list(weight.shape)}")
    if R not in BLOCK_SIZES:
        raise ValueError(f"block size R must be one of {BLOCK_SIZES}, got {R}")
    keep = weight != 0 if mask is None else np.asarray(mask, dtype=bool)
    if keep.shape != weight.shape:
        raise ValueError(f"mask shape {list(keep.shape)} != weight shape {list(weight.shape)}")
    K, N = weight.shape
    rows = -(-N // R)
    kept = _padded(np.where(keep, weight, 0).astype(np.float32), rows * R).reshape(K, rows, R)
    stored = _padded(keep, rows * R).reshape(K, rows, R).any(axis=2)  # [K, block rows]
    block_row, k = np.nonzero(stored.T)  # sorted by block row, then k
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(block_row, minlength=rows), out=offsets[1:])
    values = np.ascontiguousarray(kept[k, block_row, :].astype(values_dtype))
    return BcsrWeight(values=values, indices=k.astype(index_dtype_for(K)),
                      offsets=offsets.astype(offset_dtype_for(len(k) * R)), K=int(K), N=int(N))


def best_block_size(weight: np.ndarray, mask: np.ndarray | None) -> int:
    """8 when 8 × 1 blocks store no more weights than 4 × 1 blocks (an 8 × 1-structured mask), else 4."""
    packed = {R: dense_to_bcsr(weight, mask, R) for R in BLOCK_SIZES}
    return 8 if packed[8].nnz <= packed[4].nnz else 4


def bcsr_to_dense(w: BcsrWeight) -> np.ndarray:
    """Rebuild the dense ``[K, N]`` float32 weight."""
    offsets = np.asarray(w.offsets, dtype=np.int64)
    block_row = np.repeat(np.arange(w.block_rows), np.diff(offsets))
    dense = np.zeros((w.K, w.block_rows, w.R), dtype=np.float32)
    dense[np.asarray(w.indices, dtype=np.int64), block_row, :] = np.asarray(w.values, dtype=np.float32)
    return dense.reshape(w.K, -1)[:, :w.N].copy()


def check_bcsr(w: BcsrWeight, where: str,
               value_dtypes: tuple[type, ...] = (np.float32, np.float16)) -> None:
    """The contract's validity rules (the same as csrc/formats/bcsr.cc), one line each; ``value_dtypes``
    are the dtypes ``values`` may have (bcsr_int8_dynamic shares the block rules with int8 values)."""
    if w.K <= 0 or w.N <= 0:
        raise OnnxPruneError(f"{where}: K and N must be positive, got K={w.K}, N={w.N}")
    if w.values.ndim != 2 or w.values.shape[1] not in BLOCK_SIZES:
        raise OnnxPruneError(f"{where}: values has shape {list(w.values.shape)}, expected [n_blocks, R] "
                             f"with R in {list(BLOCK_SIZES)}")
    if w.values.dtype not in value_dtypes:
        names = " or ".join(str(np.dtype(t)) for t in value_dtypes)
        raise OnnxPruneError(f"{where}: values must be {names}, got {w.values.dtype}")
    n_blocks = w.values.shape[0]
    if w.indices.shape != (n_blocks,):
        raise OnnxPruneError(f"{where}: indices has shape {list(w.indices.shape)}, expected [{n_blocks}]")
    if w.offsets.shape != (w.block_rows + 1,):
        raise OnnxPruneError(f"{where}: offsets has shape {list(w.offsets.shape)}, expected "
                             f"[ceil(N / R) + 1] = [{w.block_rows + 1}]")
    offsets = w.offsets.astype(np.int64)
    if offsets[0] != 0 or offsets[-1] != n_blocks or np.any(np.diff(offsets) < 0):
        raise OnnxPruneError(f"{where}: offsets must start at 0, never decrease and end at n_blocks={n_blocks}")
    indices = w.indices.astype(np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= w.K):
        raise OnnxPruneError(f"{where}: an index is outside [0, K={w.K})")
    row_starts = np.zeros(n_blocks, dtype=bool)
    row_starts[offsets[:-1][offsets[:-1] < n_blocks]] = True
    if np.any((np.diff(indices) <= 0) & ~row_starts[1:]):
        raise OnnxPruneError(f"{where}: indices must strictly increase within each block row")
    padding = w.values[offsets[-2]:, w.N - (w.block_rows - 1) * w.R:]
    if np.any(padding != 0):
        raise OnnxPruneError(f"{where}: the padding of the last block row (outputs >= N={w.N}) must be 0")


# ----------------------------------------------------------------------------- fallback body


def dense_weight_nodes(b: FunctionBody) -> str:
    """W [K, N] float32: zeros [K, block rows, R] with ``[indices[j], row(j), :] = values[j]``,
    reshaped to [K, block rows · R] and cut to N columns."""
    rows_k = b.node("Cast", ["indices"], to=TensorProto.INT64)
    offsets = b.node("Cast", ["offsets"], to=TensorProto.INT64)
    block_rows = row_ids_nodes(b, offsets, rows_k)
    column = b.const(np.array([-1, 1], dtype=np.int64))
    kb = b.node("Concat", [b.node("Reshape", [rows_k, column]), b.node("Reshape", [block_rows, column])], axis=1)
    one = b.const(np.array([1], dtype=np.int64))
    k1 = attr_vector(b, contract.ATTR_K)
    n1 = attr_vector(b, contract.ATTR_N)
    rows1 = b.node("Sub", [b.node("Shape", [offsets]), one])
    r1 = b.node("Slice", [b.node("Shape", ["values"]), one, b.const(np.array([2], dtype=np.int64))])
    zeros = b.node("ConstantOfShape", [b.node("Concat", [k1, rows1, r1], axis=0)],
                   value=FLOAT_ZERO)
    blocked = b.node("ScatterND", [zeros, kb, b.node("Cast", ["values"], to=TensorProto.FLOAT)])
    flat = b.node("Reshape", [blocked, b.const(np.array([0, -1], dtype=np.int64))])
    return b.node("Slice", [flat, b.const(np.array([0], dtype=np.int64)), n1, one])


# ----------------------------------------------------------------------------- the format


class BcsrFormat(SparseFormat):
    name = NAME
    tensor_names = ("values", "indices", "offsets")
    value_types = {"fp32": np.dtype(np.float32), "fp16": np.dtype(np.float16)}
    description = ("format bcsr: block row b (outputs b*R .. b*R+R) stores blocks values[j] [R] at rows "
                   "indices[j] for offsets[b] <= j < offsets[b+1]")
    input_docs = (
        ("values", "V", "The stored R x 1 blocks [n_blocks, R] (R = 4 or 8), float32 or float16; unkept weights are zeros."),
        ("indices", "I", "Row k of W of each block [n_blocks], uint16 or int32."),
        ("offsets", "O", "Block row pointer [ceil(N / R) + 1]: block row b owns blocks offsets[b]..offsets[b+1]."),
    )
    type_constraints = (
        ("V", ("tensor(float)", "tensor(float16)"), "Stored weights."),
        ("I", ("tensor(uint16)", "tensor(int32)"), "Row indices."),
        ("O", ("tensor(int32)", "tensor(int64)"), "Block row pointer."),
    )

    def pack(self, weight: np.ndarray, mask: np.ndarray | None = None,
             values_dtype: np.dtype | type = np.float32) -> BcsrWeight:
        if np.dtype(values_dtype) not in self.value_types.values():
            raise OnnxPruneError(f"format '{NAME}' stores float32 or float16 values (--values fp32 or fp16), "
                                 f"got {np.dtype(values_dtype)}")
        return dense_to_bcsr(weight, mask, best_block_size(weight, mask), values_dtype)

    def from_tensors(self, tensors: Sequence[np.ndarray], K: int, N: int) -> BcsrWeight:
        values, indices, offsets = tensors
        return BcsrWeight(values=values, indices=indices, offsets=offsets, K=int(K), N=int(N))

    def unpack(self, packed: PackedWeight) -> np.ndarray:
        return bcsr_to_dense(packed)

    def validate(self, packed: PackedWeight, where: str) -> None:
        check_bcsr(packed, where)

    def fallback_dense_weight(self, body: FunctionBody, opset: int) -> str:
        return dense_weight_nodes(body)


BCSR = register(BcsrFormat())
