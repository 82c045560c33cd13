"""Sparse storage formats of SparseGemm weights (see docs/sparse_gemm_op.md, "Formats").

The canonical in-memory weight is the dense ``W`` of shape ``[K, N]`` (rows = inner dimension,
columns = output features). ``csr`` stores ``Wᵀ`` by output row so the kernel walks one output
feature's weights contiguously.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .contract import FORMAT_CSR, UINT16_INDEX_LIMIT


@dataclass(frozen=True)
class CsrWeight:
    """A ``K × N`` weight in the ``csr`` format: the three tensors a SparseGemm node stores."""

    values: np.ndarray  # [nnz] float32 (or float16)
    indices: np.ndarray  # [nnz] uint16 or int32: row k of W
    offsets: np.ndarray  # [N + 1] int32 or int64
    K: int
    N: int

    format: str = FORMAT_CSR

    @property
    def nnz(self) -> int:
        return int(self.values.shape[0])

    @property
    def sparsity(self) -> float:
        size = self.K * self.N
        return 1.0 - self.nnz / size if size else 0.0

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.indices.nbytes + self.offsets.nbytes)

    def to_dense(self) -> np.ndarray:
        """The dense ``[K, N]`` float32 weight with zeros written out."""
        return csr_to_dense(self)


def index_dtype_for(K: int) -> np.dtype:
    """uint16 indices halve index traffic whenever K fits; int32 otherwise."""
    return np.dtype(np.uint16) if K <= UINT16_INDEX_LIMIT else np.dtype(np.int32)


def offset_dtype_for(nnz: int) -> np.dtype:
    return np.dtype(np.int32) if nnz < 2**31 else np.dtype(np.int64)


def dense_to_csr(weight: np.ndarray, mask: np.ndarray | None = None,
                 values_dtype: np.dtype | type = np.float32) -> CsrWeight:
    """Pack a dense ``[K, N]`` weight, keeping entries where ``mask`` is true.

    Without a mask the non-zero entries are kept. Entries are ordered by output feature and,
    within one, by increasing ``k`` (the order the kernel reads memory in).
    """
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D [K, N], got shape {list(weight.shape)}")
    keep = weight != 0 if mask is None else np.asarray(mask, dtype=bool)
    if keep.shape != weight.shape:
        raise ValueError(f"mask shape {list(keep.shape)} != weight shape {list(weight.shape)}")
    K, N = weight.shape
    n_idx, k_idx = np.nonzero(keep.T)  # row-major over Wᵀ: sorted by n, then k
    values = weight.T[n_idx, k_idx].astype(values_dtype)
    counts = np.bincount(n_idx, minlength=N)
    offsets = np.zeros(N + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return CsrWeight(
        values=np.ascontiguousarray(values),
        indices=k_idx.astype(index_dtype_for(K)),
        offsets=offsets.astype(offset_dtype_for(len(values))),
        K=int(K),
        N=int(N),
    )


def csr_to_dense(csr: CsrWeight) -> np.ndarray:
    """Rebuild the dense ``[K, N]`` float32 weight (duplicates are summed, as in the kernel)."""
    offsets = np.asarray(csr.offsets, dtype=np.int64)
    n_idx = np.repeat(np.arange(csr.N), np.diff(offsets))
    dense = np.zeros((csr.K, csr.N), dtype=np.float32)
    np.add.at(dense, (np.asarray(csr.indices, dtype=np.int64), n_idx),
              np.asarray(csr.values, dtype=np.float32))
    return dense
