"""The Python API: ``onnx_prune.prune(model_or_path, ratio=...) -> (ModelProto, PruneReport)``.

Data flows one way: find eligible layers → select → decide per-layer ratios → sparsify (the
"sparsifier": magnitude here, calibration-aware methods in calibration.py) → rewrite → verify.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from . import masking
from .errors import OnnxPruneError
from .layers import Layer, Skipped, find_layers, resolve_layer_ratios, select_layers
from .modelio import load_model
from .report import LayerReport, PruneReport
from .rewrite import PrunedLayer, rewrite

# Below this sparsity the kernel does not beat onnxruntime's dense Gemm at batch >= 16 on the
# machines measured (tools/bench_kernel.py: 0.5 ties or loses, 0.7 wins), so by default such a layer
# stays a dense, unpruned Gemm (auto_dense=False overrides).
AUTO_DENSE_BELOW = 0.6

METHODS = ("magnitude", "wanda", "sparsegpt")
VALUES = {"fp32": np.float32, "fp16": np.float16}

ModelOrPath = Union[onnx.ModelProto, str, Path]


def prune(model_or_path: ModelOrPath, ratio: float = 0.8, *, scope: str = "layer",
          include: Sequence[str] = (), exclude: Sequence[str] = (),
          layer_ratios: Optional[Mapping[str, float]] = None, min_params: int = 0,
          method: str = "magnitude", calibration=None, calibration_samples: Optional[int] = None,
          pattern: Optional[str] = None, values: str = "fp32", fallback: bool = True,
          auto_dense: bool = True, verify: bool = False, verify_inputs=None,
          progress: Optional[Callable[[str], None]] = None) -> tuple[onnx.ModelProto, PruneReport]:
    """Prune the Gemm / constant-weight MatMul layers of a model; returns the rewritten model and a
    report. The input model is not modified. ``calibration`` is an .npz path or a dict of arrays keyed
    by graph input name (needed by ``method="wanda"`` and ``"sparsegpt"``)."""
    _check_options(ratio, scope, method, values, layer_ratios)
    model = load_model(model_or_path) if isinstance(model_or_path, (str, Path)) else _copy(model_or_path)
    say = progress or (lambda _msg: None)

    say("finding prunable layers")
    found, skipped = find_layers(model)
    for s in skipped:
        if "float32" in s.reason or "not 2-D" in s.reason:
            warnings.warn(f"layer {s.node} skipped: {s.reason}", stacklevel=2)
    if not found:
        raise OnnxPruneError("no prunable layer found: the model has no Gemm or MatMul with a constant "
                             "float32 2-D weight" + _skip_summary(skipped))
    chosen, unselected = select_layers(found, include=include, exclude=exclude, min_params=min_params)
    if not chosen:
        raise OnnxPruneError("no prunable layer left after --include/--exclude/--min-params "
                             f"({len(found)} eligible: {', '.join(l.node for l in found)})")
    ratios = {l.node: ratio for l in chosen}
    ratios.update(resolve_layer_ratios(chosen, dict(layer_ratios or {})))

    say(f"scoring {len(chosen)} layers ({method})")
    weights = sparsify(model, chosen, ratios, scope=scope, method=method, calibration=calibration,
                       calibration_samples=calibration_samples, pattern=pattern)

    pruned, dense_kept = [], []
    for layer in chosen:
        new_weight, mask = weights[layer.node]
        sparsity = 1.0 - mask.sum() / mask.size
        if auto_dense and sparsity < AUTO_DENSE_BELOW:
            dense_kept.append(layer)
        else:
            pruned.append(PrunedLayer(layer, new_weight.astype(np.float32), mask))

    settings = dict(ratio=ratio, scope=scope, method=method, pattern=pattern, values=values,
                    layer_ratios=dict(layer_ratios or {}), include=list(include), exclude=list(exclude),
                    min_params=min_params, auto_dense=auto_dense, fallback=fallback)
    say("rewriting the graph")
    out = rewrite(model, pruned, values_dtype=VALUES[values], settings=settings)
    _add_optional_parts(out, fallback)
    onnx.checker.check_model(out)

    report = PruneReport.build(model, out, pruned, dense_kept, unselected, settings,
                               source=str(model_or_path) if isinstance(model_or_path, (str, Path)) else None)
    if verify:
        from .verify import verify_pruned

        say("verifying against the masked dense model")
        report.verification = verify_pruned(model, out, pruned, values=values, inputs=verify_inputs)
    return out, report


def sparsify(model: onnx.ModelProto, layers: Sequence[Layer], ratios: Mapping[str, float], *, scope: str,
             method: str, calibration, calibration_samples: Optional[int], pattern: Optional[str]
             ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """node name -> (new weight [K, N], keep mask [K, N]) for every layer."""
    if method != "magnitude" or pattern:
        try:
            from . import calibration as calibration_methods
        except ImportError:
            raise OnnxPruneError(f"--method {method} / --pattern need onnx_prune.calibration, which this "
                                 "installation lacks") from None
        data = None
        if calibration is not None:
            data = calibration if isinstance(calibration, Mapping) else \
                calibration_methods.load_calibration(calibration, model, calibration_samples)
        elif method != "magnitude":
            raise OnnxPruneError(f"--method {method} needs calibration data (--calibration DATA.npz)")
        return calibration_methods.sparsify(model, list(layers), dict(ratios), method=method, calibration=data,
                                            samples=calibration_samples, pattern=pattern, scope=scope)
    if scope == "global":
        if len(set(ratios.values())) > 1:
            raise OnnxPruneError("--layer-ratio cannot be combined with --scope global")
        ratio = next(iter(ratios.values()))
        masks = masking.global_masks([masking.magnitude_scores(l.weight) for l in layers], ratio)
    else:
        masks = [masking.magnitude_mask(l.weight, ratios[l.node]) for l in layers]
    return {l.node: (np.where(m, l.weight, np.float32(0)), m) for l, m in zip(layers, masks)}


def _check_options(ratio: float, scope: str, method: str, values: str, layer_ratios) -> None:
    def check(r: float, what: str) -> None:
        if not isinstance(r, (int, float)) or math.isnan(r) or not 0.0 <= r < 1.0:
            raise OnnxPruneError(f"{what} must be in [0, 1), got {r}")

    check(ratio, "--ratio")
    for name, r in (layer_ratios or {}).items():
        check(r, f"--layer-ratio {name}")
    if scope not in ("layer", "global"):
        raise OnnxPruneError(f"--scope must be 'layer' or 'global', got '{scope}'")
    if method not in METHODS:
        raise OnnxPruneError(f"--method must be one of {', '.join(METHODS)}, got '{method}'")
    if values not in VALUES:
        raise OnnxPruneError(f"--values must be fp32 or fp16, got '{values}'")


def _add_optional_parts(model: onnx.ModelProto, fallback: bool) -> None:
    """The standard-op fallback function and netron's op description, when those modules exist."""
    try:
        from .netron_meta import netron_metadata_json
    except ImportError:
        pass
    else:
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                            "metadata.json": netron_metadata_json()})
    if fallback:
        try:
            from .fallback import add_fallback_functions
        except ImportError:
            return
        try:
            add_fallback_functions(model)
        except OnnxPruneError as exc:  # e.g. an opset too old for the fallback's standard ops
            warnings.warn(f"no standard-op fallback embedded ({exc}); the file needs the SparseGemm library",
                          stacklevel=3)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _skip_summary(skipped: Sequence[Skipped]) -> str:
    if not skipped:
        return ""
    shown = "; ".join(f"{s.node}: {s.reason}" for s in skipped[:3])
    return f" ({shown}{'; …' if len(skipped) > 3 else ''})"
