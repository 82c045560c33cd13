"""The Python API: ``onnx_prune.prune(model_or_path, ratio=...) -> (ModelProto, PruneReport)``.

Data flows one way: find eligible layers → select → decide per-layer ratios → sparsify (the
method from sparsifiers.py; calibration.py drives those that need calibration data, and N:M
patterns) → keep low-sparsity layers dense (auto_dense.py) → rewrite → verify.
"""
from __future__ import annotations

import math
import numbers
import os
import re
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from . import masking, sparsifiers
from .auto_dense import DENSE_KEEP_THRESHOLD, split_dense
from .bias import BIAS_CORRECTION
from .errors import OnnxPruneError, UsageError, first_line
from .graph import opset_version
from .layers import Layer, Skipped, find_layers, resolve_layer_ratios, select_layers
from .modelio import PROTOBUF_LIMIT, load_external_data, load_model, read_npz
from .report import PruneReport
from .rewrite import PrunedLayer, add_optional_parts, rewrite
from .sparse_gemm import formats, sparse_gemm_summary
from .sparse_gemm.formats import SparseFormat, bcsr

if TYPE_CHECKING:
    from .recover import RecoverOptions, RecoveryReport
    from .recover.options import RecoverSetting
    from .verify import MaskedDenseReference

SCOPES = ("layer", "global")

ModelOrPath = Union[onnx.ModelProto, str, Path]
Calibration = Union[None, str, Path, Mapping[str, np.ndarray]]
Progress = Callable[[str, int, int], None]  # (what is being done, steps done, steps in all)
_STEPS = 5


def prune(model_or_path: ModelOrPath, ratio: float = 0.8, *, scope: str = "layer",
          include: Sequence[str] = (), exclude: Sequence[str] = (),
          layer_ratios: Optional[Mapping[str, float]] = None, min_params: int = 0,
          method: str = "magnitude", calibration: Calibration = None, calibration_samples: Optional[int] = None,
          pattern: Optional[str] = None, bias_correction: bool = BIAS_CORRECTION, values: str = "fp32",
          fallback: bool = True,
          auto_dense: bool = True, verify: bool = False, verify_inputs=None,
          progress: Optional[Progress] = None, format: Optional[str] = None, quantize: Optional[str] = None,
          recover: "RecoverSetting" = None) -> tuple[onnx.ModelProto, PruneReport]:
    """Prune the Gemm / constant-weight MatMul layers of a model.

    Returns the rewritten model and a report; the input (file or ModelProto) is not modified.
    ``calibration`` is an .npz path or a dict of arrays keyed by graph input name (first axis =
    samples), needed by ``method="wanda"`` and ``"sparsegpt"``. ``bias_correction``: SparseGPT
    also updates the biases (bias.py; exact, or skipped with a warning). ``verify=True`` runs the result
    against the input with the same masks applied densely and raises OnnxPruneError when they
    differ by more than verify.VERIFY_TOLERANCE (``verify_inputs``: .npz path or dict; default
    generated inputs). ``format`` names the storage format (default: see ``storage_format``).
    ``recover``: True or a RecoverOptions (or a dict of its fields) trains the kept weights toward
    the dense model's outputs on ``calibration`` after the pruning (needs the extra
    onnx-prune[recover]; see onnx_prune.recover).
    """
    check_options(ratio, scope=scope, method=method, values=values, layer_ratios=layer_ratios,
                  min_params=min_params, calibration_samples=calibration_samples)
    fmt, values_dtype = storage_format(values, format, pattern, quantize)
    recovery = _recovery_options(recover, calibration)
    source = str(model_or_path) if isinstance(model_or_path, (str, Path)) else None
    streams = _streams(method, scope, pattern) and calibration is None
    # layer by layer, a model file's external tensors stay in their files until each layer reads its own
    folder = str(Path(source).parent) if source is not None and streams else None
    model = load_model(model_or_path, external_data=folder is None) if source is not None else _copy(model_or_path)
    say = _stepper(progress)
    reference = _verification_reference(verify, source)
    try:
        check_supported_opset(model)
        if recovery is not None:
            from .recover import check_convertible

            check_convertible(model)
        say("finding prunable layers")
        chosen, not_pruned = eligible_layers(model, include=include, exclude=exclude, min_params=min_params,
                                             folder=folder)
        ratios = {layer.node: float(ratio) for layer in chosen}
        ratios.update(resolve_layer_ratios(chosen, dict(layer_ratios or {})))

        say(f"scoring {len(chosen)} layers ({method}{', ' + pattern if pattern else ''})")
        calibration_counts = None
        if streams:
            pruned, dense_kept = _prune_layer_by_layer(chosen, ratios, method=method, fmt=fmt,
                                                       values_dtype=values_dtype, auto_dense=auto_dense,
                                                       reference=reference)
        else:
            one_shot_data = None if recovery and not sparsifiers.get(method).needs_calibration else calibration
            weights, calibration_counts = sparsify(
                model, chosen, ratios, scope=scope, method=method, calibration=one_shot_data,
                calibration_samples=calibration_samples, pattern=pattern, bias_correction=bias_correction,
                progress=progress)
            pruned, dense_kept = split_dense(chosen, weights, auto_dense and not pattern)
            if recovery is not None:
                say(f"recovering {len(pruned)} layers toward the dense model")
                recovered = _recover(model, pruned, calibration, calibration_samples, recovery, progress)
            _pack_all(pruned, fmt, values_dtype, reference)
        # the reference is the input model rewired to the masked weights: written before the rewrite changes it
        reference_path = reference.save(model, pruned) if reference and pruned else None

        settings = dict(ratio=ratio, scope=scope, method=method, pattern=pattern, values=values,
                        layer_ratios=dict(layer_ratios or {}), include=list(include), exclude=list(exclude),
                        min_params=min_params, auto_dense=auto_dense, fallback=fallback,
                        calibration_samples=calibration_samples, quantize=quantize,
                        bias_correction=bias_correction, format=fmt.name,
                        recover=vars(recovery) if recovery is not None else None)
        if calibration_counts is not None:
            settings["calibration_samples_used"], settings["calibration_samples_held"] = calibration_counts
        say(f"rewriting {len(pruned)} layers as SparseGemm")
        size_before = model.ByteSize() if source is None else None
        # the verification's reference is on disk by now: nothing reads the input model again, and a
        # model that is ours (loaded from a path) is rewritten in place instead of copied
        out = rewrite(model, pruned, values_dtype=values_dtype, format=fmt.name, settings=settings,
                      in_place=source is not None)
        if folder is not None:  # the tensors left alone (biases, layers kept dense) join the output
            load_external_data(out, folder, what=f"'{source}'")
        add_optional_parts(out, fallback=fallback)
        check_output_model(model, out)

        report = PruneReport.build(model, out, pruned, dense_kept, not_pruned, settings, source=source)
        report.recovery = recovered if recovery is not None else None
        if size_before is not None:
            report.size_before = size_before
        if reference_path is not None:
            from .verify import verify_pruned

            say("verifying against the masked dense model")
            report.verification = verify_pruned(reference_path, out, values=values, inputs=verify_inputs,
                                                tolerance=fmt.verify_tolerance)
            if not report.verification.passed:
                v = report.verification
                raise OnnxPruneError(f"verification failed: max relative error {v.max_rel_error:.2e} exceeds "
                                     f"{v.tolerance:.0e} (outputs: {_worst_outputs(v.per_output)})")
        say("done")
        return out, report
    finally:
        if reference is not None:
            reference.close()


def eligible_layers(model: onnx.ModelProto, *, include: Sequence[str] = (), exclude: Sequence[str] = (),
                    min_params: int = 0, folder: Optional[str] = None) -> tuple[list[Layer], list[Skipped]]:
    """The layers to prune and every Gemm / MatMul left alone (with why). Non-float32 weights
    get a warning naming the layer: the user probably expected them to be pruned. ``folder``:
    see find_layers."""
    found, ineligible = find_layers(model, folder)
    for s in ineligible:
        if "only float32" in s.reason:
            warnings.warn(f"layer {s.node} skipped: {s.reason}", stacklevel=3)
    if not found:
        already = sparse_gemm_summary(model)
        if already:
            raise OnnxPruneError(f"no prunable layer found: the model is already pruned, it has {already}; "
                                 "prune the original model, or densify this one first (onnx-prune densify)")
        raise OnnxPruneError("no prunable layer found: the model has no Gemm or MatMul with a constant "
                             "float32 2-D weight" + _skip_summary(ineligible))
    chosen, unselected = select_layers(found, include=include, exclude=exclude, min_params=min_params)
    if not chosen:
        raise OnnxPruneError("no prunable layer left after --include/--exclude/--min-params "
                             f"({len(found)} eligible: {_names(found)})")
    return chosen, [*ineligible, *unselected]


def sparsify(model: onnx.ModelProto, layers: Sequence[Layer], ratios: Mapping[str, float], *, scope: str,
             method: str, calibration: Calibration, calibration_samples: Optional[int],
             pattern: Optional[str], bias_correction: bool = BIAS_CORRECTION, progress: Optional[Progress] = None
             ) -> tuple[dict[str, sparsifiers.Pruned], Optional[tuple[int, int]]]:
    """node name -> Pruned (new weight [K, N] float32, keep mask [K, N] bool, new bias or None),
    for every layer; and (samples used, samples held) of the calibration data when a method read it,
    so that the report can say how much of the data went in. ``progress`` hears of every layer
    (and SparseGPT's blocks within it) of a method that prunes layer by layer on calibration data.

    A method that needs no calibration statistics runs here; the others (and N:M patterns) belong
    to onnx_prune.calibration, imported only when asked for.
    """
    sparsifier = sparsifiers.get(method)
    if sparsifier.needs_calibration or pattern:
        try:
            from .calibration import sparsify as calibration_sparsify
        except ImportError:
            what = f"method {method}" if sparsifier.needs_calibration else f"pattern {pattern}"
            raise OnnxPruneError(f"{what} needs onnx_prune.calibration, which this installation lacks") from None
        data, counts = None, None
        if calibration is not None and sparsifier.needs_calibration:
            data, counts = checked_calibration(load_calibration(calibration), model, calibration_samples)
        result = calibration_sparsify(model, list(layers), dict(ratios), method=method, calibration=data,
                                      samples=None, pattern=pattern, scope=scope, bias_correction=bias_correction,
                                      progress=progress or False)
    else:
        counts = None
        if calibration is not None:
            warnings.warn(f"calibration data is not used by --method {method}", stacklevel=3)
        result = sparsifiers.prune_by_weights(sparsifier, layers, ratios, scope=scope)
    pairs = {node: (p.weight, p.mask) for node, p in result.items()}
    return {layer.node: sparsifiers.Pruned(*_checked(layer, pairs), result[layer.node].bias) for layer in layers}, counts


def checked_calibration(data: Mapping[str, np.ndarray], model: onnx.ModelProto, samples: Optional[int]
                        ) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """The calibration arrays checked against the model and cut to the samples a method will use,
    with (samples used, samples held)."""
    from .calibration import checked_calibration as check

    checked, plan = check(data, model, samples)
    return checked, (plan.samples, int(np.shape(data[next(iter(checked))])[0]))


def _recovery_options(recover: "RecoverSetting", calibration: Calibration) -> Optional["RecoverOptions"]:
    """The checked recovery settings (None: off); its calibration data and torch checked first."""
    from . import recover as recovery

    options = recovery.resolve(recover)
    if options is not None:
        if calibration is None:
            raise UsageError("--recover needs --calibration (the inputs whose dense outputs the pruned model learns)")
        recovery.require_torch()
    return options


def _recover(model: onnx.ModelProto, pruned: Sequence[PrunedLayer], calibration: Calibration,
             samples: Optional[int], options: "RecoverOptions", progress: Optional[Progress]) -> "RecoveryReport":
    """Train the pruned layers' kept weights toward the dense model (onnx_prune.recover)."""
    from .calibration import checked_calibration as check
    from .recover import recover_layers

    data, plan = check(load_calibration(calibration), model, samples)
    if plan.per_sample:
        raise OnnxPruneError("--recover needs calibration arrays whose first axis is the model's batch axis "
                             f"(these hold one whole input per sample: {', '.join(sorted(plan.per_sample))})")
    return recover_layers(model, pruned, data, options, progress)


def _streams(method: str, scope: str, pattern: Optional[str]) -> bool:
    """Whether layers can be pruned one at a time: a method that reads only each layer's own
    weights, one ratio per layer, no N:M pattern (those go through sparsify)."""
    return not sparsifiers.get(method).needs_calibration and scope == "layer" and not pattern


def _prune_layer_by_layer(layers: Sequence[Layer], ratios: Mapping[str, float], *, method: str, fmt: SparseFormat,
                          values_dtype: np.dtype, auto_dense: bool, reference: Optional["MaskedDenseReference"]
                          ) -> tuple[list[PrunedLayer], list[Layer]]:
    """Choose, check and pack one layer at a time, so that at most one layer's dense weights and
    its keep mask are in memory besides the model; each layer's weights are dropped once packed,
    before its masked dense weight is unpacked and written to ``reference`` (when verifying)."""
    sparsifier = sparsifiers.get(method)
    pruned, dense_kept = [], []
    for layer in layers:
        weight, mask = _packable(layer, sparsify_one(sparsifier, layer, ratios[layer.node]))
        if auto_dense and np.count_nonzero(mask) / mask.size > DENSE_KEEP_THRESHOLD:
            dense_kept.append(layer)
            layer.release()
            continue
        p = PrunedLayer(layer, None, None, kept_count=int(np.count_nonzero(mask)))
        p.packed = fmt.pack(weight, mask, values_dtype=values_dtype)  # reads only the kept entries
        del weight, mask
        layer.release()
        if reference is not None:
            reference.add(p)
        pruned.append(p)
    return pruned, dense_kept


def _packable(layer: Layer, p: sparsifiers.Pruned) -> tuple[np.ndarray, np.ndarray]:
    """(weight, mask) to pack: the layer's own weights when the sparsifier kept them unchanged
    (no zeroed copy: a format packs only the kept entries), else its checked new weight."""
    if p.kept_from is None:
        return _checked(layer, {layer.node: (p.weight, p.mask)})
    mask = np.asarray(p.mask, dtype=bool)
    if mask.shape != tuple(layer.shape):
        raise OnnxPruneError(f"internal error: the sparsifier returned a mask of shape {list(mask.shape)} "
                             f"for layer {layer.node} of shape {list(layer.shape)}")
    return np.asarray(p.kept_from, dtype=np.float32), mask


def _pack_all(pruned: Sequence[PrunedLayer], fmt: SparseFormat, values_dtype: np.dtype,
              reference: Optional["MaskedDenseReference"]) -> None:
    """Pack every layer now (rewrite reuses it), writing each one's masked dense weight to
    ``reference`` when verifying."""
    for p in pruned:
        p.packed = fmt.pack(p.weight, p.mask, values_dtype=values_dtype)
        if reference is not None:
            reference.add(p)


def _verification_reference(verify: bool, source: Optional[str]) -> Optional["MaskedDenseReference"]:
    """Where the masked dense model of a verification is written (close it afterwards), or None."""
    if not verify:
        return None
    from .verify import MaskedDenseReference

    return MaskedDenseReference(Path(source).parent if source is not None else None)


def sparsify_one(sparsifier: sparsifiers.Sparsifier, layer: Layer, ratio: float) -> sparsifiers.Pruned:
    """One layer's answer from a method that needs no calibration statistics."""
    return sparsifier.update_mask(layer, None, masking.removal_count(ratio, layer.size))


def load_calibration(calibration: Calibration) -> dict[str, np.ndarray]:
    """The calibration arrays, from a dict or an .npz file (one clear error when unreadable)."""
    if isinstance(calibration, Mapping):
        return {str(k): np.asarray(v) for k, v in calibration.items()}
    return read_npz(calibration, "calibration data")


def check_options(ratio: float, *, scope: str = "layer", method: str = "magnitude", values: str = "fp32",
                  layer_ratios: Optional[Mapping[str, float]] = None, min_params: int = 0,
                  calibration_samples: Optional[int] = None) -> None:
    """Every option checked before any work, each with the CLI flag's name in its message."""
    _check_ratio(ratio, "--ratio")
    for name, r in (layer_ratios or {}).items():
        _check_ratio(r, f"--layer-ratio {name}")
    if scope not in SCOPES:
        raise UsageError(f"--scope must be {_alternatives(SCOPES)}, got '{scope}'")
    sparsifiers.get(method)
    if values not in value_types():
        raise UsageError(f"--values must be {_alternatives(value_types(), quote=False)}, got '{values}'")
    if not isinstance(min_params, numbers.Integral) or min_params < 0:
        raise UsageError(f"--min-params must be a non-negative integer, got {min_params}")
    if calibration_samples is not None and calibration_samples < 1:
        raise UsageError(f"--calibration-samples must be at least 1, got {calibration_samples}")


QUANTIZE_FORMATS = {"dynamic": "csr_int8_dynamic"}  # --quantize choice -> format (int8 values implied)


def format_for_pattern(pattern: Optional[str]) -> Optional[str]:
    """bcsr for an R x 1 block pattern its kernels have (one activation load feeds R outputs), else none."""
    blocks = re.fullmatch(r"(\d+)x1", pattern or "")
    return bcsr.NAME if blocks and int(blocks.group(1)) in bcsr.BLOCK_SIZES else None


def storage_format(values: str, format: Optional[str] = None, pattern: Optional[str] = None,
                   quantize: Optional[str] = None) -> tuple[SparseFormat, np.dtype]:
    """The format that stores the pruned weights and its values dtype: the one ``quantize``
    (--quantize) selects, with int8 values; else ``format`` (--format); else the one an Rx1 block
    pattern runs fastest in; else the first format that stores ``values``."""
    if quantize not in (None, "none"):
        if quantize not in QUANTIZE_FORMATS:
            raise UsageError(f"--quantize must be {_alternatives(['none', *QUANTIZE_FORMATS])}, got '{quantize}'")
        if format not in (None, QUANTIZE_FORMATS[quantize]):
            raise UsageError(f"--quantize {quantize} stores in format {QUANTIZE_FORMATS[quantize]}; "
                             f"it cannot be combined with --format {format}")
        return formats.get(QUANTIZE_FORMATS[quantize]), np.dtype(np.int8)
    name = format or format_for_pattern(pattern)
    if name is None:
        return formats.value_choices()[values]
    fmt = formats.get(name)
    if values not in fmt.value_types:
        raise UsageError(f"--values {values} cannot be stored in format {name} (it stores: "
                         f"{', '.join(fmt.value_types)})")
    return fmt, np.dtype(fmt.value_types[values])


def value_types() -> Mapping[str, np.dtype]:
    """The --values choices (name -> stored dtype), as the storage formats declare them."""
    return {choice: dtype for choice, (_, dtype) in formats.value_choices().items()}


MIN_OPSET = 7  # onnxruntime implements the standard ops from opset 7 on


def check_supported_opset(model: onnx.ModelProto) -> None:
    """Models importing ai.onnx opset 1-6 cannot be run by onnxruntime (verification, the pruned
    file's other ops): say so before any session fails on the first node."""
    version = opset_version(model)
    if version is not None and version < MIN_OPSET:
        raise OnnxPruneError(f"the model imports ai.onnx opset {version}; onnx-prune and onnxruntime support "
                             f"opset {MIN_OPSET} and later: convert it first "
                             "(onnx.version_converter.convert_version(model, 13))")


def check_output_model(model: onnx.ModelProto, out: onnx.ModelProto) -> None:
    """The output must pass onnx.checker; when it does not, say whether the input already fails."""
    if out.ByteSize() > PROTOBUF_LIMIT:
        return  # the in-memory checker cannot take > 2 GB; such models are checked by onnxruntime
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as exc:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as input_exc:
            raise OnnxPruneError(f"the input model fails onnx.checker: {first_line(input_exc)}") from exc
        raise OnnxPruneError(f"internal error: the pruned model fails onnx.checker: {first_line(exc)}") from exc


def _check_ratio(r: float, what: str) -> None:
    if isinstance(r, bool) or not isinstance(r, numbers.Real) or math.isnan(r) or not 0.0 <= r < 1.0:
        raise UsageError(f"{what} must be in [0, 1), got {r}")


def _checked(layer: Layer, result: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """A sparsifier's answer for one layer, in the shapes and dtypes the rewriter relies on."""
    if layer.node not in result:
        raise OnnxPruneError(f"internal error: the sparsifier returned nothing for layer {layer.node}")
    weight, mask = result[layer.node]
    weight, mask = np.asarray(weight, dtype=np.float32), np.asarray(mask, dtype=bool)
    if weight.shape != tuple(layer.shape) or mask.shape != tuple(layer.shape):
        raise OnnxPruneError(f"internal error: the sparsifier returned shapes {list(weight.shape)} / "
                             f"{list(mask.shape)} for layer {layer.node} of shape {list(layer.shape)}")
    if weight.flags.writeable and weight.base is None and weight is not layer._weight:
        np.copyto(weight, np.float32(0), where=~mask)  # the sparsifier's own array: no second copy
        return weight, mask
    return np.where(mask, weight, np.float32(0)), mask


def _stepper(progress: Optional[Progress]) -> Callable[[str], None]:
    done = [0]

    def say(message: str) -> None:
        if _DEBUG_MEMORY:
            _print_memory(message)
        if progress is not None:
            progress(message, min(done[0], _STEPS), _STEPS)
        done[0] += 1

    return say


_DEBUG_MEMORY = bool(os.environ.get("ONNX_PRUNE_DEBUG_MEMORY"))


def _print_memory(step: str) -> None:
    """ONNX_PRUNE_DEBUG_MEMORY=1: the process's current and peak RSS at each step, on stderr
    (tracemalloc does not see numpy's or protobuf's buffers)."""
    import resource

    with open("/proc/self/statm") as statm:
        current = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"[memory] {step}: RSS {current / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB", file=sys.stderr)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    if not isinstance(model, onnx.ModelProto):
        raise OnnxPruneError(f"prune() takes an onnx.ModelProto or a path, got {type(model).__name__}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _names(layers: Sequence[Layer]) -> str:
    return ", ".join(l.node for l in layers)


def _worst_outputs(per_output: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.2e}" for k, v in sorted(per_output.items(), key=lambda kv: -kv[1])[:3])


def _alternatives(names: Sequence[str], quote: bool = True) -> str:
    """'a' or 'b' / a, b or c: the choices of an option, for its error message."""
    shown = [f"'{n}'" if quote else n for n in names]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def _skip_summary(skipped: Sequence[Skipped]) -> str:
    if not skipped:
        return ""
    shown = "; ".join(f"{s.node}: {s.reason}" for s in skipped[:3])
    return f" ({shown}{'; …' if len(skipped) > 3 else ''})"
