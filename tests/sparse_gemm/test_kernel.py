"""SparseGemm kernel through real onnxruntime sessions, against an independent float64 reference.

Batch sizes cross both kernel strategies (few rows, tiled) and the tile remainders; every test
that exercises numeric code runs for every instruction-set variant this CPU has (ONNX_PRUNE_ISA
is read when a session creates its kernel).
"""
from __future__ import annotations

import threading
import zlib
from typing import Optional

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_prune
from onnx_prune.sparse_gemm import contract

from kernel_models import (ISA_ENV, Csr, assert_matches_reference, available_isas, cpu_isas, csr_model, dense_of,
                           finish_model, gemm_attributes, open_session, random_csr, sparse_gemm_model,
                           weight_feeds)

BATCHES = (0, 1, 2, 3, 4, 5, 17, 64, 65, 130)
SPARSITIES = (0.0, 0.5, 0.9, 0.99, 1.0)


@pytest.fixture(params=available_isas())
def isa(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Forces one kernel variant for every session the test creates; restored afterwards."""
    monkeypatch.setenv(ISA_ENV, request.param)
    return request.param


def rng_for(*key: object) -> np.random.Generator:
    """A generator seeded from the test's parameters: reproducible, different per case."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def random_a(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def check_batches(csr: Csr, batches=BATCHES, *, threads: int = 1, rng: Optional[np.random.Generator] = None,
                  weights_as_inputs: bool = False) -> None:
    """One session with a dynamic batch, run for every batch size, each compared with the reference."""
    rng = rng or np.random.default_rng(0)
    session = open_session(csr_model(csr, a_shape=["M", csr.K], weights_as_inputs=weights_as_inputs), threads)
    w = dense_of(csr)
    w_abs = np.abs(w)
    extra = weight_feeds(csr) if weights_as_inputs else {}
    for m in batches:
        a = random_a(rng, m, csr.K)
        y = session.run(None, {"A": a, **extra})[0]
        assert_matches_reference(y, a, w, w_abs=w_abs)


# ---------------------------------------------------------------------------- shapes and sparsity


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_random_shapes_every_batch(isa: str, sparsity: float, threads: int) -> None:
    rng = rng_for("shapes", isa, sparsity, threads)
    # Odd N (phantom pair), K across kernel blocks (128) and packing chunks (256), one random shape.
    shapes = [(300, 71), (129, 8), (int(rng.integers(1, 400)), int(rng.integers(1, 120)))]
    for K, N in shapes:
        check_batches(random_csr(rng, K, N, sparsity), threads=threads, rng=rng)


def test_outputs_without_entries(isa: str) -> None:
    rng = rng_for("empty", isa)
    check_batches(random_csr(rng, 90, 40, 0.5, empty_outputs=15), rng=rng)
    check_batches(random_csr(rng, 90, 40, 0.99, empty_outputs=39), rng=rng)  # at most one output non-empty


@pytest.mark.parametrize("K,N", [(1, 1), (1, 37), (53, 1), (1000, 1), (1, 1000)])
def test_degenerate_dimensions(isa: str, K: int, N: int) -> None:
    rng = rng_for("degenerate", isa, K, N)
    check_batches(random_csr(rng, K, N, 0.0), rng=rng)
    if K * N > 1:
        check_batches(random_csr(rng, K, N, 0.5), rng=rng)


def test_all_zero_layer_gives_beta_times_bias(isa: str) -> None:
    rng = rng_for("zero", isa)
    csr = random_csr(rng, 40, 9, 1.0)
    assert csr.nnz == 0
    c = rng.standard_normal(9).astype(np.float32)
    session = open_session(csr_model(csr, a_shape=["M", 40], c=c, beta=-0.5, activation="relu"))
    for m in (1, 7, 40):
        a = random_a(rng, m, 40)
        assert_matches_reference(session.run(None, {"A": a})[0], a, dense_of(csr), c, beta=-0.5, relu=True)


@pytest.mark.parametrize("a_shape", [(24,), (3, 5, 24), (2, 3, 7, 24), (1, 1, 1, 24), (5, 0, 24), (4, 40, 24)])
def test_rank_of_a_follows_matmul(isa: str, a_shape: tuple) -> None:
    rng = rng_for("rank", isa, a_shape)
    csr = random_csr(rng, 24, 13, 0.6)
    c = rng.standard_normal(13).astype(np.float32)
    session = open_session(csr_model(csr, a_shape=list(a_shape), c=c))
    a = random_a(rng, *a_shape)
    y = session.run(None, {"A": a})[0]
    assert y.shape == a_shape[:-1] + (13,)
    assert_matches_reference(y, a, dense_of(csr), c)


@pytest.mark.parametrize("K,index_dtype", [(65536, np.uint16), (65537, np.int32), (70001, np.int32)])
def test_large_k(K: int, index_dtype: type) -> None:
    rng = rng_for("largeK", K)
    csr = random_csr(rng, K, 3, 0.5, index_dtype=index_dtype)
    assert int(csr.indices.max()) >= 65535 - 16  # the top of the range is really used
    check_batches(csr, batches=(1, 2, 9, 33), rng=rng)


def random_case(rng: np.random.Generator) -> dict:
    """One random combination of everything the op takes."""
    K, N = int(rng.integers(1, 300)), int(rng.integers(1, 150))
    bias = str(rng.choice(["none", "scalar", "[1]", "[N]", "[1,N]", "[M,1]", "[M,N]"]))
    return dict(K=K, N=N, sparsity=float(rng.choice(SPARSITIES)), trans_a=bool(rng.integers(2)),
                alpha=float(rng.choice([1.0, 0.5, -1.5])), beta=float(rng.choice([1.0, 0.0, -2.0])),
                relu=bool(rng.integers(2)), bias=bias, value_dtype=rng.choice([np.float32, np.float16]),
                index_dtype=rng.choice([np.uint16, np.int32]), offset_dtype=rng.choice([np.int32, np.int64]),
                shuffle=bool(rng.integers(2)), duplicates=int(rng.choice([0, 0, 7])),
                empty_outputs=int(rng.integers(0, max(1, N // 3))), weights_as_inputs=bool(rng.integers(2)),
                threads=int(rng.choice([1, 2])), batches=[int(m) for m in rng.permutation(BATCHES)[:4]])


@pytest.mark.parametrize("seed", range(12))
def test_random_combinations(isa: str, seed: int) -> None:
    """Random mixes of shapes, attributes, bias shapes, dtypes and paths; batches in random order so
    one session also runs a smaller batch after a larger one."""
    rng = np.random.default_rng(seed)
    case = random_case(rng)
    K, N = case["K"], case["N"]
    csr = random_csr(rng, K, N, case["sparsity"], value_dtype=case["value_dtype"], index_dtype=case["index_dtype"],
                     offset_dtype=case["offset_dtype"], empty_outputs=case["empty_outputs"], shuffle=case["shuffle"],
                     duplicates=case["duplicates"])
    w = dense_of(csr)
    attrs = dict(transA=int(case["trans_a"]), alpha=case["alpha"], beta=case["beta"],
                 activation="relu" if case["relu"] else "")
    a_shape = [K, "M"] if case["trans_a"] else ["M", K]
    c_shape = {"none": None, "scalar": [], "[1]": [1], "[N]": [N], "[1,N]": [1, N], "[M,1]": ["M", 1],
               "[M,N]": ["M", N]}[case["bias"]]
    model = sparse_gemm_model(csr.values, csr.indices, csr.offsets, gemm_attributes(K, N, **attrs), a_shape=a_shape,
                              c_shape=c_shape, weights_as_inputs=case["weights_as_inputs"])
    session = open_session(model, case["threads"])
    for m in case["batches"]:
        a = random_a(rng, K, m) if case["trans_a"] else random_a(rng, m, K)
        feeds = {"A": a, **(weight_feeds(csr) if case["weights_as_inputs"] else {})}
        c = None
        if c_shape is not None:
            c = rng.standard_normal([m if d == "M" else d for d in c_shape]).astype(np.float32)
            feeds["C"] = c
        y = session.run(None, feeds)[0]
        assert_matches_reference(y, a, w, c, alpha=case["alpha"], beta=case["beta"], trans_a=case["trans_a"],
                                 relu=case["relu"])


@pytest.mark.parametrize("threads", [1, 2])
def test_few_weights_in_a_huge_layer(isa: str, threads: int) -> None:
    """Far fewer weights than K/128 x N/2 block pointers: the packer skips the blocked layout and
    batches run the few-rows strategy in groups of 8 rows (remainders included)."""
    rng = rng_for("unblocked", isa, threads)
    K, N = 129, 70_000
    csr = random_csr(rng, K, N, 1.0 - 300 / (K * N))
    assert csr.nnz == 300
    check_batches(csr, batches=(1, 5, 9, 16, 17, 64, 130), threads=threads, rng=rng)


# ---------------------------------------------------------------------------- Gemm attributes


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("beta", [1.0, 0.0, -0.75])
@pytest.mark.parametrize("alpha", [1.0, 0.5, -2.0, 0.0])
@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_attributes(trans_a: int, alpha: float, beta: float, relu: bool) -> None:
    rng = rng_for("attrs", trans_a, alpha, beta, relu)
    K, N = 45, 21
    csr = random_csr(rng, K, N, 0.7)
    c = rng.standard_normal(N).astype(np.float32)
    attrs = {contract.ATTR_TRANS_A: trans_a, contract.ATTR_ALPHA: alpha, contract.ATTR_BETA: beta}
    if relu:
        attrs[contract.ATTR_ACTIVATION] = contract.ACTIVATION_RELU
    a_shape = [K, "M"] if trans_a else ["M", K]
    session = open_session(csr_model(csr, a_shape=a_shape, c=c, **attrs))
    for m in (0, 1, 6, 40):
        a = random_a(rng, K, m) if trans_a else random_a(rng, m, K)
        y = session.run(None, {"A": a})[0]
        assert_matches_reference(y, a, dense_of(csr), c, alpha=alpha, beta=beta, trans_a=bool(trans_a), relu=relu)


def test_defaults_without_optional_attributes(isa: str) -> None:
    """Only K and N given: alpha = beta = 1, transA = 0, format csr, no activation."""
    rng = rng_for("defaults", isa)
    csr = random_csr(rng, 30, 10, 0.5)
    c = rng.standard_normal(10).astype(np.float32)
    model = sparse_gemm_model(csr.values, csr.indices, csr.offsets, gemm_attributes(30, 10), a_shape=["M", 30], c=c)
    session = open_session(model)
    for m in (3, 33):
        a = random_a(rng, m, 30)
        assert_matches_reference(session.run(None, {"A": a})[0], a, dense_of(csr), c)


def test_transa_with_every_batch(isa: str) -> None:
    rng = rng_for("transA", isa)
    csr = random_csr(rng, 150, 35, 0.8)
    session = open_session(csr_model(csr, a_shape=[150, "M"], transA=1, alpha=1.5))
    for m in BATCHES:
        a = random_a(rng, 150, m)
        assert_matches_reference(session.run(None, {"A": a})[0], a, dense_of(csr), alpha=1.5, trans_a=True)


def test_relu_passes_nan_and_zeroes_negatives(isa: str) -> None:
    """activation = relu: max(0, y) after the bias; a NaN stays NaN (as onnxruntime's Relu). The NaN
    in A's row 0 meets every output: stored (output 2) or as a pruned weight, 0 * NaN."""
    K, N = 4, 3
    values = np.array([1.0, -1.0, 2.0], dtype=np.float32)  # W[0,0] = 1, W[1,1] = -1, W[2,2] = 2
    csr = Csr(values=values, indices=np.array([0, 1, 2], dtype=np.uint16),
              offsets=np.array([0, 1, 2, 3], dtype=np.int32), K=K, N=N)
    session = open_session(csr_model(csr, a_shape=["M", K], activation="relu"))
    a = np.array([[1.0, 1.0, np.nan, 0.0], [-1.0, -3.0, 1.0, 5.0]], dtype=np.float32)
    y = session.run(None, {"A": a})[0]
    np.testing.assert_array_equal(y[1], np.array([0.0, 3.0, 2.0], dtype=np.float32))
    assert np.isnan(y[0]).all()


# ---------------------------------------------------------------------------- bias C


@pytest.mark.parametrize("c_as_input", [False, True])
@pytest.mark.parametrize("bias", ["none", "scalar", "[1]", "[N]", "[1,N]", "[M,1]", "[M,N]"])  # rank 3: test_kernel_errors
def test_bias_shapes(isa: str, bias: str, c_as_input: bool) -> None:
    K, N = 33, 19
    rng = rng_for("bias", isa, bias, c_as_input)
    csr = random_csr(rng, K, N, 0.5)
    for m in (1, 5, 40):
        shape = {"none": None, "scalar": (), "[1]": (1,), "[N]": (N,), "[1,N]": (1, N), "[M,1]": (m, 1),
                 "[M,N]": (m, N)}[bias]
        if shape is None and c_as_input:
            continue
        c = None if shape is None else rng.standard_normal(shape).astype(np.float32)
        attrs = gemm_attributes(K, N, alpha=0.75, beta=-1.25)
        if c_as_input:
            model = sparse_gemm_model(csr.values, csr.indices, csr.offsets, attrs, a_shape=[m, K], c_shape=list(shape))
        else:
            model = sparse_gemm_model(csr.values, csr.indices, csr.offsets, attrs, a_shape=[m, K], c=c)
        a = random_a(rng, m, K)
        feeds = {"A": a, **({"C": c} if c_as_input else {})}
        y = open_session(model).run(None, feeds)[0]
        assert_matches_reference(y, a, dense_of(csr), c, alpha=0.75, beta=-1.25)


def test_beta_ignored_without_bias(isa: str) -> None:
    rng = rng_for("beta-no-C", isa)
    csr = random_csr(rng, 20, 7, 0.3)
    session = open_session(csr_model(csr, a_shape=["M", 20], beta=123.0))
    for m in (2, 20):
        a = random_a(rng, m, 20)
        assert_matches_reference(session.run(None, {"A": a})[0], a, dense_of(csr))


# ---------------------------------------------------------------------------- weight encodings


def test_float16_values(isa: str) -> None:
    rng = rng_for("fp16", isa)
    csr = random_csr(rng, 140, 30, 0.7, value_dtype=np.float16)
    csr.values[:3] = np.array([6.0e-8, -6.5e4, 1.0e-5], dtype=np.float16)  # subnormal, large, small
    check_batches(csr, rng=rng)


def test_int64_offsets(isa: str) -> None:
    rng = rng_for("int64", isa)
    check_batches(random_csr(rng, 100, 25, 0.6, offset_dtype=np.int64, empty_outputs=3), rng=rng)


def test_int32_indices_with_small_k(isa: str) -> None:
    rng = rng_for("int32", isa)
    check_batches(random_csr(rng, 100, 25, 0.6, index_dtype=np.int32), rng=rng)


def test_unsorted_and_duplicate_indices_are_summed(isa: str) -> None:
    rng = rng_for("dups", isa)
    csr = random_csr(rng, 200, 41, 0.8, shuffle=True, duplicates=60)
    pairs = np.repeat(np.arange(csr.N), np.diff(csr.offsets)) * csr.K + csr.indices
    assert np.unique(pairs).size < pairs.size  # duplicates really present
    check_batches(csr, rng=rng)
    # A whole output made of one weight repeated: the result is the sum of the copies.
    dup = Csr(values=np.array([0.5, 0.25, 2.0, -1.0], dtype=np.float32),
              indices=np.array([3, 3, 1, 3], dtype=np.uint16), offsets=np.array([0, 2, 4], dtype=np.int32), K=5, N=2)
    np.testing.assert_allclose(dense_of(dup)[:, 0], [0, 0, 0, 0.75, 0])
    check_batches(dup, rng=rng)


@pytest.mark.parametrize("threads", [1, 2])
def test_weights_as_graph_inputs(isa: str, threads: int) -> None:
    """Non-constant weights are packed at every Run: two different weights fed to one session."""
    rng = rng_for("inputs", isa, threads)
    K, N = 150, 37
    first = random_csr(rng, K, N, 0.5)
    second = random_csr(rng, K, N, 0.9, empty_outputs=4)
    model = sparse_gemm_model(first.values, first.indices, first.offsets, gemm_attributes(K, N),
                              a_shape=["M", K], weights_as_inputs=True)  # no nnz attribute: it varies
    session = open_session(model, threads)
    for m in BATCHES:
        for csr in (first, second):
            a = random_a(rng, m, K)
            y = session.run(None, {"A": a, **weight_feeds(csr)})[0]
            assert_matches_reference(y, a, dense_of(csr))


def test_weights_as_graph_inputs_with_nnz_attribute(isa: str) -> None:
    rng = rng_for("inputs-nnz", isa)
    check_batches(random_csr(rng, 64, 20, 0.5), weights_as_inputs=True, rng=rng)


def test_weights_as_graph_inputs_other_dtypes(isa: str) -> None:
    """float16 values, int32 indices and int64 offsets through the per-Run packing path."""
    rng = rng_for("inputs-dtypes", isa)
    csr = random_csr(rng, 70, 23, 0.6, value_dtype=np.float16, index_dtype=np.int32, offset_dtype=np.int64,
                     shuffle=True, duplicates=5)
    check_batches(csr, weights_as_inputs=True, rng=rng)


# ---------------------------------------------------------------------------- threads, sessions


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_large_layer(isa: str, threads: int) -> None:
    """Enough outputs for several nnz-balanced ranges and enough rows for several tiles."""
    rng = rng_for("threads", isa, threads)
    csr = random_csr(rng, 520, 300, 0.9, empty_outputs=20)
    check_batches(csr, batches=(1, 7, 64, 130, 257), threads=threads, rng=rng)


def test_isa_variants_are_really_selected() -> None:
    """Each forced variant must run its own code: fp32 results of a long sum differ in the last bits
    between variants (FMA vs separate multiply-add). Guards the ISA fixture from testing one kernel twice."""
    isas = available_isas()
    if len(isas) < 2:
        pytest.skip("only one kernel variant on this CPU")
    rng = rng_for("isa-distinct")
    csr = random_csr(rng, 512, 64, 0.0)
    a = random_a(rng, 64, 512)
    results = {isa: open_session(csr_model(csr, a_shape=[64, 512]), isa=isa).run(None, {"A": a})[0] for isa in isas}
    for isa, y in results.items():
        assert_matches_reference(y, a, dense_of(csr))
    assert not np.array_equal(results["portable"], results[isas[-1]])


def test_concurrent_runs_on_one_session(isa: str) -> None:
    rng = rng_for("concurrent", isa)
    K, N = 200, 90
    csr = random_csr(rng, K, N, 0.8)
    w = dense_of(csr)
    c = rng.standard_normal(N).astype(np.float32)
    session = open_session(csr_model(csr, a_shape=["M", K], c=c, alpha=0.5), threads=2)
    batches = [1, 3, 8, 9, 33, 64, 100, 130]
    inputs = [[random_a(rng, m, K) for _ in range(6)] for m in batches]
    outputs: list[list[np.ndarray]] = [[] for _ in batches]
    errors: list[BaseException] = []
    start = threading.Barrier(len(batches))

    def worker(t: int) -> None:
        try:
            start.wait()
            for a in inputs[t]:
                outputs[t].append(session.run(None, {"A": a})[0])
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    for t in range(len(batches)):
        assert len(outputs[t]) == len(inputs[t])
        for a, y in zip(inputs[t], outputs[t]):
            assert_matches_reference(y, a, w, c, alpha=0.5)


def test_library_in_two_sessions_and_two_options() -> None:
    import onnxruntime as ort

    rng = rng_for("two-sessions")
    first, second = random_csr(rng, 60, 30, 0.5), random_csr(rng, 60, 12, 0.9)
    options = [onnx_prune.session_options(), onnx_prune.session_options(2)]
    sessions = [ort.InferenceSession(csr_model(csr, a_shape=["M", 60]).SerializeToString(), opts,
                                     providers=["CPUExecutionProvider"])
                for csr, opts in ((first, options[0]), (second, options[1]))]
    # The same options object registered once serves a second session too.
    sessions.append(ort.InferenceSession(csr_model(second, a_shape=["M", 60]).SerializeToString(), options[0],
                                         providers=["CPUExecutionProvider"]))
    for m in (1, 20, 70):
        a = random_a(rng, m, 60)
        for session, csr in zip(sessions, (first, second, second)):
            assert_matches_reference(session.run(None, {"A": a})[0], a, dense_of(csr))
    del sessions[0]  # releasing one session leaves the others working
    a = random_a(rng, 5, 60)
    assert_matches_reference(sessions[0].run(None, {"A": a})[0], a, dense_of(second))


def test_model_with_two_sparse_gemm_nodes(isa: str) -> None:
    rng = rng_for("two-nodes", isa)
    first, second = random_csr(rng, 48, 64, 0.7), random_csr(rng, 64, 10, 0.5)
    c1 = rng.standard_normal(64).astype(np.float32)
    inits = [numpy_helper.from_array(arr, f"{prefix}_{name}")
             for prefix, csr in (("l1", first), ("l2", second))
             for name, arr in (("values", csr.values), ("indices", csr.indices), ("offsets", csr.offsets))]
    inits.append(numpy_helper.from_array(c1, "l1_C"))
    nodes = [
        helper.make_node(contract.OP_TYPE, ["A", "l1_values", "l1_indices", "l1_offsets", "l1_C"], ["H"], name="layer1",
                         domain=contract.DOMAIN, K=48, N=64, activation="relu"),
        helper.make_node(contract.OP_TYPE, ["H", "l2_values", "l2_indices", "l2_offsets"], ["Y"], name="layer2",
                         domain=contract.DOMAIN, K=64, N=10, alpha=2.0),
    ]
    graph = helper.make_graph(nodes, "two_layers", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", 48])],
                              [helper.make_tensor_value_info("H", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    session = open_session(finish_model(graph))
    for m in (1, 6, 50):
        a = random_a(rng, m, 48)
        h, y = session.run(None, {"A": a})
        assert_matches_reference(h, a, dense_of(first), c1, relu=True)
        assert_matches_reference(y, h, dense_of(second), alpha=2.0)


def test_omitted_optional_bias_by_empty_name() -> None:
    """ONNX leaves an optional input out with an empty name; once rejected at kernel creation."""
    rng = rng_for("empty-C")
    csr = random_csr(rng, 16, 8, 0.5)
    model = csr_model(csr, a_shape=["M", 16])
    model.graph.node[0].input.append("")  # ONNX's way of leaving an optional input out
    a = random_a(rng, 3, 16)
    assert_matches_reference(open_session(model).run(None, {"A": a})[0], a, dense_of(csr))


@pytest.mark.parametrize("forced", ["bogus", "avx512"])
def test_unsupported_isa_name_falls_back_to_the_best(forced: str) -> None:
    """ONNX_PRUNE_ISA naming a variant this CPU lacks (or none at all) runs the automatic choice."""
    if forced in cpu_isas():
        pytest.skip(f"{forced} is supported here")
    rng = rng_for("isa-fallback", forced)
    csr = random_csr(rng, 300, 40, 0.0)
    a = random_a(rng, 40, 300)
    model = csr_model(csr, a_shape=[40, 300])
    auto = open_session(model, isa="").run(None, {"A": a})[0]
    best = open_session(model, isa=cpu_isas()[-1]).run(None, {"A": a})[0]
    fallback = open_session(model, isa=forced).run(None, {"A": a})[0]
    np.testing.assert_array_equal(fallback, best)
    np.testing.assert_array_equal(auto, best)


@pytest.mark.parametrize("threads", [1, 2])
def test_repeated_runs_are_bitwise_identical(isa: str, threads: int) -> None:
    rng = rng_for("determinism", isa, threads)
    csr = random_csr(rng, 400, 200, 0.9)
    session = open_session(csr_model(csr, a_shape=["M", 400]), threads)
    for m in (1, 5, 100):
        a = random_a(rng, m, 400)
        first = session.run(None, {"A": a})[0]
        for _ in range(3):
            np.testing.assert_array_equal(session.run(None, {"A": a})[0], first)


def test_row_result_does_not_depend_on_the_batch_with_non_finite_a(isa: str) -> None:
    # Output 0 stores rows 0..3 of W, output 1 only row 5: the pair (0, 1) pads output 1 with 3 zeros.
    csr = Csr(values=np.ones(5, np.float32), indices=np.array([0, 1, 2, 3, 5], np.uint16),
              offsets=np.array([0, 4, 5], np.int32), K=8, N=2)
    session = open_session(csr_model(csr, a_shape=["M", 8]))
    a = np.ones((40, 8), np.float32)
    a[0, 0] = np.inf
    alone = session.run(None, {"A": a[:1]})[0]
    np.testing.assert_array_equal(alone, [[np.inf, np.nan]])  # output 1's pruned W[0, 1] is 0: 0 * inf = NaN
    for m in (8, 9, 40):
        np.testing.assert_array_equal(session.run(None, {"A": a[:m]})[0][:1], alone)


# ---------------------------------------------------------------------------- non-finite values


def csr_of_dense(w: np.ndarray, mask: np.ndarray) -> Csr:
    """The CSR of w keeping exactly the positions in mask (stored zeros and non-finite values too)."""
    K, N = w.shape
    indices = [np.flatnonzero(mask[:, n]) for n in range(N)]
    offsets = np.concatenate([[0], np.cumsum([len(i) for i in indices])]).astype(np.int32)
    flat = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    values = np.concatenate([w[i, n] for n, i in enumerate(indices)]).astype(np.float32)
    return Csr(values=values, indices=flat.astype(np.uint16), offsets=offsets, K=K, N=N)


def masked_dense_reference(a2: np.ndarray, w: np.ndarray, c: Optional[np.ndarray], *, alpha: float, beta: float,
                           relu: bool) -> np.ndarray:
    """act(alpha * A' W + beta * C) in float64 with every product formed, as a dense Gemm does:
    0 * inf = NaN, inf + -inf = NaN (no BLAS shortcut can skip a zero)."""
    with np.errstate(invalid="ignore"):
        y = np.float64(alpha) * (a2.astype(np.float64)[:, :, None] * w[None, :, :]).sum(axis=1)
    if c is not None:
        y = y + np.float64(beta) * c.astype(np.float64)
    return np.where(y < 0, 0.0, y) if relu else y


def assert_same_values(actual: np.ndarray, expected: np.ndarray) -> None:
    """NaN exactly where NaN, the same-signed inf where inf, finite values within fp32 rounding."""
    nan, inf = np.isnan(expected), np.isinf(expected)
    np.testing.assert_array_equal(np.isnan(actual), nan)
    np.testing.assert_array_equal(actual[inf], expected[inf])
    finite = ~(nan | inf)
    assert np.isfinite(actual[finite]).all()
    scale = 1e-4 * (1.0 + np.abs(expected[finite]).max(initial=0.0))
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=0, atol=scale)


def non_finite_layer(rng: np.random.Generator, K: int, N: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(W, mask, k_pruned, k_kept): row k_pruned of W is pruned for every output, row k_kept kept for
    every output; a few kept weights are stored zeros."""
    w = rng.standard_normal((K, N))
    mask = rng.random((K, N)) < 0.3
    k_pruned, k_kept = 5, K - 2
    mask[k_pruned] = False
    mask[k_kept] = True
    w[k_kept, :3] = 0.0  # stored zeros: 0 * inf is NaN for them too
    return np.where(mask, w, 0.0), mask, k_pruned, k_kept


def poison(a2: np.ndarray, k_pruned: int, k_kept: int) -> None:
    """Non-finite values in rows of A' (in place): in a pruned-everywhere column, in a kept column, both."""
    M = a2.shape[0]
    for m, (k, v) in enumerate([(k_pruned, np.nan), (k_kept, np.inf), (k_kept, -np.inf), (k_pruned, np.inf),
                                (k_kept, np.nan)]):
        if m < M:
            a2[m, k] = v
    if M > 6:
        a2[6, k_kept], a2[6, 0] = np.inf, -np.inf  # inf - inf where both are kept
        a2[M - 1, 1] = np.inf


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("epilogue", ["plain", "bias-relu", "alpha0"])
def test_non_finite_a_gives_the_masked_dense_result(isa: str, trans_a: bool, epilogue: str) -> None:
    rng = rng_for("non-finite", isa, trans_a, epilogue)
    K, N = 300, 37
    w, mask, k_pruned, k_kept = non_finite_layer(rng, K, N)
    csr = csr_of_dense(w, mask)
    c = rng.standard_normal(N).astype(np.float32) if epilogue == "bias-relu" else None
    attrs = dict(alpha=0.0 if epilogue == "alpha0" else 1.5, beta=-0.5, activation="relu" if epilogue == "bias-relu" else "",
                 transA=int(trans_a))
    model = csr_model(csr, a_shape=[K, "M"] if trans_a else ["M", K], c=c, **attrs)
    session = open_session(model, threads=2)
    for m in (1, 2, 9, 40, 70):
        a2 = random_a(rng, m, K)
        poison(a2, k_pruned, k_kept)
        a = np.ascontiguousarray(a2.T) if trans_a else a2
        y = session.run(None, {"A": a})[0]
        expected = masked_dense_reference(a2, w, c, alpha=attrs["alpha"], beta=-0.5, relu=epilogue == "bias-relu")
        assert_same_values(y, expected)


def test_non_finite_a_with_n_d_a(isa: str) -> None:
    rng = rng_for("non-finite-nd", isa)
    K, N = 130, 11
    w, mask, k_pruned, k_kept = non_finite_layer(rng, K, N)
    session = open_session(csr_model(csr_of_dense(w, mask), a_shape=[2, 5, K]))
    a = random_a(rng, 2, 5, K)
    poison(a.reshape(-1, K), k_pruned, k_kept)
    y = session.run(None, {"A": a})[0]
    assert y.shape == (2, 5, N)
    assert_same_values(y.reshape(-1, N), masked_dense_reference(a.reshape(-1, K), w, None, alpha=1.0, beta=1.0,
                                                                 relu=False))


def test_non_finite_weights_are_multiplied_like_dense_ones(isa: str) -> None:
    """Stored inf / NaN weights: inf * 0 = NaN, inf * x = +-inf, NaN everywhere it is used."""
    rng = rng_for("non-finite-w", isa)
    K, N = 140, 9
    w, mask, _, k_kept = non_finite_layer(rng, K, N)
    w[k_kept, 4], w[k_kept, 5], w[7, 6] = np.inf, -np.inf, np.nan
    mask[7, 6] = True
    session = open_session(csr_model(csr_of_dense(w, mask), a_shape=["M", K]))
    for m in (1, 3, 40):
        a = random_a(rng, m, K)
        a[0, k_kept] = 0.0  # 0 * inf = NaN
        y = session.run(None, {"A": a})[0]
        assert_same_values(y, masked_dense_reference(a, w, None, alpha=1.0, beta=1.0, relu=False))
