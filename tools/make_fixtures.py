"""Generate tests/fixtures/: small models written by real exporters, each with an .npz of sample
inputs and the exporter's (framework's) own outputs.

Why: hand-built graphs only cover the patterns we thought of; these carry the exact node layouts
torch.onnx and skl2onnx emit. Needs torch (==2.13.0, CPU) and skl2onnx, for this script only:

    pip install torch==2.13.0 skl2onnx
    python tools/make_fixtures.py

.npz layout: graph inputs keyed by their names, reference outputs keyed ``expected:<output name>``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = "expected:"
SIZE_LIMIT = 300 * 1024


def save(out_dir: Path, name: str, model: onnx.ModelProto, inputs: dict[str, np.ndarray],
         outputs: dict[str, np.ndarray]) -> None:
    """Write <name>.onnx (no external data) and <name>.npz; refuse anything over the size budget."""
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    if len(data) > SIZE_LIMIT:
        raise SystemExit(f"{name}: {len(data)} bytes exceeds {SIZE_LIMIT}")
    (out_dir / f"{name}.onnx").write_bytes(data)
    arrays = dict(inputs)
    arrays.update({EXPECTED + k: v for k, v in outputs.items()})
    np.savez(out_dir / f"{name}.npz", **arrays)
    print(f"{name}.onnx: {len(data):,} bytes, {len(model.graph.node)} nodes")


def torch_export(module, example, path: Path, *, input_names, output_names, dynamic_axes,
                 opset: int = 17, **options) -> onnx.ModelProto:
    """The TorchScript-based torch.onnx exporter (the one most deployed models came through)."""
    import torch

    module.eval()
    torch.onnx.export(module, example, str(path), input_names=input_names, output_names=output_names,
                      dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False, **options)
    model = onnx.load(str(path))
    path.unlink()
    return model


def torch_outputs(module, example, names) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        result = module(*example)
    result = result if isinstance(result, tuple) else (result,)
    return {n: r.numpy() for n, r in zip(names, result)}


# ----------------------------------------------------------------------------- fixtures

def torch_mlp(out_dir: Path) -> None:
    """(a) nn.Linear stack: Gemm transB=1 with fc*.weight initializers, dynamic batch."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 48), nn.ReLU(), nn.Linear(48, 10))
    x = torch.rand(5, 64)
    model = torch_export(module, (x,), out_dir / "tmp.onnx", input_names=["input"], output_names=["logits"],
                         dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    save(out_dir, "torch_mlp", model, {"input": x.numpy()}, torch_outputs(module, (x,), ["logits"]))


def torch_transformer_block(out_dir: Path) -> None:
    """(b) single-head attention + FFN on [batch, seq, d]: Linear -> MatMul + Add; the Q.K^T and
    attn.V MatMuls multiply two activations and must stay untouched."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, d: int = 32, hidden: int = 64) -> None:
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.ff1, self.ff2 = nn.Linear(d, hidden), nn.Linear(hidden, d)
            self.scale = d ** -0.5

        def forward(self, x):
            h = self.norm1(x)
            scores = torch.matmul(self.q(h), self.k(h).transpose(-2, -1)) * self.scale
            x = x + self.o(torch.matmul(torch.softmax(scores, dim=-1), self.v(h)))
            return x + self.ff2(torch.relu(self.ff1(self.norm2(x))))

    torch.manual_seed(1)
    module = Block()
    x = torch.randn(2, 7, 32)
    model = torch_export(module, (x,), out_dir / "tmp.onnx", input_names=["hidden"], output_names=["out"],
                         dynamic_axes={"hidden": {0: "batch", 1: "seq"}, "out": {0: "batch", 1: "seq"}})
    save(out_dir, "torch_transformer_block", model, {"hidden": x.numpy()}, torch_outputs(module, (x,), ["out"]))


def sklearn_mlp(out_dir: Path) -> None:
    """(c) skl2onnx MLPClassifier: MatMul/Add layers plus ai.onnx.ml ops for the label."""
    from skl2onnx import to_onnx
    from sklearn.datasets import make_classification
    from sklearn.neural_network import MLPClassifier

    x, y = make_classification(n_samples=400, n_features=20, n_informative=10, n_classes=3, random_state=0)
    x = x.astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(48, 32), max_iter=300, random_state=0).fit(x, y)
    model = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    sample = x[:16]
    if not any(o.domain == "ai.onnx.ml" for o in model.opset_import):
        raise SystemExit("sklearn_mlp: expected ai.onnx.ml ops from skl2onnx")
    inputs = {model.graph.input[0].name: sample}
    outputs = {"label": clf.predict(sample).astype(np.int64), "probabilities": clf.predict_proba(sample).astype(np.float32)}
    missing = set(outputs) - {o.name for o in model.graph.output}
    if missing:
        raise SystemExit(f"sklearn_mlp: skl2onnx output names changed, missing {sorted(missing)}")
    save(out_dir, "sklearn_mlp", model, inputs, outputs)


def torch_constant_weights(out_dir: Path) -> None:
    """(d) weights as Constant nodes: plain tensor attributes (not Parameters) with constant
    folding off make the TorchScript exporter emit onnx::Constant nodes instead of initializers."""
    import torch
    from torch import nn

    class ConstMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(2)
            self.w1, self.b1 = torch.randn(40, 24, generator=g) * 0.2, torch.randn(24, generator=g) * 0.1
            self.w2, self.b2 = torch.randn(24, 8, generator=g) * 0.2, torch.randn(8, generator=g) * 0.1

        def forward(self, x):
            return torch.relu(x @ self.w1 + self.b1) @ self.w2 + self.b2

    module = ConstMLP()
    x = torch.rand(4, 40)
    model = torch_export(module, (x,), out_dir / "tmp.onnx", input_names=["x"], output_names=["y"],
                         dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, do_constant_folding=False)
    if model.graph.initializer or not any(n.op_type == "Constant" for n in model.graph.node):
        raise SystemExit("torch_constant_weights: exporter no longer emits Constant nodes; build it by hand")
    save(out_dir, "torch_constant_weights", model, {"x": x.numpy()}, torch_outputs(module, (x,), ["y"]))


def gemm_opset7(out_dir: Path) -> None:
    """(e) opset-7 Gemm (C mandatory, no transA/B defaults beyond 0) built with onnx.helper; the
    reference is numpy."""
    rng = np.random.default_rng(3)
    w1, b1 = rng.standard_normal((30, 20)).astype(np.float32), rng.standard_normal(20).astype(np.float32)
    w2, b2 = rng.standard_normal((6, 20)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name="gemm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], name="gemm2", transB=1, alpha=0.5, beta=2.0)]
    weights = [numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (b1, "B1"), (w2, "W2"), (b2, "B2"))]
    # IR 3 (the opset-7 era) lists every initializer as a graph input too, as exporters then did.
    declared = [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in weights]
    graph = helper.make_graph(nodes, "gemm_opset7",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 30]), *declared],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
                              initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)], producer_name="onnx.helper")
    model.ir_version = 3
    x = rng.standard_normal((5, 30)).astype(np.float32)
    y = 0.5 * (np.maximum(x @ w1 + b1, 0) @ w2.T) + 2.0 * b2
    save(out_dir, "gemm_opset7", model, {"x": x}, {"y": y.astype(np.float32)})


def torch_shared_weight(out_dir: Path) -> None:
    """(f) one nn.Linear applied twice: two Gemm nodes read the same weight initializer."""
    import torch
    from torch import nn

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(32, 32)
            self.head = nn.Linear(32, 4)

        def forward(self, x):
            return self.head(torch.relu(self.fc(torch.relu(self.fc(x)))))

    torch.manual_seed(4)
    module = Tied()
    x = torch.randn(3, 32)
    model = torch_export(module, (x,), out_dir / "tmp.onnx", input_names=["x"], output_names=["y"],
                         dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    readers = [n for n in model.graph.node if "fc.weight" in n.input]
    if len(readers) != 2:
        raise SystemExit(f"torch_shared_weight: expected 2 nodes reading fc.weight, got {len(readers)}")
    save(out_dir, "torch_shared_weight", model, {"x": x.numpy()}, torch_outputs(module, (x,), ["y"]))


class _TiedModel:
    """Embedding -> Linear -> ReLU -> the same Linear -> ReLU -> the embedding table as output
    projection (a tied language-model head), on token ids [batch, seq]."""

    @staticmethod
    def build():
        import torch
        from torch import nn

        class Tied(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.emb = nn.Embedding(40, 24)
                self.fc = nn.Linear(24, 24)

            def forward(self, ids):
                h = torch.relu(self.fc(self.emb(ids)))
                return torch.relu(self.fc(h)) @ self.emb.weight.T

        torch.manual_seed(5)
        return Tied(), torch.randint(0, 40, (2, 6))


def _consumers(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op_type]


def torch_tied_identity(out_dir: Path) -> None:
    """(g) the tied model as exported by default (constant folding on): the Linear used twice
    becomes one transposed initializer read by the first MatMul and, through an Identity, by the
    second (the pattern of BERT-style encoders exported by torch.onnx); the tied head is folded
    into an initializer of its own."""
    module, ids = _TiedModel.build()
    model = torch_export(module, (ids,), out_dir / "tmp.onnx", input_names=["ids"], output_names=["logits"],
                         dynamic_axes={"ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}})
    if len(_consumers(model, "Identity")) != 1 or len(_consumers(model, "MatMul")) != 3:
        raise SystemExit("torch_tied_identity: expected one Identity feeding the second of 3 MatMuls")
    save(out_dir, "torch_tied_identity", model, {"ids": ids.numpy()}, torch_outputs(module, (ids,), ["logits"]))


def torch_tied_transpose(out_dir: Path) -> None:
    """(h) the tied model with constant folding off: each use of the Linear reads Transpose(fc.weight),
    and the head reads Transpose(emb.weight), whose table a Gather also reads."""
    module, ids = _TiedModel.build()
    model = torch_export(module, (ids,), out_dir / "tmp.onnx", input_names=["ids"], output_names=["logits"],
                         dynamic_axes={"ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}},
                         do_constant_folding=False)
    transposed = [n.input[0] for n in _consumers(model, "Transpose")]
    if sorted(transposed) != ["emb.weight", "fc.weight", "fc.weight"]:
        raise SystemExit(f"torch_tied_transpose: expected Transpose(fc.weight) x2 and Transpose(emb.weight), got {transposed}")
    save(out_dir, "torch_tied_transpose", model, {"ids": ids.numpy()}, torch_outputs(module, (ids,), ["logits"]))


def torch_int8_weight(out_dir: Path) -> None:
    """(i) weights stored as int8 with a float scale, dequantized in the graph: Cast(int8 W) * scale
    feeding MatMul (constant folding off, as a weight-only quantized export leaves it)."""
    import torch
    from torch import nn

    class Int8Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(6)
            self.register_buffer("w_q", torch.randint(-127, 128, (64, 48), generator=g, dtype=torch.int8))
            self.register_buffer("w_scale", torch.tensor(0.01))
            self.register_buffer("bias", torch.randn(48, generator=g) * 0.1)

        def forward(self, x):
            return torch.relu(x @ (self.w_q.float() * self.w_scale) + self.bias)

    module = Int8Linear()
    x = torch.rand(4, 64)
    model = torch_export(module, (x,), out_dir / "tmp.onnx", input_names=["x"], output_names=["y"],
                         dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, do_constant_folding=False)
    ops = [n.op_type for n in model.graph.node]
    if "Cast" not in ops or "Mul" not in ops:
        raise SystemExit(f"torch_int8_weight: expected Cast and Mul before the MatMul, got {ops}")
    save(out_dir, "torch_int8_weight", model, {"x": x.numpy()}, torch_outputs(module, (x,), ["y"]))


def torch_if_branch(out_dir: Path) -> None:
    """(j) a scripted `if`: one Linear in the main graph, then an If whose branches hold a Linear
    each (Gemm nodes in the then / else bodies reading main-graph initializers)."""
    import torch
    from torch import nn

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pre, self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 8), nn.Linear(16, 8)

        def forward(self, x):
            h = torch.relu(self.pre(x))
            if bool(h.sum() > 0):
                return self.a(h)
            return torch.relu(self.b(h))

    torch.manual_seed(7)
    module = torch.jit.script(Branchy().eval())
    x = torch.randn(3, 16)
    model = torch_export(module, (x,), out_dir / "tmp.onnx", input_names=["x"], output_names=["y"],
                         dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    if not _consumers(model, "If"):
        raise SystemExit("torch_if_branch: expected an If node")
    save(out_dir, "torch_if_branch", model, {"x": x.numpy()}, torch_outputs(module, (x,), ["y"]))


FIXTURES: dict[str, Callable[[Path], None]] = {
    "torch_mlp": torch_mlp, "torch_transformer_block": torch_transformer_block, "sklearn_mlp": sklearn_mlp,
    "torch_constant_weights": torch_constant_weights, "gemm_opset7": gemm_opset7,
    "torch_shared_weight": torch_shared_weight, "torch_tied_identity": torch_tied_identity,
    "torch_tied_transpose": torch_tied_transpose, "torch_int8_weight": torch_int8_weight,
    "torch_if_branch": torch_if_branch,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures")
    parser.add_argument("names", nargs="*", choices=[[], *FIXTURES], help="default: all")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or FIXTURES:
        FIXTURES[name](args.out)


if __name__ == "__main__":
    main()
