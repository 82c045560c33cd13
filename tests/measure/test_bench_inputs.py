"""``onnx-prune bench`` on real inputs and shapes: batches cut from ``--inputs data.npz``, a fixed
batch dimension respected, the pair checked to take the same inputs, a failing or mismatching
baseline marked in its rows, ``-q`` still printing the table, the default ratio equal to prune's,
transformers timed at ``--seq-len`` tokens. (No speed is asserted: tests time nothing they judge.)"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnx_prune.measure.baselines as baselines
from onnx_prune.api import prune
from onnx_prune.errors import OnnxPruneError
from onnx_prune.measure.bench import bench_pair, inputs_from_file

from helpers_models import attention_block, mlp
from test_cli import cli, cli_inproc, one_line_error

QUICK = ("--rounds", "1")


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _fixed_batch_mlp(batch: int = 1) -> onnx.ModelProto:
    model = mlp()
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = batch
    return model


def test_batches_are_the_first_rows_of_the_inputs_file_in_the_declared_dtype(tmp_path: Path):
    rows = np.random.default_rng(0).standard_normal((8, 20))  # float64: the model takes float32
    np.savez(tmp_path / "x.npz", input=rows, labels=np.arange(8))
    feeds = inputs_from_file(str(tmp_path / "x.npz"), mlp(), [2, 8])
    assert feeds(2)["input"].dtype == np.float32 and set(feeds(2)) == {"input"}
    np.testing.assert_array_equal(feeds(2)["input"], rows[:2].astype(np.float32))
    np.testing.assert_array_equal(feeds(8)["input"], rows.astype(np.float32))


def test_bench_cli_times_the_rows_of_inputs_and_refuses_too_few(tmp_path: Path):
    model = _save(mlp(), tmp_path / "m.onnx")
    np.savez(tmp_path / "x.npz", input=np.ones((6, 20), np.float32))
    out = tmp_path / "b.json"
    done = cli("bench", str(model), "--inputs", str(tmp_path / "x.npz"), "--batch", "2", "--batch", "6", *QUICK,
               "--json", str(out))
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert [r["batch"] for r in doc["rows"]] == [2, 6]
    assert doc["settings"]["inputs"] == f"the first rows of {tmp_path / 'x.npz'}"
    assert f"inputs: the first rows of {tmp_path / 'x.npz'}" in done.stdout
    done = cli_inproc("bench", str(model), "--inputs", str(tmp_path / "x.npz"), "--batch", "16", *QUICK)
    assert done.exit_code == 2
    one_line_error(done.stderr, "has 6 rows of 'input' but --batch 16 needs 16")


def test_a_fixed_batch_of_one_is_timed_at_batch_one_only(tmp_path: Path):
    model = _save(_fixed_batch_mlp(1), tmp_path / "m.onnx")
    out = tmp_path / "b.json"
    done = cli("bench", str(model), *QUICK, "--json", str(out))  # default batches 1, 16, 64, 256
    assert done.returncode == 0, done.stderr
    assert [r["batch"] for r in json.loads(out.read_text())["rows"]] == [1]
    assert "warning: the model's batch dimension is fixed at 1: timing batch 1 only" in done.stderr


def test_a_pruned_file_of_another_model_is_a_usage_error(tmp_path: Path):
    dense = _save(mlp(), tmp_path / "a.onnx")
    other, _ = prune(mlp((30, 16, 5)), 0.8)
    pruned = _save(other, tmp_path / "b.onnx")
    done = cli_inproc("bench", str(dense), str(pruned), *QUICK)
    assert done.exit_code == 2
    one_line_error(done.stderr, f"'{pruned}' takes inputs input float [?, 30] but '{dense}' takes inputs "
                                "input float [?, 20]; PRUNED.onnx must be IN.onnx pruned")


def _wrong_int8(model, per_channel=False):
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    bias = broken.graph.initializer[-1]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 100, bias.name))
    return broken


def test_a_baseline_that_differs_is_marked_in_its_rows_and_the_table_goes_on(monkeypatch):
    monkeypatch.setattr(baselines, "quantize_int8", _wrong_int8)
    dense = mlp()
    pruned, _ = prune(dense, 0.5)
    result = bench_pair(dense, pruned, batches=(2, 3), rounds=1, min_runs=1, warmup=0,
                        baselines=baselines.parse(["int8"]))
    assert [r.batch for r in result.rows] == [2, 3]
    for row in result.rows:
        assert row.dense_us > 0 and row.pruned_us > 0
        marked = row.baselines["int8"]
        assert marked.error.startswith("the int8 baseline (onnxruntime int8) differs from the dense model on "
                                       "output 'logits'") and np.isnan(marked.us)
        assert row.as_dict()["int8_us"] is None and row.as_dict()["int8_error"] == marked.error


def test_a_baseline_that_cannot_be_made_is_marked_and_cli_prints_the_table(tmp_path: Path, monkeypatch):
    def failing(model, per_channel=False):
        raise OnnxPruneError("onnxruntime could not quantize the model to int8: no kernel")

    monkeypatch.setattr(baselines, "quantize_int8", failing)
    model = _save(mlp(), tmp_path / "m.onnx")
    done = cli_inproc("bench", str(model), "--batch", "2", "--baseline", "int8", *QUICK)
    assert done.exit_code == 0, done.stderr
    assert "not timed" in done.stdout
    assert "int8: not timed at batch 2 (not made: onnxruntime could not quantize the model to int8: no kernel)" \
        in done.stdout


def test_quiet_bench_prints_the_table_and_the_default_ratio_is_prunes(tmp_path: Path):
    model = _save(mlp(), tmp_path / "m.onnx")
    out = tmp_path / "b.json"
    done = cli_inproc("bench", str(model), "--batch", "2", "-q", *QUICK, "--json", str(out))
    assert done.exit_code == 0, done.stderr
    assert "dense µs" in done.stdout and "pruned µs" in done.stdout and done.stderr == ""
    assert json.loads(out.read_text())["settings"]["pruned"] == "in memory, ratio 0.8"


@pytest.mark.parametrize("seq_len", [None, "5"])
def test_a_transformer_is_timed_at_seq_len_tokens(tmp_path: Path, seq_len):
    model = _save(attention_block()[0], tmp_path / "t.onnx")
    out = tmp_path / "b.json"
    extra = ("--seq-len", seq_len) if seq_len else ()
    done = cli_inproc("bench", str(model), "--batch", "2", *extra, *QUICK, "--json", str(out))
    assert done.exit_code == 0, done.stderr
    settings = json.loads(out.read_text())["settings"]
    tokens = int(seq_len or 128)
    assert settings["seq_len"] == tokens
    assert settings["inputs"] == f"generated inputs (X [2, {tokens}, 16] normal), shown at batch 2"
