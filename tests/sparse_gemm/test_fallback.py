"""The SparseGemm fallback function stored in pruned files.

Every case runs the same file twice: in a plain onnxruntime session (no library: the model-local
function must run) and in one with the onnx-prune library registered (the kernel must run). Both
must equal an independent numpy reference built from the masked dense weight.

Which implementation ran is read from onnxruntime's profiling output, not from timing: the
profile lists one event per executed node with its ``op_name``. With the library the only op is
``SparseGemm`` (the custom kernel); without it ``SparseGemm`` never appears and the inlined body's
standard ops (``ScatterND``, ``Gemm``, ...) do.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers_models import newest_opset
from onnx_prune.sparse_gemm import contract, formats
from onnx_prune.errors import OnnxPruneError
from onnx_prune.sparse_gemm.fallback import add_fallback_functions, build_sparse_gemm_function, has_fallback_function
from onnx_prune.sparse_gemm.formats.csr import dense_to_csr
from onnx_prune.runtime.library import find_library_path

needs_library = pytest.mark.skipif(find_library_path() is None,
                                   reason="the onnx-prune library is not built (set ONNX_PRUNE_LIBRARY)")


@dataclass
class Case:
    """One SparseGemm node: shapes, attributes and weight dtypes."""

    a_shape: Sequence[int]
    K: int = 6
    N: int = 5
    trans_a: int = 0
    alpha: Optional[float] = None
    beta: Optional[float] = None
    bias_shape: Optional[Sequence[int]] = None
    activation: Optional[str] = None
    sparsity: float = 0.6
    values_dtype: type = np.float32
    index_dtype: Optional[type] = None
    offset_dtype: Optional[type] = None
    opset: int = 17
    empty_columns: Sequence[int] = field(default_factory=lambda: (1,))
    original_op: Optional[str] = None  # None: what rewrite writes (Gemm for 2-D A, else MatMul); "": absent

    @property
    def written_original_op(self) -> str:
        if self.original_op is not None:
            return self.original_op
        return "Gemm" if self.trans_a or len(self.a_shape) == 2 else "MatMul"


def masked_weight(case: Case, rng: np.random.Generator) -> np.ndarray:
    weight = rng.standard_normal((case.K, case.N)).astype(np.float32)
    weight[rng.random(weight.shape) < case.sparsity] = 0.0
    for n in case.empty_columns:
        weight[:, n] = 0.0
    return weight


def build_model(case: Case, weight: np.ndarray, bias: Optional[np.ndarray]) -> onnx.ModelProto:
    csr = dense_to_csr(weight, values_dtype=case.values_dtype)
    indices = csr.indices if case.index_dtype is None else csr.indices.astype(case.index_dtype)
    offsets = csr.offsets if case.offset_dtype is None else csr.offsets.astype(case.offset_dtype)
    inits = [numpy_helper.from_array(csr.values, "w_values"), numpy_helper.from_array(indices, "w_indices"),
             numpy_helper.from_array(offsets, "w_offsets")]
    inputs = ["A", "w_values", "w_indices", "w_offsets"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "bias"))
        inputs.append("bias")
    attrs = {"K": case.K, "N": case.N, "nnz": csr.nnz}
    if case.written_original_op:
        attrs["original_op"] = case.written_original_op
    for name, value in (("alpha", case.alpha), ("beta", case.beta), ("activation", case.activation)):
        if value is not None:
            attrs[name] = value
    if case.trans_a:
        attrs["transA"] = case.trans_a
    node = helper.make_node(contract.OP_TYPE, inputs, ["Y"], name="fc1", domain=contract.DOMAIN, **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, list(case.a_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, output_shape(case))], inits)
    return helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", case.opset), helper.make_opsetid(contract.DOMAIN, contract.OP_VERSION)])


def output_shape(case: Case) -> list[int]:
    if case.trans_a:
        return [case.a_shape[1], case.N]
    return list(case.a_shape[:-1]) + [case.N]


def reference(case: Case, a: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray]) -> np.ndarray:
    """float64 numpy: act(alpha * A' W + beta * C) with the contract's N-D / transA shapes."""
    w = weight.astype(case.values_dtype).astype(np.float64)
    a64 = a.astype(np.float64)
    if case.trans_a:
        y = a64.T @ w
    else:
        y = (a64.reshape(-1, case.K) @ w).reshape(tuple(a.shape[:-1]) + (case.N,))
    y = (1.0 if case.alpha is None else case.alpha) * y
    if bias is not None:
        c = bias.astype(np.float64)
        if not case.trans_a and a.ndim != 2 and c.ndim == 2:
            y = (y.reshape(-1, case.N) + (1.0 if case.beta is None else case.beta) * c).reshape(y.shape)
        else:
            y = y + (1.0 if case.beta is None else case.beta) * c
    if case.activation == "relu":
        y = np.maximum(y, 0.0)
    return y


def run_profiled(model: onnx.ModelProto, feeds: dict, tmp_path: Path, with_library: bool,
                 optimize: bool = True):
    """Outputs and the set of op names onnxruntime's profiler saw execute."""
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / f"profile_{int(with_library)}")
    if with_library:
        options.register_custom_ops_library(find_library_path())
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    ops = {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})}
    return outputs[0], ops


CASES = {
    "2d": Case(a_shape=[3, 6]),
    "2d_transA": Case(a_shape=[6, 3], trans_a=1),
    "alpha_beta_bias_N": Case(a_shape=[4, 6], alpha=0.5, beta=-2.0, bias_shape=[5]),
    "transA_alpha_bias_1N": Case(a_shape=[6, 4], trans_a=1, alpha=1.5, beta=0.25, bias_shape=[1, 5]),
    "bias_scalar": Case(a_shape=[4, 6], beta=3.0, bias_shape=[]),
    "bias_one": Case(a_shape=[4, 6], bias_shape=[1]),
    "bias_M1": Case(a_shape=[4, 6], bias_shape=[4, 1]),
    "bias_MN": Case(a_shape=[4, 6], bias_shape=[4, 5]),
    "3d": Case(a_shape=[2, 3, 6], bias_shape=[5]),
    "4d_relu": Case(a_shape=[2, 1, 3, 6], bias_shape=[5], activation="relu"),
    "rank1": Case(a_shape=[6], bias_shape=[5]),
    "relu": Case(a_shape=[8, 6], activation="relu", bias_shape=[5]),
    "activation_empty": Case(a_shape=[8, 6], activation=""),
    "fp16_values": Case(a_shape=[3, 6], values_dtype=np.float16, bias_shape=[5]),
    "int32_indices_int64_offsets": Case(a_shape=[3, 6], index_dtype=np.int32, offset_dtype=np.int64),
    "all_zero": Case(a_shape=[3, 6], sparsity=1.0, bias_shape=[5]),
    "all_zero_no_bias": Case(a_shape=[3, 6], sparsity=1.0),
    "dense_no_zeros": Case(a_shape=[3, 6], sparsity=0.0, empty_columns=()),
    "batch0_2d": Case(a_shape=[0, 6], bias_shape=[5]),
    "batch0_3d": Case(a_shape=[0, 3, 6]),
    "opset12": Case(a_shape=[2, 3, 6], opset=12, activation="relu", bias_shape=[1, 5]),
    "opset13_transA": Case(a_shape=[6, 2], opset=13, trans_a=1, bias_shape=[5]),
    "opset_newest": Case(a_shape=[2, 6], opset=newest_opset(), alpha=2.0, bias_shape=[5]),
    "wide_K": Case(a_shape=[2, 300], K=300, N=40, sparsity=0.9, empty_columns=(0, 39)),
    "matmul_2d_no_bias": Case(a_shape=[3, 6], original_op="MatMul"),
    "matmul_3d_bias_1N_relu": Case(a_shape=[2, 3, 6], bias_shape=[1, 5], activation="relu"),
    "matmul_alpha_beta": Case(a_shape=[2, 3, 6], alpha=0.5, beta=-2.0, bias_shape=[5]),
    "general_3d_bias_MN": Case(a_shape=[2, 3, 6], bias_shape=[6, 5], original_op=""),
    "general_2d_transA_relu": Case(a_shape=[6, 3], trans_a=1, activation="relu", original_op=""),
    "general_rank1": Case(a_shape=[6], bias_shape=[5], original_op=""),
}


def _case_inputs(case: Case, seed: int):
    rng = np.random.default_rng(seed)
    weight = masked_weight(case, rng)
    bias = None if case.bias_shape is None else rng.standard_normal(case.bias_shape).astype(np.float32)
    a = rng.standard_normal(case.a_shape).astype(np.float32)
    return weight, bias, a


@pytest.mark.parametrize("optimize", [True, False], ids=["folded", "unoptimized"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_fallback_without_library_matches_numpy(name: str, optimize: bool, tmp_path: Path) -> None:
    """With graph optimizations onnxruntime folds the weight rebuild into a constant, so only the
    Gemm part runs; with them disabled the whole body (TopK, ScatterND, ...) runs at every call."""
    case = CASES[name]
    weight, bias, a = _case_inputs(case, seed=len(name))
    model = build_model(case, weight, bias)
    add_fallback_functions(model)
    onnx.checker.check_model(model, full_check=True)
    y, ops = run_profiled(model, {"A": a}, tmp_path, with_library=False, optimize=optimize)
    expected = reference(case, a, weight, bias)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert contract.OP_TYPE not in ops
    if a.size:  # onnxruntime skips profiling events of some nodes on empty tensors
        assert ops & {"Gemm", "FusedGemm", "MatMul"}
        assert ({"TopK", "ScatterND"} <= ops) == (not optimize)


def test_onnxruntime_folds_the_weight_rebuild_into_one_dense_initializer(tmp_path: Path) -> None:
    """Without the library the fallback costs what the dense model costs: onnxruntime's constant
    folding (default optimization level) replaces the rebuild with W itself."""
    case = CASES["alpha_beta_bias_N"]
    weight, bias, _ = _case_inputs(case, seed=1)
    model = build_model(case, weight, bias)
    add_fallback_functions(model)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    ops = {n.op_type for n in optimized.graph.node}
    assert not ops & {"TopK", "ScatterND", "ScatterElements", "Range", "Cast"}
    folded = [numpy_helper.to_array(t) for t in optimized.graph.initializer if list(t.dims) == [case.K, case.N]]
    assert len(folded) == 1
    np.testing.assert_array_equal(folded[0], weight)


@needs_library
@pytest.mark.parametrize("name", sorted(CASES))
def test_same_file_with_library_runs_the_kernel(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    weight, bias, a = _case_inputs(case, seed=len(name))
    model = build_model(case, weight, bias)
    add_fallback_functions(model)
    y, ops = run_profiled(model, {"A": a}, tmp_path, with_library=True)
    expected = reference(case, a, weight, bias)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    if a.size:
        assert ops == {contract.OP_TYPE}


def test_relu_lets_nan_through_like_the_kernel(tmp_path: Path) -> None:
    case = Case(a_shape=[2, 6], activation="relu")
    weight, _, a = _case_inputs(case, seed=3)
    a[0, :] = np.nan
    model = build_model(case, weight, None)
    add_fallback_functions(model)
    y, _ = run_profiled(model, {"A": a}, tmp_path, with_library=False)
    assert np.isnan(y[0]).all()
    np.testing.assert_allclose(y[1], np.maximum(a[1].astype(np.float64) @ weight, 0), rtol=1e-5, atol=1e-5)


def test_duplicate_entries_are_summed_from_opset_16(tmp_path: Path) -> None:
    """The kernel sums duplicate (k, n) entries; so does the fallback where ScatterND can add."""
    values = np.array([1.0, 2.0, 4.0], np.float32)
    indices = np.array([1, 1, 0], np.uint16)
    offsets = np.array([0, 2, 3], np.int32)
    node = helper.make_node(contract.OP_TYPE, ["A", "v", "i", "o"], ["Y"], domain=contract.DOMAIN, K=2, N=2)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(x, n) for x, n in ((values, "v"), (indices, "i"), (offsets, "o"))])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17),
                                                                  helper.make_opsetid(contract.DOMAIN, 1)])
    add_fallback_functions(model)
    y, _ = run_profiled(model, {"A": np.array([[10.0, 100.0]], np.float32)}, tmp_path, with_library=False)
    np.testing.assert_allclose(y, [[300.0, 40.0]])


def test_two_nodes_share_one_function_and_node_names_stay(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    case1, case2 = Case(a_shape=[3, 6], activation="relu", bias_shape=[5]), Case(a_shape=[3, 5], K=5, N=4, alpha=0.5)
    w1, w2 = masked_weight(case1, rng), masked_weight(case2, rng)
    m1, m2 = build_model(case1, w1, np.ones(5, np.float32)), build_model(case2, w2, None)
    n2 = m2.graph.node[0]
    n2.name, n2.input[0], n2.output[0] = "fc2", "Y", "Z"
    for init in m2.graph.initializer:
        init.name = "l2_" + init.name
    n2.input[1:] = ["l2_" + x for x in n2.input[1:]]
    m1.graph.node.append(n2)
    m1.graph.initializer.extend(m2.graph.initializer)
    m1.graph.output[0].CopyFrom(helper.make_tensor_value_info("Z", TensorProto.FLOAT, [3, 4]))
    add_fallback_functions(m1)
    add_fallback_functions(m1)  # idempotent
    assert [f.name for f in m1.functions] == [contract.OP_TYPE]
    assert [n.name for n in m1.graph.node] == ["fc1", "fc2"]
    onnx.checker.check_model(m1, full_check=True)
    a = rng.standard_normal((3, 6)).astype(np.float32)
    y, _ = run_profiled(m1, {"A": a}, tmp_path, with_library=False)
    expected = 0.5 * (np.maximum(a.astype(np.float64) @ w1 + 1.0, 0) @ w2)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_function_imports_the_models_opset_and_ir_is_raised() -> None:
    case = Case(a_shape=[2, 6], opset=13)
    model = build_model(case, masked_weight(case, np.random.default_rng(0)), None)
    add_fallback_functions(model)
    (func,) = model.functions
    assert [(o.domain, o.version) for o in func.opset_import] == [("", 13)]
    assert model.ir_version >= 9
    assert has_fallback_function(model)
    assert build_sparse_gemm_function(13).input == [contract.INPUT_A, *formats.get("csr").tensor_names, contract.INPUT_C]


def test_model_without_sparse_gemm_is_left_alone() -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = model.SerializeToString()
    add_fallback_functions(model)
    assert model.SerializeToString() == before


def test_opset_below_12_gets_no_function_and_a_clear_warning() -> None:
    case = Case(a_shape=[2, 6], opset=11)
    model = build_model(case, masked_weight(case, np.random.default_rng(0)), None)
    with pytest.warns(UserWarning, match=r"no standard-op fallback embedded: it needs ai.onnx opset >= 12 "
                                         r"and the model imports opset 11"):
        add_fallback_functions(model)
    assert not model.functions


def test_unknown_format_is_refused() -> None:
    case = Case(a_shape=[2, 6])
    model = build_model(case, masked_weight(case, np.random.default_rng(0)), None)
    model.graph.node[0].attribute.append(helper.make_attribute("format", "blocked"))
    known = ", ".join(f"'{name}'" for name in formats.names())
    with pytest.raises(OnnxPruneError, match=re.escape(f"SparseGemm node 'fc1': the fallback supports format {known} only")):
        add_fallback_functions(model)


@pytest.mark.parametrize("values", ["fp32", "fp16"])
def test_pruned_file_runs_without_and_with_the_library(values: str, tmp_path: Path) -> None:
    """Through onnx_prune.api.prune: the written file carries the function and runs in both sessions."""
    api = pytest.importorskip("onnx_prune.api")
    from test_densify import masked_dense, mlp_model

    model = mlp_model()
    pruned, _ = api.prune(model, ratio=0.8, values=values)
    assert has_fallback_function(pruned)
    onnx.checker.check_model(pruned, full_check=True)
    x = np.random.default_rng(4).standard_normal((6, 12)).astype(np.float32)
    masked = masked_dense(model, 0.8)
    if values == "fp16":  # the file stores fp16 weights: the reference uses the same rounded values
        for tensor in masked.graph.initializer:
            if tensor.name in ("w1", "w2", "w3"):
                w = numpy_helper.to_array(tensor).astype(np.float16).astype(np.float32)
                tensor.CopyFrom(numpy_helper.from_array(w, tensor.name))
    expected = ort.InferenceSession(masked.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    y, ops = run_profiled(pruned, {"x": x}, tmp_path, with_library=False)
    assert contract.OP_TYPE not in ops and "Gemm" in ops
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    if find_library_path() is not None:
        y_lib, ops_lib = run_profiled(pruned, {"x": x}, tmp_path, with_library=True)
        assert contract.OP_TYPE in ops_lib and "Gemm" not in ops_lib
        np.testing.assert_allclose(y_lib, expected, rtol=1e-5, atol=1e-5)


def ops_per_call(model: onnx.ModelProto, feeds: dict, tmp_path: Path) -> list[str]:
    """The op types onnxruntime's profiler saw run in one call (default optimisations, no
    library), one entry per executed node: counts matter, not only which ops."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile_count")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    return sorted(e["args"]["op_name"] for e in events
                  if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"))


def _bundled_model():
    path = Path(__file__).resolve().parents[2] / "models" / "mnist-mlp.onnx"
    return onnx.load(str(path)), np.random.default_rng(2).standard_normal((4, 784)).astype(np.float32)


def _attention_block():
    from helpers_models import attention_block

    return attention_block()[0], np.random.default_rng(3).standard_normal((2, 5, 16)).astype(np.float32)


def _nd_matmul_without_bias():
    from helpers_models import matmul, x_input

    return matmul(24, 20, a_rank=4)[0], x_input(24, a_rank=4)


def _nd_matmul_bias_1n_relu():
    from helpers_models import matmul, x_input

    return matmul(24, 20, a_rank=3, bias_shape=[1, 20], relu=True)[0], x_input(24, a_rank=3)


STRUCTURAL_MODELS = {"bundled_mnist": _bundled_model, "attention_block": _attention_block,
                     "nd_matmul_without_bias": _nd_matmul_without_bias,
                     "nd_matmul_bias_1n_relu": _nd_matmul_bias_1n_relu}


@pytest.mark.parametrize("name", sorted(STRUCTURAL_MODELS))
def test_pruned_model_without_library_runs_exactly_the_dense_models_ops(name: str, tmp_path: Path) -> None:
    """Structural (not timed): after onnxruntime's default optimisations the fallback leaves
    exactly the ops the masked-dense model runs, as many of each (Gemm for Gemm layers, MatMul
    (+ Add) for N-D MatMul layers, Relu) -- the If branches, conditions, bias test and weight
    rebuild are all folded away. Read from the profiler."""
    api = pytest.importorskip("onnx_prune.api")
    from onnx_prune.sparse_gemm.densify import densify_model

    model, x = STRUCTURAL_MODELS[name]()
    pruned, _ = api.prune(model, ratio=0.9)
    feeds = {pruned.graph.input[0].name: x}
    ops = ops_per_call(pruned, feeds, tmp_path)
    dense = densify_model(pruned)
    assert ops == ops_per_call(dense, feeds, tmp_path)
    assert set(ops) <= {"Gemm", "FusedGemm", "MatMul", "FusedMatMul", "Add", "Relu", "Transpose", "Mul",
                        "Softmax"}
    dense_y = ort.InferenceSession(dense.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    y, _ = run_profiled(pruned, feeds, tmp_path, with_library=False)
    np.testing.assert_allclose(y, dense_y, rtol=1e-5, atol=1e-5)
