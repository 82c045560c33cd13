"""The registry of SparseGemm storage formats (docs/sparse_gemm_op.md, "Formats").

A format is one module here that registers one :class:`SparseFormat` (protocol and registry:
base.py): how a dense ``W [K, N]`` is packed into the tensors a SparseGemm node stores, how they
are checked and unpacked, how the standard-op fallback rebuilds ``W`` from them and how netron
describes them. Everything else (rewrite, densify, fallback, report, netron_meta) asks the
registry, so adding a format touches this folder, the C++ format table and the doc only
(docs/adding_a_format.md).
"""
from __future__ import annotations

import numpy as np

from .base import PackedWeight, SparseFormat, get, is_known, keep_mask, names, register

# Each format module registers itself on import; the import order is names()' order (--format's choices).
from . import csr  # noqa: F401
from . import csr_int8  # noqa: F401
from . import bcsr  # noqa: F401
from . import csr_int8_dynamic  # noqa: F401
from . import bcsr_int8_dynamic  # noqa: F401

# The format each --values choice is written in unless --format, --quantize or an Rx1 --pattern
# selects another; it is also the order of the --values choices. A format storing a new kind of
# values adds its row here (tests/sparse_gemm/test_formats.py checks every stored kind has one).
DEFAULT_FORMAT_OF_VALUES = {"fp32": csr.NAME, "fp16": csr.NAME, "int8": csr_int8.NAME}


def value_choices() -> dict[str, tuple[SparseFormat, np.dtype]]:
    """Every --values choice -> (its default format, the dtype that format stores it as): the CLI's
    choices and the format a prune writes unless another option selects one."""
    return {choice: (get(name), np.dtype(get(name).value_types[choice]))
            for choice, name in DEFAULT_FORMAT_OF_VALUES.items()}


__all__ = ["DEFAULT_FORMAT_OF_VALUES", "PackedWeight", "SparseFormat", "get", "is_known", "keep_mask", "names",
           "register", "value_choices"]
