"""The csr_int8 format through real onnxruntime sessions: the kernel against a float64 reference of
the dequantized masked dense layer on every instruction-set variant this CPU has, and its kernel
creation errors by message. The weights are built here from the contract's definition
(kernel_models.int8_csr), not by the Python packer, so a packer and a kernel agreeing on the same
mistake still fail.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pytest

from kernel_models import (Int8Csr, assert_matches_reference, dense_of_int8, gemm_attributes, int8_csr, open_session,
                           random_int8_csr, weights_model)
from test_kernel import isa  # noqa: F401  (the fixture: every test below runs on every ISA)
from test_kernel import assert_same_values, masked_dense_reference, non_finite_layer, poison, rng_for
from test_kernel_errors import expect_error

FORMAT = "csr_int8"
BATCHES = (0, 1, 2, 3, 5, 8, 9, 17, 33, 64, 65, 70)


def int8_model(w: Int8Csr, *, a_shape, c: Optional[np.ndarray] = None, weights_as_inputs: bool = False,
               node_name: str = "sparse_gemm", **attrs: object):
    attributes = gemm_attributes(w.K, w.N, format=FORMAT, nnz=w.nnz, **attrs)
    return weights_model(w.tensors, attributes, a_shape=a_shape, c=c, weights_as_inputs=weights_as_inputs,
                         node_name=node_name)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
def test_every_batch(isa: str, sparsity: float, threads: int) -> None:
    rng = rng_for(isa, sparsity, threads)
    w = random_int8_csr(rng, 300, 37, sparsity)  # K crosses a 256-row block, odd N
    dense = dense_of_int8(w)
    session = open_session(int8_model(w, a_shape=["M", 300]), threads)
    for m in BATCHES:
        a = rng.standard_normal((m, 300)).astype(np.float32)
        assert_matches_reference(session.run(None, {"A": a})[0], a, dense)


@pytest.mark.parametrize("a_shape", [(260,), (3, 5, 260), (2, 3, 7, 260), (4, 0, 260)])
def test_rank_of_a_follows_matmul(isa: str, a_shape: tuple) -> None:
    rng = rng_for("rank", isa, a_shape)
    w = random_int8_csr(rng, 260, 19, 0.8)
    a = rng.standard_normal(a_shape).astype(np.float32)
    y = open_session(int8_model(w, a_shape=list(a_shape))).run(None, {"A": a})[0]
    assert_matches_reference(y, a, dense_of_int8(w))


@pytest.mark.parametrize("bias", ["none", "[N]", "[M,1]", "[M,N]"])
@pytest.mark.parametrize("trans_a", [0, 1])
def test_transa_bias_relu_alpha_beta(isa: str, trans_a: int, bias: str) -> None:
    rng = rng_for("epilogue", isa, trans_a, bias)
    K, N = 513, 24
    w = random_int8_csr(rng, K, N, 0.85)
    dense = dense_of_int8(w)
    for m in (1, 7, 40, 70):
        c = {"none": None, "[N]": rng.standard_normal(N), "[M,1]": rng.standard_normal((m, 1)),
             "[M,N]": rng.standard_normal((m, N))}[bias]
        c = None if c is None else c.astype(np.float32)
        a2 = rng.standard_normal((m, K)).astype(np.float32)
        a = np.ascontiguousarray(a2.T) if trans_a else a2
        model = int8_model(w, a_shape=list(a.shape), c=c, transA=trans_a, alpha=-0.75, beta=1.5, activation="relu")
        y = open_session(model).run(None, {"A": a})[0]
        assert_matches_reference(y, a, dense, c, alpha=-0.75, beta=1.5, trans_a=bool(trans_a), relu=True)


def test_outputs_without_weights_give_the_bias(isa: str) -> None:
    rng = rng_for("empty", isa)
    keep = rng.random((40, 6)) < 0.5
    keep[:, [1, 4]] = False
    q = rng.integers(-127, 128, size=(40, 6)).astype(np.int8)
    w = int8_csr(q, keep, np.array([0.5, 1.0, 2.0, 0.25, 1.0, 3.0], np.float32))
    c = rng.standard_normal(6).astype(np.float32)
    a = rng.standard_normal((12, 40)).astype(np.float32)
    y = open_session(int8_model(w, a_shape=[12, 40], c=c)).run(None, {"A": a})[0]
    assert_matches_reference(y, a, dense_of_int8(w), c)
    np.testing.assert_array_equal(y[:, [1, 4]], np.broadcast_to(c[[1, 4]], (12, 2)))


@pytest.mark.parametrize("threads", [1, 2])
def test_weights_as_graph_inputs_unsorted_int64_offsets(isa: str, threads: int) -> None:
    """Packed at every Run; entries in any order within an (output, block); int64 offsets."""
    rng = rng_for("inputs", isa, threads)
    w = random_int8_csr(rng, 700, 33, 0.7, offset_dtype=np.int64, shuffle=rng)
    session = open_session(int8_model(w, a_shape=["M", 700], weights_as_inputs=True), threads)
    for m in (1, 9, 64):
        a = rng.standard_normal((m, 700)).astype(np.float32)
        assert_matches_reference(session.run(None, {"A": a, **w.tensors})[0], a, dense_of_int8(w))


def test_large_k_uses_32_bit_rows(isa: str) -> None:
    rng = rng_for("large-k", isa)
    w = random_int8_csr(rng, 70001, 3, 0.99)
    dense = dense_of_int8(w)
    session = open_session(int8_model(w, a_shape=["M", 70001]))
    for m in (1, 9, 40):
        a = rng.standard_normal((m, 70001)).astype(np.float32)
        assert_matches_reference(session.run(None, {"A": a})[0], a, dense)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("epilogue", ["plain", "bias-relu"])
def test_non_finite_a_gives_the_masked_dense_result(isa: str, trans_a: bool, epilogue: str) -> None:
    rng = rng_for("non-finite", isa, trans_a, epilogue)
    K, N = 300, 37
    _, keep, k_pruned, k_kept = non_finite_layer(rng, K, N)
    q = rng.integers(-127, 128, size=(K, N)).astype(np.int8)
    q[k_kept, :3] = 0  # kept weights that quantized to zero: 0 * inf is NaN for them too
    w = int8_csr(q, keep, rng.uniform(0.01, 0.1, N).astype(np.float32))
    dense = dense_of_int8(w)
    c = rng.standard_normal(N).astype(np.float32) if epilogue == "bias-relu" else None
    attrs = dict(alpha=1.5, beta=-0.5, activation="relu" if c is not None else "", transA=int(trans_a))
    session = open_session(int8_model(w, a_shape=[K, "M"] if trans_a else ["M", K], c=c, **attrs), threads=2)
    for m in (1, 2, 9, 40, 70):
        a2 = rng.standard_normal((m, K)).astype(np.float32)
        poison(a2, k_pruned, k_kept)
        y = session.run(None, {"A": np.ascontiguousarray(a2.T) if trans_a else a2})[0]
        assert_same_values(y, masked_dense_reference(a2, dense, c, alpha=1.5, beta=-0.5, relu=c is not None))


# ---------------------------------------------------------------------------- errors at kernel creation

NODE = "bad_node"
K, N = 300, 4  # two blocks: rows 256..299 in the second


def valid_weight() -> Int8Csr:
    return random_int8_csr(np.random.default_rng(5), K, N, 0.5)


def with_tensor(w: Int8Csr, **changes: np.ndarray) -> Int8Csr:
    return Int8Csr(**{**w.tensors, **changes}, K=w.K, N=w.N)


def bad_indices(w: Int8Csr) -> np.ndarray:
    """An index of the last block (rows 256..299) pointing past K."""
    indices = w.indices.copy()
    indices[int(w.offsets[1])] = 50  # output 0, block 1: row 306
    assert w.offsets[2] > w.offsets[1]
    return indices


ERROR_CASES = {
    "scales too short": (lambda w: with_tensor(w, scales=w.scales[:-1]), "scales has 3 entries, expected N = 4"),
    "zero scale": (lambda w: with_tensor(w, scales=np.array([1, 1, 0, 1], np.float32)),
                   "scales[2] = 0 must be finite, positive and at most FLT_MAX / 128"),
    "negative scale": (lambda w: with_tensor(w, scales=np.array([-1, 1, 1, 1], np.float32)), "scales[0] = -1 must be"),
    "inf scale": (lambda w: with_tensor(w, scales=np.array([1, np.inf, 1, 1], np.float32)), "scales[1] = inf must be"),
    "nan scale": (lambda w: with_tensor(w, scales=np.array([1, 1, 1, np.nan], np.float32)), "scales[3] = nan must be"),
    "overflowing scale": (lambda w: with_tensor(w, scales=np.array([1, 3e36, 1, 1], np.float32)), "scales[1] = 3e+36"),
    "float values": (lambda w: with_tensor(w, values=w.values.astype(np.float32)),
                     "input values has type float32, expected int8"),
    "uint16 indices": (lambda w: with_tensor(w, indices=w.indices.astype(np.uint16)),
                       "input indices has type uint16, expected uint8"),
    "float scales": (lambda w: with_tensor(w, scales=w.scales.astype(np.float16)),
                     "input scales has type float16, expected float32"),
    "offsets per output only": (lambda w: with_tensor(w, offsets=w.offsets[::2]),
                                "offsets has 5 entries, expected N * ceil(K / 256) + 1 = 9"),
    "offsets start": (lambda w: with_tensor(w, offsets=np.concatenate([[1], w.offsets[1:]]).astype(np.int32)),
                      "offsets[0] is 1, expected 0"),
    "offsets decrease": (lambda w: with_tensor(w, offsets=np.array([0, 5, 3, *w.offsets[3:]], np.int32)),
                         "offsets decrease at position 2"),
    "offsets end": (lambda w: with_tensor(w, offsets=np.array([*w.offsets[:-1], w.nnz - 1], np.int32)),
                    "but there are"),
    "index past K": (lambda w: with_tensor(w, indices=bad_indices(w)), "is row 306, outside [0, K = 300)"),
    "indices length": (lambda w: with_tensor(w, indices=w.indices[:-1]), "but indices has"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_invalid_weights_are_refused_at_kernel_creation(case: str) -> None:
    change, message = ERROR_CASES[case]
    w = change(valid_weight())
    attrs = gemm_attributes(K, N, format=FORMAT)
    model = weights_model(w.tensors, attrs, a_shape=["M", K], node_name=NODE)
    a = np.ones((2, K), np.float32)
    expect_error(model, {"A": a}, "create", message)


def test_invalid_weights_as_graph_inputs_are_refused_at_run() -> None:
    w = with_tensor(valid_weight(), scales=np.array([1, 0, 1, 1], np.float32))
    model = weights_model(w.tensors, gemm_attributes(K, N, format=FORMAT), a_shape=["M", K], node_name=NODE,
                          weights_as_inputs=True)
    expect_error(model, {"A": np.ones((2, K), np.float32), **w.tensors}, "run", "scales[1] = 0 must be")


def test_nnz_attribute_must_match() -> None:
    w = valid_weight()
    model = weights_model(w.tensors, gemm_attributes(K, N, format=FORMAT, nnz=w.nnz + 1), a_shape=["M", K],
                          node_name=NODE)
    expect_error(model, {"A": np.ones((2, K), np.float32)}, "create", f"attribute nnz = {w.nnz + 1} but values has")


def test_csr_tensors_under_the_int8_format_are_refused() -> None:
    """Three csr tensors where csr_int8 expects four: the input count names the format's inputs."""
    w = valid_weight()
    tensors = {"values": w.values, "indices": w.indices, "offsets": w.offsets}
    model = weights_model(tensors, gemm_attributes(K, N, format=FORMAT), a_shape=["M", K], node_name=NODE)
    expect_error(model, {"A": np.ones((2, K), np.float32)}, "create",
                 "expects 5 or 6 inputs (A, values, scales, indices, offsets[, C]), got 4")
