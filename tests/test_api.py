"""onnx_prune.prune on every eligible pattern: the pruned model, run in onnxruntime with the
library, against an independent numpy masked-dense reference (tests/helpers_models.py)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_prune
from onnx_prune import api
from onnx_prune.pruning import auto_dense
from onnx_prune.sparse_gemm import contract
from onnx_prune.errors import OnnxPruneError

from helpers_models import (M, a_input, assert_close, f32, gemm, gemm_forward, global_keep_masks, keep_mask,
                            make_model, masked, matmul, mlp, mlp_forward, mlp_reference, mlp_weights_kn,
                            newest_opset, non_constant_b_gemm, relu_only, x_input)


def run(model: onnx.ModelProto, feeds: dict, *, library: bool = True) -> list[np.ndarray]:
    options = onnx_prune.session_options() if library else ort.SessionOptions()
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def sparse_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == contract.OP_TYPE and n.domain == contract.DOMAIN]


# ----------------------------------------------------------------------------- Gemm

GEMM_BIAS_SHAPES = [None, (), (1,), (9,), (1, 9), (M, 1), (M, 9)]


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias_shape", GEMM_BIAS_SHAPES, ids=str)
def test_gemm_attribute_combinations_and_bias_shapes(trans_a, trans_b, bias_shape):
    K, N, ratio = 26, 9, 0.7
    alpha, beta = (0.5, -1.5) if (trans_a + trans_b) % 2 else (1.0, 1.0)
    model, p = gemm(K, N, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, bias_shape=bias_shape)
    out, report = onnx_prune.prune(model, ratio, auto_dense=False)
    assert [n.name for n in sparse_nodes(out)] == ["gemm"] and len(out.graph.node) == 1
    a = a_input(K, trans_a)
    expected = gemm_forward(a, masked(p["W"], ratio), p["C"], trans_a=trans_a, alpha=alpha, beta=beta)
    assert_close(run(out, {"A": a})[0], expected)
    assert report.layers[0].nnz == K * N - int(np.floor(ratio * K * N))


def test_gemm_bias_computed_at_run_time():
    model, p = gemm(12, 6, trans_b=1, bias_shape=(6,), c_as_input=True)
    out, _ = onnx_prune.prune(model, 0.8)
    a, c = a_input(12), np.random.default_rng(3).standard_normal(6).astype(np.float32)
    assert_close(run(out, {"A": a, "C": c})[0], gemm_forward(a, masked(p["W"], 0.8), c))


def test_gemm_with_non_constant_b_is_left_alone_and_reported():
    dynamic = non_constant_b_gemm()
    with pytest.raises(OnnxPruneError, match="no prunable layer found: .*dynamic: its weight is not a constant"):
        onnx_prune.prune(dynamic, 0.5)
    # next to a prunable layer: untouched, and the report says why
    model, p = gemm(3, 4, bias_shape=None, node_name="static")
    model.graph.node.append(helper.make_node("Gemm", ["Y", "B2"], ["Z"], name="dynamic"))
    model.graph.input.append(f32("B2", [4, 5]))
    model.graph.output.append(f32("Z", [M, 5]))
    out, report = onnx_prune.prune(model, 0.75)
    assert [(n.name, n.op_type) for n in out.graph.node] == [("static", contract.OP_TYPE), ("dynamic", "Gemm")]
    assert {"node": "dynamic", "reason": "its weight is not a constant: it is graph input B2"} in report.skipped
    a, b2 = a_input(3), np.random.default_rng(4).standard_normal((4, 5)).astype(np.float32)
    y = gemm_forward(a, masked(p["W"], 0.75), None)
    got = run(out, {"A": a, "B2": b2})
    assert_close(got[0], y)
    assert_close(got[1], y @ b2)


@pytest.mark.parametrize("builder", ["gemm", "matmul"])
def test_constant_node_weight_is_pruned_and_the_constant_dropped(builder):
    if builder == "gemm":
        model, p = gemm(16, 8, trans_b=1, bias_shape=(8,), constant_node=True)
        feeds, x = None, a_input(16)
        expected = gemm_forward(x, masked(p["W"], 0.8), p["C"])
        feeds = {"A": x}
    else:
        model, p = matmul(16, 8, a_rank=3, bias_shape=(8,), constant_node=True)
        x = x_input(16, 3)
        expected = x.astype(np.float64) @ masked(p["W"], 0.8) + p["bias"]
        feeds = {"X": x}
    out, report = onnx_prune.prune(model, 0.8)
    assert not [n for n in out.graph.node if n.op_type == "Constant"]
    assert report.layers[0].weight in ("B", "W")
    assert_close(run(out, feeds)[0], expected)


# ----------------------------------------------------------------------------- MatMul

@pytest.mark.parametrize("a_rank,bias_shape", [
    (1, (10,)), (2, (10,)), (2, (1, 10)), (2, (1,)), (3, (10,)), (3, (1, 1, 10)), (4, (10,)), (3, (None,)),
])
@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_with_fused_bias_add(a_rank, bias_shape, bias_first):
    K, N = 24, 10
    model, p = matmul(K, N, a_rank=a_rank, bias_shape=bias_shape, bias_first=bias_first)
    out, _ = onnx_prune.prune(model, 0.75)
    assert [n.op_type for n in out.graph.node] == [contract.OP_TYPE, "Identity"]
    x = x_input(K, a_rank)
    expected = x.astype(np.float64) @ masked(p["W"], 0.75)
    if p["bias"] is not None:
        expected = expected + p["bias"]
    assert_close(run(out, {"X": x})[0], expected)


def test_matmul_bias_of_higher_rank_than_the_product_is_not_fused():
    # [batch, K] @ W + bias[1, 1, N] has rank 3: fusing would change the output's shape
    model, p = matmul(12, 6, a_rank=2, bias_shape=(1, 1, 6))
    out, _ = onnx_prune.prune(model, 0.75)
    assert [n.op_type for n in out.graph.node] == [contract.OP_TYPE, "Add", "Identity"]
    x = x_input(12, 2)
    y = run(out, {"X": x})[0]
    assert y.shape == (1, 2, 6)
    assert_close(y, x.astype(np.float64) @ masked(p["W"], 0.75) + p["bias"])


def test_matmul_output_read_elsewhere_keeps_the_add():
    model, p = matmul(12, 6, a_rank=3, bias_shape=(6,), mm_is_output=True)
    out, _ = onnx_prune.prune(model, 0.75)
    assert [n.op_type for n in out.graph.node] == [contract.OP_TYPE, "Add", "Identity"]
    x = x_input(12, 3)
    y, mm = run(out, {"X": x})
    ref = x.astype(np.float64) @ masked(p["W"], 0.75)
    assert_close(mm, ref)
    assert_close(y, ref + p["bias"])


def test_matmul_relu_fused():
    model, p = matmul(16, 8, a_rank=3, bias_shape=(8,), relu=True)
    out, _ = onnx_prune.prune(model, 0.75)
    assert [n.op_type for n in out.graph.node] == [contract.OP_TYPE, "Identity"]
    x = x_input(16, 3)
    assert_close(run(out, {"X": x})[0], np.maximum(x.astype(np.float64) @ masked(p["W"], 0.75) + p["bias"], 0))


# ----------------------------------------------------------------------------- graphs

def test_mlp_runs_with_and_without_the_library():
    model = mlp()
    out, _ = onnx_prune.prune(model, 0.9)
    x = np.random.default_rng(5).standard_normal((6, 20)).astype(np.float32)
    assert_close(run(out, {"input": x})[0], mlp_reference(model, x, 0.9))
    if out.functions:  # the standard-op fallback was embedded
        assert_close(run(out, {"input": x}, library=False)[0], mlp_reference(model, x, 0.9))


def test_shared_weight_read_by_gemm_and_matmul():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((10, 10)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["X", "W"], ["h"], name="g1", transB=1),
             helper.make_node("MatMul", ["h", "W"], ["Y"], name="m2")]
    model = make_model(nodes, [f32("X", ["b", 10])], [f32("Y", ["b", 10])], [numpy_helper.from_array(w, "W")])
    out, report = onnx_prune.prune(model, 0.6, auto_dense=False)
    assert len(sparse_nodes(out)) == 2 and not [t for t in out.graph.initializer if t.name == "W"]
    x = x_input(10, 2)
    expected = (x.astype(np.float64) @ masked(w.T, 0.6)) @ masked(w, 0.6)
    assert_close(run(out, {"X": x})[0], expected)
    assert [l["weight"] for l in json.loads(report.to_json())["layers"]] == ["W", "W"]


def test_weight_another_node_reads_densely_is_not_pruned_twice_stored():
    """The Mul keeps W dense: a sparse copy beside it would only make the file larger (issue 20)."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["X", "W"], ["h"], name="mm"),
             helper.make_node("Mul", ["h", "W"], ["Y"], name="scale")]
    model = make_model(nodes, [f32("X", ["b", 8])], [f32("Y", ["b", 8])], [numpy_helper.from_array(w, "W")])
    with pytest.raises(OnnxPruneError, match="no prunable layer found: the model's 1 Gemm / MatMul node is not "
                                             r"eligible \(mm: its weight W is also read by node scale \(Mul\), "
                                             r"which stays dense: pruning it would store the weight twice\)"):
        onnx_prune.prune(model, 0.75)


@pytest.mark.parametrize("opset", [7, 13, newest_opset()])
def test_opsets_from_7_to_current(opset):
    model, p = gemm(10, 6, trans_b=1, bias_shape=(6,), opset=opset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # below opset 12 the fallback is left out with a warning
        out, _ = onnx_prune.prune(model, 0.6, auto_dense=False)
    onnx.checker.check_model(out)
    assert out.ir_version == model.ir_version
    assert {(o.domain, o.version) for o in out.opset_import} == {("", opset), (contract.DOMAIN, contract.OP_VERSION)}
    if opset < 9:
        assert [i.name for i in out.graph.input if i.name == "B"] == []  # the dense weight left the inputs
        assert {i.name for i in out.graph.input} >= {t.name for t in out.graph.initializer}
    a = a_input(10)
    assert_close(run(out, {"A": a})[0], gemm_forward(a, masked(p["W"], 0.6), p["C"]))


def test_model_mixing_ai_onnx_ml_and_com_microsoft():
    model = mlp()
    model.graph.node.append(helper.make_node("Gelu", ["logits"], ["gelu"], domain="com.microsoft", name="gelu"))
    model.graph.node.append(helper.make_node("Normalizer", ["gelu"], ["normalized"], domain="ai.onnx.ml",
                                             name="norm", norm="MAX"))
    model.graph.output.append(f32("normalized", ["batch", 5]))
    model.opset_import.extend([helper.make_opsetid("ai.onnx.ml", 3), helper.make_opsetid("com.microsoft", 1)])
    out, _ = onnx_prune.prune(model, 0.9)
    assert {o.domain for o in out.opset_import} == {"", "ai.onnx.ml", "com.microsoft", contract.DOMAIN}
    x = np.random.default_rng(8).standard_normal((4, 20)).astype(np.float32)
    logits, normalized = run(out, {"input": x})
    ref = mlp_reference(model, x, 0.9)
    from scipy.special import erf

    gelu = 0.5 * ref * (1 + erf(ref / np.sqrt(2)))
    assert_close(logits, ref)
    assert_close(normalized, gelu / np.abs(gelu).max(axis=1, keepdims=True), rtol=1e-4)


def test_non_float32_weights_are_skipped_with_a_warning_naming_the_layer():
    rng = np.random.default_rng(9)
    w32 = rng.standard_normal((8, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["X", "W32"], ["h"], name="fp32_layer"),
             helper.make_node("Cast", ["h"], ["h16"], to=TensorProto.FLOAT16, name="cast"),
             helper.make_node("MatMul", ["h16", "W16"], ["Y"], name="fp16_layer")]
    model = make_model(nodes, [f32("X", [2, 8])], [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, [2, 4])],
                       [numpy_helper.from_array(w32, "W32"),
                        numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float16), "W16")])
    with pytest.warns(UserWarning, match="fp16_layer skipped: its weight is float16"):
        out, report = onnx_prune.prune(model, 0.75)
    assert [n.op_type for n in out.graph.node] == [contract.OP_TYPE, "Cast", "MatMul"]
    assert [l.node for l in report.layers] == ["fp32_layer"]
    f64, _ = gemm(6, 4, dtype=np.float64, node_name="gemm64")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(OnnxPruneError, match="no prunable layer found"):
            onnx_prune.prune(f64, 0.5)
    assert any("gemm64" in str(w.message) and "float64" in str(w.message) for w in caught)


def test_unnamed_and_duplicate_node_names_get_unique_names():
    model = mlp(unnamed=True)
    model.graph.node[0].name = "dup"
    model.graph.node[2].name = "dup"
    out, report = onnx_prune.prune(model, 0.9)
    names = [l.node for l in report.layers]
    assert len(set(names)) == 3 and names[0] == "dup" and names[1].startswith("dup")
    assert sorted(n.name for n in sparse_nodes(out)) == sorted(names)
    x = np.random.default_rng(10).standard_normal((2, 20)).astype(np.float32)
    assert_close(run(out, {"input": x})[0], mlp_reference(model, x, 0.9))


# ----------------------------------------------------------------------------- the floor rule

@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.7, 0.95, 0.999])
def test_floor_rule_per_layer_with_ties(ratio):
    # magnitudes repeat (ties) and signs differ: ties go to the first weight in row-major W [K, N]
    rng = np.random.default_rng(11)
    w = (rng.integers(1, 5, size=(17, 13)) * rng.choice([-1, 1], size=(17, 13))).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")]
    model = make_model(nodes, [f32("X", ["b", 17])], [f32("Y", ["b", 13])], [numpy_helper.from_array(w, "W")])
    out, report = onnx_prune.prune(model, ratio, auto_dense=False)
    expected_keep = keep_mask(w, ratio)
    assert report.layers[0].nnz == int(expected_keep.sum()) == w.size - int(np.floor(ratio * w.size + 1e-9))
    x = x_input(17, 2)
    assert_close(run(out, {"X": x})[0], x.astype(np.float64) @ np.where(expected_keep, w, 0))


def test_floor_rule_global_scope():
    model = mlp(dims=(20, 16, 12, 5))
    out, report = onnx_prune.prune(model, 0.7, scope="global", auto_dense=False)
    weights = mlp_weights_kn(model)
    masks = global_keep_masks(weights, 0.7)
    total = sum(w.size for w in weights)
    assert sum(l.nnz for l in report.layers) == total - int(np.floor(0.7 * total))
    assert [l.nnz for l in report.layers] == [int(m.sum()) for m in masks]
    x = np.random.default_rng(12).standard_normal((3, 20)).astype(np.float32)
    assert_close(run(out, {"input": x})[0], mlp_forward(model, x, masks))


def test_global_scope_refuses_per_layer_ratios():
    with pytest.raises(OnnxPruneError, match="cannot be combined with --scope global"):
        onnx_prune.prune(mlp(), 0.7, scope="global", layer_ratios={"/fc0/Gemm": 0.5})


# ----------------------------------------------------------------------------- selection

def test_include_exclude_layer_ratio_min_params():
    model = mlp(dims=(20, 16, 12, 5))
    out, report = onnx_prune.prune(model, 0.9, layer_ratios={"fc0.weight": 0.6}, min_params=100, auto_dense=False)
    by_node = {l.node: l for l in report.layers}
    assert by_node["/fc0/Gemm"].nnz == 320 - 192 and by_node["/fc1/Gemm"].nnz == 192 - 172
    assert "/fc2/Gemm" not in by_node
    assert report.skipped == [{"node": "/fc2/Gemm", "reason": "60 weights < --min-params 100"}]
    _, report = onnx_prune.prune(model, 0.9, include=["/fc1/*", "fc2.weight"])
    assert [l.node for l in report.layers] == ["/fc1/Gemm", "/fc2/Gemm"]
    _, report = onnx_prune.prune(model, 0.9, exclude=["*fc0*"])
    assert [l.node for l in report.layers] == ["/fc1/Gemm", "/fc2/Gemm"]
    with pytest.raises(OnnxPruneError, match="no prunable layer left"):
        onnx_prune.prune(model, 0.9, include=["nothing"])
    with pytest.raises(OnnxPruneError, match="--layer-ratio fc9: no selected layer"):
        onnx_prune.prune(model, 0.9, layer_ratios={"fc9": 0.5})


def test_auto_dense_threshold_and_report_reason():
    assert auto_dense.DENSE_KEEP_THRESHOLD == 0.4
    model = mlp(dims=(20, 16, 12, 5))
    out, report = onnx_prune.prune(model, 0.9, layer_ratios={"/fc1/Gemm": 0.5, "/fc2/Gemm": 0.6})
    status = {l.node: l.status for l in report.layers}
    assert status["/fc0/Gemm"] == "sparse" and status["/fc2/Gemm"] == "sparse"  # 60% sparse: pruned
    assert status["/fc1/Gemm"] == "kept_dense"
    reasons = {l.node: l.reason for l in report.layers}
    assert reasons["/fc1/Gemm"].startswith("it would keep more than 40% of its weights") and reasons["/fc0/Gemm"] == ""
    assert [n.op_type for n in out.graph.node] == [contract.OP_TYPE, "Gemm", "Relu", contract.OP_TYPE]
    x = np.random.default_rng(13).standard_normal((2, 20)).astype(np.float32)
    weights = mlp_weights_kn(model)
    masks = [keep_mask(weights[0], 0.9), np.ones_like(weights[1], bool), keep_mask(weights[2], 0.6)]
    assert_close(run(out, {"input": x})[0], mlp_forward(model, x, masks))
    _, report = onnx_prune.prune(model, 0.3, auto_dense=False)
    assert all(l.status == "sparse" for l in report.layers)


# ----------------------------------------------------------------------------- options and results

def test_fp16_values_match_the_fp16_rounded_reference():
    model, p = matmul(64, 32, a_rank=2, bias_shape=(32,))
    out, report = onnx_prune.prune(model, 0.8, values="fp16", verify=True)
    values = next(t for t in out.graph.initializer if t.name.endswith("sparse_values"))
    assert values.data_type == TensorProto.FLOAT16
    w16 = masked(p["W"], 0.8).astype(np.float16).astype(np.float64)
    x = x_input(64, 2)
    assert_close(run(out, {"X": x})[0], x.astype(np.float64) @ w16 + p["bias"])
    assert report.verification.passed and report.verification.tolerance == 1e-3


def test_verification_passes_and_fails_above_tolerance(monkeypatch):
    _, report = onnx_prune.prune(mlp(), 0.9, verify=True)
    v = report.verification
    assert v.passed and v.max_rel_error <= 1e-4 and set(v.per_output) == {"logits"} and v.tolerance == 1e-4
    import onnx_prune.check.verify as verify

    monkeypatch.setattr(verify, "VERIFY_TOLERANCE", -1.0)
    with pytest.raises(OnnxPruneError, match="verification failed: max relative error .* logits"):
        onnx_prune.prune(mlp(), 0.9, verify=True)


def test_verification_with_given_inputs():
    feeds = {"input": np.ones((3, 20), np.float32)}
    _, report = onnx_prune.prune(mlp(), 0.9, verify=True, verify_inputs=feeds)
    assert report.verification.passed and report.verification.inputs == "given inputs"


def test_input_model_is_not_modified():
    model = mlp(unnamed=True)
    before = model.SerializeToString()
    onnx_prune.prune(model, 0.9)
    assert model.SerializeToString() == before


def test_report_json_contents():
    model = mlp(dims=(20, 16, 12, 5))
    _, report = onnx_prune.prune(model, 0.9, values="fp16", layer_ratios={"/fc2/Gemm": 0.2})
    data = json.loads(report.to_json())
    first = data["layers"][0]
    assert first == {"node": "/fc0/Gemm", "weight": "fc0.weight", "op": "Gemm", "shape": [20, 16], "params": 320,
                     "nnz": 32, "sparsity": pytest.approx(0.9), "bytes_before": 1280,
                     "bytes_after": 32 * (2 + 2) + 4 * 17, "status": "sparse", "stored": 32, "shares": None,
                     "reason": ""}
    assert data["layers"][2]["status"] == "kept_dense" and data["layers"][2]["nnz"] == 60
    assert "--no-auto-dense" in data["layers"][2]["reason"]
    assert data["settings"]["ratio"] == 0.9 and data["settings"]["values"] == "fp16"
    assert data["total_params"] == 320 + 192 + 60 and data["total_nnz"] == 32 + 20 + 60
    assert data["file_size_before"] == model.ByteSize() and data["verification"] is None


@pytest.mark.parametrize("kwargs,message", [
    (dict(ratio=1.0), "--ratio must be in"), (dict(ratio=-0.1), "--ratio must be in"),
    (dict(ratio=float("nan")), "--ratio must be in"), (dict(scope="all"), "--scope must be"),
    (dict(method="random"), "--method must be one of"), (dict(values="int4"), "--values must be fp32.*, got 'int4'"),
    (dict(min_params=-1), "--min-params must be"), (dict(layer_ratios={"x": 2.0}), "--layer-ratio x must be in"),
])
def test_bad_options(kwargs, message):
    kwargs = {"ratio": 0.5, **kwargs}
    with pytest.raises(OnnxPruneError, match=message):
        onnx_prune.prune(mlp(), **kwargs)


def test_nothing_eligible():
    with pytest.raises(OnnxPruneError, match="no prunable layer found"):
        onnx_prune.prune(relu_only(), 0.5)


def test_tensor_read_inside_a_subgraph_is_not_fused_away():
    model, p = matmul(12, 6, a_rank=2, bias_shape=(6,))
    branch = lambda name: helper.make_graph([helper.make_node("Identity", ["mm"], [name])], name, [],  # noqa: E731
                                            [f32(name, ["batch", 6])])
    model.graph.node.append(helper.make_node("If", ["cond"], ["picked"], name="if",
                                             then_branch=branch("t"), else_branch=branch("e")))
    model.graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    model.graph.output.append(f32("picked", ["batch", 6]))
    out, _ = onnx_prune.prune(model, 0.75)
    assert [n.op_type for n in out.graph.node] == [contract.OP_TYPE, "Add", "Identity", "If"]
    x = x_input(12, 2)
    y, picked = run(out, {"X": x, "cond": np.array(True)})
    ref = x.astype(np.float64) @ masked(p["W"], 0.75)
    assert_close(picked, ref)
    assert_close(y, ref + p["bias"])


def test_pruning_a_pruned_model_prunes_the_layers_left_dense():
    model = mlp(dims=(20, 16, 12, 5))
    first, report = onnx_prune.prune(model, 0.9, layer_ratios={"/fc1/Gemm": 0.2})
    assert [l.status == "sparse" for l in report.layers] == [True, False, True]
    second, report = onnx_prune.prune(first, 0.9)
    assert [l.node for l in report.layers] == ["/fc1/Gemm"]
    assert [n.op_type for n in second.graph.node] == [contract.OP_TYPE] * 3
    assert [(o.domain, o.version) for o in second.opset_import].count((contract.DOMAIN, 1)) == 1
    assert len(second.functions) == len(first.functions)
    x = np.random.default_rng(14).standard_normal((2, 20)).astype(np.float32)
    assert_close(run(second, {"input": x})[0], mlp_reference(model, x, 0.9))


def test_calibration_data_with_magnitude_is_reported_unused():
    with pytest.warns(UserWarning, match="calibration data is not used by --method magnitude"):
        onnx_prune.prune(mlp(), 0.9, calibration={"input": np.ones((2, 20), np.float32)})


def test_transformer_block_projections_pruned_attention_left_alone():
    from helpers_models import attention_block, attention_forward

    model, p = attention_block()
    out, report = onnx_prune.prune(model, 0.8, verify=True)
    assert sorted(l.node for l in report.layers) == sorted(
        ["/attn/q/MatMul", "/attn/k/MatMul", "/attn/v/MatMul", "/attn/o/MatMul", "/ffn/fc1/MatMul", "/ffn/fc2/MatMul"])
    assert sorted(s["node"] for s in report.skipped) == ["/attn/ctx/MatMul", "/attn/scores/MatMul"]
    assert [n.op_type for n in out.graph.node].count(contract.OP_TYPE) == 6
    assert not [n for n in out.graph.node if n.op_type == "Relu"]  # fused into fc1
    x = np.random.default_rng(15).standard_normal((2, 5, 16)).astype(np.float32)
    assert_close(run(out, {"X": x})[0], attention_forward(x, p, 0.8))
