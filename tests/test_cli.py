"""The onnx-prune command as users run it: outputs, report, exit codes and one-line errors, and the
promise that the input is never modified and a failed run leaves no output behind."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_prune

from model_builders import mlp_model, mlp_reference


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnx_prune.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def mlp_file(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), str(path))
    return path


def test_prune_writes_model_report_and_json(mlp_file: Path, tmp_path: Path):
    before = digest(mlp_file)
    out, report_path = tmp_path / "out.onnx", tmp_path / "report.json"
    done = cli(str(mlp_file), str(out), "--ratio", "0.9", "--no-auto-dense", "--report-json", str(report_path))
    assert done.returncode == 0, done.stderr
    assert "verification passed" in done.stdout and "/fc0/Gemm" in done.stdout
    assert digest(mlp_file) == before
    report = json.loads(report_path.read_text())
    assert [l["node"] for l in report["layers"]] == ["/fc0/Gemm", "/fc1/Gemm", "/fc2/Gemm"]
    assert [l["weight"] for l in report["layers"]] == ["fc0.weight", "fc1.weight", "fc2.weight"]
    assert [l["shape"] for l in report["layers"]] == [[20, 16], [16, 12], [12, 5]]
    assert [l["nnz"] for l in report["layers"]] == [320 - 288, 192 - 172, 60 - 54]
    assert report["verification"]["passed"]
    x = np.random.default_rng(0).standard_normal((5, 20)).astype(np.float32)
    session = ort.InferenceSession(str(out), onnx_prune.session_options())
    y = session.run(None, {"input": x})[0]
    ref = mlp_reference(mlp_model(), x, 0.9)
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


def test_explicit_prune_subcommand_and_quiet(mlp_file: Path, tmp_path: Path):
    done = cli("prune", str(mlp_file), str(tmp_path / "o.onnx"), "--ratio", "0.8", "--quiet")
    assert done.returncode == 0 and done.stdout == ""


def test_help_lists_subcommands_and_options():
    done = cli("--help")
    assert done.returncode == 0
    for word in ("prune", "bench", "eval", "densify"):
        assert word in done.stdout
    done = cli("prune", "--help")
    for option in ("--ratio", "--scope", "--include", "--exclude", "--layer-ratio", "--min-params",
                   "--report-json", "--quiet", "--verify", "--inputs"):
        assert option in done.stdout


@pytest.mark.parametrize("make_input,args,message", [
    (lambda d: d / "missing.onnx", ["--ratio", "0.5"], "does not exist"),
    (lambda d: _write(d / "text.onnx", b"this is not a model"), [], "is not a valid ONNX model"),
    (lambda d: _truncated(d), [], "is not a valid ONNX model"),
    (lambda d: _mlp(d), ["--ratio", "1.0"], "--ratio must be in [0, 1)"),
    (lambda d: _mlp(d), ["--ratio", "-0.2"], "--ratio must be in [0, 1)"),
    (lambda d: _mlp(d), ["--layer-ratio", "oops"], "--layer-ratio takes NAME=R"),
    (lambda d: _mlp(d), ["--layer-ratio", "nosuchlayer=0.5"], "no selected layer has that node or weight name"),
    (lambda d: _mlp(d), ["--scope", "everything"], "--scope must be 'layer' or 'global'"),
    (lambda d: _mlp(d), ["--method", "magic"], "--method must be one of"),
    (lambda d: _mlp(d), ["--include", "nothing*"], "no prunable layer left"),
    (lambda d: _no_layers(d), [], "no prunable layer found"),
])
def test_bad_input_one_line_error_nonzero_exit_no_output(tmp_path: Path, make_input, args, message):
    src = make_input(tmp_path)
    before = digest(src) if src.exists() else None
    out = tmp_path / "out.onnx"
    done = cli(str(src), str(out), *args)
    assert done.returncode != 0
    assert message in done.stderr
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert not list(tmp_path.glob(".out.onnx*"))  # no temp file left behind
    if before:
        assert digest(src) == before


def test_output_equal_to_input_is_refused(mlp_file: Path):
    before = digest(mlp_file)
    done = cli(str(mlp_file), str(mlp_file))
    assert done.returncode != 0 and "is the input file" in done.stderr
    assert digest(mlp_file) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_output_folder(mlp_file: Path, tmp_path: Path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    done = cli(str(mlp_file), str(locked / "o.onnx"))
    assert done.returncode != 0 and "not writable" in done.stderr


def test_missing_output_folder(mlp_file: Path, tmp_path: Path):
    done = cli(str(mlp_file), str(tmp_path / "no" / "such" / "o.onnx"))
    assert done.returncode != 0 and "does not exist" in done.stderr


def test_debug_shows_traceback(tmp_path: Path):
    done = cli(str(tmp_path / "missing.onnx"), str(tmp_path / "o.onnx"), "--debug")
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_external_data_in_and_out(tmp_path: Path):
    src = tmp_path / "ext.onnx"
    onnx.save_model(mlp_model(dims=(64, 48, 8)), str(src), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    out = tmp_path / "pruned.onnx"
    done = cli(str(src), str(out), "--ratio", "0.9", "--no-auto-dense", "-q")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pruned.onnx.data").exists()
    model = onnx.load(str(out))
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    y = ort.InferenceSession(str(out), onnx_prune.session_options()).run(None, {"input": x})[0]
    ref = mlp_reference(mlp_model(dims=(64, 48, 8)), x, 0.9)
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
    assert len(model.graph.node) == 2


def test_inputs_npz_for_verification(mlp_file: Path, tmp_path: Path):
    data = tmp_path / "inputs.npz"
    np.savez(data, input=np.ones((3, 20), np.float32))
    done = cli(str(mlp_file), str(tmp_path / "o.onnx"), "--inputs", str(data))
    assert done.returncode == 0 and str(data) in done.stdout
    np.savez(data, wrong=np.ones((3, 20), np.float32))
    done = cli(str(mlp_file), str(tmp_path / "o2.onnx"), "--inputs", str(data))
    assert done.returncode != 0 and "lack input" in done.stderr


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mlp(d: Path) -> Path:
    path = d / "mlp.onnx"
    onnx.save(mlp_model(), str(path))
    return path


def _truncated(d: Path) -> Path:
    full = mlp_model().SerializeToString()
    return _write(d / "truncated.onnx", full[: len(full) // 3])


def _no_layers(d: Path) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = d / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path
