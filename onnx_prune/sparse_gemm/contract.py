"""Names and defaults of the SparseGemm op, as written in docs/sparse_gemm_op.md.

Every module that writes or reads SparseGemm nodes takes its names from here (through
sparse_gemm.node), so the document, the Python side and the C++ kernel cannot drift apart silently (tests/sparse_gemm/test_contract.py).
"""
from __future__ import annotations

DOMAIN = "ai.onnx_prune"
OP_TYPE = "SparseGemm"
OP_VERSION = 1
CONTRACT_REVISION = 1

# The ``format`` attribute's default; the formats themselves are the registry's
# (onnx_prune/sparse_gemm/formats/).
DEFAULT_FORMAT = "csr"

ACTIVATION_RELU = "relu"
ACTIVATIONS = ("", ACTIVATION_RELU)

# Inputs: A, then the format's tensors (formats.get(format).tensor_names), then the optional C.
INPUT_A = "A"
INPUT_C = "C"
OUTPUT_NAMES = ("Y",)

# Attribute names.
ATTR_K = "K"
ATTR_N = "N"
ATTR_FORMAT = "format"
ATTR_ALPHA = "alpha"
ATTR_BETA = "beta"
ATTR_TRANS_A = "transA"
ATTR_ACTIVATION = "activation"
ATTR_NNZ = "nnz"
ATTR_ORIGINAL_OP = "original_op"
ATTR_DENSE_SHAPE = "dense_shape"
ATTR_SPARSITY = "sparsity"
def sparsity_text(sparsity: float) -> str:
    """The ``sparsity`` attribute: a string, so that viewers show 0.9 as "0.9" (a float attribute is
    float32, and netron shows 0.9f as 0.8999999761581421). Python's shortest round-trip text of the
    float64 value: exact, and never rounded to "1" while a weight is kept."""
    return repr(float(sparsity))
