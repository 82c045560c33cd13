"""The rewriter through the Python API: every eligible pattern, compared in onnxruntime (with the
library) against an independent numpy masked-dense reference."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_prune
from onnx_prune import contract
from onnx_prune.api import prune
from onnx_prune.errors import OnnxPruneError

from model_builders import expected_mask, gemm_model, gemm_reference, matmul_add_model, mlp_model, mlp_reference

RTOL = 1e-5


def run(model: onnx.ModelProto, feeds: dict, with_library: bool = True) -> list[np.ndarray]:
    options = onnx_prune.session_options() if with_library else ort.SessionOptions()
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    scale = max(float(np.abs(expected).max()), 1e-6)
    assert np.abs(actual - expected).max() <= RTOL * scale + 1e-6, np.abs(actual - expected).max()


def sparse_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == contract.OP_TYPE and n.domain == contract.DOMAIN]


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, -2.0)])
@pytest.mark.parametrize("bias_shape", [None, (), (1,), (12,), (1, 12)])
def test_gemm_every_attribute_and_bias_shape(trans_a, trans_b, alpha, beta, bias_shape):
    K, N, ratio = 30, 12, 0.75
    model, params = gemm_model(K, N, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta,
                               bias_shape=bias_shape if bias_shape is not None else (None,))
    out, report = prune(model, ratio, auto_dense=False)
    onnx.checker.check_model(out)
    assert len(sparse_nodes(out)) == 1 and sparse_nodes(out)[0].name == "gemm"
    a = np.random.default_rng(1).standard_normal((K, 7) if trans_a else (7, K)).astype(np.float32)
    expected = gemm_reference(a, params, ratio=ratio, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)
    assert_close(run(out, {"A": a})[0], expected)
    layer = report.layers[0]
    assert layer.nnz == K * N - int(np.floor(ratio * K * N))


def test_gemm_with_non_constant_b_is_left_alone():
    graph = helper.make_graph([helper.make_node("Gemm", ["A", "B"], ["Y"], name="g")], "g",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("B", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 4])])
    with pytest.raises(OnnxPruneError, match="no prunable layer found"):
        prune(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), 0.5)


def test_constant_node_weight_is_pruned_and_the_constant_removed():
    model, params = gemm_model(16, 8, trans_b=1, weight_as_constant_node=True)
    out, report = prune(model, 0.8)
    assert not [n for n in out.graph.node if n.op_type == "Constant"]
    assert report.layers[0].weight == "B"
    a = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
    assert_close(run(out, {"A": a})[0], gemm_reference(a, params, ratio=0.8, trans_b=1))


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("with_relu", [False, True])
def test_matmul_with_bias_add_and_relu_fuses_into_one_node(rank, with_relu):
    K, N = 24, 10
    model, params = matmul_add_model(K, N, rank=rank, with_relu=with_relu)
    out, _ = prune(model, 0.7)
    nodes = sparse_nodes(out)
    assert len(nodes) == 1
    assert [n.op_type for n in out.graph.node] == [contract.OP_TYPE, "Identity"]
    attrs = {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["original_op"] == b"MatMul" and (attrs.get("activation") == b"relu") == with_relu
    x = np.random.default_rng(3).standard_normal((2, 5, K) if rank == 3 else (4, K)).astype(np.float32)
    w = params["W"].astype(np.float64) * expected_mask(params["W"], 0.7)
    expected = x.astype(np.float64) @ w + params["bias"]
    if with_relu:
        expected = np.maximum(expected, 0)
    assert_close(run(out, {"X": x})[0], expected)


def test_mlp_layers_and_relu_fusion_match_reference():
    model = mlp_model()
    out, report = prune(model, 0.9, auto_dense=False)
    assert [n.op_type for n in out.graph.node] == [contract.OP_TYPE] * 3
    x = np.random.default_rng(4).standard_normal((6, 20)).astype(np.float32)
    assert_close(run(out, {"input": x})[0], mlp_reference(model, x, 0.9))
    # the same file also runs where the library is not registered (standard-op fallback)
    assert_close(run(out, {"input": x}, with_library=False)[0], mlp_reference(model, x, 0.9))


def test_shared_weight_used_by_two_layers():
    model = mlp_model(dims=(12, 12, 12), shared=True)
    out, report = prune(model, 0.5, auto_dense=False)
    assert len(sparse_nodes(out)) == 2
    assert not [t for t in out.graph.initializer if t.name == "shared.weight"]
    x = np.random.default_rng(5).standard_normal((3, 12)).astype(np.float32)
    assert_close(run(out, {"input": x})[0], mlp_reference(model, x, 0.5))


def test_shared_weight_kept_when_another_node_still_reads_it():
    model = mlp_model(dims=(12, 12, 12), shared=True)
    out, _ = prune(model, 0.8, exclude=["/fc1/*"], auto_dense=False)
    assert len(sparse_nodes(out)) == 1
    assert [t for t in out.graph.initializer if t.name == "shared.weight"]


def test_opset_7_model():
    model, params = gemm_model(10, 6, trans_b=1, bias_shape=(6,), opset=7)
    with pytest.warns(UserWarning, match="no standard-op fallback embedded"):
        out, _ = prune(model, 0.6, auto_dense=False)
    onnx.checker.check_model(out)
    assert not [i for i in out.graph.input if i.name == "B"]
    a = np.random.default_rng(6).standard_normal((2, 10)).astype(np.float32)
    assert_close(run(out, {"A": a})[0], gemm_reference(a, params, ratio=0.6, trans_b=1))


def test_model_mixing_other_domains_keeps_them():
    model = mlp_model()
    model.graph.node.append(helper.make_node("Normalizer", ["logits"], ["normalized"], domain="ai.onnx.ml",
                                             name="norm", norm="L1"))
    model.graph.output.append(helper.make_tensor_value_info("normalized", TensorProto.FLOAT, ["batch", 5]))
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    out, _ = prune(model, 0.9)
    assert {o.domain for o in out.opset_import} >= {"", "ai.onnx.ml", contract.DOMAIN}
    x = np.random.default_rng(7).standard_normal((2, 20)).astype(np.float32)
    logits, normalized = run(out, {"input": x})
    ref = mlp_reference(model, x, 0.9)
    assert_close(logits, ref)
    assert_close(normalized, ref / np.abs(ref).sum(axis=1, keepdims=True))


def test_non_float32_weight_is_skipped_with_a_warning():
    f32, _ = gemm_model(8, 4, seed=1)
    f64, _ = gemm_model(8, 4, weight_dtype=np.float64)
    graph = f64.graph
    graph.node[0].name = "gemm64"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(OnnxPruneError, match="no prunable layer"):
            prune(f64, 0.5)
    assert any("gemm64" in str(w.message) and "float64" in str(w.message) for w in caught)


def test_global_scope_removes_exactly_floor_of_total():
    model = mlp_model(dims=(20, 16, 12, 5))
    out, report = prune(model, 0.7, scope="global", auto_dense=False)
    total = sum(l.params for l in report.layers)
    assert total - sum(l.nnz for l in report.layers) == int(np.floor(0.7 * total))
    # one threshold: every kept |w| >= every removed |w| across layers
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    all_w = np.concatenate([np.abs(weights[f"fc{i}.weight"]).ravel() for i in range(3)])
    threshold = np.sort(all_w)[int(np.floor(0.7 * total)) - 1]
    for layer, node in zip(report.layers, sparse_nodes(out)):
        values = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == node.input[1]))
        assert np.abs(values).min() >= threshold


def test_layer_ratio_include_exclude_min_params():
    model = mlp_model(dims=(20, 16, 12, 5))
    out, report = prune(model, 0.9, layer_ratios={"/fc0/Gemm": 0.75}, min_params=100, auto_dense=False)
    by_node = {l.node: l for l in report.layers}
    assert by_node["/fc0/Gemm"].nnz == 320 - int(0.75 * 320)
    assert by_node["/fc1/Gemm"].nnz == 192 - int(np.floor(0.9 * 192 + 1e-9))
    assert "/fc2/Gemm" not in by_node  # 60 weights < --min-params 100
    assert [s["node"] for s in report.skipped] == ["/fc2/Gemm"]
    out, report = prune(model, 0.9, include=["fc1.*"], auto_dense=False)
    assert [l.node for l in report.layers] == ["/fc1/Gemm"]


def test_auto_dense_keeps_low_sparsity_layers_dense_and_says_so():
    model = mlp_model()
    out, report = prune(model, 0.5)
    assert not sparse_nodes(out)
    assert all(l.status.startswith("dense:") for l in report.layers)
    out, report = prune(model, 0.5, auto_dense=False)
    assert len(sparse_nodes(out)) == 3


def test_fp16_values_halve_value_bytes_and_match_fp16_reference():
    model = mlp_model(dims=(64, 48, 8))
    out32, _ = prune(model, 0.8, values="fp32", fallback=False)
    out16, _ = prune(model, 0.8, values="fp16", fallback=False)
    assert out16.ByteSize() < out32.ByteSize()
    x = np.random.default_rng(8).standard_normal((3, 64)).astype(np.float32)
    a, b = run(out32, {"input": x})[0], run(out16, {"input": x})[0]
    assert np.abs(a - b).max() <= 1e-2 * np.abs(a).max()


def test_output_records_tool_version_and_settings_and_passes_checker():
    model = mlp_model()
    model.metadata_props.add(key="author", value="someone")
    out, _ = prune(model, 0.9)
    meta = {p.key: p.value for p in out.metadata_props}
    assert meta["author"] == "someone" and meta["onnx_prune.version"] == onnx_prune.__version__
    assert '"ratio": 0.9' in meta["onnx_prune.settings"]
    assert [i.name for i in out.graph.input] == ["input"] and [o.name for o in out.graph.output] == ["logits"]
    onnx.checker.check_model(out, full_check=True)


def test_verification_reports_error_against_masked_dense():
    out, report = prune(mlp_model(), 0.9, verify=True)
    assert report.verification.passed and report.verification.max_rel_error < 1e-5


@pytest.mark.parametrize("ratio", [-0.1, 1.0, float("nan")])
def test_bad_ratio(ratio):
    with pytest.raises(OnnxPruneError, match="--ratio must be in"):
        prune(mlp_model(), ratio)
