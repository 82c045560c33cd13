"""Helpers for the kernel tests: single-SparseGemm models built with onnx.helper, sessions with the
library registered (optionally forcing an instruction-set variant), random CSR weights and an
independent float64 numpy reference.

Nothing here uses the csr packer (onnx_prune.sparse_gemm.formats.csr, whose index-width constant
only is read): the tests must catch a kernel and a packer that agree on the same mistake, so the
weights are built and densified here from the contract's definition.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnx_prune
from onnx_prune.sparse_gemm import contract
from onnx_prune.sparse_gemm.formats.csr import UINT16_INDEX_LIMIT

ISA_ENV = "ONNX_PRUNE_ISA"
NODE_NAME = "sparse_gemm"
IR_VERSION = 9  # onnxruntime >= 1.17 reads it
DEFAULT_OPSET = 17

Dim = Union[int, str, None]


# ---------------------------------------------------------------------------- weights


@dataclass
class Csr:
    """The three weight tensors of a SparseGemm node plus the K, N they describe."""

    values: np.ndarray
    indices: np.ndarray
    offsets: np.ndarray
    K: int
    N: int

    @property
    def nnz(self) -> int:
        return int(self.values.shape[0])


def random_csr(rng: np.random.Generator, K: int, N: int, sparsity: float, *,
               value_dtype: type = np.float32, index_dtype: Optional[type] = None,
               offset_dtype: type = np.int32, empty_outputs: int = 0,
               shuffle: bool = False, duplicates: int = 0) -> Csr:
    """A random K x N weight keeping exactly round((1 - sparsity) * K * N) entries.

    `empty_outputs` outputs are forced to hold no entry; `shuffle` permutes entries within each
    output; `duplicates` appends that many extra entries repeating an existing (k, n) position.
    """
    keep = np.zeros(K * N, dtype=bool)
    keep[rng.choice(K * N, size=int(round((1.0 - sparsity) * K * N)), replace=False)] = True
    keep = keep.reshape(N, K)  # rows of Wᵀ: one per output
    if empty_outputs:
        keep[rng.choice(N, size=min(empty_outputs, N), replace=False)] = False
    n_idx, k_idx = np.nonzero(keep)
    if duplicates and n_idx.size:
        again = rng.integers(n_idx.size, size=duplicates)
        n_idx, k_idx = np.concatenate([n_idx, n_idx[again]]), np.concatenate([k_idx, k_idx[again]])
    within = rng.random(n_idx.size) if shuffle else k_idx
    order = np.lexsort((within, n_idx))  # grouped by output; by k unless shuffled
    n_idx, indices = n_idx[order], k_idx[order]
    offsets = np.zeros(N + 1, dtype=np.int64)
    np.cumsum(np.bincount(n_idx, minlength=N), out=offsets[1:])
    values = rng.standard_normal(indices.size).astype(value_dtype)
    if index_dtype is None:
        index_dtype = np.uint16 if K <= UINT16_INDEX_LIMIT else np.int32
    return Csr(values=values, indices=indices.astype(index_dtype),
               offsets=offsets.astype(offset_dtype), K=K, N=N)


def dense_of(csr: Csr) -> np.ndarray:
    """W [K, N] in float64 per the contract: W[indices[j], n] += values[j] (duplicates summed)."""
    w = np.zeros((csr.K, csr.N), dtype=np.float64)
    outputs = np.repeat(np.arange(csr.N), np.diff(np.asarray(csr.offsets, dtype=np.int64)))
    np.add.at(w, (np.asarray(csr.indices, dtype=np.int64), outputs), np.asarray(csr.values, dtype=np.float64))
    return w


INT8_BLOCK_ROWS = 256  # docs/sparse_gemm_op.md, format csr_int8


@dataclass
class Int8Csr(Csr):
    """The four weight tensors of a csr_int8 node (csr's three plus the per-output scales)."""

    scales: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    @property
    def tensors(self) -> dict[str, np.ndarray]:
        return {"values": self.values, "scales": self.scales, "indices": self.indices, "offsets": self.offsets}


def int8_csr(q: np.ndarray, keep: np.ndarray, scales: np.ndarray, *, offset_dtype: type = np.int32,
             shuffle: Optional[np.random.Generator] = None) -> Int8Csr:
    """The csr_int8 tensors of int8 weights q [K, N] kept where `keep`, built block by block from the
    contract's definition (not by the packer); `shuffle` (a generator) shuffles entries within each (output, block)."""
    K, N = q.shape
    blocks = -(-K // INT8_BLOCK_ROWS)
    values, indices, offsets = [], [], [0]
    for n in range(N):
        for b in range(blocks):
            rows = np.flatnonzero(keep[b * INT8_BLOCK_ROWS:(b + 1) * INT8_BLOCK_ROWS, n])
            if shuffle is not None:
                rows = shuffle.permutation(rows)
            values.extend(q[b * INT8_BLOCK_ROWS + rows, n])
            indices.extend(rows)
            offsets.append(len(values))
    return Int8Csr(values=np.array(values, dtype=np.int8), scales=np.asarray(scales, dtype=np.float32),
                   indices=np.array(indices, dtype=np.uint8), offsets=np.array(offsets, dtype=offset_dtype), K=K, N=N)


def random_int8_csr(rng: np.random.Generator, K: int, N: int, sparsity: float, **kwargs: object) -> Int8Csr:
    """Random int8 weights (a few kept zeros among them) with random positive scales."""
    keep = rng.random((K, N)) >= sparsity
    q = rng.integers(-127, 128, size=(K, N)).astype(np.int8)
    scales = rng.uniform(1e-3, 1e-1, size=N).astype(np.float32)
    return int8_csr(q, keep, scales, **kwargs)


def dense_of_int8(w: Int8Csr) -> np.ndarray:
    """The dequantized W [K, N] in float64 per the contract: W[256 b + indices[j], n] +=
    float32(values[j] * scales[n]) (the product rounded to float32, as the dense weight holds it)."""
    dense = np.zeros((w.K, w.N), dtype=np.float64)
    blocks = -(-w.K // INT8_BLOCK_ROWS)
    offsets = np.asarray(w.offsets, dtype=np.int64)
    for r in range(w.N * blocks):
        n, b = divmod(r, blocks)
        for j in range(offsets[r], offsets[r + 1]):
            dense[b * INT8_BLOCK_ROWS + int(w.indices[j]), n] += float(np.float32(w.values[j]) * w.scales[n])
    return dense


# ---------------------------------------------------------------------------- reference


def reference_gemm(a: np.ndarray, w: np.ndarray, c: Optional[np.ndarray] = None, *, alpha: float = 1.0,
                   beta: float = 1.0, trans_a: bool = False, relu: bool = False) -> np.ndarray:
    """act(alpha * A' @ W + beta * C) in float64 with MatMul semantics for N-D A."""
    a64 = np.asarray(a, dtype=np.float64)
    a2 = a64.T if trans_a else a64.reshape(-1, w.shape[0])
    y = np.float64(alpha) * (a2 @ w)
    if c is not None:
        y = y + np.float64(beta) * np.asarray(c, dtype=np.float64)
    if relu:
        y = np.maximum(y, 0.0)
    out_shape = (a2.shape[0], w.shape[1]) if trans_a else a64.shape[:-1] + (w.shape[1],)
    return y.reshape(out_shape)


def error_scale(a: np.ndarray, w: np.ndarray, c: Optional[np.ndarray] = None, *, alpha: float = 1.0,
                beta: float = 1.0, trans_a: bool = False, w_abs: Optional[np.ndarray] = None) -> float:
    """Largest |alpha| |A'| @ |W| + |beta| |C|: the magnitude fp32 rounding errors scale with.
    `w_abs` may pass a precomputed |W| (large layers checked for many batches)."""
    a2 = np.abs(np.asarray(a, dtype=np.float64))
    a2 = a2.T if trans_a else a2.reshape(-1, w.shape[0])
    s = abs(alpha) * (a2 @ (np.abs(w) if w_abs is None else w_abs))
    if c is not None:
        s = s + abs(beta) * np.abs(np.asarray(c, dtype=np.float64))
    return float(s.max()) if s.size else 0.0


def assert_matches_reference(actual: np.ndarray, a: np.ndarray, w: np.ndarray, c: Optional[np.ndarray] = None,
                             *, alpha: float = 1.0, beta: float = 1.0, trans_a: bool = False,
                             relu: bool = False, w_abs: Optional[np.ndarray] = None) -> None:
    """Shape, dtype and values within fp32 rounding: rtol 1e-5 of max |reference| plus
    2 eps32 sqrt(K) times the largest sum of absolute terms."""
    expected = reference_gemm(a, w, c, alpha=alpha, beta=beta, trans_a=trans_a, relu=relu)
    assert actual.dtype == np.float32, actual.dtype
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if expected.size == 0:
        return
    K = w.shape[0]
    scale = error_scale(a, w, c, alpha=alpha, beta=beta, trans_a=trans_a, w_abs=w_abs)
    tol = 1e-5 * float(np.abs(expected).max()) + 2 * np.finfo(np.float32).eps * math.sqrt(K) * scale + 1e-30
    err = np.abs(actual.astype(np.float64) - expected)
    assert np.isfinite(actual).all(), "non-finite output"
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    assert err.max() <= tol, (f"max abs error {err.max():.3g} > tol {tol:.3g} at {worst}: "
                              f"got {actual[worst]!r}, expected {expected[worst]!r}")


# ---------------------------------------------------------------------------- models


def gemm_attributes(K: Optional[int], N: Optional[int], **extra: object) -> dict[str, object]:
    """The node's attributes: K and N (None leaves one out) plus any extra ones verbatim."""
    attrs: dict[str, object] = {}
    if K is not None:
        attrs[contract.ATTR_K] = K
    if N is not None:
        attrs[contract.ATTR_N] = N
    attrs.update(extra)
    return attrs


def _value_info(name: str, array_or_dtype: Union[np.ndarray, np.dtype], shape: Optional[Sequence[Dim]]):
    dtype = array_or_dtype.dtype if isinstance(array_or_dtype, np.ndarray) else np.dtype(array_or_dtype)
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), shape)


def sparse_gemm_model(values: np.ndarray, indices: np.ndarray, offsets: np.ndarray,
                      attributes: Mapping[str, object], *, a_shape: Optional[Sequence[Dim]],
                      c: Optional[np.ndarray] = None, c_shape: Optional[Sequence[Dim]] = None,
                      weights_as_inputs: bool = False, node_name: str = NODE_NAME,
                      a_dtype: type = np.float32, y_shape: Optional[Sequence[Dim]] = None) -> onnx.ModelProto:
    """One SparseGemm node Y = SparseGemm(A, values, indices, offsets[, C]).

    The weights are constant initializers, or graph inputs "values"/"indices"/"offsets" (the
    kernel then packs them at every Run). `c` becomes an initializer; `c_shape` instead declares
    C as a graph input of that shape.
    """
    return weights_model({"values": values, "indices": indices, "offsets": offsets}, attributes, a_shape=a_shape,
                         c=c, c_shape=c_shape, weights_as_inputs=weights_as_inputs, node_name=node_name,
                         a_dtype=a_dtype, y_shape=y_shape)


def weights_model(tensors: Mapping[str, np.ndarray], attributes: Mapping[str, object], *,
                  a_shape: Optional[Sequence[Dim]], c: Optional[np.ndarray] = None,
                  c_shape: Optional[Sequence[Dim]] = None, weights_as_inputs: bool = False,
                  node_name: str = NODE_NAME, a_dtype: type = np.float32,
                  y_shape: Optional[Sequence[Dim]] = None) -> onnx.ModelProto:
    """One SparseGemm node Y = SparseGemm(A, *tensors[, C]) for a format of any number of tensors
    (in the order given; graph inputs named like the tensors with weights_as_inputs)."""
    inputs = [_value_info("A", np.dtype(a_dtype), None if a_shape is None else list(a_shape))]
    initializers = []
    for name, array in tensors.items():
        if weights_as_inputs:
            inputs.append(_value_info(name, array, [f"{name}_len"] if array.ndim == 1 else None))
        else:
            initializers.append(numpy_helper.from_array(np.asarray(array), name))
    node_inputs = ["A", *tensors]
    if c is not None:
        initializers.append(numpy_helper.from_array(np.asarray(c, dtype=np.float32), "C"))
        node_inputs.append("C")
    elif c_shape is not None:
        inputs.append(_value_info("C", np.dtype(np.float32), list(c_shape)))
        node_inputs.append("C")
    node = helper.make_node(contract.OP_TYPE, node_inputs, ["Y"], name=node_name,
                            domain=contract.DOMAIN, **dict(attributes))
    graph = helper.make_graph([node], "sparse_gemm_test", inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT,
                                                             None if y_shape is None else list(y_shape))],
                              initializer=initializers)
    return finish_model(graph)


def finish_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    """A model importing the default domain and the op's domain at the contract's version."""
    return helper.make_model(graph, ir_version=IR_VERSION,
                             opset_imports=[helper.make_opsetid("", DEFAULT_OPSET),
                                            helper.make_opsetid(contract.DOMAIN, contract.OP_VERSION)])


def csr_model(csr: Csr, *, a_shape: Sequence[Dim], c: Optional[np.ndarray] = None,
              weights_as_inputs: bool = False, y_shape: Optional[Sequence[Dim]] = None,
              **extra_attributes: object) -> onnx.ModelProto:
    """sparse_gemm_model for a valid Csr, with its K, N and nnz written as attributes."""
    attrs = gemm_attributes(csr.K, csr.N, **{contract.ATTR_NNZ: csr.nnz, **extra_attributes})
    return sparse_gemm_model(csr.values, csr.indices, csr.offsets, attrs, a_shape=a_shape, c=c,
                             weights_as_inputs=weights_as_inputs, y_shape=y_shape)


def weight_feeds(csr: Csr) -> dict[str, np.ndarray]:
    """Feeds for a model built with weights_as_inputs=True."""
    return {"values": csr.values, "indices": csr.indices, "offsets": csr.offsets}


# ---------------------------------------------------------------------------- sessions


# ONNX_PRUNE_ISA set when the tests start caps the variants, as on a CPU whose best is that one:
# `ONNX_PRUNE_ISA=avx2 pytest` runs the suite as an AVX2-only machine would (.ci/run does, for each
# variant below the best this CPU has). Read once: tests set the variable for their own sessions.
ISA_CEILING = os.environ.get(ISA_ENV) or None


def available_isas() -> list[str]:
    """Kernel variants this CPU can execute (the names ONNX_PRUNE_ISA accepts), best last, up to
    ISA_CEILING when it is set."""
    isas = cpu_isas()
    if ISA_CEILING in isas:
        return isas[: isas.index(ISA_CEILING) + 1]
    return isas


def cpu_isas() -> list[str]:
    """Kernel variants this CPU can execute, best last."""
    isas = ["portable"]
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return isas
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if {"avx2", "fma"} <= flags:
        isas.append("avx2")
        if {"avx512f", "avx512bw", "avx512vl"} <= flags:
            isas.append("avx512")
            if "avx512_vnni" in flags:
                isas.append("avx512vnni")
    return isas


@contextlib.contextmanager
def forced_isa(isa: Optional[str]) -> Iterator[None]:
    """Sets ONNX_PRUNE_ISA (read when a kernel is created) for the block, then restores it."""
    old = os.environ.get(ISA_ENV)
    if isa is None:
        os.environ.pop(ISA_ENV, None)
    else:
        os.environ[ISA_ENV] = isa
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ISA_ENV, None)
        else:
            os.environ[ISA_ENV] = old


def open_session(model: onnx.ModelProto, threads: int = 1, isa: Optional[str] = None):
    """An InferenceSession with the library registered; `isa` forces a kernel variant."""
    import onnxruntime as ort

    with forced_isa(isa) if isa is not None else contextlib.nullcontext():
        return ort.InferenceSession(model.SerializeToString(), onnx_prune.session_options(threads),
                                    providers=["CPUExecutionProvider"])


def run_model(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], threads: int = 1,
              isa: Optional[str] = None) -> np.ndarray:
    """Create a session and run it once; returns Y."""
    return open_session(model, threads, isa).run(None, dict(feeds))[0]
