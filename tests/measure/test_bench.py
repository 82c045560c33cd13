"""The benchmark runs end to end and reports consistent numbers (it asserts no speed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from onnx_prune.api import prune
from onnx_prune.measure.bench import bench_pair, make_inputs, parse_threads
from onnx_prune.errors import OnnxPruneError

from helpers_models import mlp as mlp_model


def test_bench_pair_rows_are_consistent():
    dense = mlp_model()
    pruned, _ = prune(dense, 0.9)
    result = bench_pair(dense, pruned, batches=(1, 8), threads=(1,), rounds=2, min_runs=3, warmup=1)
    assert [(r.batch, r.threads) for r in result.rows] == [(1, 1), (8, 1)]
    for row in result.rows:
        assert row.dense_us > 0 and row.pruned_us > 0 and row.speedup > 0
    assert json.loads(result.to_json())["machine"]["onnxruntime"]


def test_make_inputs_uses_batch_for_first_dim():
    feeds = make_inputs(mlp_model(), 5)
    assert feeds["input"].shape == (5, 20)


def test_parse_threads():
    assert parse_threads(["1", "2"]) == [1, 2]
    assert parse_threads(["all"])[0] >= 1
    with pytest.raises(OnnxPruneError, match="--threads"):
        parse_threads(["zero"])


def test_bench_cli_writes_json(tmp_path: Path):
    model = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), str(model))
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "onnx_prune.cli", "bench", str(model), "--batch", "2",
                           "--rounds", "1", "--quiet", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["batch"] == 2 and rows[0]["threads"] == 1
    done = subprocess.run([sys.executable, "-m", "onnx_prune.cli", "bench", str(tmp_path / "none.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "does not exist" in done.stderr


def test_bench_kernel_tool_smoke(tmp_path: Path):
    out = tmp_path / "k.json"
    tool = Path(__file__).resolve().parents[2] / "tools" / "bench_kernel.py"
    done = subprocess.run([sys.executable, str(tool), "--quick", "--k", "64", "--n", "32", "--batch", "1",
                           "--sparsity", "0.9", "--threads", "1", "--rounds", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(out.read_text())


def _ort_outputs(model: onnx.ModelProto, feeds: dict) -> list:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_bench_cli_int8_baseline_columns_and_checked_outputs(tmp_path: Path):
    import numpy as np
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dense = mlp_model()
    model, out = tmp_path / "mlp.onnx", tmp_path / "bench.json"
    onnx.save(dense, str(model))
    done = subprocess.run([sys.executable, "-m", "onnx_prune.cli", "bench", str(model), "--batch", "2", "--batch", "3",
                           "--rounds", "1", "--baseline", "int8", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "int8 µs" in done.stdout and "pruned vs int8" in done.stdout and "per_channel=False" in done.stdout
    assert done.stdout.splitlines()[-1] == f"wrote {out}"
    doc = json.loads(out.read_text())
    for row in doc["rows"]:
        assert row["int8_us"] > 0 and row["int8_speedup"] > 0 and row["pruned_vs_int8"] > 0
    (setting,) = doc["settings"]["baselines"]
    assert setting["name"] == "int8" and setting["per_channel"] is False
    # the outputs bench checked before timing: the test's own int8 model on the same inputs
    quantize_dynamic(str(model), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8)
    int8 = onnx.load(str(tmp_path / "q.onnx"))
    errors = []
    for batch in (2, 3):
        feeds = make_inputs(dense, batch)
        (want,), (got,) = _ort_outputs(dense, feeds), _ort_outputs(int8, feeds)
        errors.append(float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max()))
    assert 0 < setting["max_rel_error"]["logits"] == pytest.approx(max(errors), rel=1e-6)
    assert setting["max_rel_error"]["logits"] <= setting["tolerance"]


def test_baseline_values_are_checked():
    from onnx_prune.measure import baselines

    assert [b.name for b in baselines.parse(["int8,int8-per-channel", "int8"])] == ["int8", "int8-per-channel"]
    assert baselines.parse(["none"]) == []
    with pytest.raises(OnnxPruneError, match="--baseline takes int8, int8-per-channel, none, got 'int4'"):
        baselines.parse(["int4"])
