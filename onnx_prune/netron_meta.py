"""A netron-style schema of SparseGemm, for ``model.metadata_props["metadata.json"]``.

The text follows the entry format of netron's own ``onnx-metadata.json`` (name, module, version,
category, description, attributes / inputs / outputs with types and descriptions), so any viewer
or script that understands that format can label SparseGemm nodes. netron 9.3 itself labels the
node from the model-local ``SparseGemm`` function (onnx_prune/fallback.py) and lists
``metadata.json`` among the model properties; see docs/deployment.md.
"""
from __future__ import annotations

import json

from . import contract

_DESCRIPTION = (
    "onnx-prune sparse Gemm: Y = act(alpha * A' * W + beta * C), A' = transpose(A) if transA. "
    "W [K, N] is a pruned weight stored sparse (format csr: the weights of output n are "
    "values[offsets[n]:offsets[n+1]] at rows indices[offsets[n]:offsets[n+1]]). N-D A is treated "
    "as [M, K] with M the product of its leading dims (MatMul semantics). Runs with the onnx-prune "
    "onnxruntime library; without it onnxruntime runs the standard-op function stored in the "
    "model. Contract: docs/sparse_gemm_op.md."
)

_ATTRIBUTES = [
    (contract.ATTR_K, "int64", True, None, "Rows of W (inner dimension); the last dim of A (first with transA)."),
    (contract.ATTR_N, "int64", True, None, "Columns of W (output features); offsets has N + 1 entries."),
    (contract.ATTR_FORMAT, "string", False, contract.FORMAT_CSR, "Storage format of W."),
    (contract.ATTR_ALPHA, "float32", False, 1.0, "Scalar multiplier for A' * W."),
    (contract.ATTR_BETA, "float32", False, 1.0, "Scalar multiplier for C; ignored without C."),
    (contract.ATTR_TRANS_A, "int64", False, 0, "Whether A is transposed (requires 2-D A)."),
    (contract.ATTR_ACTIVATION, "string", False, "", "'relu': a fused Relu after the bias; empty: none."),
    (contract.ATTR_NNZ, "int64", False, None, "Number of stored (kept) weights."),
    (contract.ATTR_ORIGINAL_OP, "string", False, None, "The op this node replaces: Gemm or MatMul."),
    (contract.ATTR_DENSE_SHAPE, "int64[]", False, None, "Shape of the original weight initializer."),
    (contract.ATTR_SPARSITY, "float32", False, None, "1 - nnz / (K * N): the fraction of weights pruned."),
]

_INPUTS = [
    ("A", "T", None, "Activations [..., K] (transA = 0) or [K, M] (transA = 1)."),
    ("values", "V", None, "The kept weights [nnz], float32 or float16, in storage order."),
    ("indices", "I", None, "Row k of W of each kept weight [nnz], uint16 or int32."),
    ("offsets", "O", None, "Row pointer [N + 1]: output n owns values[offsets[n]:offsets[n+1]]."),
    ("C", "T", "optional", "Bias, unidirectionally broadcastable to [M, N]."),
]


def netron_metadata() -> list[dict]:
    """The schema as a list with one entry (netron's metadata files are lists of entries)."""
    attributes = []
    for name, type_, required, default, description in _ATTRIBUTES:
        entry = {"name": name, "type": type_, "required": required, "description": description}
        if default is not None:
            entry["default"] = default
        attributes.append(entry)
    inputs = []
    for name, type_, option, description in _INPUTS:
        entry = {"name": name, "type": type_, "description": description}
        if option:
            entry["option"] = option
        inputs.append(entry)
    return [{
        "name": contract.OP_TYPE,
        "module": contract.DOMAIN,
        "version": contract.OP_VERSION,
        "category": "Layer",
        "description": _DESCRIPTION,
        "attributes": attributes,
        "inputs": inputs,
        "min_input": 4,
        "max_input": 5,
        "inputs_range": "4 - 5",
        "outputs": [{"name": "Y", "type": "T",
                     "description": "A.shape[:-1] + [N] (transA = 0) or [M, N] (transA = 1)."}],
        "min_output": 1,
        "max_output": 1,
        "type_constraints": [
            {"type_param_str": "T", "allowed_type_strs": ["tensor(float)"], "description": "Activations."},
            {"type_param_str": "V", "allowed_type_strs": ["tensor(float)", "tensor(float16)"],
             "description": "Stored weights."},
            {"type_param_str": "I", "allowed_type_strs": ["tensor(uint16)", "tensor(int32)"],
             "description": "Row indices."},
            {"type_param_str": "O", "allowed_type_strs": ["tensor(int32)", "tensor(int64)"],
             "description": "Row pointer."},
        ],
    }]


def netron_metadata_json() -> str:
    """Compact JSON of :func:`netron_metadata` (it is stored in every pruned file)."""
    return json.dumps(netron_metadata(), separators=(",", ":"))
