"""Accuracy of SparseGPT on a trained model (issue #12) and its bias compensation.

A small ReLU MLP is trained here in numpy (seconds) on clustered, mostly-zero inputs, so its
hidden layers have rarely active units that look dead on a small calibration set, as on
(Fashion-)MNIST. The product's per-layer SparseGPT must stay within a stated margin of a plain
numpy SparseGPT written below from the paper (sequential layers, 128-input blocks, 1 %
dampening, no special case for dead inputs), measured on held-out data. Bias compensation is
checked against a direct least-squares fit of the bias."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from helpers_models import mlp
from onnx_prune.pruning import masking
from onnx_prune.api import sparsify
from onnx_prune.options import PruneOptions
from onnx_prune.model.layers import find_layers
from onnx_prune.pruning.sparsegpt import sparsegpt_prune, sparsegpt_prune_with_bias

DIMS = (48, 96, 96, 10)


# ----------------------------------------------------------------------------- a trained model

def clustered_data(samples: int, seed: int, rare: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Ten classes; each input is a class prototype plus noise, clipped at 0 (many zeros). The
    last ``rare`` features are like MNIST's border pixels: 0 except in ~0.3 % of the samples,
    where they mark the class, so most of them look dead on a 128-sample calibration set."""
    rng = np.random.default_rng(1234)
    prototypes = np.maximum(rng.standard_normal((10, DIMS[0] - rare)) - 0.3, 0)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, samples)
    common = np.maximum(prototypes[labels] + 0.9 * rng.standard_normal((samples, DIMS[0] - rare)) - 0.2, 0)
    on = (rng.random((samples, rare)) < 0.03) & (np.arange(rare)[None, :] % 10 == labels[:, None])
    return np.hstack([common, 3.0 * on]).astype(np.float32), labels


def forward(weights, biases, x) -> tuple[list[np.ndarray], np.ndarray]:
    inputs, h = [], np.asarray(x, np.float64)
    for i, (w, b) in enumerate(zip(weights, biases)):
        inputs.append(h)
        h = h @ w + b
        if i < len(weights) - 1:
            h = np.maximum(h, 0)
    return inputs, h


def train(x: np.ndarray, y: np.ndarray, steps: int = 400, seed: int = 0) -> tuple[list, list]:
    """Plain Adam on softmax cross-entropy; weights [K, N]."""
    rng = np.random.default_rng(seed)
    ws = [rng.uniform(-1, 1, (k, n)) / np.sqrt(k) for k, n in zip(DIMS[:-1], DIMS[1:])]
    bs = [np.zeros(n) for n in DIMS[1:]]
    params = ws + bs
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(y), 128)
        inputs, logits = forward(ws, bs, x[idx])
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(idx)), y[idx]] -= 1
        delta, grads_w, grads_b = p / len(idx), [None] * 3, [None] * 3
        for layer in reversed(range(3)):
            grads_w[layer], grads_b[layer] = inputs[layer].T @ delta, delta.sum(0)
            delta = (delta @ ws[layer].T) * (inputs[layer] > 0)
        for param, g, mi, vi in zip(params, grads_w + grads_b, m, v):
            mi[...] = 0.9 * mi + 0.1 * g
            vi[...] = 0.999 * vi + 0.001 * g * g
            param -= 3e-3 * (mi / (1 - 0.9 ** step)) / (np.sqrt(vi / (1 - 0.999 ** step)) + 1e-8)
    return ws, bs


@pytest.fixture(scope="module")
def trained():
    x, y = clustered_data(6000, 0)
    ws, bs = train(x, y)
    model = mlp(DIMS)
    values = {f"fc{i}.weight": w.T for i, w in enumerate(ws)} | {f"fc{i}.bias": b for i, b in enumerate(bs)}
    for t in model.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(values[t.name].astype(np.float32), t.name))
    calib, _ = clustered_data(128, 1)
    test_x, test_y = clustered_data(3000, 2)
    return model, ws, bs, calib, test_x, test_y


# ----------------------------------------------------------------------------- the plain reference

def plain_sparsegpt(w: np.ndarray, h: np.ndarray, ratio: float, block: int = 128, percdamp: float = 0.01
                    ) -> np.ndarray:
    """SparseGPT as the paper states it, nothing special for dead inputs: H + λI, U = chol(H⁻¹)ᵀ,
    per block of inputs the ``ratio`` share with the lowest w²/U_kk² goes, each removal
    compensated on the later inputs."""
    w = np.array(w, np.float64)
    k = len(h)
    u = np.linalg.cholesky(np.linalg.inv(h + percdamp * np.mean(np.diag(h)) * np.eye(k))).T
    pruned = np.zeros(w.shape, bool)
    for s in range(0, k, block):
        e = min(s + block, k)
        cost = (w[s:e] / np.diag(u)[s:e, None]) ** 2
        cut = np.sort(cost.ravel())[int(cost.size * ratio)]
        pruned[s:e] = cost < cut
        for i in range(s, e):
            err = np.where(pruned[i], w[i], 0) / u[i, i]
            w[i + 1:] -= np.outer(u[i, i + 1:], err)
            w[i][pruned[i]] = 0
    return w


def reference_prune(ws, bs, calib, ratio) -> list[np.ndarray]:
    out = []
    for layer in range(len(ws)):
        x = forward(out + ws[len(out):], bs, calib)[0][layer]
        out.append(plain_sparsegpt(ws[layer], x.T @ x, ratio))
    return out


def held_out_error(ws, bs, pruned, x, y) -> tuple[float, float]:
    """(relative error of the logits, accuracy in %) of the pruned model on held-out data."""
    dense, got = forward(ws, bs, x)[1], forward(pruned, bs, x)[1]
    return float(np.linalg.norm(got - dense) / np.linalg.norm(dense)), 100 * float((got.argmax(1) == y).mean())


@pytest.mark.parametrize("ratio", [0.7, 0.8])
def test_per_layer_sparsegpt_keeps_up_with_a_plain_reference(trained, ratio):
    model, ws, bs, calib, test_x, test_y = trained
    assert (calib[:, -16:] == 0).all(axis=0).sum() >= 8  # the case in point: inputs dead on calibration only
    layers = find_layers(model)[0]
    options = PruneOptions(method="sparsegpt", bias_correction=False).validated()
    result = sparsify(model, layers, {l.node: ratio for l in layers}, options, calibration={"input": calib})[0]
    product = [result[l.node].weight.astype(np.float64) for l in layers]
    err, acc = held_out_error(ws, bs, product, test_x, test_y)
    ref_err, ref_acc = held_out_error(ws, bs, reference_prune(ws, bs, calib, ratio), test_x, test_y)
    magnitude = [w * masking.magnitude_mask(w, ratio) for w in ws]
    mag_err, _ = held_out_error(ws, bs, magnitude, test_x, test_y)
    assert mag_err > 1.5 * ref_err  # the margin below separates a working SparseGPT from a broken one
    assert err <= 1.10 * ref_err, (err, ref_err)
    assert acc >= ref_acc - 2.0, (acc, ref_acc)


# ----------------------------------------------------------------------------- bias compensation

def _layer_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal((300, 40)) @ rng.standard_normal((40, 40)) * 0.3 + 0.5, 0)
    x[:, 3] = 0  # a dead input
    w = rng.standard_normal((40, 9)).astype(np.float32)
    return x, w


@pytest.mark.parametrize("block", [16, 128])
def test_bias_delta_is_the_least_squares_bias_for_the_pruned_weights(block):
    x, w = _layer_case()
    drop = masking.removal_count(0.7, w.size)
    pruned, keep, delta = sparsegpt_prune_with_bias(w, x.T @ x, x.sum(0), len(x), drop, block_size=block)
    assert (~keep).sum() == drop and np.all(pruned[~keep] == 0)
    residual = x @ w.astype(np.float64) - x @ pruned.astype(np.float64)
    best = np.linalg.lstsq(np.ones((len(x), 1)), residual, rcond=None)[0][0]
    np.testing.assert_allclose(delta, best, rtol=1e-5, atol=1e-5 * np.abs(best).max())


def test_bias_compensation_beats_pruning_then_refitting_the_bias():
    x, w = _layer_case(1)
    drop = masking.removal_count(0.7, w.size)
    with_bias, _, delta = sparsegpt_prune_with_bias(w, x.T @ x, x.sum(0), len(x), drop)
    plain, _ = sparsegpt_prune(w, x.T @ x, drop)

    def error(weight, bias):
        return float(np.linalg.norm(x @ w - (x @ weight + bias)))

    refit = (x @ (w - plain)).mean(0)
    assert error(with_bias, delta) < error(plain, refit) < error(plain, 0)
