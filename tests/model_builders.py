"""Small ONNX models for the rewriter and CLI tests, and an independent numpy reference of pruning."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def expected_mask(w_kn: np.ndarray, ratio: float) -> np.ndarray:
    """The README's rule, written independently: drop floor(ratio*size) weights of smallest |w|,
    ties to the first in row-major order of W [K, N]."""
    flat = np.abs(w_kn).ravel()
    drop = int(math.floor(ratio * flat.size + 1e-9))
    order = np.lexsort((np.arange(flat.size), flat))  # by |w|, then position
    keep = np.ones(flat.size, bool)
    keep[order[:drop]] = False
    return keep.reshape(w_kn.shape)


def gemm_model(K: int, N: int, *, trans_a: int = 0, trans_b: int = 0, alpha: float = 1.0, beta: float = 1.0,
               bias_shape: Optional[Sequence[int]] = (None,), weight_as_constant_node: bool = False,
               opset: int = OPSET, seed: int = 0, weight_dtype=np.float32) -> tuple[onnx.ModelProto, dict]:
    """One Gemm; returns the model and its parameters (W as stored, C)."""
    rng = np.random.default_rng(seed)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(weight_dtype)
    inputs = ["A", "B"]
    nodes, inits = [], []
    if weight_as_constant_node:
        nodes.append(helper.make_node("Constant", [], ["B"], name="const_B", value=numpy_helper.from_array(b, "B")))
    else:
        inits.append(numpy_helper.from_array(b, "B"))
    c = None
    if bias_shape != (None,) and bias_shape is not None:
        c = rng.standard_normal(bias_shape).astype(np.float32)
        inits.append(numpy_helper.from_array(c, "C"))
        inputs.append("C")
    attrs = dict(transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    nodes.append(helper.make_node("Gemm", inputs, ["Y"], name="gemm", **attrs))
    a_shape = [K, "M"] if trans_a else ["M", K]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, a_shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if opset < 9:
        model.ir_version = 3
        model.graph.input.extend([helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in inits])
    return model, {"B": b, "C": c}


def gemm_reference(a: np.ndarray, params: dict, *, ratio: float, trans_a=0, trans_b=0, alpha=1.0, beta=1.0) -> np.ndarray:
    w = params["B"].astype(np.float64)
    w = w.T if trans_b else w
    w = w * expected_mask(params["B"].T if trans_b else params["B"], ratio)
    a = a.astype(np.float64)
    y = alpha * ((a.T if trans_a else a) @ w)
    if params["C"] is not None:
        y = y + beta * params["C"]
    return y


def matmul_add_model(K: int, N: int, *, rank: int = 3, with_add: bool = True, with_relu: bool = False,
                     seed: int = 0) -> tuple[onnx.ModelProto, dict]:
    """Transformer-style Linear: MatMul([batch, seq, K], W[K, N]) + bias[N] (+ Relu)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W")]
    nodes = [helper.make_node("MatMul", ["X", "W"], ["mm"], name="/linear/MatMul")]
    out = "mm"
    if with_add:
        inits.append(numpy_helper.from_array(bias, "bias"))
        nodes.append(helper.make_node("Add", ["bias", out], ["add"], name="/linear/Add"))
        out = "add"
    if with_relu:
        nodes.append(helper.make_node("Relu", [out], ["relu"], name="/act/Relu"))
        out = "relu"
    nodes.append(helper.make_node("Identity", [out], ["Y"], name="out"))
    x_shape = ["batch", "seq", K] if rank == 3 else ["batch", K]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, x_shape[:-1] + [N])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), {"W": w, "bias": bias}


def mlp_model(dims: Sequence[int] = (20, 16, 12, 5), seed: int = 0, shared: bool = False) -> onnx.ModelProto:
    """Gemm(transB=1) + Relu stack as PyTorch exports nn.Linear; ``shared`` reuses one square weight."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "input"
    for i in range(len(dims) - 1):
        name = "shared.weight" if shared else f"fc{i}.weight"
        if not shared or i == 0:
            inits.append(numpy_helper.from_array(rng.standard_normal((dims[i + 1], dims[i])).astype(np.float32), name))
        inits.append(numpy_helper.from_array(rng.standard_normal(dims[i + 1]).astype(np.float32), f"fc{i}.bias"))
        y = f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, name, f"fc{i}.bias"], [y], name=f"/fc{i}/Gemm", transB=1))
        x = y
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [x], [x + "_relu"], name=f"/relu{i}/Relu"))
            x = x + "_relu"
    nodes[-1].output[0] = "logits"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", dims[0]])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", dims[-1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def mlp_reference(model: onnx.ModelProto, x: np.ndarray, ratio: float) -> np.ndarray:
    """Forward pass of mlp_model with every weight magnitude-pruned per layer, in float64."""
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    h = x.astype(np.float64)
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    for i, node in enumerate(gemms):
        b_t = weights[node.input[1]]  # [N, K]
        w = b_t.T * expected_mask(b_t.T, ratio)
        h = h @ w + weights[node.input[2]]
        if i < len(gemms) - 1:
            h = np.maximum(h, 0)
    return h
