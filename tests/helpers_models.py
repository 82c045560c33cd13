"""Small ONNX models (built with onnx.helper) for the rewriter, API and CLI tests, and an
independent numpy reference of what pruning must compute.

The reference never calls onnx_prune: the mask is the README's rule written again (drop
floor(ratio * size) weights of smallest |w|, ties to the first in row-major order of W [K, N]).
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# The newest IR onnxruntime 1.17 (the oldest we support) loads; onnx.helper would write its own
# newest, which older onnxruntime releases refuse ("Unsupported model IR version").
IR_VERSION = 9
M = 7  # rows of A wherever a test needs a fixed batch (Gemm C of shape [M, 1] / [M, N])


# ----------------------------------------------------------------------------- reference

def keep_mask(w_kn: np.ndarray, ratio: float) -> np.ndarray:
    """Per-layer floor rule on W [K, N]."""
    flat = np.abs(np.asarray(w_kn, dtype=np.float64)).ravel()
    drop = int(math.floor(ratio * flat.size + 1e-9))
    order = np.lexsort((np.arange(flat.size), flat))  # by |w|, then by position
    keep = np.ones(flat.size, bool)
    keep[order[:drop]] = False
    return keep.reshape(np.shape(w_kn))


def global_keep_masks(weights_kn: Sequence[np.ndarray], ratio: float) -> list[np.ndarray]:
    """Global floor rule: one ranking over the concatenation of all layers (in the given order)."""
    sizes = [w.size for w in weights_kn]
    joined = np.concatenate([np.asarray(w, np.float64).ravel() for w in weights_kn])
    keep = keep_mask(joined, ratio)
    return [part.reshape(w.shape) for part, w in zip(np.split(keep, np.cumsum(sizes)[:-1]), weights_kn)]


def masked(w_kn: np.ndarray, ratio: float) -> np.ndarray:
    return np.where(keep_mask(w_kn, ratio), np.asarray(w_kn, np.float64), 0.0)


def gemm_forward(a: np.ndarray, w_kn: np.ndarray, c: Optional[np.ndarray], *, trans_a: int = 0,
                 alpha: float = 1.0, beta: float = 1.0) -> np.ndarray:
    a = np.asarray(a, np.float64)
    y = alpha * ((a.T if trans_a else a) @ np.asarray(w_kn, np.float64))
    return y if c is None else y + beta * np.asarray(c, np.float64)


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-5) -> None:
    """Max abs difference within rtol of the largest |expected| (fp32 against float64)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(float(np.abs(expected).max()), 1e-6)
    err = float(np.abs(actual.astype(np.float64) - expected).max())
    assert err <= rtol * scale + 1e-6, f"max abs error {err} > {rtol} * {scale}"


def numpy_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each vector along the last axis, written out with plain sums (the reference the
    fidelity figures are checked against)."""
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


# ----------------------------------------------------------------------------- builders

@functools.lru_cache(maxsize=None)
def newest_opset() -> int:
    """The newest ai.onnx opset that both the installed onnx and onnxruntime support (onnx often
    knows newer ones: onnxruntime 1.17 stops at 20), probed by loading a one-node model."""
    import onnxruntime as ort

    for opset in range(onnx.defs.onnx_opset_version(), OPSET, -1):
        model = make_model([helper.make_node("Relu", ["x"], ["y"])], [f32("x", [1])], [f32("y", [1])], [],
                           opset=opset)
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # onnxruntime refuses an opset newer than it knows
            continue
        return opset
    return OPSET


def make_model(nodes, inputs, outputs, inits, *, opset: int = OPSET, extra_opsets=(), value_info=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits, value_info=list(value_info))
    model = helper.make_model(graph, ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    if opset < 9:  # IR 3: every initializer is also a graph input
        model.ir_version = 3
        model.graph.input.extend([helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                  for t in inits])
    return model


def f32(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def gemm(K: int, N: int, *, trans_a: int = 0, trans_b: int = 0, alpha: float = 1.0, beta: float = 1.0,
         bias_shape: Optional[Sequence[int]] = None, c_as_input: bool = False, constant_node: bool = False,
         opset: int = OPSET, seed: int = 0, dtype=np.float32, node_name: str = "gemm"
         ) -> tuple[onnx.ModelProto, dict]:
    """One Gemm reading A [M, K] (or [K, M]) and a constant B; params hold W [K, N] and C."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((K, N)).astype(dtype)
    b = np.ascontiguousarray(w.T) if trans_b else w
    nodes, inits = [], []
    inputs = [f32("A", [K, M] if trans_a else [M, K])]
    if constant_node:
        nodes.append(helper.make_node("Constant", [], ["B"], name="const_B", value=numpy_helper.from_array(b, "B")))
    else:
        inits.append(numpy_helper.from_array(b, "B"))
    gemm_inputs = ["A", "B"]
    c = None
    if bias_shape is not None:
        c = rng.standard_normal(bias_shape).astype(np.float32)
        if c_as_input:
            inputs.append(f32("C", list(bias_shape)))
        else:
            inits.append(numpy_helper.from_array(c, "C"))
        gemm_inputs.append("C")
    nodes.append(helper.make_node("Gemm", gemm_inputs, ["Y"], name=node_name, transA=trans_a, transB=trans_b,
                                  alpha=alpha, beta=beta))
    model = make_model(nodes, inputs, [f32("Y", [M, N])], inits, opset=opset)
    return model, {"W": w.astype(np.float32) if dtype == np.float32 else w, "C": c}


def a_input(K: int, trans_a: int = 0, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)


def matmul(K: int, N: int, *, a_rank: int = 3, bias_shape: Optional[Sequence[int]] = (None,),
           bias_first: bool = False, relu: bool = False, constant_node: bool = False,
           mm_is_output: bool = False, seed: int = 0) -> tuple[onnx.ModelProto, dict]:
    """MatMul(X [..., K], W [K, N]) (+ Add(bias)) (+ Relu) → Identity → Y, like exported Linear."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((K, N)).astype(np.float32)
    nodes, inits = [], []
    if constant_node:
        nodes.append(helper.make_node("Constant", [], ["W"], name="const_W", value=numpy_helper.from_array(w, "W")))
    else:
        inits.append(numpy_helper.from_array(w, "W"))
    nodes.append(helper.make_node("MatMul", ["X", "W"], ["mm"], name="/linear/MatMul"))
    out, bias = "mm", None
    if bias_shape != (None,):
        bias = rng.standard_normal(bias_shape).astype(np.float32)
        inits.append(numpy_helper.from_array(bias, "bias"))
        nodes.append(helper.make_node("Add", ["bias", out] if bias_first else [out, "bias"], ["add"],
                                      name="/linear/Add"))
        out = "add"
    if relu:
        nodes.append(helper.make_node("Relu", [out], ["relu"], name="/act/Relu"))
        out = "relu"
    nodes.append(helper.make_node("Identity", [out], ["Y"], name="out"))
    lead = ["batch", "seq", "heads"][: a_rank - 1]
    x_shape = [*lead, K]
    y_lead = lead if bias_shape == (None,) or len(bias_shape) <= max(a_rank, 1) else \
        ["one"] * (len(bias_shape) - len(lead) - 1) + lead
    outputs = [f32("Y", [*y_lead, N])]
    if mm_is_output:
        outputs.append(f32("mm", [*lead, N]))
    model = make_model(nodes, [f32("X", x_shape)], outputs, inits)
    return model, {"W": w, "bias": bias}


def x_input(K: int, a_rank: int, seed: int = 2) -> np.ndarray:
    shape = [(2, 3, 4)[i] for i in range(a_rank - 1)] + [K]
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def mlp(dims: Sequence[int] = (20, 16, 12, 5), *, seed: int = 0, shared: bool = False,
        unnamed: bool = False) -> onnx.ModelProto:
    """Gemm(transB=1) + Relu stack as PyTorch exports nn.Linear; ``shared`` reuses one weight."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "input"
    for i in range(len(dims) - 1):
        name = "shared.weight" if shared else f"fc{i}.weight"
        if not shared or i == 0:
            inits.append(numpy_helper.from_array(rng.standard_normal((dims[i + 1], dims[i])).astype(np.float32), name))
        inits.append(numpy_helper.from_array(rng.standard_normal(dims[i + 1]).astype(np.float32), f"fc{i}.bias"))
        nodes.append(helper.make_node("Gemm", [x, name, f"fc{i}.bias"], [f"h{i}"],
                                      name="" if unnamed else f"/fc{i}/Gemm", transB=1))
        x = f"h{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [x], [x + "_relu"], name="" if unnamed else f"/relu{i}/Relu"))
            x = x + "_relu"
    nodes[-1].output[0] = "logits"
    return make_model(nodes, [f32("input", ["batch", dims[0]])], [f32("logits", ["batch", dims[-1]])], inits)


def mlp_weights_kn(model: onnx.ModelProto) -> list[np.ndarray]:
    """W [K, N] of each Gemm of an mlp(), in node order."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [inits[n.input[1]].T for n in model.graph.node if n.op_type == "Gemm"]


def mlp_forward(model: onnx.ModelProto, x: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """float64 forward of an mlp() with the given keep-masks applied to its weights."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    h = np.asarray(x, np.float64)
    for i, (node, mask) in enumerate(zip(gemms, masks)):
        w = inits[node.input[1]].T.astype(np.float64) * mask
        h = h @ w + inits[node.input[2]]
        if i < len(gemms) - 1:
            h = np.maximum(h, 0)
    return h


def mlp_reference(model: onnx.ModelProto, x: np.ndarray, ratio: float) -> np.ndarray:
    return mlp_forward(model, x, [keep_mask(w, ratio) for w in mlp_weights_kn(model)])


def non_constant_b_gemm() -> onnx.ModelProto:
    """A Gemm whose B is a graph input: nothing to prune."""
    nodes = [helper.make_node("Gemm", ["A", "B"], ["Y"], name="dynamic")]
    return make_model(nodes, [f32("A", [2, 3]), f32("B", [3, 4])], [f32("Y", [2, 4])], [])


def relu_only() -> onnx.ModelProto:
    return make_model([helper.make_node("Relu", ["x"], ["y"])], [f32("x", [2])], [f32("y", [2])], [])


def attention_block(d: int = 16, ff: int = 32, seed: int = 0) -> tuple[onnx.ModelProto, dict]:
    """One single-head transformer block as exporters write it: Q/K/V/out projections and a
    two-layer FFN as MatMul + Add (+ Relu), attention MatMuls between activations (not prunable),
    Softmax, a residual Add. X: [batch, seq, d]."""
    rng = np.random.default_rng(seed)
    p = {name: rng.standard_normal(shape).astype(np.float32) * 0.3 for name, shape in [
        ("Wq", (d, d)), ("Wk", (d, d)), ("Wv", (d, d)), ("Wo", (d, d)), ("W1", (d, ff)), ("W2", (ff, d)),
        ("bq", (d,)), ("bk", (d,)), ("bv", (d,)), ("bo", (d,)), ("b1", (ff,)), ("b2", (d,))]}
    p["scale"] = np.array(1.0 / np.sqrt(d), np.float32)
    nodes = []
    for name, src in (("q", "X"), ("k", "X"), ("v", "X")):
        nodes += [helper.make_node("MatMul", [src, f"W{name}"], [f"{name}_mm"], name=f"/attn/{name}/MatMul"),
                  helper.make_node("Add", [f"b{name}", f"{name}_mm"], [name], name=f"/attn/{name}/Add")]
    nodes += [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="/attn/Transpose"),
        helper.make_node("MatMul", ["q", "kt"], ["scores_raw"], name="/attn/scores/MatMul"),
        helper.make_node("Mul", ["scores_raw", "scale"], ["scores"], name="/attn/Mul"),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1, name="/attn/Softmax"),
        helper.make_node("MatMul", ["probs", "v"], ["ctx"], name="/attn/ctx/MatMul"),
        helper.make_node("MatMul", ["ctx", "Wo"], ["o_mm"], name="/attn/o/MatMul"),
        helper.make_node("Add", ["o_mm", "bo"], ["o"], name="/attn/o/Add"),
        helper.make_node("Add", ["X", "o"], ["h"], name="/residual/Add"),
        helper.make_node("MatMul", ["h", "W1"], ["f1_mm"], name="/ffn/fc1/MatMul"),
        helper.make_node("Add", ["f1_mm", "b1"], ["f1"], name="/ffn/fc1/Add"),
        helper.make_node("Relu", ["f1"], ["f1_relu"], name="/ffn/Relu"),
        helper.make_node("MatMul", ["f1_relu", "W2"], ["f2_mm"], name="/ffn/fc2/MatMul"),
        helper.make_node("Add", ["f2_mm", "b2"], ["Y"], name="/ffn/fc2/Add"),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in p.items()]
    model = make_model(nodes, [f32("X", ["batch", "seq", d])], [f32("Y", ["batch", "seq", d])], inits)
    return model, p


def attention_forward(x: np.ndarray, p: dict, ratio: float) -> np.ndarray:
    """float64 forward of attention_block() with every projection weight pruned at ``ratio``."""
    w = {k: masked(p[k], ratio) for k in ("Wq", "Wk", "Wv", "Wo", "W1", "W2")}
    x = np.asarray(x, np.float64)
    q, k, v = (x @ w[f"W{n}"] + p[f"b{n}"] for n in "qkv")
    scores = q @ k.transpose(0, 2, 1) * float(p["scale"])
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    h = x + (probs @ v) @ w["Wo"] + p["bo"]
    return np.maximum(h @ w["W1"] + p["b1"], 0) @ w["W2"] + p["b2"]
