"""The bcsr_int8_dynamic format through real onnxruntime sessions, on every instruction-set variant
this CPU has: the kernel against an independent numpy implementation of the contract
(docs/sparse_gemm_op.md, "bcsr_int8_dynamic": csr_int8_dynamic's arithmetic on bcsr's blocks),
compared bit for bit; the fallback function computes the same without the library; kernel creation
errors by message. The tensors are built from the contract's layout here, not by the Python packer.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import pytest

from onnx_prune.sparse_gemm.fallback import build_sparse_gemm_function
from kernel_models import gemm_attributes, open_session, weights_model
from test_kernel import isa  # noqa: F401  (the fixture: every test below runs on every ISA)
from test_kernel import rng_for
from test_kernel_errors import expect_error
from test_kernel_int8_dynamic import assert_bit_exact, dynamic_reference

FORMAT = "bcsr_int8_dynamic"


@dataclasses.dataclass
class Blocks:
    """The format's four tensors and the dense integers they define."""

    values: np.ndarray   # [n_blocks, R] int8
    scales: np.ndarray   # [N] float32
    indices: np.ndarray  # [n_blocks]
    offsets: np.ndarray  # [ceil(N / R) + 1]
    K: int
    N: int

    @property
    def tensors(self) -> dict[str, np.ndarray]:
        return {"values": self.values, "scales": self.scales, "indices": self.indices, "offsets": self.offsets}

    def int_weight(self) -> np.ndarray:
        """W's integers [K, N] by the contract's formula: W[indices[j], b·R + r] = values[j, r]."""
        R = self.values.shape[1]
        dense = np.zeros((self.K, len(self.offsets) - 1, R), np.int64)
        for b in range(len(self.offsets) - 1):
            for j in range(int(self.offsets[b]), int(self.offsets[b + 1])):
                dense[int(self.indices[j]), b, :] = self.values[j]
        return dense.reshape(self.K, -1)[:, :self.N]


def random_blocks(rng: np.random.Generator, K: int, N: int, R: int, density: float, *,
                  index_dtype: type = np.uint16, offset_dtype: type = np.int32) -> Blocks:
    """Each block row keeps each row k with probability ``density``; values uniform in [-127, 127]
    (some stored zeros), the partial last block row's padding zero."""
    rows = -(-N // R)
    values, indices, offsets = [], [], [0]
    for b in range(rows):
        for k in np.nonzero(rng.random(K) < density)[0]:
            block = rng.integers(-127, 128, R)
            block[rng.random(R) < 0.2] = 0
            block[max(0, N - b * R):] = 0  # padding of outputs >= N
            values.append(block)
            indices.append(k)
        offsets.append(len(indices))
    values_array = np.array(values, np.int8).reshape(-1, R)
    scales = np.exp(rng.uniform(-6, 1, N)).astype(np.float32)
    return Blocks(values_array, scales, np.array(indices, index_dtype), np.array(offsets, offset_dtype), K, N)


def stored_count(w: Blocks) -> int:
    """The nnz attribute: stored weights of outputs < N."""
    R = w.values.shape[1]
    last = int(w.offsets[-1] - w.offsets[-2])
    return w.values.shape[0] * R - last * ((len(w.offsets) - 1) * R - w.N)


def block_model(w: Blocks, *, a_shape, c: Optional[np.ndarray] = None, node_name: str = "sparse_gemm",
                fallback: bool = False, **attrs: object):
    model = weights_model(w.tensors, gemm_attributes(w.K, w.N, format=FORMAT, nnz=stored_count(w), **attrs),
                          a_shape=a_shape, c=c, node_name=node_name)
    if fallback:
        model.functions.append(build_sparse_gemm_function(17, FORMAT))
    return model


def reference(a: np.ndarray, w: Blocks, c: Optional[np.ndarray] = None, **kwargs: object) -> np.ndarray:
    return dynamic_reference(a, w.int_weight(), w.scales, c, **kwargs)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("R,N,density", [(4, 37, 0.3), (8, 37, 0.2), (4, 64, 1.0), (8, 16, 0.0), (4, 9, 0.05)])
def test_every_batch_bit_exact(isa: str, R: int, N: int, density: float, threads: int) -> None:
    rng = rng_for("blk-dyn", isa, R, N, density, threads)
    K = 301  # no multiple of any tile width; groups of four blocks with remainders
    w = random_blocks(rng, K, N, R, density)
    session = open_session(block_model(w, a_shape=["M", K]), threads)
    for m in list(range(0, 35)) + [63, 64, 65, 100, 130]:  # across the 16 / 32 / 64-row tiles and their halves
        a = (rng.standard_normal((m, K)) * rng.uniform(0.01, 100)).astype(np.float32)
        assert_bit_exact(session.run(None, {"A": a})[0], reference(a, w))


@pytest.mark.parametrize("a_shape", [(260,), (3, 5, 260), (4, 0, 260)])
def test_rank_of_a_follows_matmul(isa: str, a_shape: tuple) -> None:
    rng = rng_for("blk-dyn-rank", isa, a_shape)
    w = random_blocks(rng, 260, 19, 4, 0.3, index_dtype=np.int32, offset_dtype=np.int64)
    a = rng.standard_normal(a_shape).astype(np.float32)
    y = open_session(block_model(w, a_shape=list(a_shape))).run(None, {"A": a})[0]
    assert_bit_exact(y, reference(a, w))


@pytest.mark.parametrize("bias", ["none", "[N]", "[M,1]", "[M,N]"])
@pytest.mark.parametrize("trans_a", [0, 1])
def test_transa_bias_relu_alpha_beta(isa: str, trans_a: int, bias: str) -> None:
    rng = rng_for("blk-dyn-epilogue", isa, trans_a, bias)
    K, N = 513, 24
    w = random_blocks(rng, K, N, 8, 0.2)
    for m in (1, 7, 17, 40, 70):
        c = {"none": None, "[N]": rng.standard_normal(N), "[M,1]": rng.standard_normal((m, 1)),
             "[M,N]": rng.standard_normal((m, N))}[bias]
        c = None if c is None else c.astype(np.float32)
        attrs = dict(alpha=0.75, beta=-1.25, transA=trans_a, activation="relu")
        a = rng.standard_normal((K, m) if trans_a else (m, K)).astype(np.float32)
        y = open_session(block_model(w, a_shape=list(a.shape), c=c, **attrs)).run(None, {"A": a})[0]
        assert_bit_exact(y, reference(a, w, c, alpha=0.75, beta=-1.25, trans_a=trans_a, relu=True))


def test_zero_rows_give_the_bias_and_non_finite_rows_nan(isa: str) -> None:
    rng = rng_for("blk-dyn-special", isa)
    K, N = 70, 9
    w = random_blocks(rng, K, N, 4, 0.5)
    c = rng.standard_normal(N).astype(np.float32)
    a = rng.standard_normal((6, K)).astype(np.float32)
    a[0] = 0.0
    a[1, 5] = np.inf
    a[2, 69] = np.nan
    a[3, :] = 1e-44  # a denormal row: its scale underflows to 0, so q = 0
    a[4, 3] = -np.inf
    session = open_session(block_model(w, a_shape=["M", K], c=c, activation="relu"))
    y = session.run(None, {"A": a})[0]
    assert_bit_exact(y, reference(a, w, c, relu=True))
    for i in range(len(a)):  # each row alone: a batch of one runs the row path, not the tile
        assert_bit_exact(session.run(None, {"A": a[i:i + 1]})[0], y[i:i + 1])
    assert np.array_equal(y[0], np.maximum(c, 0)) and np.array_equal(y[3], np.maximum(c, 0))
    assert np.isnan(y[[1, 2, 4]]).all() and np.isfinite(y[[0, 3, 5]]).all()


def test_extreme_weights_and_activations_use_the_int32_range(isa: str) -> None:
    K, N, R = 1000, 8, 8
    values = np.full((K, R), 127, np.int8)
    values[:, 1] = -127
    w = Blocks(values, np.linspace(1e-3, 1, N).astype(np.float32), np.arange(K, dtype=np.uint16),
               np.array([0, K], np.int32), K, N)
    a = np.stack([np.full(K, 3.0), np.full(K, -7.5), np.linspace(-1, 1, K)] * 7).astype(np.float32)
    y = open_session(block_model(w, a_shape=list(a.shape))).run(None, {"A": a})[0]
    assert_bit_exact(y, reference(a, w))


def test_fallback_without_the_library_computes_the_contract() -> None:
    import onnxruntime as ort

    rng = rng_for("blk-dyn-fallback")
    K, N = 301, 17
    for R in (4, 8):
        w = random_blocks(rng, K, N, R, 0.3)
        for trans_a, c in ((0, rng.standard_normal(N)), (1, rng.standard_normal((5, N))), (0, None)):
            c = None if c is None else c.astype(np.float32)
            a = (rng.standard_normal((K, 5) if trans_a else (5, K)) * 3).astype(np.float32)
            if not trans_a:
                a[1] = 0.0
                a[2, 7] = np.nan
            model = block_model(w, a_shape=list(a.shape), c=c, fallback=True, transA=trans_a, activation="relu",
                                alpha=1.5, beta=0.5)
            session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            y = session.run(None, {"A": a})[0]
            assert_bit_exact(y, reference(a, w, c, alpha=1.5, beta=0.5, trans_a=trans_a, relu=True))


# ---------------------------------------------------------------------------- kernel creation errors


def _with(w: Blocks, **tensors: np.ndarray) -> Blocks:
    return dataclasses.replace(w, **tensors)


def test_creation_errors_name_the_node() -> None:
    rng = rng_for("blk-dyn-errors")
    w = random_blocks(rng, 20, 6, 4, 0.5)  # a partial last block row: outputs 4, 5 of 8
    bad_value = w.values.copy()
    bad_value[1, 2] = -128
    padding = w.values.copy()
    padding[-1, 3] = 5
    reversed_rows = w.indices.copy()
    reversed_rows[[0, 1]] = reversed_rows[[1, 0]]
    cases = [
        (_with(w, scales=np.ones(5, np.float32)), "scales has 5 entries, expected N = 6"),
        (_with(w, scales=np.array([1, 0, 1, 1, 1, 1], np.float32)), "scales[1] = 0 must be finite, positive"),
        (_with(w, values=bad_value), "values[1, 2] = -128 is outside [-127, 127]"),
        (_with(w, values=padding), f"values[{len(padding) - 1}, 3] pads output 7 >= N = 6 and must be 0"),
        (_with(w, values=np.zeros((len(w.values), 5), np.int8)), f"values has shape [{len(w.values)}, 5]: the block size R (its second dimension) must be 4 or 8"),
        (_with(w, indices=reversed_rows), f"indices[1] = {reversed_rows[1]} does not increase within block row 0"),
        (_with(w, offsets=np.array([0, 1, 2], np.int32)), f"offsets[2] is 2 but there are {len(w.values)} blocks"),
    ]
    for bad, message in cases:
        model = weights_model(bad.tensors, gemm_attributes(bad.K, bad.N, format=FORMAT), a_shape=[1, 20],
                              node_name="blk")
        expect_error(model, {"A": np.ones((1, 20), np.float32)}, "create",
                     f"SparseGemm node 'blk': invalid sparse weight: {message}", node="blk")


def test_nnz_attribute_and_value_dtype_are_checked() -> None:
    rng = rng_for("blk-dyn-nnz")
    w = random_blocks(rng, 20, 6, 4, 0.5)
    model = weights_model(w.tensors, gemm_attributes(w.K, w.N, format=FORMAT, nnz=stored_count(w) + 1),
                          a_shape=[1, 20], node_name="blk")
    expect_error(model, {"A": np.ones((1, 20), np.float32)}, "create",
                 f"attribute nnz = {stored_count(w) + 1} but the blocks store {stored_count(w)}", node="blk")
    floats = _with(w, values=w.values.astype(np.float32))
    model = weights_model(floats.tensors, gemm_attributes(w.K, w.N, format=FORMAT), a_shape=[1, 20], node_name="blk")
    expect_error(model, {"A": np.ones((1, 20), np.float32)}, "create", "values", "int8", node="blk")


def test_int32_bound_is_checked_at_creation() -> None:
    K = 140000  # 140000 * 127 > (2^31 - 1) / 127
    values = np.zeros((K, 4), np.int8)
    values[:, 2] = 127
    w = Blocks(values, np.ones(4, np.float32), np.arange(K, dtype=np.int32), np.array([0, K], np.int32), K, 4)
    model = weights_model(w.tensors, gemm_attributes(K, 4, format=FORMAT), a_shape=[1, K], node_name="big")
    expect_error(model, {"A": np.ones((1, K), np.float32)}, "create",
                 "SparseGemm node 'big': invalid sparse weight: output 2 has sum |values| = 17780000, more than "
                 "(2^31 - 1) / 127 = 16909320", node="big")
