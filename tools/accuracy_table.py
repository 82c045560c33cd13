"""Regenerate the accuracy tables of docs/calibration.md for one model.

Rows ``layer`` and ``global``: every method (magnitude, wanda, sparsegpt) through
``onnx_prune.prune`` (``auto_dense=False``: every layer pruned), scored in onnxruntime on the test
split, with the seconds of the whole prune call. Column ``sparsegpt +bias`` and row
``error-driven`` score SparseGPT pieces the pipeline does not call yet, in a numpy forward pass
of the masked dense model with the updated biases: sparsegpt.sparsegpt_prune_with_bias (layers
pruned sequentially, as calibration.py does), and the per-layer counts of
allocation.error_driven_drops from sparsegpt.reconstruction_curve (on the dense model).

    python tools/accuracy_table.py models/mnist-mlp.onnx models/mnist-test.npz /tmp/mnist-calib.npz

The model must be a chain of Gemm layers with ReLU in between (what tools/train_mnist.py writes).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import onnx_prune  # noqa: E402
from onnx_prune import allocation, capture, masking  # noqa: E402
from onnx_prune.calibration import checked_calibration, normalised_saliency  # noqa: E402
from onnx_prune.layers import find_layers  # noqa: E402
from onnx_prune.sparsegpt import (CURVE_GRID, reconstruction_curve, sparsegpt_prune,  # noqa: E402
                                  sparsegpt_prune_with_bias)
from train_mnist import forward  # noqa: E402

METHODS = ("magnitude", "wanda", "sparsegpt")


def ort_accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    blob = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(blob, onnx_prune.session_options(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return 100 * float((session.run(None, {name: x})[0].argmax(1) == y).mean())


def mlp_inputs(weights, biases, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The input of every layer and the logits of the Gemm/ReLU chain (weights [K, N])."""
    params = [p for w, b in zip(weights, biases) for p in (np.asarray(w, np.float64).T, np.asarray(b, np.float64))]
    logits, inputs = forward(params, np.asarray(x, np.float64))
    return inputs, logits


def sequential_sparsegpt(model: onnx.ModelProto, calib: np.ndarray, drops: list[int], bias: bool
                         ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Weights and biases after SparseGPT layer by layer, each on the pruned prefix's outputs."""
    layers = find_layers(model)[0]
    weights = [l.weight.astype(np.float64) for l in layers]
    biases = [np.asarray(l.bias, dtype=np.float64) for l in layers]
    for i, layer in enumerate(layers):
        x = mlp_inputs(weights, biases, calib)[0][i]
        if bias:
            w, _, delta = sparsegpt_prune_with_bias(layer.weight, x.T @ x, x.sum(0), len(x), drops[i],
                                                    layer=layer.node)
            biases[i] = biases[i] + delta
        else:
            w, _ = sparsegpt_prune(layer.weight, x.T @ x, drops[i], layer=layer.node)
        weights[i] = w.astype(np.float64)
    return weights, biases


def drop_counts(model: onnx.ModelProto, calib: np.ndarray, ratio: float, rule: str) -> list[int]:
    """Per-layer removal counts: uniform (layer), today's global saliency, or error-driven."""
    layers = find_layers(model)[0]
    if rule == "layer":
        return [masking.removal_count(ratio, l.size) for l in layers]
    if rule == "global":
        data, plan = checked_calibration({"input": calib}, model)
        stats = capture.capture_stats(model, layers, data, plan, hessian=True)
        return masking.global_drop_counts(
            [normalised_saliency(l.weight, stats[l.node], "sparsegpt", l.node) for l in layers], ratio)
    inputs = mlp_inputs([l.weight for l in layers], [l.bias for l in layers], calib)[0]
    curves = [reconstruction_curve(l.weight, x.T @ x, x.sum(0), len(x), layer=l.node) for l, x in zip(layers, inputs)]
    return allocation.error_driven_drops([l.size for l in layers], CURVE_GRID, curves, ratio)


def numpy_accuracy(weights, biases, x: np.ndarray, y: np.ndarray) -> float:
    return 100 * float((mlp_inputs(weights, biases, x)[1].argmax(1) == y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("test", help=".npz with 'input' and 'labels'")
    parser.add_argument("calibration", help=".npz with 'input' (training images)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.8, 0.9])
    args = parser.parse_args()
    test = np.load(args.test)
    x, y = test["input"], test["labels"]
    calib = np.load(args.calibration)["input"]
    model = onnx.load(args.model)
    print(f"dense {ort_accuracy(model, x, y):.2f}")
    print("| sparsity | scope | magnitude | wanda | sparsegpt | sparsegpt +bias |")
    print("|---|---|---|---|---|---|")
    for ratio in args.ratios:
        for rule in ("layer", "global", "error-driven"):
            cells = []
            for method in METHODS:
                if rule == "error-driven":
                    continue
                start = time.perf_counter()
                pruned, _ = onnx_prune.prune(model, ratio, method=method, scope=rule, auto_dense=False,
                                             calibration=None if method == "magnitude" else args.calibration)
                cells.append(f"{ort_accuracy(pruned, x, y):.2f} ({time.perf_counter() - start:.1f} s)")
            drops = drop_counts(model, calib, ratio, rule)
            if rule == "error-driven":
                cells = ["", "", f"{numpy_accuracy(*sequential_sparsegpt(model, calib, drops, False), x, y):.2f}"]
            cells.append(f"{numpy_accuracy(*sequential_sparsegpt(model, calib, drops, True), x, y):.2f}")
            sparsity = "/".join(f"{d / l.size:.2f}" for d, l in zip(drops, find_layers(model)[0]))
            print(f"| {ratio} | {rule} ({sparsity}) | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
