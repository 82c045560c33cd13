"""The registry of SparseGemm storage formats (docs/sparse_gemm_op.md, "Formats").

A format is one module here that registers one :class:`SparseFormat` (protocol and registry:
base.py): how a dense ``W [K, N]`` is packed into the tensors a SparseGemm node stores, how they
are checked and unpacked, how the standard-op fallback rebuilds ``W`` from them and how netron
describes them. Everything else (rewrite, densify, fallback, report, netron_meta) asks the
registry, so adding a format touches this folder, the C++ format table and the doc only
(docs/adding_a_format.md).
"""
from __future__ import annotations

from .base import PackedWeight, SparseFormat, get, is_known, keep_mask, names, register, value_choices

# Each format module registers itself on import; the order is the registry's (see value_choices).
from . import csr  # noqa: F401
from . import csr_int8  # noqa: F401
from . import bcsr  # noqa: F401
from . import csr_int8_dynamic  # noqa: F401
from . import bcsr_int8_dynamic  # noqa: F401

__all__ = ["PackedWeight", "SparseFormat", "get", "is_known", "keep_mask", "names", "register", "value_choices"]
