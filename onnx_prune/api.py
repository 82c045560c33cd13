"""The Python API: ``onnx_prune.prune(model_or_path, ratio=...) -> (ModelProto, PruneReport)``.

Data flows one way: options (options.py, validated once) → find eligible layers → select → decide
per-layer ratios → sparsify (the method from sparsifiers.py; calibration.py drives those that need
calibration data; patterns.py parses --pattern for the layers) → keep low-sparsity layers dense
(auto_dense.py) → rewrite → verify.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from .pruning import shared_weights, sparsifiers
from .pruning.auto_dense import DENSE_KEEP_THRESHOLD, split_dense, stays_dense
from .pruning.calibration import read_calibration, sparsify_calibrated
from .pruning.patterns import layer_pattern
from .errors import OnnxPruneError, UsageError, first_line
from .model.graph import opset_version
from .model.layers import Layer, Skipped, find_layers, resolve_layer_ratios, select_layers
from .model.modelio import PROTOBUF_LIMIT, load_external_data, load_model
from .check.inputs import SEQ_LEN_FOR_GENERATED, check_seq_len
from .check.report import PruneReport
from .options import PruneOptions, Settings
from .sparse_gemm.rewrite import PrunedLayer, add_optional_parts, rewrite
from .sparse_gemm import sparse_gemm_summary
from .sparse_gemm.formats import SparseFormat

if TYPE_CHECKING:
    from .check.verify import MaskedDenseReference
    from .recover import RecoverOptions, RecoveryReport
    from .recover.options import RecoverSetting

ModelOrPath = Union[onnx.ModelProto, str, Path]
Calibration = Union[None, str, Path, Mapping[str, np.ndarray]]
Progress = Callable[[str, int, int], None]  # (what is being done, steps done, steps in all)
_STEPS = 5


def prune(model_or_path: ModelOrPath, ratio: Optional[float] = None, *, options: Optional[PruneOptions] = None,
          calibration: Calibration = None, verify_inputs=None, seq_len: int = SEQ_LEN_FOR_GENERATED,
          recover: "RecoverSetting" = None, progress: Optional[Progress] = None,
          **settings: Any) -> tuple[onnx.ModelProto, PruneReport]:
    """Prune the Gemm / constant-weight MatMul layers of a model.

    Returns the rewritten model and a report; the input (file or ModelProto) is not modified.
    The settings are the fields of :class:`onnx_prune.options.PruneOptions` (ratio, scope, include,
    exclude, layer_ratios, min_params, method, calibration_samples, pattern, bias_correction, values,
    format, quantize, fallback, auto_dense, verify), given as keywords (``ratio`` also second), or
    as ``options`` (keywords given too replace its fields).
    ``calibration`` is an .npz path or a dict of arrays keyed by graph input name (first axis =
    samples), needed by ``method="wanda"`` and ``"sparsegpt"``. ``bias_correction``: SparseGPT
    also updates the biases (bias.py; exact, or skipped with a warning). ``verify=True`` runs the result
    against the input with the same masks applied densely and raises OnnxPruneError when they
    differ by more than verify.VERIFY_TOLERANCE (``verify_inputs``: .npz path or dict; default
    generated inputs, sequence dimensions at ``seq_len``), and reports the pruned model's fidelity to
    the original on the same inputs (report.fidelity; a warning when it is poor, see
    check/fidelity.py). ``format`` names the storage format (default: see ``options.storage_format``).
    ``recover``: True or a RecoverOptions (or a dict of its fields) trains the kept weights toward
    the dense model's outputs on ``calibration`` after the pruning (needs the extra
    onnx-prune[recover]; see onnx_prune.recover).
    """
    if ratio is not None:
        settings["ratio"] = ratio
    options = PruneOptions.of(options, **settings).validated()
    check_seq_len(seq_len)
    fmt, values_dtype = options.storage()
    recovery = _recovery_options(recover, calibration)
    source = str(model_or_path) if isinstance(model_or_path, (str, Path)) else None
    streams = _streams(options) and calibration is None
    # layer by layer, a model file's external tensors stay in their files until each layer reads its own
    folder = str(Path(source).parent) if source is not None and streams else None
    model = load_model(model_or_path, external_data=folder is None) if source is not None else _copy(model_or_path)
    say = _stepper(progress)
    reference = _verification_reference(options.verify, source)
    try:
        check_supported_opset(model)
        if recovery is not None:
            from .recover import check_convertible

            check_convertible(model)
        say("finding prunable layers")
        chosen, not_pruned = eligible_layers(model, include=options.include, exclude=options.exclude,
                                             min_params=options.min_params, folder=folder)
        original = _original_outputs(source if source is not None else model, model, verify_inputs, seq_len) \
            if options.verify else None
        ratios = {layer.node: float(options.ratio) for layer in chosen}
        ratios.update(resolve_layer_ratios(chosen, dict(options.layer_ratios)))
        chosen, followers = shared_weights.split(chosen)  # one weight, one mask: its first user decides

        say(f"scoring {len(chosen)} layers ({options.method}{', ' + options.pattern if options.pattern else ''})")
        calibration_counts, recovered = None, None
        if streams:
            pruned, dense_kept = _prune_layer_by_layer(chosen, ratios, options, fmt=fmt, values_dtype=values_dtype,
                                                       reference=reference, followers=followers)
        else:
            # a method that reads no calibration data prunes without it, also when --recover trains on it
            one_shot_data = None if recovery and not sparsifiers.get(options.method).needs_calibration else calibration
            weights, calibration_counts = sparsify(model, chosen, ratios, options, calibration=one_shot_data,
                                                   progress=progress)
            pruned, dense_kept = split_dense(chosen, weights, options)
            if recovery is not None:
                say(f"recovering {len(pruned)} layers toward the dense model")
                recovered = _recover(model, pruned, calibration, options.calibration_samples, recovery, progress)
            pruned, dense_kept = _pack_all(pruned, dense_kept, fmt, values_dtype, reference, options, followers)
        if not pruned:
            warnings.warn(NothingPruned(nothing_pruned_message(dense_kept, ratios)), stacklevel=2)
        # the reference is the input model rewired to the masked weights: written before the rewrite changes it
        reference_path = reference.save(model, pruned) if reference and pruned else None

        recorded = Settings(options, *(calibration_counts or ()))
        say(f"rewriting {len(pruned)} layers as SparseGemm")
        size_before = model.ByteSize() if source is None else None
        # the verification's reference is on disk by now: nothing reads the input model again, and a
        # model that is ours (loaded from a path) is rewritten in place instead of copied
        out = rewrite(model, pruned, values_dtype=values_dtype, format=fmt.name, settings=recorded.to_dict(),
                      in_place=source is not None)
        if folder is not None:  # the tensors left alone (biases, layers kept dense) join the output
            load_external_data(out, folder, what=f"'{source}'")
        add_optional_parts(out, fallback=options.fallback)
        check_output_model(model, out)

        report = PruneReport.build(model, out, pruned, dense_kept, not_pruned, recorded, source=source)
        report.recovery = recovered
        if size_before is not None:
            report.size_before = size_before
        if reference_path is not None:
            from .check.verify import verify_pruned

            say("verifying: kernel check, fidelity to the original")
            inputs, original_values = original
            report.verification = verify_pruned(reference_path, out, values=options.values, inputs=inputs,
                                                tolerance=fmt.verify_tolerance, original=original_values)
            if not report.verification.passed:
                v = report.verification
                raise OnnxPruneError(f"verification failed: max relative error {v.max_rel_error:.2e} of the kernel "
                                     f"check (against the input model with the same masks) exceeds {v.tolerance:.0e} "
                                     f"(outputs: {_worst_outputs(v.per_output)})")
            if report.fidelity is not None and report.fidelity.poor:
                warnings.warn(report.fidelity.warning(), stacklevel=2)
        say("done")
        return out, report
    finally:
        if reference is not None:
            reference.close()


class NothingPruned(UserWarning):
    """Every chosen layer was kept dense by auto-dense: the output computes what the input does."""


def nothing_pruned_message(dense_kept: Sequence[Layer], ratios: Mapping[str, float]) -> str:
    """One plain line: nothing was pruned, why, and which flags change that."""
    asked = sorted({ratios[layer.node] for layer in dense_kept})
    at = f"ratio {asked[0]:g}" if len(asked) == 1 else f"ratios {', '.join(f'{r:g}' for r in asked)}"
    return (f"nothing was pruned: at {at} all {len(dense_kept)} layers would keep more than "
            f"{DENSE_KEEP_THRESHOLD:.0%} of their weights, where the sparse kernel does not beat dense Gemm, so "
            f"auto-dense kept them as they were; use --ratio {1 - DENSE_KEEP_THRESHOLD:g} or more, "
            "or --no-auto-dense to prune them anyway")


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
        raise OnnxPruneError("no prunable layer found: " + _none_eligible(ineligible))
    chosen, unselected = select_layers(found, include=include, exclude=exclude, min_params=min_params)
    chosen, partly = shared_weights.whole_groups(chosen, found)
    unselected += partly
    if not chosen:
        raise OnnxPruneError("no prunable layer left after --include/--exclude/--min-params "
                             f"({len(found)} eligible: {_names(found)})")
    return chosen, [*ineligible, *unselected]


def sparsify(model: onnx.ModelProto, layers: Sequence[Layer], ratios: Mapping[str, float], options: PruneOptions,
             *, calibration: Calibration = None, progress: Optional[Progress] = None
             ) -> tuple[dict[str, sparsifiers.Pruned], Optional[tuple[int, int]]]:
    """node name -> Pruned (new weight [K, N] float32, keep mask [K, N] bool, new bias or None),
    for every layer; and (samples used, samples held) of the calibration data when a method read it,
    so that the report can say how much of the data went in. ``progress`` hears of every layer
    (and SparseGPT's blocks within it) of a method that prunes layer by layer on calibration data.

    A method that needs no calibration statistics runs on the weights alone
    (sparsifiers.prune_by_weights, --pattern included); the others belong to pruning.calibration.
    """
    sparsifier = sparsifiers.get(options.method)
    pattern = layer_pattern(options.pattern, layers, ratios)
    counts = None
    if sparsifier.needs_calibration:
        data = None
        if calibration is not None:
            data = read_calibration(calibration, model, options.calibration_samples)
            counts = data.plan.samples, data.held
        result = sparsify_calibrated(model, list(layers), dict(ratios), method=options.method, calibration=data,
                                     pattern=pattern, scope=options.scope, bias_correction=options.bias_correction,
                                     progress=progress or False)
    else:
        if calibration is not None:
            warnings.warn(f"calibration data is not used by --method {options.method}", stacklevel=3)
        result = sparsifiers.prune_by_weights(sparsifier, layers, ratios, scope=options.scope, pattern=pattern)
    pairs = {node: (p.weight, p.mask) for node, p in result.items()}
    return {layer.node: sparsifiers.Pruned(*_checked(layer, pairs), result[layer.node].bias) for layer in layers}, counts


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
    from .recover import recover_layers

    data = read_calibration(calibration, model, samples)
    if data.plan.per_sample:
        raise OnnxPruneError("--recover needs calibration arrays whose first axis is the model's batch axis "
                             f"(these hold one whole input per sample: {', '.join(sorted(data.plan.per_sample))})")
    return recover_layers(model, pruned, data.arrays, options, progress)


def _streams(options: PruneOptions) -> bool:
    """Whether layers can be pruned one at a time: a method that reads only each layer's own
    weights, one ratio per layer, no N:M pattern (those go through sparsify)."""
    return not sparsifiers.get(options.method).needs_calibration and options.scope == "layer" and not options.pattern


def _prune_layer_by_layer(layers: Sequence[Layer], ratios: Mapping[str, float], options: PruneOptions, *,
                          fmt: SparseFormat, values_dtype: np.dtype, reference: Optional["MaskedDenseReference"],
                          followers: Optional[shared_weights.Followers] = None
                          ) -> tuple[list[PrunedLayer], list[Layer]]:
    """Choose, check and pack one layer at a time, so that at most one layer's dense weights and
    its keep mask are in memory besides the model; each layer's weights are dropped once packed,
    before its masked dense weight is unpacked and written to ``reference`` (when verifying)."""
    sparsifier = sparsifiers.get(options.method)
    pruned, dense_kept = [], []
    for layer in layers:
        weight, mask = _packable(layer, sparsify_one(sparsifier, layer, ratios[layer.node]))
        if stays_dense(mask, options):
            dense_kept.append(layer)
            layer.release()
            continue
        p = PrunedLayer(layer, None, None, kept_count=int(np.count_nonzero(mask)))
        p.packed = fmt.pack(weight, mask, values_dtype=values_dtype)  # reads only the kept entries
        del weight, mask
        layer.release()
        layer.dense_reason = shared_weights.larger_than_source(layer, p.packed, _auto_dense(options)) or ""
        if layer.dense_reason:
            dense_kept.append(layer)
            continue
        for each in shared_weights.follow([p], followers or {}):
            if reference is not None:
                reference.add(each)
            pruned.append(each)
    return pruned, shared_weights.dense_followers(dense_kept, followers or {})


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


def _pack_all(pruned: Sequence[PrunedLayer], dense_kept: Sequence[Layer], fmt: SparseFormat,
              values_dtype: np.dtype, reference: Optional["MaskedDenseReference"], options: PruneOptions,
              followers: shared_weights.Followers) -> tuple[list[PrunedLayer], list[Layer]]:
    """Pack every layer now (rewrite reuses it), keep dense those whose packed form would be larger
    than what they are read from, give the layers sharing a weight its packed tensors, and write
    each one's masked dense weight to ``reference`` when verifying."""
    packed, dense = [], list(dense_kept)
    for p in pruned:
        p.packed = fmt.pack(p.weight, p.mask, values_dtype=values_dtype)
        p.layer.dense_reason = shared_weights.larger_than_source(p.layer, p.packed, _auto_dense(options)) or ""
        (dense if p.layer.dense_reason else packed).append(p.layer if p.layer.dense_reason else p)
    packed = shared_weights.follow(packed, followers)
    if reference is not None:
        for p in packed:
            reference.add(p)
    return packed, shared_weights.dense_followers(dense, followers)


def _auto_dense(options: PruneOptions) -> bool:
    """Whether layers may stay dense by size (the auto-dense setting; never under a --pattern)."""
    return options.auto_dense and not options.pattern


def _original_outputs(model_or_path: Union[str, onnx.ModelProto], model: onnx.ModelProto, verify_inputs,
                      seq_len: int) -> tuple:
    """(the verification inputs, the input model's outputs on them), computed once before pruning
    so that the fidelity to the original costs no second dense model later."""
    from .check.verify import original_outputs, verification_inputs

    inputs = verification_inputs(verify_inputs, model, seq_len)
    return inputs, original_outputs(model_or_path, inputs)


def _verification_reference(verify: bool, source: Optional[str]) -> Optional["MaskedDenseReference"]:
    """Where the masked dense model of a verification is written (close it afterwards), or None."""
    if not verify:
        return None
    from .check.verify import MaskedDenseReference

    return MaskedDenseReference(Path(source).parent if source is not None else None)


def sparsify_one(sparsifier: sparsifiers.Sparsifier, layer: Layer, ratio: float) -> sparsifiers.Pruned:
    """One layer's answer from a method that needs no calibration statistics."""
    drop = sparsifiers.drop_counts([layer], {layer.node: ratio})[layer.node]
    return sparsifier.update_mask(layer, None, drop)


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


def _none_eligible(skipped: Sequence[Skipped]) -> str:
    """What the model has instead of prunable layers, and why each is left alone."""
    if not skipped:
        return "the model has no Gemm or MatMul node (in its main graph or in any If / Loop / Scan body)"
    return (f"the model's {len(skipped)} Gemm / MatMul node{'s are' if len(skipped) > 1 else ' is'} not "
            "eligible" + _skip_summary(skipped))


def _skip_summary(skipped: Sequence[Skipped]) -> str:
    if not skipped:
        return ""
    shown = "; ".join(f"{s.node}: {s.reason}" for s in skipped[:3])
    return f" ({shown}{'; …' if len(skipped) > 3 else ''})"
