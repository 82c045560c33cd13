"""A netron-style schema of SparseGemm, for ``model.metadata_props["metadata.json"]``.

The text follows the entry format of netron's own ``onnx-metadata.json`` (name, module, version,
category, description, attributes / inputs / outputs with types and descriptions), so any viewer
or script that understands that format can label SparseGemm nodes. netron 9.3 itself labels the
node from the model-local ``SparseGemm`` function (onnx_prune/fallback.py) and lists
``metadata.json`` among the model properties; see docs/deployment.md.
"""
from __future__ import annotations

import json

from . import contract, formats

_DESCRIPTION = (
    "onnx-prune sparse Gemm: Y = act(alpha * A' * W + beta * C), A' = transpose(A) if transA. "
    "W [K, N] is a pruned weight stored sparse ({formats}). N-D A is treated "
    "as [M, K] with M the product of its leading dims (MatMul semantics). Runs with the onnx-prune "
    "onnxruntime library; without it onnxruntime runs the standard-op function stored in the "
    "model. Contract: docs/sparse_gemm_op.md."
)

_ATTRIBUTES = [
    (contract.ATTR_K, "int64", True, None, "Rows of W (inner dimension); the last dim of A (first with transA)."),
    (contract.ATTR_N, "int64", True, None, "Columns of W (output features); offsets has N + 1 entries."),
    (contract.ATTR_FORMAT, "string", False, contract.DEFAULT_FORMAT, "Storage format of W."),
    (contract.ATTR_ALPHA, "float32", False, 1.0, "Scalar multiplier for A' * W."),
    (contract.ATTR_BETA, "float32", False, 1.0, "Scalar multiplier for C; ignored without C."),
    (contract.ATTR_TRANS_A, "int64", False, 0, "Whether A is transposed (requires 2-D A)."),
    (contract.ATTR_ACTIVATION, "string", False, "", "'relu': a fused Relu after the bias; empty: none."),
    (contract.ATTR_NNZ, "int64", False, None, "Number of stored (kept) weights."),
    (contract.ATTR_ORIGINAL_OP, "string", False, None, "The op this node replaces: Gemm or MatMul."),
    (contract.ATTR_DENSE_SHAPE, "int64[]", False, None, "Shape of the original weight initializer."),
    (contract.ATTR_SPARSITY, "string", False, None, "1 - nnz / (K * N): the fraction of weights pruned, in decimal."),
]

_INPUT_A = (contract.INPUT_A, "T", None, "Activations [..., K] (transA = 0) or [K, M] (transA = 1).")
_INPUT_C = (contract.INPUT_C, "T", "optional", "Bias, unidirectionally broadcastable to [M, N].")


def _schema_parts(fmt: formats.SparseFormat) -> tuple[list[tuple], list[dict]]:
    """The inputs (A, the format's tensors, C) and type constraints of nodes storing ``fmt``."""
    inputs = [_INPUT_A, *((name, type_, None, text) for name, type_, text in fmt.input_docs), _INPUT_C]
    constraints = [{"type_param_str": "T", "allowed_type_strs": ["tensor(float)"], "description": "Activations."}]
    constraints += [{"type_param_str": param, "allowed_type_strs": list(types), "description": text}
                    for param, types, text in fmt.type_constraints]
    return inputs, constraints


def netron_metadata(format: str = contract.DEFAULT_FORMAT) -> list[dict]:
    """The schema of nodes storing ``format`` as a list with one entry (netron's metadata files
    are lists of entries)."""
    fmt = formats.get(format)
    schema_inputs, constraints = _schema_parts(fmt)
    attributes = []
    for name, type_, required, default, description in _ATTRIBUTES:
        entry = {"name": name, "type": type_, "required": required, "description": description}
        if default is not None:
            entry["default"] = default
        attributes.append(entry)
    inputs = []
    for name, type_, option, description in schema_inputs:
        entry = {"name": name, "type": type_, "description": description}
        if option:
            entry["option"] = option
        inputs.append(entry)
    return [{
        "name": contract.OP_TYPE,
        "module": contract.DOMAIN,
        "version": contract.OP_VERSION,
        "category": "Layer",
        "description": _DESCRIPTION.format(formats=fmt.description),
        "attributes": attributes,
        "inputs": inputs,
        "min_input": len(inputs) - 1,
        "max_input": len(inputs),
        "inputs_range": f"{len(inputs) - 1} - {len(inputs)}",
        "outputs": [{"name": "Y", "type": "T",
                     "description": "A.shape[:-1] + [N] (transA = 0) or [M, N] (transA = 1)."}],
        "min_output": 1,
        "max_output": 1,
        "type_constraints": constraints,
    }]


def netron_metadata_json(format: str = contract.DEFAULT_FORMAT) -> str:
    """Compact JSON of :func:`netron_metadata` (it is stored in every pruned file)."""
    return json.dumps(netron_metadata(format), separators=(",", ":"))
