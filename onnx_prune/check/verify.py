"""Verification: the pruned model (run with the SparseGemm library) against the input model with
the same masks written into its dense weights, on the same inputs, in onnxruntime."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from ..runtime import session as runtime
from ..pruning.bias import write_dense
from ..errors import OnnxPruneError
from ..model.modelio import external_span, external_tensors, read_npz
from . import inputs as generated
from .input_shapes import check_input_shapes
from .inputs import BATCH_FOR_GENERATED, SEQ_LEN_FOR_GENERATED
from .fidelity import Fidelity, compare as compare_outputs, max_relative_error, score_outputs
from .report import Verification
from ..model.graph import remove_dead_tensors as drop_unused_constants
from ..sparse_gemm.rewrite import dense_shape

# Max relative error (max |pruned - reference| / max |reference| per output) the run may show. Both
# sides are fp32; the difference is the summation order of the kernels, far below this.
VERIFY_TOLERANCE = 1e-4
# With --values fp16 the reference uses the same fp16-rounded weights; the looser bound leaves room
# for however the kernel widens fp16 values to fp32 before accumulating.
VERIFY_TOLERANCE_FP16 = 1e-3

Inputs = Union[None, str, Path, Mapping[str, np.ndarray]]
# The reference session reads its weights where they lie (onnxruntime maps aligned external data)
# instead of repacking each Gemm / MatMul weight into a second buffer: the verification then
# holds the dense weights once. Same products, summed in another order, far within the tolerance.
REFERENCE_SESSION_CONFIG = {"session.disable_prepacking": "1"}


class MaskedDenseReference:
    """The reference side of a verification, built on disk: the input model with each pruned
    layer reading its kept weights (zeros elsewhere) as a dense tensor.

    ``add`` writes one layer's reference weight to a data file in a temporary folder as soon as it
    is packed, so a pruner going layer by layer never holds more than one dense layer; ``save``
    writes the model itself there, its pruned layers rewired to those tensors, so the reference
    session opens from a path and no second dense copy of the model is made in memory. ``close``
    (or leaving the ``with`` block) removes the folder; TMPDIR chooses where it is made.
    """

    def __init__(self, model_folder: Optional[Union[str, Path]] = None) -> None:
        self._model_folder = Path(model_folder) if model_folder is not None else None
        self.folder = Path(tempfile.mkdtemp(prefix="onnx-prune-verify."))
        self._data = open(self.folder / _DATA_NAME, "wb")
        self._tensors: dict[str, onnx.TensorProto] = {}  # fused_nodes[0] -> its masked weight

    def add(self, p) -> None:
        """Write the dense weight pruned layer ``p`` stores (its packed tensors unpacked) in the
        orientation the input model stores it."""
        weight = reference_weight(p)
        layer = p.layer
        stored_rows, row_length = dense_shape(layer)
        step = max(1, _WRITE_BLOCK_BYTES // (4 * row_length))  # a stored row block per write
        with self._disk_errors():
            offset = _pad_to(self._data, _ALIGNMENT)
            for start in range(0, stored_rows, step):
                rows = weight[:, start:start + step].T if layer.trans_b else weight[start:start + step]
                np.ascontiguousarray(rows, dtype="<f4").tofile(self._data)
        del weight
        tensor = onnx.TensorProto(name=f"{layer.weight_name}__masked_{len(self._tensors)}",
                                  data_type=onnx.TensorProto.FLOAT, dims=dense_shape(layer),
                                  data_location=onnx.TensorProto.EXTERNAL)
        _point_to(tensor, _DATA_NAME, offset, self._data.tell() - offset)
        self._tensors[layer.fused_nodes[0]] = tensor

    def save(self, model: onnx.ModelProto, pruned: Sequence) -> Path:
        """Write the reference model (``model`` with the ``pruned`` layers' nodes reading their
        masked weights, and their compensated biases where the method changed them) and return its
        path. Call it before ``model`` is rewritten."""
        ref = onnx.ModelProto()
        ref.CopyFrom(model)  # cheap when the weights are still in their external files
        for node in ref.graph.node:
            tensor = self._tensors.get(node.name)
            if tensor is not None:
                ref.graph.initializer.append(tensor)
                node.input[1] = tensor.name
        for i, p in enumerate(p for p in pruned if p.bias is not None):
            write_dense(ref, p.layer, p.bias, f"{p.layer.node}__masked_bias_{i}")
        drop_unused_constants(ref, {p.layer.weight_name for p in pruned})
        path = self.folder / _MODEL_NAME
        with self._disk_errors():
            self._copy_other_external_tensors(ref)
            self._data.close()
            onnx.save_model(ref, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=_REST_NAME, size_threshold=1024)
        return path

    @contextmanager
    def _disk_errors(self) -> Iterator[None]:
        """A full or unwritable temporary folder becomes one line that says where and why."""
        try:
            yield
        except OSError as exc:
            raise OnnxPruneError(f"cannot write the verification's reference model to '{self.folder}' "
                                 f"({exc.strerror or exc}); set TMPDIR to a folder with room for the "
                                 "pruned layers' dense weights, or use --no-verify") from exc

    def _copy_other_external_tensors(self, ref: onnx.ModelProto) -> None:
        """The input model's other external tensors, copied byte for byte into the reference's
        data file: onnxruntime reads external data only from inside the model file's folder (it
        resolves symbolic links too), and the input's folder may not be writable."""
        for tensor in external_tensors(ref):
            info = {e.key: e.value for e in tensor.external_data}
            if info.get("location") == _DATA_NAME:
                continue
            if self._model_folder is None:
                continue  # a ModelProto given with its data outside: onnxruntime will say what it lacks
            path, offset, length = external_span(tensor, self._model_folder)
            start = _pad_to(self._data, _ALIGNMENT)
            with open(path, "rb") as source:
                source.seek(offset)
                _copy_bytes(source, self._data, length)
            _point_to(tensor, _DATA_NAME, start, length)

    def close(self) -> None:
        self._data.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "MaskedDenseReference":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# the temporary folder's files: the reference model, the masked weights with the input's other
# external tensors, and the tensors the input model held inside itself
_MODEL_NAME, _DATA_NAME, _REST_NAME = "reference.onnx", "masked_weights.bin", "inline_weights.bin"
# masked weights start at multiples of this offset: onnxruntime maps external data that is aligned
# to the allocation granularity (64 KiB on Windows) instead of copying it
_ALIGNMENT = 64 * 1024
_WRITE_BLOCK_BYTES = 64 << 20


def _point_to(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Make ``tensor`` read ``length`` bytes at ``offset`` of the external file ``location``."""
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)


def _copy_bytes(source, target, length: int, block: int = 16 << 20) -> None:
    while length > 0:
        chunk = source.read(min(block, length))
        if not chunk:
            raise OnnxPruneError(f"external data file '{source.name}' ends early")
        target.write(chunk)
        length -= len(chunk)


def _pad_to(handle, alignment: int) -> int:
    position = handle.tell()
    padding = -position % alignment
    handle.write(b"\0" * padding)
    return position + padding


def reference_weight(p) -> np.ndarray:
    """The dense [K, N] weight the pruned layer really stores: its packed tensors unpacked
    (fp16-rounded or int8-dequantized values), so the reference differs from the kernel by
    summation order only."""
    return np.asarray(p.packed.to_dense(), dtype=np.float32)


def generated_inputs(model: onnx.ModelProto, seed: int = 0, batch: int = BATCH_FOR_GENERATED,
                     seq_len: int = SEQ_LEN_FOR_GENERATED) -> dict[str, np.ndarray]:
    """Inputs that look like real ones (token ids inside the vocabulary, masks of ones, float
    inputs standard normal) from the graph's declared shapes; see onnx_prune.check.inputs."""
    return generated.generated_inputs(model, seed=seed, batch=batch, seq_len=seq_len)


def load_inputs(path: Union[str, Path], model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The arrays of an .npz keyed by graph input name (extra arrays are ignored)."""
    arrays = read_npz(path, "inputs")
    initializers = {t.name for t in model.graph.initializer}
    wanted = [v.name for v in model.graph.input if v.name not in initializers]
    missing = [n for n in wanted if n not in arrays]
    if missing:
        raise OnnxPruneError(f"inputs '{path}' lack {', '.join(missing)} (the model's inputs: {', '.join(wanted)})")
    return {n: arrays[n] for n in wanted}


@dataclass
class VerificationInputs:
    """The inputs every run of a verification gets, and how the report names them."""
    feeds: dict[str, np.ndarray]
    described: str
    generated: bool


def verification_inputs(inputs: Inputs, model: onnx.ModelProto,
                        seq_len: int = SEQ_LEN_FOR_GENERATED) -> VerificationInputs:
    """``inputs`` (an .npz path or a dict) checked against the model's inputs, or generated ones."""
    if isinstance(inputs, VerificationInputs):
        return inputs
    if isinstance(inputs, (str, Path)):
        chosen = VerificationInputs(load_inputs(inputs, model), str(inputs), generated=False)
    elif inputs is not None:
        chosen = VerificationInputs(dict(inputs), "given inputs", generated=False)
    else:
        plans = generated.input_plans(model, seq_len=seq_len)
        chosen = VerificationInputs(generated.make(plans), generated.describe(plans), generated=True)
    check_input_shapes(chosen.feeds, model, f"--inputs '{inputs}'" if isinstance(inputs, (str, Path)) else chosen.described)
    _check_compares_something(chosen.feeds, chosen.described)
    return chosen


def original_outputs(model: Union[str, Path, onnx.ModelProto], inputs: VerificationInputs) -> list[np.ndarray]:
    """The input model's outputs on the verification inputs, computed once before pruning (the
    session is gone before any pruned weight is made)."""
    return _run(str(model) if isinstance(model, (str, Path)) else model, inputs, "the input model",
                library=None, config=REFERENCE_SESSION_CONFIG)


def verify_pruned(reference: Union[str, Path], pruned_model: onnx.ModelProto, *, values: str = "fp32",
                  inputs: Union[Inputs, VerificationInputs] = None, tolerance: Optional[float] = None,
                  original: Optional[Sequence[np.ndarray]] = None,
                  seq_len: int = SEQ_LEN_FOR_GENERATED) -> Verification:
    """The kernel check: run the masked dense ``reference`` (a model file, see MaskedDenseReference)
    and the pruned model on the same inputs; the result says whether every float output agrees
    within ``tolerance`` (default: VERIFY_TOLERANCE, or VERIFY_TOLERANCE_FP16 for fp16 values).
    With the ``original`` model's outputs on those inputs, the result also carries the pruned
    model's fidelity to it (fidelity.py). The reference runs first and its session is gone before
    the pruned model's opens."""
    if tolerance is None:
        tolerance = VERIFY_TOLERANCE_FP16 if values == "fp16" else VERIFY_TOLERANCE
    chosen = verification_inputs(inputs, pruned_model, seq_len)
    expected = _run(str(reference), chosen, "the input model (with the masks applied densely)", library=False,
                    config=REFERENCE_SESSION_CONFIG)
    actual = _run(pruned_model, chosen, "the pruned model", library=True)
    names = [o.name for o in pruned_model.graph.output]
    _check_has_finite_values(names, expected, chosen.described)
    per_output = {n: max_relative_error(e, a) for n, e, a in zip(names, expected, actual)
                  if np.issubdtype(np.asarray(e).dtype, np.floating)}
    worst = max(per_output.values(), default=0.0)
    result = Verification(max_rel_error=worst, tolerance=tolerance, per_output=per_output,
                          passed=bool(worst <= tolerance), inputs=chosen.described)
    if original is not None:
        result.fidelity = Fidelity(inputs=chosen.described, generated=chosen.generated,
                                   outputs=compare_outputs(names, original, actual, score_outputs(pruned_model.graph)))
    return result


def _check_compares_something(feeds: Mapping[str, np.ndarray], described: str) -> None:
    """Empty inputs give empty outputs: a verification that passes with nothing compared."""
    empty = [f"'{n}' {list(np.shape(v))}" for n, v in feeds.items() if np.size(v) == 0]
    if empty:
        raise OnnxPruneError(f"verification inputs ({described}) are empty: {', '.join(empty)}; "
                             "give --inputs data.npz with at least one sample")


def _check_has_finite_values(names: Sequence[str], expected: Sequence[np.ndarray], described: str) -> None:
    """An output whose reference holds no finite value (all NaN from NaN inputs, or empty) would
    compare nothing; NaN and inf among finite values are still compared position by position."""
    for name, value in zip(names, expected):
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).any():
            raise OnnxPruneError(f"verification with {described} compares nothing: output '{name}' has no finite "
                                 f"value (shape {list(value.shape)}); pass inputs with finite values with "
                                 "--inputs data.npz (or --no-verify)")


def _run(model: Union[str, onnx.ModelProto], inputs: VerificationInputs, what: str, *, library: Optional[bool],
         config: Optional[Mapping[str, str]] = None) -> list[np.ndarray]:
    """One onnxruntime run; its failure becomes one line naming the model that failed (and, on
    generated inputs, how to give real ones)."""
    error = f"verification could not run {what}"
    try:
        session = runtime.open_session(model, library=library, error=error, config=config)
        return runtime.run(session, inputs.feeds, error=f"{error} on {inputs.described}")
    except OnnxPruneError as exc:
        if not inputs.generated:
            raise
        raise OnnxPruneError(f"{exc}; pass the model's real inputs with --inputs data.npz (or --no-verify)") from exc
