"""Regenerate the accuracy tables of docs/calibration.md for one model.

Every cell is one ``onnx_prune.prune`` call (``auto_dense=False``: every layer pruned), scored in
onnxruntime (with the SparseGemm library) on the test split; in brackets the seconds of that call.
Rows: each ratio with ``--scope layer`` and ``global``, then the patterns (``--pattern``) per
layer. Columns: magnitude, wanda, and SparseGPT plain, with bias correction
(``--bias-correction``), with the exact refit of the kept weights (``sparsegpt.REFIT``) and with
both. Cells a setting does not apply to are left empty (an N:M pattern fixes the ratio: its rows
appear once; block patterns cannot be combined with global scope).

    python tools/accuracy_table.py models/mnist-mlp.onnx models/mnist-test.npz /tmp/mnist-calib.npz
    python tools/accuracy_table.py MODEL TEST CALIB --patterns 2:4 4x1 8x1 --columns sparsegpt+bias+refit
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import onnx_prune  # noqa: E402
from onnx_prune.pruning import masking, sparsegpt  # noqa: E402

COLUMNS = ("magnitude", "wanda", "sparsegpt", "sparsegpt+bias", "sparsegpt+refit", "sparsegpt+bias+refit")


def ort_accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(model.SerializeToString(), onnx_prune.session_options(),
                                   providers=["CPUExecutionProvider"])
    return 100 * float((session.run(None, {session.get_inputs()[0].name: x})[0].argmax(1) == y).mean())


def cell(model: onnx.ModelProto, column: str, ratio: float, scope: str, pattern, calibration: str,
         samples, x: np.ndarray, y: np.ndarray) -> str:
    """One prune call with the column's method and options, scored on the test split."""
    method = column.split("+")[0]
    sparsegpt.REFIT = "refit" in column
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the requested ratio is not used" for N:M rows
        pruned, _ = onnx_prune.prune(model, ratio, method=method, scope=scope, pattern=pattern, auto_dense=False,
                                     bias_correction="bias" in column, calibration_samples=samples,
                                     calibration=None if method == "magnitude" else calibration)
    seconds = time.perf_counter() - start
    return f"{ort_accuracy(pruned, x, y):.2f} ({seconds:.1f} s)"


def rows(ratios, patterns):
    """(ratio, scope, pattern) of every table row."""
    for ratio in ratios:
        yield ratio, "layer", None
        yield ratio, "global", None
    for pattern in patterns:
        parsed = masking.parse_pattern(pattern)
        if isinstance(parsed, masking.Blocks):
            for ratio in ratios:
                yield ratio, "layer", pattern
        else:
            yield 1 - parsed[0] / parsed[1], "layer", pattern


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("test", help=".npz with 'input' and 'labels'")
    parser.add_argument("calibration", help=".npz with 'input' (training images)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.8, 0.9])
    parser.add_argument("--patterns", nargs="*", default=["2:4", "4x1", "8x1"])
    parser.add_argument("--columns", nargs="+", default=list(COLUMNS), choices=COLUMNS)
    parser.add_argument("--samples", type=int, default=None, help="--calibration-samples (default: all)")
    args = parser.parse_args()
    test = np.load(args.test)
    x, y = test["input"], test["labels"]
    model = onnx.load(args.model)
    print(f"dense {ort_accuracy(model, x, y):.2f}")
    print("| sparsity | scope | pattern | " + " | ".join(args.columns) + " |")
    print("|---" * (3 + len(args.columns)) + "|")
    for ratio, scope, pattern in rows(args.ratios, args.patterns):
        cells = [cell(model, c, ratio, scope, pattern, args.calibration, args.samples, x, y) for c in args.columns]
        print(f"| {ratio:g} | {scope} | {pattern or ''} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
