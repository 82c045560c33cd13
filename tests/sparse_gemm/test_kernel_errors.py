"""Malformed SparseGemm nodes and inputs: onnxruntime raises, and the message names the node and the
mismatch (docs/sparse_gemm_op.md, "Errors"). Each case also checks WHEN it is reported: attributes,
dtypes and constant weights at session creation; A, C and non-constant weights at Run.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import onnx
import pytest

import onnx_prune
from onnx_prune.sparse_gemm import formats
from kernel_models import Csr, gemm_attributes, random_csr, sparse_gemm_model, weight_feeds

NODE = "bad_node"
K, N = 6, 4


def valid_csr() -> Csr:
    csr = random_csr(np.random.default_rng(7), K, N, 0.5)
    assert csr.nnz >= 3 and csr.offsets[1] > 0
    return csr


def quiet_session(model: onnx.ModelProto):
    """A session whose expected error is not also logged to stderr."""
    import onnxruntime as ort

    options = onnx_prune.session_options(1, log_severity_level=4)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def failure_of(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> tuple[str, str]:
    """("create" | "run", message) of the error the model raises; fails the test if none."""
    try:
        session = quiet_session(model)
    except Exception as exc:  # onnxruntime raises its own exception classes
        return "create", str(exc)
    try:
        session.run(None, dict(feeds))
    except Exception as exc:
        return "run", str(exc)
    pytest.fail("no error was raised")


def expect_error(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], stage: str, *fragments: str,
                 node: str = NODE) -> None:
    got_stage, message = failure_of(model, feeds)
    assert f"SparseGemm node '{node}'" in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    assert got_stage == stage, f"error at {got_stage}, expected at {stage}: {message}"


def a_batch(m: int = 3, k: int = K) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)


def model_of(values: np.ndarray, indices: np.ndarray, offsets: np.ndarray, attributes: Optional[dict] = None, *,
             a_shape=("M", K), weights_as_inputs: bool = False, **kwargs) -> onnx.ModelProto:
    attrs = gemm_attributes(K, N) if attributes is None else attributes
    return sparse_gemm_model(values, indices, offsets, attrs, a_shape=list(a_shape) if a_shape is not None else None,
                             weights_as_inputs=weights_as_inputs, node_name=NODE, **kwargs)


# ---------------------------------------------------------------------------- attributes


ATTRIBUTE_CASES = {
    "missing K": ({"N": N}, ["required attribute 'K' is missing"]),
    "missing N": ({"K": K}, ["required attribute 'N' is missing"]),
    "K zero": ({"K": 0, "N": N}, ["attribute K = 0"]),
    "K negative": ({"K": -3, "N": N}, ["attribute K = -3"]),
    "K too large": ({"K": 2**31, "N": N}, ["attribute K = 2147483648"]),
    "N zero": ({"K": K, "N": 0}, ["attribute N = 0"]),
    "transA 2": (gemm_attributes(K, N, transA=2), ["attribute transA = 2", "0 or 1"]),
    "transA -1": (gemm_attributes(K, N, transA=-1), ["attribute transA = -1"]),
    "unknown format": (gemm_attributes(K, N, format="bsr"), ["unknown format 'bsr'"]),
    "format case": (gemm_attributes(K, N, format="CSR"), ["unknown format 'CSR'"]),
    "unknown activation": (gemm_attributes(K, N, activation="gelu"), ["unknown activation 'gelu'"]),
}


@pytest.mark.parametrize("weights_as_inputs", [False, True])
@pytest.mark.parametrize("case", list(ATTRIBUTE_CASES))
def test_bad_attributes_fail_at_creation(case: str, weights_as_inputs: bool) -> None:
    attributes, fragments = ATTRIBUTE_CASES[case]
    csr = valid_csr()
    model = model_of(csr.values, csr.indices, csr.offsets, attributes, a_shape=("M", None),
                     weights_as_inputs=weights_as_inputs)
    feeds = {"A": a_batch(), **(weight_feeds(csr) if weights_as_inputs else {})}
    expect_error(model, feeds, "create", *fragments)


def test_unnamed_node_is_called_unnamed() -> None:
    csr = valid_csr()
    model = sparse_gemm_model(csr.values, csr.indices, csr.offsets, {"N": N}, a_shape=["M", K], node_name="")
    expect_error(model, {"A": a_batch()}, "create", "'K'", node="<unnamed>")


# ---------------------------------------------------------------------------- dtypes


DTYPE_CASES = {
    "values float64": ("values", np.float64, ["input values has type float64", "float32 or float16"]),
    "values int32": ("values", np.int32, ["input values has type int32"]),
    "indices int64": ("indices", np.int64, ["input indices has type int64", "uint16 or int32"]),
    "indices int16": ("indices", np.int16, ["input indices has type int16"]),
    "indices uint32": ("indices", np.uint32, ["input indices has type uint32"]),
    "offsets uint16": ("offsets", np.uint16, ["input offsets has type uint16", "int32 or int64"]),
    "offsets float32": ("offsets", np.float32, ["input offsets has type float32"]),
}


@pytest.mark.parametrize("weights_as_inputs", [False, True])
@pytest.mark.parametrize("case", list(DTYPE_CASES))
def test_wrong_weight_dtypes_fail_at_creation(case: str, weights_as_inputs: bool) -> None:
    which, dtype, fragments = DTYPE_CASES[case]
    tensors = weight_feeds(valid_csr())
    tensors[which] = tensors[which].astype(dtype)
    model = model_of(tensors["values"], tensors["indices"], tensors["offsets"], weights_as_inputs=weights_as_inputs)
    feeds = {"A": a_batch(), **(tensors if weights_as_inputs else {})}
    expect_error(model, feeds, "create", *fragments)


# ---------------------------------------------------------------------------- CSR validity


def corrupt(csr: Csr, case: str) -> tuple[dict[str, np.ndarray], dict[str, object], list[str]]:
    """(weight tensors, attributes, expected fragments) of one invalid weight."""
    t = weight_feeds(csr)
    attrs = gemm_attributes(K, N)
    o, i = t["offsets"].copy(), t["indices"].astype(np.int32)
    if case == "offsets too short":
        t["offsets"] = o[:-1]
        return t, attrs, [f"offsets has {N} entries, expected N + 1 = {N + 1}"]
    if case == "offsets too long":
        t["offsets"] = np.append(o, o[-1]).astype(o.dtype)
        return t, attrs, [f"offsets has {N + 2} entries, expected N + 1 = {N + 1}"]
    if case == "offsets[0] not 0":
        o[0] = 1
        t["offsets"] = o
        return t, attrs, ["offsets[0] is 1, expected 0"]
    if case == "offsets decrease":
        o[2] = o[1] - 1
        t["offsets"] = o
        return t, attrs, ["offsets decrease at position 2"]
    if case == "offsets[N] below nnz":
        o[-1] -= 1
        t["offsets"] = o
        return t, attrs, [f"offsets[N] is {csr.nnz - 1} but there are {csr.nnz} values"]
    if case == "offsets[N] above nnz":
        o[-1] += 1
        t["offsets"] = o
        return t, attrs, [f"offsets[N] is {csr.nnz + 1} but there are {csr.nnz} values"]
    if case == "index equals K":
        t["indices"] = t["indices"].copy()
        t["indices"][1] = K
        return t, attrs, [f"indices[1] = {K} is outside [0, K = {K})"]
    if case == "index far above K (uint16)":
        t["indices"] = t["indices"].copy()
        t["indices"][2] = 65535
        return t, attrs, [f"indices[2] = 65535 is outside [0, K = {K})"]
    if case == "negative index (int32)":
        i[0] = -1
        t["indices"] = i
        return t, attrs, [f"indices[0] = -1 is outside [0, K = {K})"]
    if case == "nnz attribute mismatch":
        return t, gemm_attributes(K, N, nnz=csr.nnz + 1), [f"attribute nnz = {csr.nnz + 1} but values has {csr.nnz}"]
    if case == "values shorter than indices":
        t["values"] = t["values"][:-1]
        return t, attrs, [f"values has {csr.nnz - 1} entries but indices has {csr.nnz}"]
    if case == "values 2-D":
        t["values"] = t["values"].reshape(1, -1)
        return t, attrs, ["input values must be 1-D", f"[1, {csr.nnz}]"]
    if case == "offsets 0-D":
        t["offsets"] = np.array(0, dtype=np.int32)
        return t, attrs, ["input offsets must be 1-D", "[]"]
    raise AssertionError(case)


CSR_CASES = ["offsets too short", "offsets too long", "offsets[0] not 0", "offsets decrease", "offsets[N] below nnz",
             "offsets[N] above nnz", "index equals K", "index far above K (uint16)", "negative index (int32)",
             "nnz attribute mismatch", "values shorter than indices", "values 2-D", "offsets 0-D"]


@pytest.mark.parametrize("case", CSR_CASES)
def test_invalid_constant_weights_fail_at_creation(case: str) -> None:
    tensors, attrs, fragments = corrupt(valid_csr(), case)
    model = model_of(tensors["values"], tensors["indices"], tensors["offsets"], attrs)
    expect_error(model, {"A": a_batch()}, "create", *fragments)


@pytest.mark.parametrize("case", CSR_CASES)
def test_invalid_input_weights_fail_at_run(case: str) -> None:
    """Weights fed as graph inputs are validated when the kernel packs them, at every Run."""
    tensors, attrs, fragments = corrupt(valid_csr(), case)
    if tensors["offsets"].ndim == 0 or tensors["values"].ndim == 2:
        model = model_of(tensors["values"], tensors["indices"], tensors["offsets"], attrs, weights_as_inputs=True)
        for value_info in model.graph.input:  # declare the odd rank so onnxruntime accepts the feed
            if value_info.name in ("values", "offsets"):
                value_info.type.tensor_type.ClearField("shape")
    else:
        model = model_of(tensors["values"], tensors["indices"], tensors["offsets"], attrs, weights_as_inputs=True)
    expect_error(model, {"A": a_batch(), **tensors}, "run", *fragments)


def test_input_weights_checked_at_every_run() -> None:
    """A session that ran with valid weights still rejects invalid ones fed later (no stale packing)."""
    csr = valid_csr()
    model = model_of(csr.values, csr.indices, csr.offsets, weights_as_inputs=True)
    session = quiet_session(model)
    assert session.run(None, {"A": a_batch(), **weight_feeds(csr)})[0].shape == (3, N)
    tensors, _, fragments = corrupt(csr, "index equals K")
    with pytest.raises(Exception) as info:
        session.run(None, {"A": a_batch(), **tensors})
    assert f"SparseGemm node '{NODE}'" in str(info.value) and fragments[0] in str(info.value)
    assert session.run(None, {"A": a_batch(), **weight_feeds(csr)})[0].shape == (3, N)


# ---------------------------------------------------------------------------- A and C


def test_static_a_with_wrong_inner_dim_fails_at_creation() -> None:
    csr = valid_csr()
    model = model_of(csr.values, csr.indices, csr.offsets, a_shape=(3, K + 1))
    expect_error(model, {"A": a_batch(3, K + 1)}, "create", f"A has shape [3, {K + 1}]", f"K = {K}")


def test_static_transposed_a_with_wrong_first_dim_fails_at_creation() -> None:
    csr = valid_csr()
    model = model_of(csr.values, csr.indices, csr.offsets, gemm_attributes(K, N, transA=1), a_shape=(K + 1, 3))
    expect_error(model, {"A": a_batch(K + 1, 3)}, "create", f"A has shape [{K + 1}, 3]", f"K = {K}")


@pytest.mark.parametrize("weights_as_inputs", [False, True])
@pytest.mark.parametrize("a_shape", [(3, K + 1), (2, 3, K - 1), (K + 2,)])
def test_runtime_a_with_wrong_inner_dim_fails_at_run(a_shape: tuple, weights_as_inputs: bool) -> None:
    csr = valid_csr()
    model = model_of(csr.values, csr.indices, csr.offsets, a_shape=None, weights_as_inputs=weights_as_inputs)
    a = np.ones(a_shape, dtype=np.float32)
    feeds = {"A": a, **(weight_feeds(csr) if weights_as_inputs else {})}
    shape = "[" + ", ".join(map(str, a_shape)) + "]"
    expect_error(model, feeds, "run", f"A has shape {shape}", f"K = {K}", "last dimension of A must be K")


def test_runtime_transposed_a_with_wrong_first_dim_fails_at_run() -> None:
    csr = valid_csr()
    model = model_of(csr.values, csr.indices, csr.offsets, gemm_attributes(K, N, transA=1), a_shape=(None, None))
    expect_error(model, {"A": a_batch(K + 1, 3)}, "run", f"A has shape [{K + 1}, 3]", "transA = 1: A is [K, M]")


def test_scalar_a_fails_at_run() -> None:
    csr = valid_csr()
    model = model_of(csr.values, csr.indices, csr.offsets, a_shape=None)
    expect_error(model, {"A": np.zeros((), dtype=np.float32)}, "run", "A must have rank >= 1")


def test_transa_with_static_3d_a_fails_at_creation() -> None:
    csr = valid_csr()
    model = model_of(csr.values, csr.indices, csr.offsets, gemm_attributes(K, N, transA=1), a_shape=(K, 2, 3))
    expect_error(model, {"A": np.ones((K, 2, 3), np.float32)}, "create", "transA = 1 needs a 2-D A", f"[{K}, 2, 3]")


@pytest.mark.parametrize("a_shape", [(K, 2, 3), (K,)])
def test_transa_with_runtime_non_2d_a_fails_at_run(a_shape: tuple) -> None:
    csr = valid_csr()
    model = model_of(csr.values, csr.indices, csr.offsets, gemm_attributes(K, N, transA=1), a_shape=None)
    shape = "[" + ", ".join(map(str, a_shape)) + "]"
    expect_error(model, {"A": np.ones(a_shape, np.float32)}, "run", "transA = 1 needs a 2-D A", shape)


BAD_BIAS_SHAPES = [(N + 1,), (0,), (2, N), (3, N + 1), (4, N)]
RANK_3_BIAS_SHAPES = [(1, 1, N), (1, 3, N), (2, 3, N), (N, 1, 1)]  # rank > 2: never valid, [1, 1, N] included


@pytest.mark.parametrize("as_input", [False, True])
@pytest.mark.parametrize("c_shape", BAD_BIAS_SHAPES)
def test_bias_that_does_not_broadcast_fails_at_run(c_shape: tuple, as_input: bool) -> None:
    csr = valid_csr()
    c = np.ones(c_shape, dtype=np.float32)
    if as_input:
        model = model_of(csr.values, csr.indices, csr.offsets, c_shape=list(c_shape))
        feeds = {"A": a_batch(3), "C": c}
    else:
        model = model_of(csr.values, csr.indices, csr.offsets, c=c)
        feeds = {"A": a_batch(3)}
    shape = "[" + ", ".join(map(str, c_shape)) + "]"
    expect_error(model, feeds, "run", f"C has shape {shape}", f"[M, N] = [3, {N}]")


@pytest.mark.parametrize("as_input", [False, True])
@pytest.mark.parametrize("c_shape", RANK_3_BIAS_SHAPES)
def test_bias_of_rank_3_fails_at_creation(c_shape: tuple, as_input: bool) -> None:
    """The contract allows C of rank <= 2 (as Gemm's C); a known rank 3 is refused when the session is made."""
    csr = valid_csr()
    c = np.ones(c_shape, dtype=np.float32)
    if as_input:
        model = model_of(csr.values, csr.indices, csr.offsets, c_shape=list(c_shape))
        feeds = {"A": a_batch(3), "C": c}
    else:
        model = model_of(csr.values, csr.indices, csr.offsets, c=c)
        feeds = {"A": a_batch(3)}
    shape = "[" + ", ".join(map(str, c_shape)) + "]"
    expect_error(model, feeds, "create", f"C has shape {shape}: rank 3, but C must have rank <= 2")


def test_bias_of_unknown_rank_is_checked_at_run() -> None:
    csr = valid_csr()
    model = model_of(csr.values, csr.indices, csr.offsets, c_shape=[N])
    model.graph.input[-1].type.tensor_type.ClearField("shape")  # C's rank unknown until Run
    feeds = {"A": a_batch(3), "C": np.ones((1, 1, N), np.float32)}
    expect_error(model, feeds, "run", f"C has shape [1, 1, {N}]: rank 3, but C must have rank <= 2")
    # the same model runs with a C of rank 2 (W^T's row n holds output n's entries)
    w = np.zeros((K, N), np.float64)
    for n in range(N):
        start, end = int(csr.offsets[n]), int(csr.offsets[n + 1])
        w[csr.indices[start:end], n] = csr.values[start:end]
    c = np.arange(N, dtype=np.float32).reshape(1, N)
    y = quiet_session(model).run(None, {"A": feeds["A"], "C": c})[0]
    np.testing.assert_allclose(y, feeds["A"].astype(np.float64) @ w + c, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- attribute types


WRONG_TYPE_CASES = {
    "K float": ({"K": float(K), "N": N}, "attribute 'K' must be of type int"),
    "N string": ({"K": K, "N": "4"}, "attribute 'N' must be of type int"),
    "alpha int": (gemm_attributes(K, N, alpha=2), "attribute 'alpha' must be of type float"),
    "beta int": (gemm_attributes(K, N, beta=0), "attribute 'beta' must be of type float"),
    "transA float": (gemm_attributes(K, N, transA=1.0), "attribute 'transA' must be of type int"),
    "format int": (gemm_attributes(K, N, format=7), "attribute 'format' must be of type string"),
    "activation int": (gemm_attributes(K, N, activation=1), "attribute 'activation' must be of type string"),
    "nnz float": (gemm_attributes(K, N, nnz=12.0), "attribute 'nnz' must be of type int"),
    # Lists once ran with the defaults: the kernel only probed int, float and string.
    "alpha list": (gemm_attributes(K, N, alpha=[2.0]), "attribute 'alpha' must be of type float, got a list of floats"),
    "beta list": (gemm_attributes(K, N, beta=[0.5, 2.0]), "attribute 'beta' must be of type float, got a list of floats"),
    "transA list": (gemm_attributes(K, N, transA=[1]), "attribute 'transA' must be of type int, got a list of ints"),
    "nnz list": (gemm_attributes(K, N, nnz=[999]), "attribute 'nnz' must be of type int, got a list of ints"),
    "K list": ({"K": [K], "N": N}, "attribute 'K' must be of type int, got a list of ints"),
    "activation list": (gemm_attributes(K, N, activation=["relu"]),
                        "attribute 'activation' must be of type string, got a list of strings"),
    "format list": (gemm_attributes(K, N, format=["coo"]), "attribute 'format' must be of type string, got a list of strings"),
    "alpha tensor": (gemm_attributes(K, N, alpha=onnx.helper.make_tensor("t", onnx.TensorProto.FLOAT, [1], [2.0])),
                     "attribute 'alpha' must be of type float, got a tensor"),
}


@pytest.mark.parametrize("case", list(WRONG_TYPE_CASES))
def test_attribute_of_wrong_type_is_rejected(case: str) -> None:
    """An attribute of another type must not silently fall back to its default (alpha=2 written as
    INT once ran as alpha=1)."""
    attributes, fragment = WRONG_TYPE_CASES[case]
    csr = valid_csr()
    model = model_of(csr.values, csr.indices, csr.offsets, attributes, a_shape=("M", None))
    expect_error(model, {"A": a_batch()}, "create", fragment)


@pytest.mark.parametrize("which", [1, 2, 3])
def test_omitted_weight_input_fails_at_creation(which: int) -> None:
    """Only C is optional: a weight left out by an empty input name is named in the error."""
    csr = valid_csr()
    model = model_of(csr.values, csr.indices, csr.offsets)
    name = model.graph.node[0].input[which]
    model.graph.node[0].input[which] = ""
    expect_error(model, {"A": a_batch()}, "create", f"input {name} is missing")


def test_unknown_format_lists_the_library_formats() -> None:
    csr = valid_csr()
    model = model_of(csr.values, csr.indices, csr.offsets, gemm_attributes(K, N, format="coo"))
    known = ", ".join(formats.names())  # tests/sparse_gemm/test_contract.py checks the library has exactly these
    expect_error(model, {"A": a_batch()}, "create", f"unknown format 'coo' (this library supports: {known})")


def test_model_importing_a_newer_op_version_runs_the_version_1_kernel() -> None:
    """Measured onnxruntime behaviour, written in docs/sparse_gemm_op.md ("Versioning"): kernels are
    matched to the schema's since_version, so a model importing ai.onnx_prune version 2 gets the
    version-1 kernel (the library declares end version 1, which onnxruntime does not enforce); version
    0 is rejected by onnxruntime. If this starts failing, onnxruntime changed: update the contract."""
    csr = valid_csr()
    model = model_of(csr.values, csr.indices, csr.offsets)
    a = a_batch()
    expected = quiet_session(model).run(None, {"A": a})[0]
    model.opset_import[1].version = 2
    np.testing.assert_array_equal(quiet_session(model).run(None, {"A": a})[0], expected)
    model.opset_import[1].version = 0
    stage, message = failure_of(model, {"A": a})
    assert stage == "create" and "ai.onnx_prune:SparseGemm(-1) is not a registered function/op" in message, message


def test_negative_nnz_attribute_is_rejected() -> None:
    csr = valid_csr()
    model = model_of(csr.values, csr.indices, csr.offsets, gemm_attributes(K, N, nnz=-5))
    expect_error(model, {"A": a_batch()}, "create", "attribute nnz = -5 must be >= 0")


# ---------------------------------------------------------------------------- resource use


_HUGE_K_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from kernel_models import gemm_attributes, sparse_gemm_model
    import onnx_prune, onnxruntime as ort
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    n = 64
    model = sparse_gemm_model(np.ones(1, np.float32), np.zeros(1, np.int32), np.array([0] + [1] * n, np.int32),
                              gemm_attributes(2**31 - 1, n), a_shape=["M", None], node_name="huge_k")
    options = onnx_prune.session_options(1, log_severity_level=4)
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        print("CREATED")
    except Exception as exc:
        print("ERROR", exc)
""")


@pytest.mark.skipif("asan" in os.environ.get("LD_PRELOAD", ""), reason="address-space limit breaks AddressSanitizer")
def test_huge_k_with_tiny_weights_stays_small() -> None:
    """K = 2^31 - 1 with one stored weight once made kernel creation allocate K/128 * N block
    pointers (GBs) and fail as node '<creating>'. Under a 3 GiB address-space limit (in a child
    process, so a regression cannot take the machine's memory) the session must now be created."""
    tests_dir = str(Path(__file__).resolve().parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(tests_dir).parents[1]),
                                                                  os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", _HUGE_K_SCRIPT, tests_dir], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.strip()
    assert out == "CREATED", out


_CREATION_RSS_SCRIPT = textwrap.dedent("""
    import resource, sys
    import onnx_prune, onnxruntime as ort
    options = onnx_prune.session_options(1, log_severity_level=4)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
""")


@pytest.mark.skipif("asan" in os.environ.get("LD_PRELOAD", ""), reason="AddressSanitizer's shadow memory skews RSS")
def test_kernel_creation_memory_is_a_small_multiple_of_the_weights(tmp_path: Path) -> None:
    """K = 2^31 - 1, N = 2 and 4.2 M stored weights once grew the peak RSS of session creation by
    ~25x the weights (the blocked layout's per-block tables). The growth, measured in a child
    process that only loads the model file, must stay within 4x the stored tensors' bytes
    (onnxruntime's own copy of the model and initializers included; about 2.3x measured)."""
    nnz = 4_200_000
    values = np.ones(nnz, np.float32)
    indices = (np.arange(nnz, dtype=np.int64) * 511 % (2**31 - 1)).astype(np.int32)
    offsets = np.array([0, nnz // 2, nnz], np.int32)
    model = sparse_gemm_model(values, indices, offsets, gemm_attributes(2**31 - 1, 2), a_shape=["M", None],
                              node_name="huge_k")
    path = tmp_path / "huge_k.onnx"
    path.write_bytes(model.SerializeToString())
    stored = values.nbytes + indices.nbytes + offsets.nbytes
    del model, values, indices
    repo = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", _CREATION_RSS_SCRIPT, str(path)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    growth = int(done.stdout.strip())
    assert growth <= 4 * stored, f"session creation grew the peak RSS by {growth / stored:.1f}x the stored weights"
