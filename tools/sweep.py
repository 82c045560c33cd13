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

from onnx_prune.evaluate import run_eval_cli  # noqa: E402

RATIOS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "mnist-mlp.onnx"))
    parser.add_argument("--data", default=str(ROOT / "models" / "mnist-test.npz"))
    parser.add_argument("--method", action="append", help="repeatable; default magnitude")
    parser.add_argument("--calibration", default=None, help=".npz for wanda / sparsegpt")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--png", default=str(ROOT / "docs" / "sweep.png"))
    parser.add_argument("--json", default=str(ROOT / "docs" / "sweep.json"))
    args = parser.parse_args()
    run_eval_cli(args.model, args.data, RATIOS, methods=args.method or ["magnitude"], batch=args.batch,
                 threads=args.threads, png=args.png, json_path=args.json, calibration=args.calibration)


if __name__ == "__main__":
    main()
