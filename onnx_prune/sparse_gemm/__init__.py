"""The SparseGemm op: its contract (names, defaults), the one reader / writer of its nodes and the
registry of storage formats its weights can be packed in."""
from __future__ import annotations

from . import contract, formats
from .formats import PackedWeight, SparseFormat
from .node import (SparseGemmNode, formats_used, is_sparse_gemm, make_sparse_gemm, sparse_gemm_summary,
                   sparse_tensor_names)

__all__ = ["contract", "formats", "PackedWeight", "SparseFormat", "SparseGemmNode", "formats_used", "is_sparse_gemm",
           "make_sparse_gemm", "sparse_gemm_summary", "sparse_tensor_names"]
