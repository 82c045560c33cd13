"""What a pruned file costs without the onnx-prune library: the standard-op fallback against dense.

    python tools/bench_fallback.py [--ratio 0.9] [--batch 1 --batch 64] [--rounds 15]

For the bundled MNIST model and a synthetic N-D MatMul model (a [batch, 16, 256] -> 1024 -> 256
MLP block) it prunes at ``--ratio`` and, in one process with 1 intra-op thread, prints:

* the ops onnxruntime runs per call (from its profiler) for dense and for the pruned file without
  the library, with graph optimisations at their default and disabled;
* median latencies of interleaved rounds (onnx_prune.measure.timing) of fallback against dense, for both
  optimisation levels. The masked-dense model (pruned weights set to zero) is the dense side, so
  both compute the same function.

Numbers depend on the machine and its load; run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnx_prune.runtime import session as runtime  # noqa: E402
from onnx_prune.measure import timing
from onnx_prune.api import prune  # noqa: E402
from onnx_prune.sparse_gemm.densify import densify_model  # noqa: E402

LEVELS = {"default": None, "disabled": "ORT_DISABLE_ALL"}


def nd_matmul_model(seed: int = 0) -> onnx.ModelProto:
    """A transformer-style MLP block on 3-D activations: MatMul + Add + Relu, MatMul + Add."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((256, 1024)) / 16).astype(np.float32)
    w2 = (rng.standard_normal((1024, 256)) / 32).astype(np.float32)
    b1, b2 = rng.standard_normal(1024).astype(np.float32), rng.standard_normal(256).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="up"),
             helper.make_node("Add", ["h0", "b1"], ["h1"], name="up_bias"),
             helper.make_node("Relu", ["h1"], ["h"], name="act"),
             helper.make_node("MatMul", ["h", "w2"], ["y0"], name="down"),
             helper.make_node("Add", ["y0", "b2"], ["y"], name="down_bias")]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (b1, "b1"), (b2, "b2"))]
    graph = helper.make_graph(nodes, "nd_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16, 256])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def session(model: onnx.ModelProto, level: str | None, profile_prefix: str | None = None):
    import onnxruntime as ort

    settings: dict[str, object] = {"inter_op_num_threads": 1}
    if level:
        settings["graph_optimization_level"] = getattr(ort.GraphOptimizationLevel, level)
    if profile_prefix:
        settings.update(enable_profiling=True, profile_file_prefix=profile_prefix)
    return runtime.open_session(model, library=False, threads=1, **settings)


def ops_per_call(model: onnx.ModelProto, feeds: dict, level: str | None) -> list[str]:
    """The op types onnxruntime's profiler saw run during one call (after one warm-up call)."""
    with tempfile.TemporaryDirectory() as tmp:
        s = session(model, level, profile_prefix=str(Path(tmp) / "profile"))
        s.run(None, feeds)
        s.run(None, feeds)
        events = json.loads(Path(s.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_call = len(runs) // 2  # the warm-up call and the measured one ran the same nodes
    return sorted(e["args"]["op_name"] for e in runs[per_call:])


def inputs(model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray]:
    x = model.graph.input[0]
    shape = [batch if d.dim_param or not d.dim_value else d.dim_value for d in x.type.tensor_type.shape.dim]
    return {x.name: np.random.default_rng(batch).standard_normal(shape).astype(np.float32)}


def report(name: str, model: onnx.ModelProto, ratio: float, batches: list[int], rounds: int) -> None:
    pruned, _ = prune(model, ratio=ratio)
    dense = densify_model(pruned)  # masked dense: the same function with plain Gemm / MatMul
    print(f"## {name} pruned at {ratio}")
    feeds = inputs(model, batches[0])
    for level_name, level in LEVELS.items():
        print(f"optimisations {level_name}:")
        print(f"  dense    runs {ops_per_call(dense, feeds, level)}")
        print(f"  fallback runs {ops_per_call(pruned, feeds, level)}")
    print("| optimisations | batch | dense µs | fallback µs | fallback / dense (median of rounds) |")
    print("|---|---:|---:|---:|---:|")
    for level_name, level in LEVELS.items():
        dense_s, fallback_s = session(dense, level), session(pruned, level)
        for batch in batches:
            feeds = inputs(model, batch)
            t = timing.time_pair(lambda: fallback_s.run(None, feeds), lambda: dense_s.run(None, feeds),
                                 rounds=rounds)
            print(f"| {level_name} | {batch} | {t.second_s * 1e6:.1f} | {t.first_s * 1e6:.1f} | {t.ratio:.2f} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--batch", type=int, action="append")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    batches = args.batch or [1, 64]
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}, 1 intra-op thread\n")
    report("models/mnist-mlp.onnx", onnx.load(str(ROOT / "models" / "mnist-mlp.onnx")), args.ratio, batches,
           args.rounds)
    report("N-D MatMul block [batch, 16, 256]", nd_matmul_model(), args.ratio, batches, args.rounds)


if __name__ == "__main__":
    main()
