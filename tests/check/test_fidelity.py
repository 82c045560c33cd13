"""Fidelity to the ORIGINAL model (check/fidelity.py): every verified prune says how far the pruned
model's outputs are from the dense input model's on the verification inputs (max relative error,
mean cosine along the last axis, top-1 agreement for [rows, classes] outputs), in the report, the
JSON, the CLI's summary and ``eval``; a warning when it is poor. Each number is compared with a
numpy forward pass of the original and of the masked weights, computed here independently."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_prune
from onnx_prune.check.fidelity import POOR_COSINE, POOR_TOP1, OutputFidelity, mean_cosine

from helpers_models import (attention_block, attention_forward, f32, make_model, mlp, mlp_forward, mlp_reference,
                            mlp_weights_kn, numpy_cosines)
from test_cli import cli, cli_inproc


def numpy_rel_error(reference: np.ndarray, actual: np.ndarray) -> float:
    return float(np.abs(reference - actual).max() / np.abs(reference).max())


def _x(rows: int = 64, k: int = 20, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, k)).astype(np.float32)


@pytest.mark.parametrize("ratio", [0.3, 0.9])
def test_fidelity_of_a_classifier_against_numpy(ratio: float):
    model, x = mlp(), _x()
    _, report = onnx_prune.prune(model, ratio, verify=True, verify_inputs={"input": x}, auto_dense=False)
    original = mlp_forward(model, x, [np.ones_like(w, bool) for w in mlp_weights_kn(model)])
    pruned = mlp_reference(model, x, ratio)
    f = report.fidelity.outputs["logits"]
    assert f.cosine == pytest.approx(float(numpy_cosines(original, pruned).mean()), abs=1e-5)
    assert f.max_rel_error == pytest.approx(numpy_rel_error(original, pruned), rel=1e-4)
    assert f.top1_agreement == float((original.argmax(1) == pruned.argmax(1)).mean())
    assert report.fidelity.inputs == "given inputs"
    assert 0 < f.max_rel_error and f.cosine < 1  # the pruned model really differs from the original
    assert report.verification.passed and report.verification.max_rel_error < 1e-4  # the kernel check, apart


def test_fidelity_of_an_embedding_output_is_the_mean_cosine_along_its_last_axis():
    model, params = attention_block()
    x = np.random.default_rng(5).standard_normal((3, 6, 16)).astype(np.float32)
    _, report = onnx_prune.prune(model, 0.5, verify=True, verify_inputs={"X": x}, auto_dense=False)
    f = report.fidelity.outputs["Y"]
    original, pruned = attention_forward(x, params, 0.0), attention_forward(x, params, 0.5)
    assert f.cosine == pytest.approx(float(numpy_cosines(original, pruned).mean()), abs=1e-5)
    assert f.max_rel_error == pytest.approx(numpy_rel_error(original, pruned), rel=1e-4)
    assert f.top1_agreement is None  # [batch, seq, d] is not a classifier's output


def test_a_pooled_embedding_is_judged_by_its_cosine_not_as_a_classifier():
    """[batch, d] made by a mean over the sequence (as a sentence embedding is): no top-1 agreement,
    its argmax means nothing; poor or not by its cosine."""
    block, params = attention_block()
    graph = block.graph
    pooled = onnx.helper.make_node("ReduceMean", ["Y"], ["pooled"], axes=[1], keepdims=0)
    model = make_model([*graph.node, pooled], list(graph.input), [f32("pooled", ["batch", 16])],
                       list(graph.initializer))
    x = np.random.default_rng(6).standard_normal((5, 6, 16)).astype(np.float32)
    _, report = onnx_prune.prune(model, 0.5, verify=True, verify_inputs={"X": x}, auto_dense=False)
    f = report.fidelity.outputs["pooled"]
    original, pruned = attention_forward(x, params, 0.0).mean(1), attention_forward(x, params, 0.5).mean(1)
    assert f.top1_agreement is None
    assert f.cosine == pytest.approx(float(numpy_cosines(original, pruned).mean()), abs=1e-5)
    assert report.fidelity.poor == (f.cosine < POOR_COSINE)


def test_poor_fidelity_warns_and_good_fidelity_does_not():
    model, x = mlp(), _x()
    with pytest.warns(UserWarning, match=r"far from the original on given inputs: 'logits' cosine"):
        _, report = onnx_prune.prune(model, 0.9, verify=True, verify_inputs={"input": x})
    f = report.fidelity.outputs["logits"]
    assert report.fidelity.poor and f.top1_agreement < POOR_TOP1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, report = onnx_prune.prune(model, 0.05, verify=True, verify_inputs={"input": x}, auto_dense=False)
    f = report.fidelity.outputs["logits"]
    assert not report.fidelity.poor and f.cosine >= POOR_COSINE and f.top1_agreement >= POOR_TOP1


def test_a_classifier_is_judged_by_its_answers_other_outputs_by_their_cosine():
    assert not OutputFidelity(max_rel_error=0.7, cosine=0.88, top1_agreement=0.97).poor  # logits shifted, same answers
    assert OutputFidelity(max_rel_error=0.1, cosine=0.99, top1_agreement=POOR_TOP1 - 0.01).poor
    assert OutputFidelity(max_rel_error=0.5, cosine=POOR_COSINE - 0.01).poor
    assert not OutputFidelity(max_rel_error=0.5, cosine=POOR_COSINE).poor
    assert OutputFidelity(max_rel_error=0.0, cosine=float("nan")).poor


def test_the_warning_on_generated_inputs_says_how_to_measure_on_real_ones():
    with pytest.warns(UserWarning, match=r"on generated inputs \(input \[4, 20\] normal\): 'logits' .* these inputs "
                                         r"are generated and may not resemble real data: measure on real inputs with "
                                         r"--inputs data\.npz"):
        onnx_prune.prune(mlp(), 0.9, verify=True)


def test_mean_cosine_conventions():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0], [0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    # orthogonal 0, both zero 1 (they agree), same 1, zero against non-zero 0
    assert mean_cosine(a, b) == pytest.approx((0 + 1 + 1 + 0) / 4)
    assert np.isnan(mean_cosine(np.array([np.nan, 1.0]), np.array([1.0, 1.0])))


def test_cli_prints_the_kernel_check_and_the_fidelity_and_writes_them_to_json(tmp_path: Path):
    model = mlp()
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    x = _x(40)
    np.savez(tmp_path / "x.npz", input=x)
    report_path = tmp_path / "r.json"
    done = cli(str(path), str(tmp_path / "o.onnx"), "--ratio", "0.9", "--inputs", str(tmp_path / "x.npz"),
               "--report-json", str(report_path))
    assert done.returncode == 0, done.stderr
    assert "kernel check passed: max relative error" in done.stdout
    assert "against the input model with the same masks" in done.stdout
    assert "fidelity to the original model, output 'logits': cosine" in done.stdout
    assert "fidelity poor" in done.stdout
    assert "warning: the pruned model is far from the original" in done.stderr
    report = json.loads(report_path.read_text())
    original = mlp_forward(model, x, [np.ones_like(w, bool) for w in mlp_weights_kn(model)])
    pruned = mlp_reference(model, x, 0.9)
    logits = report["fidelity"]["outputs"]["logits"]
    assert logits["cosine"] == pytest.approx(float(numpy_cosines(original, pruned).mean()), abs=1e-5)
    assert logits["top1_agreement"] == float((original.argmax(1) == pruned.argmax(1)).mean())
    assert report["fidelity"]["poor_outputs"] == ["logits"]
    assert report["fidelity"]["thresholds"] == {"cosine": POOR_COSINE, "top1_agreement": POOR_TOP1}
    assert report["verification"]["passed"] and "fidelity" not in report["verification"]


def test_cli_without_verification_reports_no_fidelity(tmp_path: Path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), str(path))
    done = cli_inproc(str(path), str(tmp_path / "o.onnx"), "--no-verify", "--report-json", str(tmp_path / "r.json"))
    assert done.exit_code == 0
    assert "fidelity" not in done.stdout and json.loads((tmp_path / "r.json").read_text())["fidelity"] is None


def test_eval_rows_carry_the_fidelity_to_the_dense_model(tmp_path: Path, monkeypatch):
    from onnx_prune.measure.evaluate import run_eval_cli

    model = mlp((20, 32, 24, 6))
    x = _x(200)
    original = mlp_forward(model, x, [np.ones_like(w, bool) for w in mlp_weights_kn(model)])
    labels = original.argmax(1)
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", input=x, labels=labels)
    (row,) = run_eval_cli(str(tmp_path / "m.onnx"), str(tmp_path / "d.npz"), [0.8], batch=8, baselines=["none"])
    pruned = mlp_reference(model, x, 0.8)
    assert row["top1_agreement"] == float((pruned.argmax(1) == labels).mean()) == row["pruned_accuracy"]
    assert row["cosine"] == pytest.approx(float(numpy_cosines(original, pruned).mean()), abs=1e-5)
    assert row["max_rel_error"] == pytest.approx(numpy_rel_error(original, pruned), rel=1e-4)
