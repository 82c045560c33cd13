"""What a user would deploy instead, side by side: the dense model, onnxruntime's int8 dynamic
quantization of it (``quantize_dynamic``, what ``onnx-prune bench --baseline int8`` builds) and any
number of pruned files, each with its test accuracy and its latency at every batch size and thread
count, timed in one onnxruntime process in interleaved rounds (``onnx_prune.measure.timing``; ratios are
medians of per-round ratios).

Latency inputs are the first ``batch`` rows of the test set itself, so ReLU layers see the zeros real
images give them (random inputs would hide the kernel's zero-input paths).

    PYTHONPATH=. python tools/compare_deployments.py models/mnist-mlp.onnx models/mnist-test.npz \\
        --pruned csr-90=/tmp/csr90.onnx --pruned bcsr-4x1-80=/tmp/bcsr.onnx --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnx_prune.measure import baselines, evaluate, machine, timing  # noqa: E402
from onnx_prune.runtime import session as runtime

DENSE, INT8 = "dense", "ort int8"


def load_candidates(dense_path: str, pruned: Sequence[str]) -> dict[str, onnx.ModelProto]:
    """dense, onnxruntime int8 of it, then each NAME=PATH pruned file, in that order."""
    dense = onnx.load(dense_path)
    out = {DENSE: dense, INT8: baselines.BASELINES["int8"].build(dense)}
    for item in pruned:
        name, sep, path = item.partition("=")
        if not sep or not name or name in out:
            raise SystemExit(f"--pruned takes NAME=PATH with a new name, got '{item}'")
        out[name] = onnx.load(path)
    return out


def measure(models: dict[str, onnx.ModelProto], data: dict, *, batches: Sequence[int], threads: Sequence[int],
            rounds: int) -> dict:
    names = list(models)
    accuracy = {n: 100 * evaluate.evaluate_accuracy(m, data) for n, m in models.items()}
    rows = []
    for n_threads in threads:
        sessions = [runtime.open_session(m, threads=n_threads, inter_op_num_threads=1) for m in models.values()]
        test_set = evaluate.model_feeds(sessions[0], data)
        for batch in batches:
            print(f"timing batch {batch}, {n_threads} thread(s)", file=sys.stderr)
            feeds = evaluate.batch_feeds(test_set, batch)
            t = timing.time_interleaved([lambda s=s: s.run(None, feeds) for s in sessions], rounds=rounds)
            rows.append({"threads": n_threads, "batch": batch,
                         "us": {n: t.seconds[i] * 1e6 for i, n in enumerate(names)},
                         "vs_dense": {n: t.ratio(0, i) for i, n in enumerate(names)},
                         "vs_int8": {n: t.ratio(1, i) for i, n in enumerate(names)}})
    return {"accuracy": accuracy, "rows": rows, "machine": machine.machine_info(),
            "settings": {"rounds": rounds, "batches": list(batches), "threads": list(threads),
                         "int8": baselines.BASELINES["int8"].label, "command": " ".join(sys.argv)}}


def markdown(result: dict) -> str:
    """A table per thread count: a row per candidate, a column per batch; a cell is the median µs,
    dense / it and onnxruntime int8 / it (> 1: it is faster than that)."""
    tables = []
    for threads in dict.fromkeys(r["threads"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["threads"] == threads]
        lines = [f"{threads} thread(s); cell: µs · dense/it · int8/it", "",
                 "| model | accuracy % | " + " | ".join(f"batch {r['batch']}" for r in rows) + " |",
                 "|---|---:|" + "---:|" * len(rows)]
        for name, accuracy in result["accuracy"].items():
            cells = [f"{r['us'][name]:.1f} · {r['vs_dense'][name]:.2f}x · {r['vs_int8'][name]:.2f}x" for r in rows]
            lines.append(f"| {name} | {accuracy:.2f} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="the dense model")
    p.add_argument("data", help=".npz test set: 'labels' and arrays keyed by graph input name")
    p.add_argument("--pruned", action="append", default=[], metavar="NAME=PATH", help="a pruned file (repeatable)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--json", metavar="PATH", help="also save the result as JSON")
    args = p.parse_args(argv)
    models = load_candidates(args.model, args.pruned)
    data = evaluate.load_eval_data(args.data)
    result = measure(models, data, batches=args.batch, threads=args.threads, rounds=args.rounds)
    print(markdown(result))
    print(machine.describe(result["machine"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
