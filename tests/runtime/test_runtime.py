"""runtime.py: sessions open from protos and files, with the library when the model needs it, and
every onnxruntime failure is one line saying what failed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnx_prune.runtime import session as runtime
from onnx_prune.api import prune
from onnx_prune.errors import OnnxPruneError
from onnx_prune.model.modelio import uses_external_data

from helpers_models import mlp, mlp_reference


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def test_broken_model_file_is_one_line_naming_the_file(tmp_path: Path):
    full = mlp().SerializeToString()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(full[: len(full) // 3])
    with pytest.raises(OnnxPruneError) as exc:
        runtime.open_session(broken)
    assert _one_line(exc).startswith(f"'{broken}' is not a valid ONNX model")
    with pytest.raises(OnnxPruneError) as exc:
        runtime.open_session(broken, library=False)  # straight to onnxruntime
    assert _one_line(exc).startswith(f"onnxruntime cannot load '{broken}': ")
    with pytest.raises(OnnxPruneError, match="does not exist"):
        runtime.open_session(tmp_path / "missing.onnx")


def test_model_onnxruntime_rejects_is_one_line_naming_the_model():
    model = mlp()
    model.graph.name = "tiny_mlp"
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(OnnxPruneError) as exc:
        runtime.open_session(model)
    assert _one_line(exc).startswith("onnxruntime cannot load model 'tiny_mlp': ")
    with pytest.raises(OnnxPruneError) as exc:
        runtime.open_session(model, error="calibration: onnxruntime cannot load the model")
    assert _one_line(exc).startswith("calibration: onnxruntime cannot load the model: ")


def test_failed_run_is_one_line_with_the_callers_words():
    session = runtime.open_session(mlp())
    with pytest.raises(OnnxPruneError) as exc:
        runtime.run(session, {"input": np.zeros((2, 7), np.float32)}, error="verification could not run X")
    assert _one_line(exc).startswith("verification could not run X: ")


def test_pruned_model_gets_the_library_when_it_needs_it(library_path, tmp_path: Path):
    model = mlp()
    pruned, _ = prune(model, 0.8, fallback=False)
    assert runtime.uses_sparse_gemm(pruned) and not runtime.uses_sparse_gemm(model)
    x = np.random.default_rng(0).standard_normal((3, 20)).astype(np.float32)
    path = tmp_path / "pruned.onnx"
    onnx.save(pruned, str(path))
    for source in (pruned, path):
        got = runtime.run(runtime.open_session(source, threads=1), {"input": x})[0]
        np.testing.assert_allclose(got, mlp_reference(model, x, 0.8), rtol=1e-4, atol=1e-5)
    with pytest.raises(OnnxPruneError, match="onnxruntime cannot load"):  # no library, no fallback
        runtime.open_session(pruned, library=False)


def test_models_over_the_protobuf_limit_go_through_a_file(monkeypatch):
    model = mlp()
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    monkeypatch.setattr(runtime, "PROTOBUF_LIMIT", 100)  # as if the model were over 2 GB
    x = np.random.default_rng(1).standard_normal((2, 20)).astype(np.float32)
    got = runtime.run(runtime.open_session(model), {"input": x})[0]
    np.testing.assert_allclose(got, mlp_reference(model, x, 0.0), rtol=1e-5, atol=1e-6)
    # the caller's proto keeps its tensors in memory (onnx moved them out to save the file)
    assert not uses_external_data(model)
    after = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)


def test_settings_reach_the_session_options():
    options = runtime.session_options(3, log_severity_level=3, inter_op_num_threads=1)
    assert (options.intra_op_num_threads, options.log_severity_level, options.inter_op_num_threads) == (3, 3, 1)
