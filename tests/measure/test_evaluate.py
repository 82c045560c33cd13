"""evaluate.py: accuracy against a numpy forward pass of the same weights, sweep rows against a
numpy masked-dense reference, plot/JSON output, and bad evaluation data as one clear error."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers_models import IR_VERSION
from onnx_prune.errors import OnnxPruneError
from onnx_prune.measure.evaluate import ROW_KEYS, evaluate_accuracy, plot_sweep, run_eval_cli, sweep

SIZES = (12, 48, 40, 5)


def make_mlp(seed: int = 0) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """Gemm(transB=1) + Relu stack the way torch.onnx writes nn.Linear; weights [out, in]."""
    rng = np.random.default_rng(seed)
    params, nodes, inits, current = [], [], [], "input"
    for i, (k, n) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        w, b = rng.standard_normal((n, k)).astype(np.float32), rng.standard_normal(n).astype(np.float32) * 0.1
        params += [w, b]
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
        out = "logits" if i == len(SIZES) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"fc{i}.weight", f"fc{i}.bias"], [out], name=f"/fc{i}/Gemm",
                                      transB=1))
        current = out
        if i < len(SIZES) - 2:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"/relu{i}/Relu"))
            current = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", SIZES[0]])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", SIZES[-1]])],
                              initializer=inits)
    return helper.make_model(graph, ir_version=IR_VERSION, opset_imports=[helper.make_opsetid("", 17)]), params


def numpy_logits(params: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    h = x.astype(np.float64)
    for i in range(0, len(params), 2):
        h = h @ params[i].T.astype(np.float64) + params[i + 1]
        if i + 2 < len(params):
            h = np.maximum(h, 0)
    return h


def magnitude_masked(params: list[np.ndarray], ratio: float) -> list[np.ndarray]:
    """Per-layer: zero the floor(ratio * size) smallest |w| of each weight (biases untouched)."""
    out = []
    for i, p in enumerate(params):
        if i % 2 == 0:
            drop = int(math.floor(ratio * p.size + 1e-9))
            order = np.argsort(np.abs(p).ravel(), kind="stable")
            flat = p.ravel().copy()
            flat[order[:drop]] = 0
            p = flat.reshape(p.shape)
        out.append(p)
    return out


@pytest.fixture()
def mlp_and_data(tmp_path: Path):
    """A model plus labels that agree with it on about two thirds of the samples (accuracy is
    neither 0 nor 1, so a wrong argmax axis or misaligned rows shows)."""
    model, params = make_mlp()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, SIZES[0])).astype(np.float32)
    labels = numpy_logits(params, x).argmax(axis=1)
    noisy = rng.random(len(labels)) < 0.35
    labels[noisy] = rng.integers(0, SIZES[-1], noisy.sum())
    model_path, data_path = tmp_path / "mlp.onnx", tmp_path / "data.npz"
    onnx.save(model, str(model_path))
    np.savez(data_path, input=x, labels=labels.astype(np.int64))
    return model, params, model_path, data_path, x, labels


def test_accuracy_matches_numpy_forward_for_path_and_proto(mlp_and_data):
    model, params, model_path, data_path, x, labels = mlp_and_data
    expected = float((numpy_logits(params, x).argmax(axis=1) == labels).mean())
    assert 0.3 < expected < 0.95
    assert evaluate_accuracy(model_path, data_path) == pytest.approx(expected, abs=1e-12)
    assert evaluate_accuracy(model, {"input": x, "labels": labels}) == pytest.approx(expected, abs=1e-12)


def test_accuracy_over_several_chunks(mlp_and_data, monkeypatch):
    import onnx_prune.measure.evaluate as evaluate

    model, params, _, data_path, x, labels = mlp_and_data
    monkeypatch.setattr(evaluate, "EVAL_CHUNK", 7)
    expected = float((numpy_logits(params, x).argmax(axis=1) == labels).mean())
    assert evaluate_accuracy(model, data_path) == pytest.approx(expected, abs=1e-12)


def test_sweep_rows_against_numpy_masked_reference(mlp_and_data, library_path):
    _, params, model_path, data_path, x, labels = mlp_and_data
    rows = sweep(model_path, data_path, [0.0, 0.7], batch=16, threads=1, rounds=1, runs=1)
    assert [(r["method"], r["ratio"]) for r in rows] == [("magnitude", 0.0), ("magnitude", 0.7)]
    dense = float((numpy_logits(params, x).argmax(axis=1) == labels).mean())
    for row in rows:
        assert set(row) == set(ROW_KEYS)
        assert row["dense_accuracy"] == pytest.approx(dense, abs=1e-12)
        assert row["dense_ms"] > 0 and row["pruned_ms"] > 0
        assert row["speedup"] == pytest.approx(row["dense_ms"] / row["pruned_ms"])
        assert (row["batch"], row["threads"]) == (16, 1)
    unpruned, pruned = rows
    assert unpruned["pruned_accuracy"] == unpruned["dense_accuracy"] and unpruned["sparse_layers"] == 0
    assert unpruned["sparsity"] == 0.0
    masked = float((numpy_logits(magnitude_masked(params, 0.7), x).argmax(axis=1) == labels).mean())
    assert pruned["pruned_accuracy"] == pytest.approx(masked, abs=1e-12)
    assert pruned["accuracy_drop"] == pytest.approx(dense - masked)
    assert pruned["sparse_layers"] == 3 and pruned["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert pruned["size_before"] == unpruned["size_before"] > 0 and pruned["size_after"] > 0


def test_run_eval_cli_writes_json_and_png(mlp_and_data, library_path, tmp_path, capsys):
    _, _, model_path, data_path, _, _ = mlp_and_data
    png, js = tmp_path / "s.png", tmp_path / "s.json"
    rows = run_eval_cli(str(model_path), str(data_path), [0.5], methods=["magnitude"], batch=8, threads=1,
                        png=str(png), json_path=str(js), calibration=None)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(js.read_text())
    assert doc["rows"] == json.loads(json.dumps(rows)) and doc["batch"] == 8 and doc["machine"]
    printed = capsys.readouterr().out
    assert "magnitude" in printed and "0.50" in printed
    assert printed.splitlines()[-2:] == [f"wrote {png}", f"wrote {js}"]


def test_eval_int8_point_is_onnxruntimes_accuracy_of_the_quantized_model(mlp_and_data, library_path, tmp_path):
    from onnxruntime import InferenceSession
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _, _, model_path, data_path, x, labels = mlp_and_data
    png, js = tmp_path / "s.png", tmp_path / "s.json"
    run_eval_cli(str(model_path), str(data_path), [0.5, 0.8], batch=8, threads=1, png=str(png), json_path=str(js),
                 baselines=["int8"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(js.read_text())
    (point,) = doc["baselines"]
    quantize_dynamic(str(model_path), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8)
    scores = InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    expected = float((scores.argmax(axis=1) == labels).mean())
    assert point["baseline"] == "int8" and "per_channel=False" in point["what"]
    assert point["accuracy"] == pytest.approx(expected, abs=1e-12)
    assert point["accuracy_drop"] == pytest.approx(doc["rows"][0]["dense_accuracy"] - expected)
    assert point["ms"] > 0 and point["speedup"] == pytest.approx(point["dense_ms"] / point["ms"])
    assert 0 < point["max_rel_error"]["logits"] < 0.1


def test_eval_without_baseline(mlp_and_data, library_path, tmp_path):
    _, _, model_path, data_path, _, _ = mlp_and_data
    js = tmp_path / "s.json"
    run_eval_cli(str(model_path), str(data_path), [0.5], batch=8, json_path=str(js), baselines=["none"])
    assert json.loads(js.read_text())["baselines"] == []


def test_plot_needs_rows(tmp_path):
    with pytest.raises(OnnxPruneError, match="no rows"):
        plot_sweep([], tmp_path / "x.png")


@pytest.mark.parametrize("arrays, message", [
    ({"input": np.zeros((3, 12), np.float32)}, "no 'labels' array"),
    ({"x": np.zeros((3, 12), np.float32), "labels": np.zeros(3, np.int64)}, "no array for model input 'input'"),
    ({"input": np.zeros((4, 12), np.float32), "labels": np.zeros(3, np.int64)}, "'input' has 4 rows but 'labels' has 3"),
    ({"input": np.zeros((3, 12), np.float32), "labels": np.zeros(3, np.float32)}, "1-D integer array"),
    ({"input": np.zeros((3, 11), np.float32), "labels": np.zeros(3, np.int64)},
     r"'input' samples have shape \[11\] but the model expects \[12\] per sample"),
])
def test_bad_evaluation_data_is_one_clear_error(arrays, message):
    model, _ = make_mlp()
    with pytest.raises(OnnxPruneError, match=message):
        evaluate_accuracy(model, arrays)


def test_unreadable_data_file(tmp_path):
    model, _ = make_mlp()
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(OnnxPruneError, match=f"evaluation data '{bad}' is not a valid .npz: it is not an .npz archive"):
        evaluate_accuracy(model, bad)
    missing = tmp_path / "missing.npz"
    with pytest.raises(OnnxPruneError, match=f"evaluation data '{missing}' does not exist"):
        evaluate_accuracy(model, missing)
