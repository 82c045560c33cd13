"""Verification: the pruned model (run with the SparseGemm library) against the input model with
the same masks written into its dense weights, on the same inputs, in onnxruntime."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import numpy_helper

from . import runtime
from .errors import OnnxPruneError
from .modelio import read_npz
from .report import Verification
from .graph import remove_dead_tensors as drop_unused_constants

# Max relative error (max |pruned - reference| / max |reference| per output) the run may show. Both
# sides are fp32; the difference is the summation order of the kernels, far below this.
VERIFY_TOLERANCE = 1e-4
# With --values fp16 the reference uses the same fp16-rounded weights; the looser bound leaves room
# for however the kernel widens fp16 values to fp32 before accumulating.
VERIFY_TOLERANCE_FP16 = 1e-3
BATCH_FOR_GENERATED = 4
OTHER_DIM_FOR_GENERATED = 3

Inputs = Union[None, str, Path, Mapping[str, np.ndarray]]


def masked_dense_model(model: onnx.ModelProto, pruned: Sequence, values: str = "fp32") -> onnx.ModelProto:
    """``model`` with each pruned layer reading its kept weights (zeros elsewhere) as a dense tensor."""
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    nodes = {n.name: n for n in ref.graph.node}
    for i, p in enumerate(pruned):
        weight = reference_weight(p, values)
        stored = weight.T if p.layer.trans_b else weight
        name = f"{p.layer.weight_name}__masked_{i}"
        ref.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(stored, dtype=np.float32), name))
        nodes[p.layer.fused_nodes[0]].input[1] = name
    drop_unused_constants(ref, {p.layer.weight_name for p in pruned})
    return ref


def reference_weight(p, values: str = "fp32") -> np.ndarray:
    """The dense weight the pruned layer really stores: its packed tensors unpacked (fp16-rounded
    or int8-dequantized values), so the reference differs from the kernel by summation order only."""
    if getattr(p, "packed", None) is not None:
        return p.packed.to_dense()
    return p.weight.astype(np.float16).astype(np.float32) if values == "fp16" else p.weight


def generated_inputs(model: onnx.ModelProto, seed: int = 0, batch: int = BATCH_FOR_GENERATED) -> dict[str, np.ndarray]:
    """Random float inputs (zeros for integer ones) from the graph's declared input shapes; a
    symbolic first dimension gets ``batch``."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    symbols: dict[str, int] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        t = value.type.tensor_type
        dims = []
        for axis, d in enumerate(t.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
            else:  # one size per symbolic name, so inputs sharing "batch" or "seq" agree
                default = batch if axis == 0 else OTHER_DIM_FOR_GENERATED
                dims.append(symbols.setdefault(d.dim_param, default) if d.dim_param else default)
        if not value.type.HasField("tensor_type") or t.elem_type in (0, onnx.TensorProto.STRING):
            raise OnnxPruneError(f"cannot generate a value for input '{value.name}' (not a numeric tensor); "
                                 "pass --inputs data.npz or --no-verify")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[value.name] = np.zeros(dims, dtype=dtype)
    return feeds


def load_inputs(path: Union[str, Path], model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The arrays of an .npz keyed by graph input name (extra arrays are ignored)."""
    arrays = read_npz(path, "inputs")
    initializers = {t.name for t in model.graph.initializer}
    wanted = [v.name for v in model.graph.input if v.name not in initializers]
    missing = [n for n in wanted if n not in arrays]
    if missing:
        raise OnnxPruneError(f"inputs '{path}' lack {', '.join(missing)} (the model's inputs: {', '.join(wanted)})")
    return {n: arrays[n] for n in wanted}


def max_relative_error(reference: np.ndarray, actual: np.ndarray) -> float:
    """max |reference - actual| / max(max |reference|, tiny) over the finite entries; a
    non-finite value counts as equal only where the other side has the same one (NaN for NaN,
    inf for inf of the same sign), otherwise the error is infinite."""
    reference = np.asarray(reference, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if reference.shape != actual.shape:
        return float("inf")
    if reference.size == 0:
        return 0.0
    finite = np.isfinite(reference) & np.isfinite(actual)
    same_special = (np.isnan(reference) & np.isnan(actual)) | \
        (np.isinf(reference) & (reference == actual))
    if not np.all(finite | same_special):
        return float("inf")
    if not finite.any():
        return 0.0
    scale = max(float(np.max(np.abs(reference[finite]))), 1e-12)
    return float(np.max(np.abs(reference[finite] - actual[finite]))) / scale


def verify_pruned(model: onnx.ModelProto, pruned_model: onnx.ModelProto, pruned: Sequence, *,
                  values: str = "fp32", inputs: Inputs = None, tolerance: Optional[float] = None
                  ) -> Verification:
    """Run both models on the same inputs; the result says whether every float output agrees
    within ``tolerance`` (default: VERIFY_TOLERANCE, or VERIFY_TOLERANCE_FP16 for fp16 values)."""
    if tolerance is None:
        tolerance = VERIFY_TOLERANCE_FP16 if values == "fp16" else VERIFY_TOLERANCE

    if isinstance(inputs, (str, Path)):
        feeds, described = load_inputs(inputs, model), str(inputs)
    elif inputs is not None:
        feeds, described = dict(inputs), "given inputs"
    else:
        feeds = generated_inputs(model)
        described = "generated inputs (" + ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items()) + ")"
    _check_compares_something(feeds, described)
    reference = masked_dense_model(model, pruned, values)
    expected = _run(reference, feeds, "the input model (with the masks applied densely)", library=False)
    actual = _run(pruned_model, feeds, "the pruned model", library=True)
    names = [o.name for o in model.graph.output]
    _check_has_finite_values(names, expected, described)
    per_output = {n: max_relative_error(e, a) for n, e, a in zip(names, expected, actual)
                  if np.issubdtype(np.asarray(e).dtype, np.floating)}
    worst = max(per_output.values(), default=0.0)
    return Verification(max_rel_error=worst, tolerance=tolerance, per_output=per_output,
                        passed=bool(worst <= tolerance), inputs=described)


def _check_compares_something(feeds: Mapping[str, np.ndarray], described: str) -> None:
    """Empty inputs give empty outputs: a verification that passes with nothing compared."""
    empty = [f"'{n}' {list(np.shape(v))}" for n, v in feeds.items() if np.size(v) == 0]
    if empty:
        raise OnnxPruneError(f"verification inputs ({described}) are empty: {', '.join(empty)}; "
                             "give inputs with at least one sample")


def _check_has_finite_values(names: Sequence[str], expected: Sequence[np.ndarray], described: str) -> None:
    """An output whose reference holds no finite value (all NaN from NaN inputs, or empty) would
    compare nothing; NaN and inf among finite values are still compared position by position."""
    for name, value in zip(names, expected):
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).any():
            raise OnnxPruneError(f"verification with {described} compares nothing: output '{name}' has no finite "
                                 f"value (shape {list(value.shape)}); give inputs with finite values")


def _run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], what: str, *, library: bool) -> list[np.ndarray]:
    """One onnxruntime run; its failure becomes one line naming the model that failed."""
    error = f"verification could not run {what}"
    return runtime.run(runtime.open_session(model, library=library, error=error), feeds, error=error)
