"""Bias compensation (bias.py, --bias-correction) through the whole pipeline: SparseGPT's new bias
is the least-squares one (the pruned layer's mean output on the calibration data equals the dense
layer's), it is written where the layer reads it (Gemm's C scaled by alpha / beta, the fused Add,
a new bias for layers without one, a new initializer when the bias is shared), verification's
reference carries it, and layers where it would not be exact keep their bias with a warning."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnx_prune
from helpers_models import M, f32, gemm, make_model, matmul
from onnx_prune.pruning import bias as bias_terms
from onnx_prune.model.layers import find_layers
from onnx_prune.runtime.session import open_session, run

K, N = 24, 10


def shifted_inputs(samples: int, k: int, seed: int = 3) -> np.ndarray:
    """Inputs with a large mean: pruning then shifts the outputs' mean, which the bias can undo."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((samples, k)) + 2.0).astype(np.float32)


def outputs(model: onnx.ModelProto, feeds: dict, library: bool) -> np.ndarray:
    return run(open_session(model, library=library), feeds)[0]


def prune_with_bias(model, x, name, **kw):
    options = dict(method="sparsegpt", calibration={name: x}, auto_dense=False, verify=True, bias_correction=True,
                   verify_inputs={name: x[:M]})
    options.update(kw)
    return onnx_prune.prune(model, 0.7, **options)


def assert_mean_output_kept(model, pruned, x, name):
    """The compensated layer's mean output over the calibration data is the dense layer's."""
    dense = np.concatenate([outputs(model, {name: x[i:i + M]}, False).reshape(-1, N) for i in range(0, len(x), M)])
    got = np.concatenate([outputs(pruned, {name: x[i:i + M]}, True).reshape(-1, N) for i in range(0, len(x), M)])
    scale = np.abs(dense).mean()
    np.testing.assert_allclose(got.mean(0), dense.mean(0), atol=1e-4 * scale)
    assert np.abs(got - dense).mean() > 1e-3 * scale  # pruning did change the outputs


@pytest.mark.parametrize("case", ["C [N]", "no C", "alpha 2 beta 0.5", "C [M, N]", "C [M, 1]", "C [1]"])
def test_gemm_bias_is_compensated_exactly(case):
    shape = {"C [N]": [N], "no C": None, "alpha 2 beta 0.5": [N], "C [M, N]": [M, N], "C [M, 1]": [M, 1],
             "C [1]": [1]}[case]
    alpha, beta = (2.0, 0.5) if case.startswith("alpha") else (1.0, 1.0)
    model, _ = gemm(K, N, bias_shape=shape, alpha=alpha, beta=beta)
    x = shifted_inputs(M * 40, K)
    pruned, report = prune_with_bias(model, x, "A")
    assert report.verification.passed
    assert_mean_output_kept(model, pruned, x, "A")


@pytest.mark.parametrize("bias_shape", [(None,), (N,), (1, 1, N)])
def test_matmul_bias_is_compensated_exactly(bias_shape):
    model, _ = matmul(K, N, a_rank=2, bias_shape=bias_shape)
    x = shifted_inputs(M * 40, K)
    pruned, report = prune_with_bias(model, x, "X")
    assert report.verification.passed
    assert_mean_output_kept(model, pruned, x, "X")


def test_a_shared_bias_keeps_its_value_for_the_other_reader():
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((2, K, N)).astype(np.float32)
    c = rng.standard_normal(N).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["A", "W1", "C"], ["Y1"], name="g1"),
             helper.make_node("Gemm", ["A", "W2", "C"], ["Y2"], name="g2")]
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2"), numpy_helper.from_array(c, "C")]
    model = make_model(nodes, [f32("A", [M, K])], [f32("Y1", [M, N]), f32("Y2", [M, N])], inits)
    x = shifted_inputs(M * 40, K)
    pruned, report = prune_with_bias(model, x, "A", include=["g1"])
    assert report.verification.passed
    inits_after = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    assert np.array_equal(inits_after["C"], c)  # g2 still reads the original
    g1 = next(n for n in pruned.graph.node if n.name == "g1")
    assert g1.input[-1] != "C" and not np.array_equal(inits_after[g1.input[-1]], c)
    second = run(open_session(pruned, library=True), {"A": x[:M]})[1]
    np.testing.assert_allclose(second, x[:M] @ w2 + c, rtol=1e-5, atol=1e-5)


def test_a_computed_c_keeps_its_bias_with_a_warning():
    model, _ = gemm(K, N, bias_shape=[M, N], c_as_input=True)
    x = shifted_inputs(M * 20, K)
    c = np.random.default_rng(1).standard_normal((len(x), N)).astype(np.float32)
    with pytest.warns(UserWarning, match="bias correction skipped for layer gemm: its bias C 'C' is computed"):
        pruned, _ = onnx_prune.prune(model, 0.7, method="sparsegpt", calibration={"A": x, "C": c}, auto_dense=False,
                                     bias_correction=True)
    node = next(n for n in pruned.graph.node if n.name == "gemm")
    assert node.input[-1] == "C"


def test_beta_zero_is_not_exact():
    model, _ = gemm(K, N, bias_shape=[N], beta=0.0)
    assert "beta = 0" in bias_terms.problem(find_layers(model)[0][0])


def test_no_bias_correction_leaves_the_bias_alone():
    model, params = gemm(K, N, bias_shape=[N])
    x = shifted_inputs(M * 20, K)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pruned, _ = onnx_prune.prune(model, 0.7, method="sparsegpt", calibration={"A": x}, auto_dense=False,
                                     bias_correction=False)
    node = next(n for n in pruned.graph.node if n.name == "gemm")
    inits = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    assert np.array_equal(inits[node.input[-1]], params["C"])


def test_the_cli_option_reaches_the_pipeline(tmp_path):
    from typer.testing import CliRunner

    from onnx_prune.cli import app, with_default_subcommand

    model, params = gemm(K, N, bias_shape=[N])
    src, calib = tmp_path / "in.onnx", tmp_path / "calib.npz"
    onnx.save(model, src)
    np.savez(calib, A=shifted_inputs(M * 20, K))
    biases = {}
    for flag in ("--bias-correction", "--no-bias-correction"):
        out = tmp_path / f"{flag}.onnx"
        args = [str(src), str(out), "--method", "sparsegpt", "--calibration", str(calib), "--ratio", "0.7",
                "--no-auto-dense", "-q", flag]
        result = CliRunner().invoke(app, with_default_subcommand(args))
        assert result.exit_code == 0, result.output
        pruned = onnx.load(out)
        node = next(n for n in pruned.graph.node if n.name == "gemm")
        biases[flag] = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}[node.input[-1]]
    assert np.array_equal(biases["--no-bias-correction"], params["C"])
    assert not np.allclose(biases["--bias-correction"], params["C"])
