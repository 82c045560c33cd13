"""--recover with torch installed (the extra onnx-prune[recover]; skipped without it): the torch
graph computes what onnxruntime computes, recovery brings the pruned model's outputs closer to a
numpy reference of the dense model with every pattern / values / quantize setting, the pruned
weights stay exactly zero, an op the converter lacks is named and nothing is written, SIGINT
leaves nothing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

torch = pytest.importorskip("torch")

import onnx_prune  # noqa: E402
from onnx_prune.sparse_gemm.densify import densify_model  # noqa: E402
from onnx_prune.recover import RecoverOptions  # noqa: E402
from onnx_prune.recover.torch_graph import TorchGraph  # noqa: E402

from helpers_models import attention_block, f32, make_model, mlp, mlp_forward, mlp_weights_kn  # noqa: E402
from test_cli import cli_inproc, one_line_error  # noqa: E402

FEW_STEPS = RecoverOptions(epochs=40, lr=3e-3, batch_size=32, patience=40, threads=1)


def run_model(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), onnx_prune.session_options(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def dense_weights(pruned: onnx.ModelProto) -> list[np.ndarray]:
    """W [K, N] of each layer of a pruned mlp(), zeros written out (densify)."""
    return mlp_weights_kn(densify_model(pruned))


@pytest.fixture(scope="module")
def wide_mlp() -> onnx.ModelProto:
    return mlp((24, 48, 48, 6), seed=3)


def inputs(n: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)


# ----------------------------------------------------------------------------- recovery's outcome

@pytest.mark.parametrize("settings", [
    dict(ratio=0.8),
    dict(ratio=0.85, scope="global", method="sparsegpt"),
    dict(ratio=0.75, pattern="4x1"),
    dict(ratio=0.5, pattern="2:4", method="wanda"),
    dict(ratio=0.8, values="fp16"),
    dict(ratio=0.8, quantize="dynamic"),
], ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_recovery_brings_outputs_closer_to_the_dense_model(wide_mlp, settings):
    calibration = {"input": inputs(512, 24, seed=1)}
    test = inputs(256, 24, seed=2)
    dense = mlp_forward(wide_mlp, test, [np.ones_like(w, dtype=bool) for w in mlp_weights_kn(wide_mlp)])
    one_shot, _ = onnx_prune.prune(wide_mlp, calibration=calibration if "method" in settings else None,
                                   auto_dense=False, **settings)
    recovered, report = onnx_prune.prune(wide_mlp, calibration=calibration, auto_dense=False, recover=FEW_STEPS,
                                         verify=True, **settings)
    before = relative_error(run_model(one_shot, {"input": test})[0], dense)
    after = relative_error(run_model(recovered, {"input": test})[0], dense)
    assert after < 0.9 * before, (before, after)
    # the pruned weights are exactly the one-shot's zeros; no kept weight was added
    for w_one_shot, w_recovered in zip(dense_weights(one_shot), dense_weights(recovered)):
        assert np.all(w_recovered[w_one_shot == 0] == 0)
        assert np.count_nonzero(w_recovered) <= np.count_nonzero(w_one_shot)
        assert not np.array_equal(w_recovered, w_one_shot)
    r = report.recovery
    (name, b), = r.fidelity_before.items()
    assert name == "logits" and r.fidelity_after[name]["relative_error"] < b["relative_error"]
    assert r.fidelity_after[name]["cosine"] > b["cosine"] and r.held_out_loss_after < r.held_out_loss_before
    assert r.train_samples + r.held_out_samples == 512 and r.held_out_samples == 51
    assert report.verification.passed


@pytest.mark.parametrize("layer_weight", [0.0, 1.0])
def test_recovery_of_a_transformer_block_and_its_masks(layer_weight: float):
    """MatMul + Add projections, attention MatMuls between activations, Softmax, a residual; with
    and without matching each pruned layer's output too."""
    model, p = attention_block(d=16, ff=32, seed=1)
    rng = np.random.default_rng(4)
    calibration = {"X": rng.standard_normal((256, 6, 16)).astype(np.float32)}
    test = rng.standard_normal((64, 6, 16)).astype(np.float32)
    dense = run_model(model, {"X": test})[0]
    one_shot, _ = onnx_prune.prune(model, 0.7, auto_dense=False)
    options = RecoverOptions(**{**vars(FEW_STEPS), "layer_weight": layer_weight})
    recovered, report = onnx_prune.prune(model, 0.7, auto_dense=False, calibration=calibration, recover=options)
    before = relative_error(run_model(one_shot, {"X": test})[0], dense)
    after = relative_error(run_model(recovered, {"X": test})[0], dense)
    assert after < 0.8 * before, (before, after)
    kept = {t.name: numpy_helper.to_array(t) for t in densify_model(recovered).graph.initializer}
    masks = {t.name: numpy_helper.to_array(t) != 0 for t in densify_model(one_shot).graph.initializer}
    for name in ("Wq", "Wk", "Wv", "Wo", "W1", "W2"):
        assert np.all(kept[name][~masks[name]] == 0), name
    assert report.recovery.steps > 0 and list(report.recovery.fidelity_after) == ["Y"]


def test_no_better_epoch_keeps_the_one_shot_weights(wide_mlp):
    """With a learning rate far too high every epoch is worse: the one-shot weights stay."""
    calibration = {"input": inputs(128, 24, seed=1)}
    one_shot, _ = onnx_prune.prune(wide_mlp, 0.8)
    options = RecoverOptions(epochs=3, lr=50.0, batch_size=32, patience=1, threads=1)
    recovered, report = onnx_prune.prune(wide_mlp, 0.8, calibration=calibration, recover=options)
    assert report.recovery.best_epoch == 0 and report.recovery.stopped_early
    for a, b in zip(dense_weights(one_shot), dense_weights(recovered)):
        np.testing.assert_array_equal(a, b)


FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.mark.filterwarnings("ignore:no standard-op fallback embedded")  # gemm_opset7: expected, tested elsewhere
@pytest.mark.parametrize("name", ["torch_mlp", "torch_shared_weight", "torch_constant_weights",
                                  "torch_transformer_block", "gemm_opset7"])
def test_recovery_of_exported_models(name: str):
    """Files as exporters write them (shared weights, Constant-node weights, LayerNormalization,
    opset 7): inputs drawn like the fixture's own, outputs against onnxruntime's dense run."""
    model = onnx.load(str(FIXTURES / f"{name}.onnx"))
    example = {k: v for k, v in np.load(FIXTURES / f"{name}.npz").items() if not k.startswith("expected:")}
    (input_name, sample), = example.items()
    rng = np.random.default_rng(7)

    def draw(n: int) -> np.ndarray:
        return (rng.standard_normal((n, *sample.shape[1:])) * sample.std() + sample.mean()).astype(np.float32)

    calibration, test = {input_name: draw(384)}, {input_name: draw(128)}
    dense = run_model(model, test)[0]
    one_shot, _ = onnx_prune.prune(model, 0.8, auto_dense=False)
    recovered, report = onnx_prune.prune(model, 0.8, auto_dense=False, calibration=calibration, recover=FEW_STEPS,
                                         verify=True)
    before = relative_error(run_model(one_shot, test)[0], dense)
    after = relative_error(run_model(recovered, test)[0], dense)
    # a lone layer on inputs with little correlation has little to gain (the masked weights are
    # nearly the least-squares optimum already): gemm_opset7 gains ~9%
    assert after < 0.95 * before, (before, after)
    assert report.verification.passed


def test_a_real_model_with_ops_the_converter_lacks_is_refused():
    model = onnx.load(str(FIXTURES / "sklearn_mlp.onnx"))
    calibration = {"X": np.load(FIXTURES / "sklearn_mlp.npz")["X"]}
    with pytest.raises(onnx_prune.OnnxPruneError, match=r"--recover cannot convert op (ArgMax|ai\.onnx\.ml\.\w+) "
                                                         r"\(node [^)]+\) to torch \(and \d+ more nodes\)"):
        onnx_prune.prune(model, 0.8, calibration=calibration, recover=True)


# ----------------------------------------------------------------------------- the converter

def test_torch_graph_computes_what_onnxruntime_computes():
    """The ops of transformer encoders, shape arithmetic included, against onnxruntime."""
    rng = np.random.default_rng(0)
    d, heads = 8, 2
    inits = {"w": rng.standard_normal((d, d)).astype(np.float32), "scale": np.ones(d, np.float32) * 1.5,
             "shift": rng.standard_normal(d).astype(np.float32), "table": rng.standard_normal((10, d)).astype(np.float32),
             "two": np.array(2.0, np.float32), "half": np.array(0.5, np.float32), "axes": np.array([-1], np.int64),
             "heads": np.array([heads, d // heads], np.int64), "zero_i": np.array([0], np.int64),
             "one_i": np.array([1], np.int64), "last": np.array([2], np.int64)}
    n = helper.make_node
    nodes = [
        n("Gather", ["table", "ids"], ["emb"], name="gather"),
        n("Add", ["emb", "x"], ["h0"], name="add"),
        n("LayerNormalization", ["h0", "scale", "shift"], ["ln"], axis=-1, epsilon=1e-5, name="ln"),
        n("MatMul", ["ln", "w"], ["mm"], name="mm"),
        n("Shape", ["mm"], ["shape"], name="shape"),
        n("Slice", ["shape", "zero_i", "one_i"], ["batch_dim"], name="slice_shape"),
        n("Slice", ["shape", "one_i", "last"], ["seq_dim"], name="slice_seq"),
        n("Concat", ["batch_dim", "seq_dim", "heads"], ["split_shape"], axis=0, name="concat"),
        n("Reshape", ["mm", "split_shape"], ["split"], name="reshape"),
        n("Transpose", ["split"], ["heads_first"], perm=[0, 2, 1, 3], name="transpose"),
        n("Softmax", ["heads_first"], ["sm"], axis=-1, name="softmax"),
        n("Div", ["mm", "two"], ["halved"], name="div"),
        n("Erf", ["halved"], ["erf"], name="erf"),
        n("Mul", ["erf", "half"], ["gelu_like"], name="mul"),
        n("Pow", ["gelu_like", "two"], ["sq"], name="pow"),
        n("ReduceMean", ["sq"], ["mean"], axes=[-1], keepdims=1, name="reduce"),
        n("Sqrt", ["mean"], ["rms"], name="sqrt"),
        n("Unsqueeze", ["rms", "axes"], ["rms4"], name="unsqueeze"),
        n("Squeeze", ["rms4", "axes"], ["rms3"], name="squeeze"),
        n("Tanh", ["rms3"], ["out2"], name="tanh"),
        n("Flatten", ["sm"], ["out1"], axis=2, name="flatten"),
    ]
    model = make_model(nodes, [f32("x", ["b", "s", d]), helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["b", "s"])],
                       [f32("out1", None), f32("out2", None)],
                       [numpy_helper.from_array(v, k) for k, v in inits.items()], opset=17)
    feeds = {"x": rng.standard_normal((3, 5, d)).astype(np.float32), "ids": rng.integers(0, 10, (3, 5))}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = TorchGraph(model)({k: torch.from_numpy(v) for k, v in feeds.items()})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-5, atol=1e-5)


def test_torch_graph_computes_the_attention_mask_logic_of_an_export():
    """Comparisons and boolean logic (what torch.onnx writes for BERT's attention mask) against onnxruntime."""
    rng = np.random.default_rng(1)
    n = helper.make_node
    nodes = [
        n("GreaterOrEqual", ["x", "y"], ["ge"], name="ge"), n("LessOrEqual", ["x", "y"], ["le"], name="le"),
        n("IsNaN", ["x"], ["nan"], name="isnan"), n("Not", ["nan"], ["finite"], name="not"),
        n("And", ["ge", "finite"], ["keep"], name="and"), n("Or", ["keep", "le"], ["any"], name="or"),
        n("Where", ["keep", "x", "y"], ["chosen"], name="where"),
        n("Cast", ["any"], ["any_f"], to=onnx.TensorProto.FLOAT, name="cast"),
        n("Add", ["chosen", "any_f"], ["out"], name="add"),
    ]
    model = make_model(nodes, [f32("x", ["b", 6]), f32("y", ["b", 6])], [f32("out", None)], [], opset=17)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    x[0, 1] = x[2, 5] = np.nan
    y = np.where(rng.random((4, 6)) < 0.3, x, rng.standard_normal((4, 6))).astype(np.float32)  # some ties
    feeds = {"x": x, "y": y}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = TorchGraph(model)({k: torch.from_numpy(v) for k, v in feeds.items()})
    np.testing.assert_array_equal(got[0].numpy(), want[0])


def test_an_op_the_converter_lacks_is_named_and_nothing_is_written(tmp_path: Path):
    model = mlp()
    model.graph.node.append(helper.make_node("Hardmax", ["logits"], ["picked"], name="pick"))
    model.graph.output[0].name = "picked"
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(path))
    calibration = tmp_path / "c.npz"
    np.savez(calibration, input=inputs(16, 20, seed=0))
    done = cli_inproc(str(path), str(out), "--recover", "--calibration", str(calibration),
                      "--report-json", str(tmp_path / "r.json"))
    assert done.exit_code == 1
    one_line_error(done.stderr, "error: --recover cannot convert op Hardmax (node pick) to torch; "
                                "prune without --recover")
    assert sorted(os.listdir(tmp_path)) == ["c.npz", "m.onnx"]


# ----------------------------------------------------------------------------- the command

def test_cli_recover_reports_fidelity_and_prints_epoch_lines(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ONNX_PRUNE_PROGRESS_INTERVAL", "0")  # every progress event a line (progress_lines.py)
    path, out, report = tmp_path / "m.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(mlp((24, 48, 48, 6), seed=3), str(path))
    calibration = tmp_path / "c.npz"
    np.savez(calibration, input=inputs(256, 24, seed=1))
    done = cli_inproc(str(path), str(out), "--calibration", str(calibration), "--recover", "--recover-epochs", "3",
                      "--recover-batch", "32", "--recover-threads", "1", "--report-json", str(report))
    assert done.exit_code == 0, done.stderr
    epoch_lines = [l for l in done.stderr.splitlines() if "recovering: epoch" in l and "held-out" in l]
    assert len(epoch_lines) == 3, done.stderr
    assert "fidelity to dense on 26 held-out samples, output logits: cosine" in done.stdout
    data = json.loads(report.read_text())["recovery"]
    assert data["train_samples"] == 230 and data["options"]["epochs"] == 3
    assert data["fidelity_after"]["logits"]["relative_error"] < data["fidelity_before"]["logits"]["relative_error"]
    assert data["options"]["batch_size"] == 32


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_during_recovery_leaves_nothing(tmp_path: Path):
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(mlp((24, 48, 48, 6), seed=3), str(path))
    calibration = tmp_path / "c.npz"
    np.savez(calibration, input=inputs(4096, 24, seed=1))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]),
           "ONNX_PRUNE_PROGRESS_INTERVAL": "0"}  # progress lines at once (progress_lines.py)
    proc = subprocess.Popen([sys.executable, "-m", "onnx_prune.cli", str(path), str(out), "--calibration",
                             str(calibration), "--recover", "--recover-epochs", "1000", "--recover-batch", "8",
                             "--recover-threads", "1", "--report-json", str(tmp_path / "r.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stderr:  # an epoch summary: recovery is under way
            if "recovering: epoch" in line and "held-out" in line:
                break
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "error: interrupted; nothing was written" in err
    assert sorted(os.listdir(tmp_path)) == ["c.npz", "m.onnx"]
