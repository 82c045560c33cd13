"""Verification: the pruned model (run with the SparseGemm library) against the input model with
the same masks written into its dense weights, on the same inputs, in onnxruntime."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import OnnxPruneError
from .library import session_options
from .report import Verification
from .rewrite import drop_unused_constants

# Max relative error (max |pruned - reference| / max |reference| per output) the run may show. Both
# sides are fp32; the difference is the summation order of the kernels, far below this.
VERIFY_TOLERANCE = 1e-4
BATCH_FOR_GENERATED = 4
OTHER_DIM_FOR_GENERATED = 3

Inputs = Union[None, str, Path, Mapping[str, np.ndarray]]


def masked_dense_model(model: onnx.ModelProto, pruned: Sequence, values: str = "fp32") -> onnx.ModelProto:
    """``model`` with each pruned layer reading its kept weights (zeros elsewhere) as a dense tensor."""
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    nodes = {n.name: n for n in ref.graph.node}
    for i, p in enumerate(pruned):
        weight = p.weight.astype(np.float16).astype(np.float32) if values == "fp16" else p.weight
        stored = weight.T if p.layer.trans_b else weight
        name = f"{p.layer.weight_name}__masked_{i}"
        ref.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(stored, dtype=np.float32), name))
        nodes[p.layer.fused_nodes[0]].input[1] = name
    drop_unused_constants(ref, {p.layer.weight_name for p in pruned})
    return ref


def generated_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float inputs (zeros for integer ones) from the graph's declared input shapes."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        t = value.type.tensor_type
        dims = []
        for axis, d in enumerate(t.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
            else:
                dims.append(BATCH_FOR_GENERATED if axis == 0 else OTHER_DIM_FOR_GENERATED)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[value.name] = np.zeros(dims, dtype=dtype)
    return feeds


def load_inputs(path: Union[str, Path], model: onnx.ModelProto) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise OnnxPruneError(f"cannot read inputs '{path}': {exc}") from exc
    initializers = {t.name for t in model.graph.initializer}
    wanted = [v.name for v in model.graph.input if v.name not in initializers]
    missing = [n for n in wanted if n not in arrays]
    if missing:
        raise OnnxPruneError(f"inputs '{path}' lack {', '.join(missing)} (the model's inputs: {', '.join(wanted)})")
    return {n: arrays[n] for n in wanted}


def max_relative_error(reference: np.ndarray, actual: np.ndarray) -> float:
    reference = np.asarray(reference, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if reference.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(reference))), 1e-12)
    return float(np.max(np.abs(reference - actual))) / scale


def verify_pruned(model: onnx.ModelProto, pruned_model: onnx.ModelProto, pruned: Sequence, *,
                  values: str = "fp32", inputs: Inputs = None, tolerance: float = VERIFY_TOLERANCE
                  ) -> Verification:
    import onnxruntime as ort

    if isinstance(inputs, (str, Path)):
        feeds, described = load_inputs(inputs, model), str(inputs)
    elif inputs is not None:
        feeds, described = dict(inputs), "given inputs"
    else:
        feeds = generated_inputs(model)
        described = "generated inputs (" + ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items()) + ")"
    reference = masked_dense_model(model, pruned, values)
    try:
        ref_session = ort.InferenceSession(reference.SerializeToString(), providers=["CPUExecutionProvider"])
        out_session = ort.InferenceSession(pruned_model.SerializeToString(), session_options(),
                                           providers=["CPUExecutionProvider"])
        expected = ref_session.run(None, feeds)
        actual = out_session.run(None, feeds)
    except OnnxPruneError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types
        raise OnnxPruneError(f"verification could not run the models: {str(exc).splitlines()[0]}") from exc
    names = [o.name for o in model.graph.output]
    per_output = {n: max_relative_error(e, a) for n, e, a in zip(names, expected, actual)}
    worst = max(per_output.values(), default=0.0)
    return Verification(max_rel_error=worst, tolerance=tolerance, per_output=per_output,
                        passed=bool(worst <= tolerance), inputs=described)
