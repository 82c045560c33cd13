"""The csr_int8_dynamic format through real onnxruntime sessions, on every instruction-set variant
this CPU has: the kernel against an independent numpy implementation of the contract
(docs/sparse_gemm_op.md, "csr_int8_dynamic"), compared bit for bit; the fallback function
computes the same without the library; kernel creation errors by message. The weights are built
from the contract's definition (kernel_models.int8_csr), not by the Python packer.
"""
from __future__ import annotations

import dataclasses

from typing import Optional

import numpy as np
import pytest

from onnx_prune.sparse_gemm.fallback import build_sparse_gemm_function
from kernel_models import Int8Csr, gemm_attributes, int8_csr, open_session, random_int8_csr, weights_model
from test_kernel import isa  # noqa: F401  (the fixture: every test below runs on every ISA)
from test_kernel import rng_for
from test_kernel_errors import expect_error

FORMAT = "csr_int8_dynamic"


def int_weight(w: Int8Csr) -> np.ndarray:
    """The stored integers as a dense int64 [K, N] (duplicates summed), from the contract's layout."""
    values, indices, offsets = (np.asarray(w.tensors[k]) for k in ("values", "indices", "offsets"))
    B = -(-w.K // 256)
    dense = np.zeros((w.K, w.N), np.int64)
    for r in range(w.N * B):
        for j in range(int(offsets[r]), int(offsets[r + 1])):
            dense[256 * (r % B) + int(indices[j]), r // B] += int(values[j])
    return dense


def contract_reference(a: np.ndarray, w: Int8Csr, c: Optional[np.ndarray] = None, *, alpha: float = 1.0,
                       beta: float = 1.0, trans_a: int = 0, relu: bool = False) -> np.ndarray:
    """The contract, step by step in float32 / exact integers."""
    return dynamic_reference(a, int_weight(w), np.asarray(w.tensors["scales"], np.float32), c, alpha=alpha,
                             beta=beta, trans_a=trans_a, relu=relu)


def dynamic_reference(a: np.ndarray, int_w: np.ndarray, scales: np.ndarray, c: Optional[np.ndarray] = None, *,
                      alpha: float = 1.0, beta: float = 1.0, trans_a: int = 0, relu: bool = False) -> np.ndarray:
    """The int8 dynamic formats' arithmetic (docs/sparse_gemm_op.md, csr_int8_dynamic) for the stored
    integers ``int_w [K, N]`` and per-output ``scales``, step by step in float32 / exact integers."""
    K, N = int_w.shape
    a2 = np.asarray(a, np.float32)
    a2 = a2.T if trans_a else a2.reshape(-1, K)
    with np.errstate(all="ignore"):
        finite = np.isfinite(a2).all(axis=1, keepdims=True)
        peak = np.where(finite, np.abs(np.where(np.isfinite(a2), a2, 0)), 0).max(axis=1, keepdims=True, initial=0)
        s = (peak.astype(np.float32) / np.float32(127)).astype(np.float32)
        q = np.where(s > 0, np.clip(np.rint(a2 / np.where(s > 0, s, 1)), -127, 127), 0).astype(np.int64)
        s = np.where(finite, s, np.float32(np.nan)).astype(np.float32)
        acc = q @ int_w
        assert np.abs(acc).max(initial=0) < 2**31
        d = (acc.astype(np.float32) * s) * scales
        y = np.float32(alpha) * d
        if c is not None:
            y = y + np.float32(beta) * np.asarray(c, np.float32)
        if relu:
            y = np.where(y < 0, np.float32(0), y)
    y = y.astype(np.float32)
    lead = a.shape[1:-1] if trans_a else a.shape[:-1]
    return y.reshape(*(lead if not trans_a else (a.shape[1],)), N)


def dyn_model(w: Int8Csr, *, a_shape, c: Optional[np.ndarray] = None, node_name: str = "sparse_gemm",
              fallback: bool = False, **attrs: object):
    model = weights_model(w.tensors, gemm_attributes(w.K, w.N, format=FORMAT, nnz=w.nnz, **attrs),
                          a_shape=a_shape, c=c, node_name=node_name)
    if fallback:
        model.functions.append(build_sparse_gemm_function(17, FORMAT))
    return model


def assert_bit_exact(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)  # NaN equals NaN here; values must match exactly


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
def test_every_batch_bit_exact(isa: str, sparsity: float, threads: int) -> None:
    rng = rng_for("dyn", isa, sparsity, threads)
    K = 301  # odd (a half pair), crosses a 256-row block, not a multiple of any SIMD width
    w = random_int8_csr(rng, K, 37, sparsity)
    session = open_session(dyn_model(w, a_shape=["M", K]), threads)
    for m in range(0, 71):
        a = (rng.standard_normal((m, K)) * rng.uniform(0.01, 100)).astype(np.float32)
        assert_bit_exact(session.run(None, {"A": a})[0], contract_reference(a, w))


@pytest.mark.parametrize("a_shape", [(260,), (3, 5, 260), (2, 3, 7, 260), (4, 0, 260)])
def test_rank_of_a_follows_matmul(isa: str, a_shape: tuple) -> None:
    rng = rng_for("dyn-rank", isa, a_shape)
    w = random_int8_csr(rng, 260, 19, 0.8)
    a = rng.standard_normal(a_shape).astype(np.float32)
    y = open_session(dyn_model(w, a_shape=list(a_shape))).run(None, {"A": a})[0]
    assert_bit_exact(y, contract_reference(a, w))


@pytest.mark.parametrize("bias", ["none", "[N]", "[M,1]", "[M,N]"])
@pytest.mark.parametrize("trans_a", [0, 1])
def test_transa_bias_relu_alpha_beta(isa: str, trans_a: int, bias: str) -> None:
    rng = rng_for("dyn-epilogue", isa, trans_a, bias)
    K, N = 513, 24
    w = random_int8_csr(rng, K, N, 0.85)
    for m in (1, 7, 40, 70):
        c = {"none": None, "[N]": rng.standard_normal(N), "[M,1]": rng.standard_normal((m, 1)),
             "[M,N]": rng.standard_normal((m, N))}[bias]
        c = None if c is None else c.astype(np.float32)
        attrs = dict(alpha=0.75, beta=-1.25, transA=trans_a, activation="relu")
        a = rng.standard_normal((K, m) if trans_a else (m, K)).astype(np.float32)
        y = open_session(dyn_model(w, a_shape=list(a.shape), c=c, **attrs)).run(None, {"A": a})[0]
        assert_bit_exact(y, contract_reference(a, w, c, alpha=0.75, beta=-1.25, trans_a=trans_a, relu=True))


def test_zero_rows_give_the_bias_and_non_finite_rows_nan(isa: str) -> None:
    rng = rng_for("dyn-special", isa)
    K, N = 70, 9
    w = random_int8_csr(rng, K, N, 0.5)
    c = rng.standard_normal(N).astype(np.float32)
    a = rng.standard_normal((6, K)).astype(np.float32)
    a[0] = 0.0
    a[1, 5] = np.inf
    a[2, 69] = np.nan
    a[3, :] = 1e-44  # a denormal row: its scale underflows to 0, so q = 0
    a[4, 3] = -np.inf
    y = open_session(dyn_model(w, a_shape=[6, K], c=c, activation="relu")).run(None, {"A": a})[0]
    expected = contract_reference(a, w, c, relu=True)
    assert_bit_exact(y, expected)
    assert np.array_equal(y[0], np.maximum(c, 0)) and np.array_equal(y[3], np.maximum(c, 0))
    assert np.isnan(y[[1, 2, 4]]).all() and np.isfinite(y[[0, 3, 5]]).all()


def test_extreme_weights_and_activations_use_the_int32_range(isa: str) -> None:
    K, N = 1000, 3
    q = np.full((K, N), 127, np.int8)
    q[:, 1] = -127
    w = int8_csr(q, np.ones((K, N), bool), np.array([1e-3, 2e-3, 1.0], np.float32))
    a = np.stack([np.full(K, 3.0), np.full(K, -7.5), np.linspace(-1, 1, K)]).astype(np.float32)
    y = open_session(dyn_model(w, a_shape=[3, K])).run(None, {"A": a})[0]
    assert_bit_exact(y, contract_reference(a, w))


def test_fallback_without_the_library_computes_the_contract() -> None:
    import onnxruntime as ort

    rng = rng_for("dyn-fallback")
    K, N = 301, 17
    w = random_int8_csr(rng, K, N, 0.7)
    for trans_a, c in ((0, rng.standard_normal(N)), (1, rng.standard_normal((5, N))), (0, None)):
        c = None if c is None else c.astype(np.float32)
        a = (rng.standard_normal((K, 5) if trans_a else (5, K)) * 3).astype(np.float32)
        a[:, 0] = 0 if trans_a else a[:, 0]
        if not trans_a:
            a[1] = 0.0
            a[2, 7] = np.nan
        model = dyn_model(w, a_shape=list(a.shape), c=c, fallback=True, transA=trans_a, activation="relu",
                          alpha=1.5, beta=0.5)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        y = session.run(None, {"A": a})[0]
        assert_bit_exact(y, contract_reference(a, w, c, alpha=1.5, beta=0.5, trans_a=trans_a, relu=True))


def test_fallback_on_n_d_a_without_bias() -> None:
    import onnxruntime as ort

    rng = rng_for("dyn-fallback-nd")
    w = random_int8_csr(rng, 40, 6, 0.5)
    a = rng.standard_normal((2, 3, 40)).astype(np.float32)
    model = dyn_model(w, a_shape=[2, 3, 40], fallback=True)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"A": a})[0]
    assert_bit_exact(y, contract_reference(a, w))


# ---------------------------------------------------------------------------- kernel creation errors


def _with(w: Int8Csr, **tensors: np.ndarray) -> Int8Csr:
    return dataclasses.replace(w, **tensors)


def test_creation_errors_name_the_node() -> None:
    rng = rng_for("dyn-errors")
    w = random_int8_csr(rng, 20, 4, 0.3)
    cases = [
        (_with(w, scales=np.ones(3, np.float32)), "scales has 3 entries, expected N = 4"),
        (_with(w, scales=np.array([1, 0, 1, 1], np.float32)), "scales[1] = 0 must be finite, positive"),
        (_with(w, scales=np.array([1, 1, np.inf, 1], np.float32)), "scales[2] = inf must be finite, positive"),
        (_with(w, values=np.where(np.arange(w.nnz) == 2, -128, w.tensors["values"]).astype(np.int8)),
         "values[2] = -128 is outside [-127, 127]"),
    ]
    for bad, message in cases:
        expect_error(dyn_model(bad, a_shape=[1, 20], node_name="dyn"), {"A": np.ones((1, 20), np.float32)},
                     "create", f"SparseGemm node 'dyn': invalid sparse weight: {message}", node="dyn")


def test_int32_bound_is_checked_at_creation() -> None:
    K = 140000  # 140000 * 127 > (2^31 - 1) / 127
    q = np.full((K, 1), 127, np.int8)
    w = int8_csr(q, np.ones((K, 1), bool), np.ones(1, np.float32))
    expect_error(dyn_model(w, a_shape=[1, K], node_name="big"), {"A": np.ones((1, K), np.float32)}, "create",
                 "SparseGemm node 'big': invalid sparse weight: output 0 has sum |values| = 17780000, more than "
                 "(2^31 - 1) / 127 = 16909320", node="big")


def _doubled(w: Int8Csr) -> Int8Csr:
    """w with every stored entry stored twice (duplicates summing to 2 · value, outside int8 for
    |value| > 63)."""
    values, indices, offsets = (np.asarray(w.tensors[k]) for k in ("values", "indices", "offsets"))
    ranges = [np.arange(offsets[r], offsets[r + 1]) for r in range(len(offsets) - 1)]
    order = np.concatenate([np.concatenate([j, j]) for j in ranges])
    doubled = np.concatenate([[0], np.cumsum([2 * len(j) for j in ranges])]).astype(offsets.dtype)
    return _with(w, values=values[order], indices=indices[order], offsets=doubled)


def test_duplicates_beyond_int8_bit_exact(isa: str) -> None:
    """Duplicates summing outside int8 (within int16) are valid: the VNNI kernel's four-row layout
    cannot hold them, so the two-row one runs."""
    rng = rng_for("dyn-dup", isa)
    w = _doubled(random_int8_csr(rng, 301, 21, 0.6))
    assert np.abs(int_weight(w)).max() > 127
    session = open_session(dyn_model(w, a_shape=["M", 301]))
    for m in (1, 2, 3, 16, 40):
        a = rng.standard_normal((m, 301)).astype(np.float32)
        assert_bit_exact(session.run(None, {"A": a})[0], contract_reference(a, w))


def test_largest_sums_bit_exact(isa: str) -> None:
    """Sums near the int32 bound: the VNNI kernel's +128 activation shift wraps its int32 lanes and
    the weight-sum correction must undo that exactly."""
    K = 133000  # 127 · 133000 · 127 < 2^31 - 1
    q = np.full((K, 2), 127, np.int8)
    q[:, 1] = -127
    w = int8_csr(q, np.ones((K, 2), bool), np.ones(2, np.float32))
    a = np.stack([np.ones(K), -np.ones(K), np.linspace(-1, 1, K)]).astype(np.float32)
    session = open_session(dyn_model(w, a_shape=["M", K]))
    for m in (1, 3):
        assert_bit_exact(session.run(None, {"A": a[:m]})[0], contract_reference(a[:m], w))
