"""densify: SparseGemm nodes back to standard ops, equal to the masked-dense model.

Models are built with onnx.helper; references are float64 numpy (single nodes, see
test_fallback.reference) or the original model with its weights masked independently with
onnx_prune.pruning.masking (prune -> densify), run in plain onnxruntime without the onnx-prune library.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_prune.pruning import masking
from onnx_prune.sparse_gemm import contract
from onnx_prune.sparse_gemm.densify import densify_model
from onnx_prune.errors import OnnxPruneError
from onnx_prune.sparse_gemm.fallback import add_fallback_functions
from onnx_prune.runtime.library import find_library_path

from test_fallback import CASES, Case, build_model, masked_weight, reference

_STANDARD_OPS = {"Gemm", "MatMul", "Add", "Mul", "Relu", "Reshape", "Shape", "Slice", "Concat"}


def run_plain(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """onnxruntime without the library: only standard ops can run."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_fully_dense(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    assert not any(n.op_type == contract.OP_TYPE for n in model.graph.node)
    assert not model.functions
    assert contract.DOMAIN not in {o.domain for o in model.opset_import}
    assert not any(t.name.endswith((".sparse_values", ".sparse_indices", ".sparse_offsets"))
                   or t.name.startswith("w_") for t in model.graph.initializer)


@pytest.mark.parametrize("name", sorted(CASES))
def test_single_node_densifies_to_the_masked_dense_result(name: str) -> None:
    case = CASES[name]
    rng = np.random.default_rng(len(name) + 100)
    weight = masked_weight(case, rng)
    bias = None if case.bias_shape is None else rng.standard_normal(case.bias_shape).astype(np.float32)
    a = rng.standard_normal(case.a_shape).astype(np.float32)
    model = build_model(case, weight, bias)
    add_fallback_functions(model)
    dense = densify_model(model)
    assert_fully_dense(dense)
    assert "fc1" in [n.name for n in dense.graph.node]  # the flattened form starts with fc1/flatten
    assert {n.op_type for n in dense.graph.node} <= _STANDARD_OPS
    (y,) = run_plain(dense, {"A": a})
    expected = reference(case, a, weight, bias)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    written = {t.name: numpy_helper.to_array(t) for t in dense.graph.initializer}
    np.testing.assert_array_equal(written["fc1.weight"], weight.astype(case.values_dtype).astype(np.float32))


def _unknown_rank_model(case: Case, weight: np.ndarray, bias: Optional[np.ndarray]) -> onnx.ModelProto:
    """The same node, but A comes from a Reshape to a runtime shape: no rank is known, so densify
    must not assume 2-D."""
    model = build_model(case, weight, bias)
    graph = model.graph
    node = graph.node[0]
    kept = [a for a in node.attribute if a.name != "original_op"]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute("original_op", "MatMul")])
    graph.input[0].CopyFrom(helper.make_tensor_value_info("X", TensorProto.FLOAT, [int(np.prod(case.a_shape))]))
    graph.input.append(helper.make_tensor_value_info("S", TensorProto.INT64, [len(case.a_shape)]))
    graph.node.insert(0, helper.make_node("Reshape", ["X", "S"], ["A"], name="runtime_reshape"))
    return model


@pytest.mark.parametrize("a_shape,bias_shape", [([2, 3, 6], [6, 5]), ([2, 3, 6], [6, 1]), ([4, 6], [4, 5]),
                                                ([2, 3, 6], [5]), ([6], None)])
def test_unknown_rank_a_uses_matmul_semantics(a_shape, bias_shape) -> None:
    """[M, N] / [M, 1] biases on N-D A go through the reshape path; right-broadcast ones through Add."""
    case = Case(a_shape=a_shape, bias_shape=bias_shape, alpha=0.5, beta=2.0, activation="relu")
    rng = np.random.default_rng(5)
    weight = masked_weight(case, rng)
    bias = None if bias_shape is None else rng.standard_normal(bias_shape).astype(np.float32)
    model = _unknown_rank_model(case, weight, bias)
    dense = densify_model(model)
    assert_fully_dense(dense)
    a = rng.standard_normal(a_shape).astype(np.float32)
    (y,) = run_plain(dense, {"X": a.ravel(), "S": np.array(a_shape, np.int64)})
    np.testing.assert_allclose(y, reference(case, a, weight, bias), rtol=1e-5, atol=1e-5)
    assert "MatMul" in {n.op_type for n in dense.graph.node} or bias_shape not in ([5], None)


# ----------------------------------------------------------------------------- through the pruner


def mlp_model() -> onnx.ModelProto:
    """Gemm (transB) + Relu, a 3-D MatMul + Add + Relu, and a final Gemm without bias."""
    rng = np.random.default_rng(11)
    w1 = rng.standard_normal((32, 12)).astype(np.float32)   # [N, K], transB=1
    w2 = rng.standard_normal((32, 24)).astype(np.float32)   # [K, N]
    w3 = rng.standard_normal((24, 6)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1", transB=1, alpha=0.75),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("Reshape", ["r1", "shape3"], ["r1_3d"], name="to3d"),
             helper.make_node("MatMul", ["r1_3d", "w2"], ["m2"], name="fc2"),
             helper.make_node("Add", ["m2", "b2"], ["h2"], name="add2"),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("Reshape", ["r2", "shape2"], ["r2_2d"], name="to2d"),
             helper.make_node("Gemm", ["r2_2d", "w3"], ["y"], name="fc3")]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(rng.standard_normal(24).astype(np.float32), "b2"),
             numpy_helper.from_array(w3, "w3"), numpy_helper.from_array(np.array([-1, 2, 32], np.int64), "shape3"),
             numpy_helper.from_array(np.array([-1, 24], np.int64), "shape2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 6])], inits)
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])


def masked_dense(model: onnx.ModelProto, ratio: float) -> onnx.ModelProto:
    """The original model with each weight masked by the documented floor rule (per layer, |w|)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in out.graph.initializer:
        if tensor.name in ("w1", "w2", "w3"):
            w = numpy_helper.to_array(tensor)
            oriented = w.T if tensor.name == "w1" else w   # the mask is defined on W [K, N]
            keep = masking.magnitude_mask(oriented, ratio)
            masked = np.where(keep, oriented, np.float32(0))
            tensor.CopyFrom(numpy_helper.from_array(masked.T if tensor.name == "w1" else masked, tensor.name))
    return out


@pytest.mark.parametrize("values", ["fp32", "fp16"])
def test_prune_then_densify_equals_the_masked_dense_model(values: str) -> None:
    api = pytest.importorskip("onnx_prune.api")
    model = mlp_model()
    pruned, _ = api.prune(model, ratio=0.8, values=values)
    assert sum(n.op_type == contract.OP_TYPE for n in pruned.graph.node) == 3
    dense = densify_model(pruned)
    assert_fully_dense(dense)
    assert [n.name for n in dense.graph.node if n.op_type in ("Gemm", "MatMul")] == ["fc1", "fc2", "fc3"]
    x = np.random.default_rng(2).standard_normal((4, 12)).astype(np.float32)
    (expected,) = run_plain(masked_dense(model, 0.8), {"x": x})
    (got,) = run_plain(dense, {"x": x})
    tolerance = 1e-5 if values == "fp32" else 5e-2
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)
    if find_library_path() is not None:
        options = ort.SessionOptions()
        options.register_custom_ops_library(find_library_path())
        session = ort.InferenceSession(pruned.SerializeToString(), options, providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {"x": x})[0], got, rtol=1e-5, atol=1e-5)


def test_fp16_weights_are_written_out_exactly() -> None:
    api = pytest.importorskip("onnx_prune.api")
    model = mlp_model()
    pruned, _ = api.prune(model, ratio=0.8, values="fp16")
    dense = densify_model(pruned)
    written = {t.name: numpy_helper.to_array(t) for t in dense.graph.initializer}
    expected = masked_dense(model, 0.8)
    w3 = next(numpy_helper.to_array(t) for t in expected.graph.initializer if t.name == "w3")
    np.testing.assert_array_equal(written["w3"], w3.astype(np.float16).astype(np.float32))


# ----------------------------------------------------------------------------- errors


def _single(case: Case = Case(a_shape=[2, 6])) -> onnx.ModelProto:
    return build_model(case, masked_weight(case, np.random.default_rng(0)), None)


def test_non_constant_weights_are_refused_by_name() -> None:
    model = _single()
    offsets = next(t for t in model.graph.initializer if t.name == "w_offsets")
    model.graph.input.append(helper.make_tensor_value_info("w_offsets", TensorProto.INT32, [offsets.dims[0]]))
    model.graph.initializer.remove(offsets)
    with pytest.raises(OnnxPruneError, match=r"SparseGemm node 'fc1': its weight 'w_offsets' is not a constant"):
        densify_model(model)


def test_invalid_offsets_are_refused() -> None:
    model = _single()
    tensor = next(t for t in model.graph.initializer if t.name == "w_offsets")
    bad = numpy_helper.to_array(tensor).copy()
    bad[-1] += 1
    tensor.CopyFrom(numpy_helper.from_array(bad, "w_offsets"))
    with pytest.raises(OnnxPruneError, match=r"SparseGemm node 'fc1': offsets must start at 0, never decrease "
                                             r"and end at nnz="):
        densify_model(model)


def test_out_of_range_index_is_refused() -> None:
    model = _single()
    tensor = next(t for t in model.graph.initializer if t.name == "w_indices")
    bad = numpy_helper.to_array(tensor).copy()
    bad[0] = 6
    tensor.CopyFrom(numpy_helper.from_array(bad, "w_indices"))
    with pytest.raises(OnnxPruneError, match=r"SparseGemm node 'fc1': an index is outside \[0, K=6\)"):
        densify_model(model)


def test_unknown_format_is_refused() -> None:
    model = _single()
    model.graph.node[0].attribute.append(helper.make_attribute("format", "nm24"))
    with pytest.raises(OnnxPruneError, match=r"SparseGemm node 'fc1': cannot densify format 'nm24'"):
        densify_model(model)


def test_input_model_is_not_modified_and_plain_models_pass_through() -> None:
    model = _single()
    before = model.SerializeToString()
    densify_model(model)
    assert model.SerializeToString() == before
    plain = mlp_model()
    assert densify_model(plain).SerializeToString() == plain.SerializeToString()
