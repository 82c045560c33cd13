"""Peak memory and wall time of ``onnx-prune prune`` on a large external-data model.

Generates a chain of ``--layers`` Gemms of ``--size`` x ``--size`` float32 weights with external
data (default 3 x 16384^2 = 3 GiB) in a temporary folder, runs the real CLI on it in a
subprocess and reports the child's wall time and peak RSS, also as a multiple of the model's
size; the temporary folder is removed afterwards. The weights are written row block by row block,
so this process stays small.

    python tools/bench_memory.py                      # 3 GiB, with verification
    python tools/bench_memory.py --no-verify
    python tools/bench_memory.py --size 8192 --layers 1
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROWS_PER_BLOCK = 1024


def write_model(folder: Path, size: int, layers: int, seed: int = 0) -> tuple[Path, int]:
    """model.onnx + weights.bin in ``folder``: X [batch, size] -> Gemm(transB=1) x ``layers`` -> Y.
    Returns the model path and the weights' bytes."""
    rng = np.random.default_rng(seed)
    data_name = "weights.bin"
    initializers, nodes, offset = [], [], 0
    with open(folder / data_name, "wb") as data:
        for i in range(layers):
            name = f"W{i}"
            for start in range(0, size, ROWS_PER_BLOCK):
                rows = min(ROWS_PER_BLOCK, size - start)
                block = rng.standard_normal((rows, size), dtype=np.float32) * np.float32(size ** -0.5)
                data.write(block.tobytes())
            length = size * size * 4
            tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[size, size],
                                 data_location=TensorProto.EXTERNAL)
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                tensor.external_data.add(key=key, value=value)
            initializers.append(tensor)
            offset += length
            nodes.append(helper.make_node("Gemm", [f"h{i}" if i else "X", name], [f"h{i + 1}" if i + 1 < layers else "Y"],
                                          name=f"gemm{i}", transB=1))
    graph = helper.make_graph(nodes, "bench_memory", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", size])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", size])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)  # onnxruntime 1.17 reads IR <= 9
    path = folder / "model.onnx"
    with open(path, "wb") as handle:
        handle.write(model.SerializeToString())
    return path, offset


def run_measured(command: list[str]) -> tuple[int, float, int, str]:
    """(exit code, wall seconds, peak RSS bytes, output tail) of one child process."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = child.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    return child.returncode, wall, usage.ru_maxrss * 1024, output[-2000:]


def prune_command(model_path: Path, output: Path, ratio: float = 0.9, verify: bool = True,
                  extra: tuple[str, ...] = ()) -> list[str]:
    """The CLI run that is measured."""
    return [sys.executable, "-m", "onnx_prune.cli", "prune", str(model_path), str(output), "--ratio", str(ratio),
            "--quiet", "--verify" if verify else "--no-verify", *extra]


def baseline_command() -> list[str]:
    """A child that imports what a prune run imports and loads nothing: the fixed overhead."""
    return [sys.executable, "-c", "import onnxruntime, onnx_prune.api, onnx_prune.cli, onnx_prune.check.verify"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=16384, help="K = N of every Gemm (default 16384)")
    parser.add_argument("--layers", type=int, default=3, help="number of Gemms (default 3)")
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--no-verify", action="store_true", help="prune with --no-verify")
    parser.add_argument("--tmp", default=None, help="folder for the temporary model (default: the system's)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench_memory.", dir=args.tmp))
    try:
        model_path, model_bytes = write_model(folder, args.size, args.layers)
        _, _, base_rss, _ = run_measured(baseline_command())
        command = prune_command(model_path, folder / "pruned.onnx", args.ratio, verify=not args.no_verify)
        code, wall, peak, output = run_measured(command)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = dict(size=args.size, layers=args.layers, ratio=args.ratio, verify=not args.no_verify,
                  model_mib=round(model_bytes / 2**20, 1), exit_code=code, wall_s=round(wall, 1),
                  peak_rss_mib=round(peak / 2**20, 1), peak_over_model=round(peak / model_bytes, 2),
                  baseline_rss_mib=round(base_rss / 2**20, 1),
                  growth_over_model=round((peak - base_rss) / model_bytes, 2))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"model {result['model_mib']} MiB ({args.layers} x Gemm {args.size}^2, external data), ratio {args.ratio}, "
              f"verify {'off' if args.no_verify else 'on'}")
        print(f"exit {code}, wall {result['wall_s']} s, peak RSS {result['peak_rss_mib']} MiB = "
              f"{result['peak_over_model']}x the model (imports alone {result['baseline_rss_mib']} MiB; "
              f"growth {result['growth_over_model']}x)")
    if code != 0:
        print(output, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
