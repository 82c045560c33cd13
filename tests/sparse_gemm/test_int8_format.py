"""The csr_int8 format's Python side (onnx_prune/sparse_gemm/formats/csr_int8.py): quantization and
layout against an independent numpy reference written from docs/sparse_gemm_op.md, validation
errors by message, the standard-op fallback without the library, and `--values int8` end to end on
the bundled model.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import onnx_prune
from onnx_prune.errors import OnnxPruneError
from onnx_prune.sparse_gemm.fallback import add_fallback_functions
from onnx_prune.runtime.library import find_library_path
from onnx_prune.sparse_gemm import contract, formats, make_sparse_gemm
from onnx_prune.sparse_gemm.formats import csr_int8

from kernel_models import dense_of_int8, finish_model, int8_csr

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "mnist-mlp.onnx"
DENSE_BYTES = 7_184_963
needs_library = pytest.mark.skipif(find_library_path() is None, reason="the SparseGemm library is not built")


def reference_quantization(w: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The contract's rule, one output at a time with Python's round (ties to even):
    scale = max |kept w| / 127 in float32 (1 when that is 0), q = clip(round(w / scale), -127, 127)."""
    K, N = w.shape
    q = np.zeros((K, N), np.int8)
    scales = np.ones(N, np.float32)
    for n in range(N):
        kept = [abs(np.float32(w[k, n])) for k in range(K) if keep[k, n]]
        peak = max(kept, default=np.float32(0))
        scales[n] = peak / np.float32(127) if peak > 0 else np.float32(1)
        for k in range(K):
            if keep[k, n]:
                q[k, n] = max(-127, min(127, round(float(np.float32(w[k, n]) / scales[n]))))
    return q, scales


def random_layer(seed: int, K: int, N: int, density: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((K, N)).astype(np.float32), rng.random((K, N)) < density


@pytest.mark.parametrize("K,N,density", [(1, 1, 1.0), (7, 3, 0.0), (50, 30, 0.3), (256, 5, 0.5), (257, 4, 0.5),
                                         (600, 17, 0.1), (1000, 3, 1.0)])
def test_pack_matches_the_contract(K: int, N: int, density: float) -> None:
    w, keep = random_layer(K * 7 + N, K, N, density)
    packed = formats.get("csr_int8").pack(w, keep, np.int8)
    q, scales = reference_quantization(w, keep)
    expected = int8_csr(q, keep, scales)
    for name, array in expected.tensors.items():
        got = getattr(packed, name)
        assert got.dtype == array.dtype or (name == "offsets" and got.dtype == np.int32), name
        np.testing.assert_array_equal(got, array, err_msg=name)
    assert packed.nnz == int(keep.sum()) and packed.format == "csr_int8"
    assert packed.nbytes == sum(t.nbytes for t in expected.tensors.values())
    np.testing.assert_array_equal(packed.to_dense(), dense_of_int8(expected).astype(np.float32))
    if keep.any():
        assert np.abs(packed.values).max() == 127  # each non-zero output's largest weight is ±127


def test_dequantized_error_is_half_a_step_at_most() -> None:
    w, keep = random_layer(3, 300, 40, 0.2)
    packed = csr_int8.CSR_INT8.pack(w, keep)
    error = np.abs(packed.to_dense() - np.where(keep, w, 0))
    assert np.all(error <= packed.scales[None, :] * (0.5 + 1e-6))
    assert np.all(packed.to_dense()[~keep] == 0)


def test_scale_rule_edges_and_ties_to_even() -> None:
    w = np.zeros((4, 4), np.float32)
    w[:, 0] = [127.0, 2.5, 3.5, -2.5]  # scale 1: ties go to the even neighbour
    w[:, 1] = [5.0, 0, 0, 0]           # kept, but only zeros below: scale 5 / 127
    w[:, 3] = [9.0, 0, 0, 0]           # pruned everywhere
    keep = np.ones((4, 4), bool)
    keep[:, 3] = False
    packed = csr_int8.CSR_INT8.pack(w, keep)
    np.testing.assert_array_equal(packed.scales, np.float32([1.0, np.float32(5) / np.float32(127), 1.0, 1.0]))
    np.testing.assert_array_equal(packed.values[:4], [127, 2, 4, -2])
    assert packed.nnz == 12  # column 2 is all kept zeros (scale 1), column 3 stores nothing


def test_non_finite_kept_weight_is_refused() -> None:
    w = np.ones((3, 2), np.float32)
    w[1, 1] = np.nan
    with pytest.raises(OnnxPruneError, match="int8 values need finite weights"):
        csr_int8.CSR_INT8.pack(w)


def test_int8_is_the_values_choice_of_this_format() -> None:
    fmt, dtype = formats.value_choices()["int8"]
    assert fmt.name == "csr_int8" and dtype == np.int8
    assert formats.value_choices()["fp32"][0].name == "csr"  # bcsr stores fp32 too: the table names csr


def valid() -> csr_int8.CsrInt8Weight:
    w, keep = random_layer(9, 300, 4, 0.5)
    return csr_int8.CSR_INT8.pack(w, keep)


def changed(**tensors: np.ndarray) -> csr_int8.CsrInt8Weight:
    p = valid()
    return csr_int8.CsrInt8Weight(**{**dict(zip(("values", "scales", "indices", "offsets"), p.tensors)), **tensors},
                                  K=p.K, N=p.N)


@pytest.mark.parametrize("packed,message", [
    (lambda: changed(values=valid().values.astype(np.float32)), "values must be int8, got float32"),
    (lambda: changed(scales=valid().scales[:3]), r"scales has shape \[3\], expected \[4\]"),
    (lambda: changed(scales=np.float32([1, 0, 1, 1])), "every scale must be finite, positive and at most"),
    (lambda: changed(scales=np.float32([1, np.inf, 1, 1])), "every scale must be finite"),
    (lambda: changed(scales=np.float32([1, 1, 3e36, 1])), "every scale must be finite"),
    (lambda: changed(indices=valid().indices[:-1]), r"values \[609\] and indices \[608\] must be 1-D of the same length"),
    (lambda: changed(offsets=valid().offsets[::2]), r"offsets has shape \[5\], expected \[N \* ceil\(K / 256\) \+ 1\] = \[9\]"),
    (lambda: changed(offsets=np.int32([0, 9, 3, 20, 30, 40, 50, 60, valid().nnz])), "offsets must start at 0, never decrease"),
    (lambda: changed(indices=np.full(valid().nnz, 255, np.uint8)), r"an index is outside \[0, K=300\)"),
])
def test_validate_errors(packed, message: str) -> None:
    with pytest.raises(OnnxPruneError, match=rf"^SparseGemm node 'x': {message}"):
        formats.get("csr_int8").validate(packed(), "SparseGemm node 'x'")


def test_valid_weight_passes_and_round_trips_through_from_tensors() -> None:
    p = valid()
    fmt = formats.get("csr_int8")
    fmt.validate(p, "here")
    again = fmt.from_tensors(p.tensors, p.K, p.N)
    np.testing.assert_array_equal(fmt.unpack(again), p.to_dense())


# ---------------------------------------------------------------------------- fallback


def single_node_model(packed: csr_int8.CsrInt8Weight, opset: int = 17) -> onnx.ModelProto:
    names = [f"w.{n}" for n in formats.get("csr_int8").tensor_names]
    node = make_sparse_gemm("fc", "A", packed, names, "C", "Y", {contract.ATTR_ACTIVATION: "relu"})
    inits = [numpy_helper.from_array(t, n) for n, t in zip(names, packed.tensors)]
    inits.append(numpy_helper.from_array(np.linspace(-1, 1, packed.N).astype(np.float32), "C"))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", onnx.TensorProto.FLOAT, ["M", packed.K])],
                              [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["M", packed.N])],
                              initializer=inits)
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", opset),
                                                                  helper.make_opsetid(contract.DOMAIN, 1)])
    add_fallback_functions(model)
    return model


@pytest.mark.parametrize("opset", [12, 17])
@pytest.mark.parametrize("optimize", [True, False])
def test_fallback_computes_the_dequantized_layer_without_the_library(opset: int, optimize: bool) -> None:
    w, keep = random_layer(11, 300, 20, 0.3)
    packed = csr_int8.CSR_INT8.pack(w, keep)
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(single_node_model(packed, opset).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    a = np.random.default_rng(2).standard_normal((5, 300)).astype(np.float32)
    expected = np.maximum(a.astype(np.float64) @ packed.to_dense() + np.linspace(-1, 1, 20), 0)
    np.testing.assert_allclose(session.run(None, {"A": a})[0], expected, rtol=1e-5, atol=1e-5)


def test_onnxruntime_folds_the_fallback_into_the_dequantized_weight(tmp_path: Path) -> None:
    w, keep = random_layer(12, 520, 9, 0.3)
    packed = csr_int8.CSR_INT8.pack(w, keep)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(single_node_model(packed).SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    assert not {n.op_type for n in optimized.graph.node} & {"TopK", "ScatterND", "Gather", "Cast", "Mod"}
    folded = [numpy_helper.to_array(t) for t in optimized.graph.initializer if list(t.dims) == [520, 9]]
    assert len(folded) == 1
    np.testing.assert_array_equal(folded[0], packed.to_dense())


# ---------------------------------------------------------------------------- end to end


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnx_prune.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})


@needs_library
def test_values_int8_end_to_end_on_the_bundled_model(tmp_path: Path) -> None:
    out, dense_out = tmp_path / "int8.onnx", tmp_path / "dense.onnx"
    done = cli(str(MODEL), str(out), "--ratio", "0.9", "--values", "int8")
    assert done.returncode == 0, done.stderr
    assert "kernel check passed" in done.stdout
    assert MODEL.stat().st_size == DENSE_BYTES
    assert out.stat().st_size <= 0.07 * DENSE_BYTES  # issue #10's target at 90%, fallback included
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    nodes = [n for n in model.graph.node if n.op_type == contract.OP_TYPE]
    assert nodes and all(helper.get_attribute_value(a) == b"csr_int8"
                         for n in nodes for a in n.attribute if a.name == contract.ATTR_FORMAT)

    x = np.load(ROOT / "models" / "mnist-test.npz")
    x = x[x.files[0]][:64].astype(np.float32).reshape(64, -1)
    with_library = ort.InferenceSession(str(out), onnx_prune.session_options(1), providers=["CPUExecutionProvider"])
    without = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y_lib = with_library.run(None, {"input": x})[0]
    y_fallback = without.run(None, {"input": x})[0]
    scale = np.abs(y_fallback).max()
    assert np.abs(y_lib - y_fallback).max() <= 1e-5 * scale

    done = cli("densify", str(out), str(dense_out))
    assert done.returncode == 0, done.stderr
    densified = ort.InferenceSession(str(dense_out), providers=["CPUExecutionProvider"])
    assert not any(n.op_type == contract.OP_TYPE for n in onnx.load(str(dense_out)).graph.node)
    assert np.abs(densified.run(None, {"input": x})[0] - y_fallback).max() <= 1e-5 * scale
    assert math.isfinite(scale)
