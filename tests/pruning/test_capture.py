"""capture.py: the XᵀX and column norms gathered in onnxruntime equal a numpy forward pass,
batched or not, for N-D and transA inputs, and sequentially (later layers see the pruned prefix)."""
from __future__ import annotations

import numpy as np
import pytest

from helpers_models import M, attention_block, gemm, matmul, mlp, mlp_weights_kn
from onnx_prune.pruning import capture
from onnx_prune.pruning.calibration import checked_calibration
from onnx_prune.errors import OnnxPruneError
from onnx_prune.model.layers import find_layers
from onnx_prune.pruning.masking import magnitude_mask


def _stats(model, data, layers=None, hessian=True):
    layers = layers if layers is not None else find_layers(model)[0]
    data, plan = checked_calibration(data, model)
    return capture.capture_stats(model, layers, data, plan, hessian=hessian)


def _assert_stats(stats, x):
    x = np.asarray(x, np.float64)
    np.testing.assert_allclose(stats.hessian, x.T @ x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.sq_norms, (x * x).sum(axis=0), rtol=1e-5, atol=1e-6)
    assert stats.rows == x.shape[0]


def _mlp_inputs(model, x, weights_kn):
    """What each Gemm of an mlp() reads, in numpy (float64), with the given weights."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    biases = [inits[n.input[2]] for n in model.graph.node if n.op_type == "Gemm"]
    h, seen = np.asarray(x, np.float64), []
    for i, (w, b) in enumerate(zip(weights_kn, biases)):
        seen.append(h)
        h = h @ w.astype(np.float64) + b
        if i < len(weights_kn) - 1:
            h = np.maximum(h, 0)
    return seen


def test_mlp_statistics_match_a_numpy_forward_pass():
    model = mlp((12, 10, 8, 3))
    x = np.random.default_rng(0).standard_normal((50, 12)).astype(np.float32)
    stats = _stats(model, {"input": x})
    expected = _mlp_inputs(model, x, mlp_weights_kn(model))
    for layer, seen in zip(find_layers(model)[0], expected):
        _assert_stats(stats[layer.node], seen)


def test_small_batches_give_the_same_sums(monkeypatch):
    model = mlp((12, 10, 8, 3))
    x = np.random.default_rng(1).standard_normal((203, 12)).astype(np.float32)
    whole = _stats(model, {"input": x})
    monkeypatch.setattr(capture, "CAPTURE_BYTES", 12 * 4 * 5)  # a handful of samples per run
    runs = []
    original = capture._Session.run
    monkeypatch.setattr(capture._Session, "run", lambda self, n, f: runs.append(1) or original(self, n, f))
    batched = _stats(model, {"input": x})
    assert len(runs) > 10
    for node in whole:
        np.testing.assert_allclose(batched[node].hessian, whole[node].hessian, rtol=1e-9)
        assert batched[node].rows == 203


def test_second_layer_sees_the_pruned_first_layer():
    model = mlp((12, 10, 8, 3))
    layers = find_layers(model)[0]
    x = np.random.default_rng(2).standard_normal((40, 12)).astype(np.float32)
    w = mlp_weights_kn(model)
    pruned0 = w[0] * magnitude_mask(w[0], 0.7)
    current = capture.with_weights(model, layers, {layers[0].node: pruned0})
    stats = _stats(current, {"input": x}, layers[1:2])
    expected = _mlp_inputs(model, x, [pruned0, w[1], w[2]])[1]
    _assert_stats(stats[layers[1].node], expected)
    dense = _mlp_inputs(model, x, w)[1]
    assert not np.allclose(stats[layers[1].node].hessian, dense.T @ dense, rtol=1e-3)


def test_trans_a_layers_use_a_transposed():
    model, _ = gemm(6, 4, trans_a=1, trans_b=1, bias_shape=[4])
    a = np.random.default_rng(3).standard_normal((6, M)).astype(np.float32)
    # the model's A is [K, M] with a fixed M: each sample is one whole input (extra leading axis)
    stats = _stats(model, {"A": np.stack([a, 2 * a])})
    x = np.concatenate([a.T, 2 * a.T])
    _assert_stats(stats["gemm"], x)


def test_n_d_inputs_are_flattened_to_rows():
    model, _ = matmul(8, 5, a_rank=3, bias_shape=[5], relu=True)
    x = np.random.default_rng(4).standard_normal((6, 3, 8)).astype(np.float32)
    stats = _stats(model, {"X": x})
    _assert_stats(stats["/linear/MatMul"], x.reshape(-1, 8))


def test_fixed_batch_inputs_are_fed_in_whole_batches():
    model, _ = gemm(6, 4, bias_shape=[4])  # A: [7, 6]
    a = np.random.default_rng(5).standard_normal((3 * M + 2, 6)).astype(np.float32)
    data, plan = checked_calibration({"A": a}, model)
    assert plan.step == M and plan.samples == 3 * M  # the incomplete last batch is left out
    stats = capture.capture_stats(model, find_layers(model)[0], data, plan, hessian=True)
    _assert_stats(stats["gemm"], a[: 3 * M])


def test_layers_reading_the_same_tensor_share_a_wave():
    model, _ = attention_block()
    layers = find_layers(model)[0]
    waves = [[l.node for l in wave] for wave in capture.layer_groups(model, layers)]
    assert waves == [["/attn/q/MatMul", "/attn/k/MatMul", "/attn/v/MatMul"], ["/attn/o/MatMul"],
                     ["/ffn/fc1/MatMul"], ["/ffn/fc2/MatMul"]]
    x = np.random.default_rng(6).standard_normal((4, 5, 16)).astype(np.float32)
    stats = _stats(model, {"X": x}, layers[:3])
    assert stats["/attn/q/MatMul"] is stats["/attn/k/MatMul"]  # one accumulation per input tensor
    _assert_stats(stats["/attn/q/MatMul"], x.reshape(-1, 16))


def test_mlp_layers_come_one_per_wave():
    model = mlp((12, 10, 8, 3))
    assert [[l.node for l in w] for w in capture.layer_groups(model, find_layers(model)[0])] == \
        [["/fc0/Gemm"], ["/fc1/Gemm"], ["/fc2/Gemm"]]


def test_shared_weight_is_replaced_only_for_the_named_layer():
    model = mlp((8, 8, 8, 8), shared=True)
    layers = find_layers(model)[0]
    x = np.random.default_rng(7).standard_normal((20, 8)).astype(np.float32)
    w = mlp_weights_kn(model)
    pruned = np.zeros_like(w[0])
    current = capture.with_weights(model, layers, {layers[1].node: pruned})
    stats = _stats(current, {"input": x}, layers[2:])
    expected = _mlp_inputs(model, x, [w[0], pruned, w[2]])[2]
    _assert_stats(stats[layers[2].node], expected)


def test_non_finite_activations_are_one_clear_error():
    model = mlp((12, 10, 8, 3))
    x = np.full((4, 12), np.nan, np.float32)
    with pytest.raises(OnnxPruneError, match="inputs of layer /fc0/Gemm contain NaN or inf"):
        _stats(model, {"input": x})
