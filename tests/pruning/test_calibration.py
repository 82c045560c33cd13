"""calibration.py and sparsegpt.py: Wanda and SparseGPT against magnitude pruning and against an
independent (unblocked, explicit-inverse) OBS reference; exact sparsity per layer and global;
N:M in every group; sequential calibration; determinism; every bad calibration input by message."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from onnx import helper

import onnx_prune
from helpers_models import f32, make_model, mlp, mlp_weights_kn
from onnx_prune.pruning import masking
from onnx_prune import api
from onnx_prune.options import PruneOptions
from onnx_prune.pruning.calibration import read_calibration, wanda_scores
from onnx_prune.errors import OnnxPruneError
from onnx_prune.model.layers import find_layers
from onnx_prune.pruning.sparsegpt import sparsegpt_prune

DIMS = (32, 24, 16, 8)


# ----------------------------------------------------------------------------- helpers

def correlated_inputs(samples: int, k: int, seed: int) -> np.ndarray:
    """Inputs whose features are mixed (correlated) and of very different scales."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((k, k)) * 0.5 + np.eye(k)
    return (rng.standard_normal((samples, k)) @ mix * np.exp(rng.standard_normal(k))).astype(np.float32)


def relative_error(x: np.ndarray, w: np.ndarray, w_hat: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float(np.linalg.norm(x @ w - x @ w_hat) / np.linalg.norm(x @ w))


def reference_sparsegpt(w, h, drop=0, pattern=None, block=128, percdamp=0.01):
    """SparseGPT written the slow way: before each input k, the exact inverse Hessian of the
    inputs not yet fixed; each pruned weight is removed by the OBS update over those inputs.
    Masks: per block, the lowest w² / [H_F⁻¹]_00 (exact share of ``drop``); or per N:M group."""
    w = np.array(w, np.float64)
    h = np.array(h, np.float64)
    k = len(h)
    dead = np.diag(h) == 0
    damp = percdamp * np.diag(h).mean()  # of the calibration H, before dead inputs are filled in
    h[dead, dead] = np.diag(h)[~dead].mean()
    h += damp * np.eye(k)
    keep = np.ones(w.shape, bool)

    def costs(rows):
        d = np.array([np.linalg.inv(h[j:, j:])[0, 0] for j in rows])
        c = w[rows] ** 2 / d[:, None]
        c[dead[rows]] = 0
        return c

    for i in range(k):
        if isinstance(pattern, masking.Blocks) and i % block == 0:
            rows = np.arange(i, min(i + block, k))
            keep[rows] = reference_block_keep(costs(rows), pattern.rows, pattern.cols,
                                              drop * -(-(rows[-1] + 1) // pattern.cols) // -(-k // pattern.cols)
                                              - drop * (i // pattern.cols) // -(-k // pattern.cols))
        if pattern is None and i % block == 0:
            rows = np.arange(i, min(i + block, k))
            share = drop * (rows[-1] + 1) // k - drop * i // k  # the block's exact part of drop
            order = np.lexsort((np.arange(rows.size * w.shape[1]), costs(rows).ravel()))
            flat = np.ones(rows.size * w.shape[1], bool)
            flat[order[:share]] = False
            keep[rows] = flat.reshape(rows.size, -1)
        if isinstance(pattern, tuple) and i % pattern[1] == 0:
            n, m = pattern
            c = costs(np.arange(i, i + m))
            for col in range(w.shape[1]):
                for j in np.lexsort((np.arange(m), c[:, col]))[: m - n]:
                    keep[i + j, col] = False
        inv = np.linalg.inv(h[i:, i:])
        for col in np.flatnonzero(~keep[i]):
            w[i:, col] -= w[i, col] / inv[0, 0] * inv[:, 0]
    w[~keep] = 0
    return w, keep


def reference_block_keep(scores, rows, cols, drop):
    """Blocks of ``rows`` outputs x ``cols`` inputs (edge blocks partial), scored by the mean of
    their weights' scores; the ``drop`` lowest go, ties to the first block in row-major order."""
    k, n = scores.shape
    blocks = [(bk, bn) for bk in range(0, k, cols) for bn in range(0, n, rows)]
    means = [scores[bk:bk + cols, bn:bn + rows].mean() for bk, bn in blocks]
    keep = np.ones(scores.shape, bool)
    for j in sorted(range(len(blocks)), key=lambda j: (means[j], j))[:drop]:
        bk, bn = blocks[j]
        keep[bk:bk + cols, bn:bn + rows] = False
    return keep


# ----------------------------------------------------------------------------- one layer

@pytest.mark.parametrize("ratio", [0.5, 0.8])
@pytest.mark.parametrize("seed", [0, 1])
def test_sparsegpt_and_wanda_reconstruct_better_than_magnitude(ratio, seed):
    x = correlated_inputs(400, 48, seed)
    w = np.random.default_rng(seed + 10).standard_normal((48, 20)).astype(np.float32)
    drop = masking.removal_count(ratio, w.size)
    magnitude = w * masking.magnitude_mask(w, ratio)
    wanda = w * masking.per_output_mask(wanda_scores(w, (x.astype(np.float64) ** 2).sum(0)), drop)
    sparse, keep = sparsegpt_prune(w, x.T.astype(np.float64) @ x, drop, block_size=16)
    assert (~keep).sum() == drop and np.all(sparse[~keep] == 0)
    e_mag, e_wanda, e_sgpt = (relative_error(x, w, v) for v in (magnitude, wanda, sparse))
    assert e_sgpt < e_mag * 0.6
    assert e_wanda < e_mag


@pytest.mark.parametrize("block", [8, 128])
def test_sparsegpt_matches_the_explicit_obs_reference(block):
    x = correlated_inputs(200, 24, 3)
    x[:, 5] = 0  # a dead input
    w = np.random.default_rng(4).standard_normal((24, 7)).astype(np.float32)
    h = x.T.astype(np.float64) @ x
    drop = masking.removal_count(0.6, w.size)
    got, keep = sparsegpt_prune(w, h, drop, block_size=block, refit=False)
    want, want_keep = reference_sparsegpt(w, h, drop, block=block)
    assert np.array_equal(keep, want_keep)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert not keep[5].any()  # dead-input weights cost nothing: they go first


@pytest.mark.parametrize("pattern", [(2, 4), (1, 4)])
def test_sparsegpt_n_m_matches_the_reference_whatever_the_block_size(pattern):
    x = correlated_inputs(200, 32, 5)
    w = np.random.default_rng(6).standard_normal((32, 6)).astype(np.float32)
    h = x.T.astype(np.float64) @ x
    want, want_keep = reference_sparsegpt(w, h, pattern=pattern)
    for block in (4, 12, 128):  # 12 is rounded down to whole groups
        got, keep = sparsegpt_prune(w, h, 0, pattern=pattern, block_size=block, refit=False)
        assert np.array_equal(keep, want_keep)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.all(keep.reshape(-1, pattern[1], 6).sum(axis=1) == pattern[0])


@pytest.mark.parametrize("rows,cols", [(4, 1), (2, 2), (3, 1), (1, 4)])
def test_sparsegpt_blocks_match_the_reference(rows, cols):
    x = correlated_inputs(200, 30, 7)  # K = 30, N = 7: edge blocks are partial for every shape here
    w = np.random.default_rng(8).standard_normal((30, 7)).astype(np.float32)
    h = x.T.astype(np.float64) @ x
    pattern = masking.Blocks(rows, cols)
    drop = masking.removal_count(0.6, pattern.count(30, 7))
    for block in (8, 128):
        got, keep = sparsegpt_prune(w, h, drop, pattern=pattern, block_size=block, refit=False)
        want, want_keep = reference_sparsegpt(w, h, drop, pattern=pattern, block=max(cols, block // cols * cols))
        assert np.array_equal(keep, want_keep)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    removed = ~pattern.block_scores(keep.astype(float)).astype(bool)  # a block is all kept or all removed
    assert removed.sum() == drop
    assert np.array_equal(pattern.expand(~removed, 30, 7), keep)


def test_refit_is_the_least_squares_fit_of_the_kept_weights():
    x = correlated_inputs(300, 20, 9)
    w = np.random.default_rng(10).standard_normal((20, 5)).astype(np.float32)
    h = x.T.astype(np.float64) @ x
    damp = 0.01 * np.diag(h).mean()
    drop = masking.removal_count(0.7, w.size)
    got, keep = sparsegpt_prune(w, h, drop, refit=True)
    walked, walk_keep = sparsegpt_prune(w, h, drop, refit=False)
    assert np.array_equal(keep, walk_keep)
    for n in range(5):  # ridge least squares toward the dense outputs, over the kept inputs only
        s = np.flatnonzero(keep[:, n])
        a = np.vstack([x[:, s].astype(np.float64), math.sqrt(damp) * np.eye(len(s))])
        b = np.r_[x.astype(np.float64) @ w[:, n], math.sqrt(damp) * w[s, n]]
        np.testing.assert_allclose(got[s, n], np.linalg.lstsq(a, b, rcond=None)[0], rtol=1e-4, atol=1e-5)
    assert relative_error(x, w, got) <= relative_error(x, w, walked) + 1e-9


# ----------------------------------------------------------------------------- through sparsify

def _mlp_case(seed=0, samples=128):
    model = mlp(DIMS, seed=seed)
    layers = find_layers(model)[0]
    x = correlated_inputs(samples, DIMS[0], seed + 1)
    return model, layers, {"input": x}


def _run(model, layers, data, ratio=0.7, *, method="sparsegpt", samples=None, pattern=None, scope="layer",
         bias_correction=False, progress=None):
    """api.sparsify's answer (node -> Pruned) for ``layers`` at ``ratio`` (one for all, or a dict)."""
    options = PruneOptions(method=method, calibration_samples=samples, pattern=pattern, scope=scope,
                           bias_correction=bias_correction).validated()
    ratios = ratio if isinstance(ratio, dict) else {l.node: ratio for l in layers}
    return api.sparsify(model, layers, ratios, options, calibration=data, progress=progress)[0]


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_exact_sparsity_per_layer(method):
    model, layers, data = _mlp_case()
    ratios = {layers[0].node: 0.33, layers[1].node: 0.71, layers[2].node: 0.9}
    result = _run(model, layers, data, ratios, method=method)
    for layer in layers:
        weight, keep = result[layer.node].weight, result[layer.node].mask
        assert (~keep).sum() == math.floor(ratios[layer.node] * layer.size + 1e-9)
        assert weight.dtype == np.float32 and np.all(weight[~keep] == 0)


def test_wanda_keeps_the_same_count_in_every_output_and_its_best_scores():
    model, layers, data = _mlp_case()
    result = _run(model, layers, data, 0.7, method="wanda")
    x = data["input"].astype(np.float64)
    weight, keep = result[layers[0].node].weight, result[layers[0].node].mask
    per_output = keep.sum(axis=0)
    assert per_output.max() - per_output.min() <= 1
    scores = np.abs(layers[0].weight) * np.sqrt((x ** 2).sum(0))[:, None]
    for n in range(keep.shape[1]):
        assert scores[~keep[:, n], n].max() <= scores[keep[:, n], n].min()
    assert np.array_equal(weight, np.where(keep, layers[0].weight, 0))  # Wanda does not update weights


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_later_layers_are_calibrated_on_the_pruned_prefix(method):
    model, layers, data = _mlp_case()
    result = _run(model, layers, data, 0.75, method=method)
    w = mlp_weights_kn(model)
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    h = np.maximum(data["input"].astype(np.float64) @ result[layers[0].node].weight + inits["fc0.bias"], 0)
    drop = masking.removal_count(0.75, w[1].size)
    if method == "sparsegpt":
        want, want_keep = sparsegpt_prune(w[1], h.T @ h, drop)
    else:
        want_keep = masking.per_output_mask(wanda_scores(w[1], (h ** 2).sum(0)), drop)
        want = np.where(want_keep, w[1], 0)
    got, keep = result[layers[1].node].weight, result[layers[1].node].mask
    assert np.array_equal(keep, want_keep)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_n_m_holds_in_every_group(method):
    model, layers, data = _mlp_case()
    with pytest.warns(UserWarning, match="--pattern 2:4 removes exactly 2 of every 4 weights .sparsity 0.5.; "
                                         "the requested ratio 0.7 is not used"):
        result = _run(model, layers, None if method == "magnitude" else data, 0.7, method=method, pattern="2:4")
    for layer in layers:
        weight, keep = result[layer.node].weight, result[layer.node].mask
        groups = keep.reshape(layer.K // 4, 4, layer.N)
        assert np.all(groups.sum(axis=1) == 2)
        assert np.all(weight[~keep] == 0)
    if method == "magnitude":
        w = layers[0].weight
        assert np.array_equal(result[layers[0].node].mask, masking.nm_mask(np.abs(w), 2, 4))


def test_pattern_at_its_own_ratio_gives_no_warning():
    model, layers, data = _mlp_case()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(model, layers, data, 0.5, method="wanda", pattern="1:2")


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_global_scope_hits_the_total_and_spares_the_layers_that_matter(method):
    model, layers, data = _mlp_case()
    data = {"input": data["input"].copy()}
    data["input"][:, : DIMS[0] // 2] = 0  # half the model's inputs are dead: fc0 can give more
    result = _run(model, layers, data, 0.6, method=method, scope="global")
    removed = [(~result[l.node].mask).sum() for l in layers]
    assert sum(removed) == math.floor(0.6 * sum(l.size for l in layers))
    sparsity = [r / l.size for r, l in zip(removed, layers)]
    assert sparsity[0] > 0.6 and sparsity[0] == max(sparsity)
    keep0 = result[layers[0].node].mask
    assert not keep0[: DIMS[0] // 2].any()  # every weight of a dead input went first


def test_global_scope_refuses_per_layer_ratios_and_patterns():
    model, layers, data = _mlp_case()
    ratios = {l.node: 0.5 for l in layers}
    ratios[layers[0].node] = 0.8
    with pytest.raises(OnnxPruneError, match="--layer-ratio cannot be combined with --scope global"):
        _run(model, layers, data, ratios, scope="global")
    with pytest.raises(OnnxPruneError, match="--pattern 2:4 fixes every layer's sparsity at 0.5; it cannot be "
                                             "combined with --scope global"):
        _run(model, layers, data, 0.5, scope="global", pattern="2:4")
    with pytest.raises(OnnxPruneError, match=r"--pattern 4x1 \(blocks\) cannot be combined with --scope global"):
        _run(model, layers, data, 0.5, scope="global", pattern="4x1")


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["4x1", "8x1", "2x2"])
def test_block_patterns_remove_whole_blocks_end_to_end(method, pattern):
    """Through onnx_prune.prune (verified against the masked dense model): every layer loses
    exactly floor(R * blocks) whole blocks; DIMS have N = 24, 16, 8 and K = 32, 24, 16."""
    model, layers, data = _mlp_case()
    blocks = masking.parse_pattern(pattern)
    out, report = onnx_prune.prune(model, 0.6, method=method, pattern=pattern, auto_dense=False, verify=True,
                                   calibration=None if method == "magnitude" else data)
    assert report.verification.passed
    result = _run(model, layers, None if method == "magnitude" else data, 0.6, method=method, pattern=pattern)
    for layer in layers:
        keep = result[layer.node].mask
        kept_blocks = blocks.block_scores(keep.astype(float))
        assert set(np.unique(kept_blocks)) <= {0.0, 1.0}  # all kept or all removed
        assert (kept_blocks == 0).sum() == masking.removal_count(0.6, blocks.count(layer.K, layer.N))


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_deterministic(method, scope):
    model, layers, data = _mlp_case(seed=3)
    first = _run(model, layers, data, 0.8, method=method, scope=scope)
    second = _run(model, layers, {"input": data["input"].copy()}, 0.8, method=method, scope=scope)
    for node in first:
        assert np.array_equal(first[node].weight, second[node].weight)
        assert np.array_equal(first[node].mask, second[node].mask)


def test_samples_limits_the_calibration_to_the_first_n():
    model, layers, data = _mlp_case(samples=100)
    few = _run(model, layers, data, 0.7, samples=30)
    cut = _run(model, layers, {"input": data["input"][:30]}, 0.7)
    for node in few:
        assert np.array_equal(few[node].weight, cut[node].weight)


def test_methods_with_calibration_need_data():
    model, layers, _ = _mlp_case()
    with pytest.raises(OnnxPruneError, match="--method wanda needs --calibration"):
        _run(model, layers, None, 0.5, method="wanda")


def test_pattern_problems_are_one_line():
    model, layers, data = _mlp_case()
    with pytest.raises(OnnxPruneError, match="layer /fc2/Gemm: its 16 inputs .K. are not a multiple of the "
                                             "pattern's group size 32"):
        _run(model, layers[2:], data, 0.5, pattern="1:32")
    with pytest.raises(OnnxPruneError, match="--pattern takes N:M"):
        _run(model, layers, data, 0.5, pattern="4:2")


def test_progress_bar_runs_and_reports_layers_and_blocks():
    from rich.console import Console
    from rich.progress import Progress

    model, layers, data = _mlp_case()
    with Progress(console=Console(file=open("/dev/null", "w"))) as bar:
        _run(model, layers, data, 0.7, progress=bar)
        layers_task = bar.tasks[0]
        assert layers_task.completed == layers_task.total == 3
        assert bar.tasks[1].total == 1  # the last layer (K=16) is one block
    _run(model, layers, data, 0.7, progress=True)


def test_api_prune_with_sparsegpt_verifies_and_beats_magnitude():
    model, layers, data = _mlp_case(samples=256)
    x = data["input"]
    pruned, report = onnx_prune.prune(model, 0.7, method="sparsegpt", calibration=data, verify=True,
                                      auto_dense=False)
    assert report.verification.passed
    import onnxruntime as ort

    def run(m):
        session = ort.InferenceSession(m.SerializeToString(), onnx_prune.session_options(),
                                       providers=["CPUExecutionProvider"])
        return session.run(None, {"input": x})[0]

    dense = run(model)
    magnitude, _ = onnx_prune.prune(model, 0.7, auto_dense=False)
    assert np.linalg.norm(run(pruned) - dense) < 0.7 * np.linalg.norm(run(magnitude) - dense)


# ----------------------------------------------------------------------------- calibration files

def two_input_model():
    w = helper.make_tensor("W", 1, [4, 3], np.ones(12, np.float32).tolist())
    nodes = [helper.make_node("Gemm", ["X", "W"], ["g"], name="gemm"),
             helper.make_node("Add", ["g", "Y"], ["out"], name="add")]
    return make_model(nodes, [f32("X", ["batch", 4]), f32("Y", ["batch", 3])], [f32("out", ["batch", 3])], [w])


def _save(tmp_path, **arrays):
    path = tmp_path / "calib.npz"
    np.savez(path, **arrays)
    return path


def test_read_calibration_reads_checks_and_cuts(tmp_path):
    x, y = np.zeros((10, 4), np.float32), np.ones((10, 3), np.float32)
    read = read_calibration(_save(tmp_path, X=x, Y=y), two_input_model(), samples=6)
    assert read.arrays["X"].shape == (6, 4) and read.arrays["Y"].shape == (6, 3)
    assert (read.plan.samples, read.held) == (6, 10)
    same = read_calibration({"X": x, "Y": y}, two_input_model(), samples=6)  # a dict is read the same way
    assert all(np.array_equal(same.arrays[k], read.arrays[k]) for k in "XY") and same.held == 10


@pytest.mark.parametrize("arrays,message", [
    (dict(X=np.zeros((5, 4), np.float32)), r"calibration data lacks the model input 'Y' \(its inputs: X, Y\)"),
    (dict(X=np.zeros((5, 4), np.float32), Z=np.zeros(1)),
     r"calibration data lacks the model input 'Y' \(its inputs: X, Y; it also holds 'Z', not an input\)"),
    (dict(X=np.zeros((5, 4)), Y=np.zeros((5, 3), np.float32)), r"'X' is float64, the model input is float32"),
    (dict(X=np.zeros((5, 5), np.float32), Y=np.zeros((5, 3), np.float32)),
     r"'X' has shape \[5, 5\], which does not match the model input \[\?, 4\] \(first axis = samples\)"),
    (dict(X=np.zeros((5,), np.float32), Y=np.zeros((5, 3), np.float32)),
     r"'X' has shape \[5\], the model input has rank 2"),
    (dict(X=np.zeros((5, 4), np.float32), Y=np.zeros((6, 3), np.float32)),
     r"the inputs have different sample counts \(first axis\): X 5, Y 6"),
    (dict(X=np.zeros((0, 4), np.float32), Y=np.zeros((0, 3), np.float32)), r"holds no samples"),
])
def test_bad_calibration_files_are_one_clear_error(tmp_path, arrays, message):
    with pytest.raises(OnnxPruneError, match=message):
        read_calibration(_save(tmp_path, **arrays), two_input_model())


def test_unreadable_calibration_files(tmp_path):
    model = two_input_model()
    with pytest.raises(OnnxPruneError, match="calibration data '.*missing.npz' does not exist"):
        read_calibration(tmp_path / "missing.npz", model)
    text = tmp_path / "text.npz"
    text.write_text("not a zip archive")
    with pytest.raises(OnnxPruneError, match="calibration data '.*text.npz' is not a valid .npz"):
        read_calibration(text, model)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros((2, 4), np.float32))
    with pytest.raises(OnnxPruneError, match="is not a valid .npz: it holds a single array, not named arrays"):
        read_calibration(single, model)


def test_calibration_given_to_a_method_that_does_not_read_it_is_a_warning_with_a_pattern_too():
    model, layers, data = _mlp_case()
    with pytest.warns(UserWarning, match="calibration data is not used by --method magnitude"):
        _run(model, layers, data, 0.75, method="magnitude", pattern="4x1")


def test_api_checks_the_calibration_against_the_model(tmp_path):
    path = _save(tmp_path, wrong=np.zeros((4, DIMS[0]), np.float32))
    with pytest.raises(OnnxPruneError, match="lacks the model input 'input' .*it also holds 'wrong', not an input"):
        onnx_prune.prune(mlp(DIMS), 0.5, method="wanda", calibration=path)


def test_arrays_that_are_not_model_inputs_are_ignored_with_one_warning(tmp_path):
    x, y = np.zeros((10, 4), np.float32), np.ones((10, 3), np.float32)
    path = _save(tmp_path, X=x, labels=np.arange(10), Y=y, extra=np.zeros(3))
    with pytest.warns(UserWarning) as caught:
        data = read_calibration(path, two_input_model(), samples=6).arrays
    assert sorted(data) == ["X", "Y"] and data["X"].shape == (6, 4) and data["Y"].shape == (6, 3)
    assert [str(w.message) for w in caught] == [
        "calibration data: ignoring 'labels', 'extra', not an input of the model (its inputs: X, Y)"]


def test_api_progress_callback_hears_every_sparsegpt_layer_and_block():
    """The CLI's progress bar is api.prune's (message, done, total) callback: long SparseGPT runs
    must move it layer by layer and block by block, not only at the five api steps."""
    from onnx_prune.pruning.sparsegpt import BLOCK_SIZE

    dims = (2 * BLOCK_SIZE + 10, 8, 4)  # the first layer walks 3 blocks of inputs
    model = mlp(dims)
    calls = []
    onnx_prune.prune(model, 0.7, method="sparsegpt", calibration={"input": correlated_inputs(64, dims[0], 1)},
                     auto_dense=False, progress=lambda message, done, total: calls.append((message, done, total)))
    first = [(d, t) for m, d, t in calls if m == "sparsegpt: layer 1/2 /fc0/Gemm"]
    assert (1, 3) in first and (2, 3) in first and (3, 3) in first, calls
    assert ("sparsegpt: layer 1/2 /fc0/Gemm", 1, 2) in calls and ("sparsegpt: layer 2/2 /fc1/Gemm", 1, 2) in calls
    assert ("sparsegpt: layer 2/2 /fc1/Gemm", 2, 2) in calls
    assert calls.index(("sparsegpt: layer 2/2 /fc1/Gemm", 2, 2)) < [m for m, _, _ in calls].index(
        "rewriting 2 layers as SparseGemm")


def test_refit_gives_the_same_bits_with_any_number_of_worker_threads(monkeypatch):
    """refit_kept's batches go to threads, each system solved alone: the result must not depend
    on how many threads there are (nor equal a sloppier solve: checked against numpy per output)."""
    from onnx_prune.pruning import sparsegpt

    rng = np.random.default_rng(7)
    x = rng.standard_normal((200, 40))
    h = x.T @ x + 0.1 * np.eye(40)
    w = rng.standard_normal((40, 300))
    keep = rng.random((40, 300)) < rng.uniform(0.1, 0.9, 300)[None, :]   # kept counts differ per output
    monkeypatch.setattr(sparsegpt, "_REFIT_BYTES", 8 * 40 ** 2 * 5)      # many small batches
    results = []
    for workers in (1, 2, 3):
        monkeypatch.setattr(sparsegpt, "REFIT_WORKERS", workers)
        results.append(sparsegpt.refit_kept(w, h, keep))
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2])
    for n in range(0, 300, 37):
        s = keep[:, n]
        expected = np.zeros(40)
        if s.any():
            expected[s] = np.linalg.solve(h[np.ix_(s, s)], (h @ w[:, n])[s])
        np.testing.assert_allclose(results[0][:, n], expected, rtol=1e-9, atol=1e-9)
