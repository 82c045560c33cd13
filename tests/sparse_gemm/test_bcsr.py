"""The bcsr format (R x 1 blocks of Wᵀ): packing against a loop reference written from the contract,
validation messages, the kernel on every ISA against a float64 masked-dense reference, its errors,
and the standard-op fallback without the library."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnx_prune.errors import OnnxPruneError
from onnx_prune.sparse_gemm import contract, formats
from onnx_prune.sparse_gemm.formats import bcsr
from kernel_models import assert_matches_reference, available_isas, open_session, sparse_gemm_model

ISAS = available_isas()


def block_mask(rng: np.random.Generator, K: int, N: int, R: int, density: float) -> np.ndarray:
    rows = -(-N // R)
    return np.repeat(rng.random((K, rows)) < density, R, axis=1)[:, :N]


def reference_pack(weight: np.ndarray, mask: np.ndarray, R: int):
    """The contract read literally: block row b, block (b, k) stored when any W[k, b*R + r] is kept."""
    K, N = weight.shape
    values, indices, offsets = [], [], [0]
    for b in range(-(-N // R)):
        for k in range(K):
            cols = range(b * R, min(N, b * R + R))
            if any(mask[k, n] for n in cols):
                values.append([weight[k, n] if n < N and mask[k, n] else 0.0 for n in range(b * R, b * R + R)])
                indices.append(k)
        offsets.append(len(indices))
    return np.array(values, np.float32).reshape(-1, R), np.array(indices), np.array(offsets)


def random_case(seed: int, K: int, N: int, R: int, structured: bool, density: float = 0.3):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((K, N)).astype(np.float32)
    mask = block_mask(rng, K, N, R, density) if structured else rng.random((K, N)) < density
    return weight, mask


def packed_case(seed: int, K: int, N: int, R: int, density: float, structured: bool = False):
    """A random masked weight packed with R x 1 blocks, and its masked dense float64 reference."""
    weight, mask = random_case(seed, K, N, R, structured, density)
    return bcsr.dense_to_bcsr(weight, mask, R), np.where(mask, weight, 0).astype(np.float64)


def bcsr_model(packed: bcsr.BcsrWeight, **kwargs) -> onnx.ModelProto:
    attrs = {contract.ATTR_K: packed.K, contract.ATTR_N: packed.N, contract.ATTR_FORMAT: bcsr.NAME,
             contract.ATTR_NNZ: packed.nnz, **kwargs.pop("attrs", {})}
    return sparse_gemm_model(*packed.tensors, attrs, **kwargs)


# ---------------------------------------------------------------------------- Python format


@pytest.mark.parametrize("K,N,R,structured", [(20, 16, 4, True), (20, 10, 4, True), (13, 19, 8, True),
                                              (30, 9, 4, False), (17, 21, 8, False), (1, 1, 4, False)])
def test_pack_matches_the_contract_and_round_trips(K: int, N: int, R: int, structured: bool) -> None:
    weight, mask = random_case(K * N + R, K, N, R, structured)
    packed = bcsr.dense_to_bcsr(weight, mask, R)
    values, indices, offsets = reference_pack(weight, mask, R)
    np.testing.assert_array_equal(packed.values, values)
    np.testing.assert_array_equal(packed.indices.astype(np.int64), indices)
    np.testing.assert_array_equal(packed.offsets.astype(np.int64), offsets)
    assert packed.R == R and packed.values.dtype == np.float32
    assert packed.indices.dtype == np.uint16 and packed.offsets.dtype == np.int32
    np.testing.assert_array_equal(bcsr.bcsr_to_dense(packed), np.where(mask, weight, 0))
    np.testing.assert_array_equal(packed.to_dense(), np.where(mask, weight, 0))
    real_lanes = np.minimum(R, N - R * np.repeat(np.arange(packed.block_rows), np.diff(offsets)))
    assert packed.nnz == int(real_lanes.sum())
    assert packed.nbytes == values.nbytes + packed.indices.nbytes + packed.offsets.nbytes
    bcsr.check_bcsr(packed, "node")


def test_structured_mask_stores_exactly_the_kept_weights() -> None:
    weight, mask = random_case(1, 64, 40, 4, structured=True)
    packed = formats.get(bcsr.NAME).pack(weight, mask)
    assert packed.nnz == int(mask.sum()) and packed.R == 4
    weight8, mask8 = random_case(2, 64, 40, 8, structured=True)
    assert formats.get(bcsr.NAME).pack(weight8, mask8).R == 8  # an 8 x 1 mask packs in 8 x 1 blocks


def test_fp16_values_round_trip_and_other_dtypes_are_refused() -> None:
    weight, mask = random_case(3, 8, 8, 4, structured=True)
    packed = formats.get(bcsr.NAME).pack(weight, mask, values_dtype=np.float16)
    assert packed.values.dtype == np.float16
    np.testing.assert_array_equal(bcsr.bcsr_to_dense(packed), np.where(mask, weight, 0).astype(np.float16).astype(np.float32))
    with pytest.raises(OnnxPruneError, match="format 'bcsr' stores float32 or float16 values"):
        formats.get(bcsr.NAME).pack(weight, mask, values_dtype=np.int8)


def _valid() -> bcsr.BcsrWeight:
    weight, mask = random_case(4, 12, 10, 4, structured=True, density=0.6)
    return bcsr.dense_to_bcsr(weight, mask, 4)


@pytest.mark.parametrize("change,message", [
    (lambda p: dict(values=p.values[:, :3]), r"values has shape \[\d+, 3\], expected \[n_blocks, R\]"),
    (lambda p: dict(values=p.values.astype(np.float64)), "values must be float32 or float16, got float64"),
    (lambda p: dict(indices=p.indices[:-1]), r"indices has shape"),
    (lambda p: dict(offsets=p.offsets[:-1]), r"offsets has shape .* expected \[ceil\(N / R\) \+ 1\] = \[4\]"),
    (lambda p: dict(offsets=p.offsets[::-1].copy()), "offsets must start at 0"),
    (lambda p: dict(indices=np.full_like(p.indices, 12)), r"an index is outside \[0, K=12\)"),
    (lambda p: dict(indices=np.zeros_like(p.indices)), "indices must strictly increase within each block row"),
    (lambda p: dict(values=np.ones_like(p.values)), r"the padding of the last block row \(outputs >= N=10\) must be 0"),
])
def test_validate_errors(change, message: str) -> None:
    packed = _valid()
    tensors = {"values": packed.values, "indices": packed.indices, "offsets": packed.offsets}
    tensors.update(change(packed))
    bad = bcsr.BcsrWeight(K=12, N=10, **tensors)
    with pytest.raises(OnnxPruneError, match=r"^SparseGemm node 'n': " + message):
        formats.get(bcsr.NAME).validate(bad, "SparseGemm node 'n'")


# ---------------------------------------------------------------------------- the kernel


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("R,N", [(4, 37), (8, 45), (4, 64)])
def test_kernel_matches_masked_dense_for_every_batch(isa: str, R: int, N: int) -> None:
    K = 300
    packed, dense = packed_case(R + N, K, N, R, 0.15)
    session = open_session(bcsr_model(packed, a_shape=["M", K]), isa=isa)
    rng = np.random.default_rng(N)
    for m in range(1, 71):
        a = rng.standard_normal((m, K)).astype(np.float32)
        assert_matches_reference(session.run(None, {"A": a})[0], a, dense, w_abs=np.abs(dense))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 5, 40])
def test_kernel_nd_a_bias_alpha_beta_relu(isa: str, m: int) -> None:
    K, N = 50, 22
    packed, dense = packed_case(m, K, N, 4, 0.4, structured=True)
    rng = np.random.default_rng(m)
    c = rng.standard_normal(N).astype(np.float32)
    model = bcsr_model(packed, a_shape=[m, 1, K], c=c,
                       attrs={contract.ATTR_ALPHA: 0.5, contract.ATTR_BETA: -2.0, contract.ATTR_ACTIVATION: "relu"})
    a = rng.standard_normal((m, 1, K)).astype(np.float32)
    y = open_session(model, isa=isa).run(None, {"A": a})[0]
    assert_matches_reference(y, a, dense, c, alpha=0.5, beta=-2.0, relu=True)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 64])
def test_kernel_float16_values_match_the_widened_weights(isa: str, m: int) -> None:
    K, N = 90, 21
    weight, mask = random_case(m + 11, K, N, 4, structured=True, density=0.4)
    weight[:3, :] = np.array([6.0e-8, -6.5e4, 1.0e-5], dtype=np.float32)[:, None]  # subnormal, large, small
    packed = bcsr.dense_to_bcsr(weight, mask, 4, np.float16)
    dense = np.where(mask, weight, 0).astype(np.float16).astype(np.float64)
    a = np.random.default_rng(m).standard_normal((m, K)).astype(np.float32)
    y = open_session(bcsr_model(packed, a_shape=["M", K]), isa=isa).run(None, {"A": a})[0]
    assert_matches_reference(y, a, dense, w_abs=np.abs(dense))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 3, 33])
def test_kernel_trans_a_with_row_bias(isa: str, m: int) -> None:
    K, N = 70, 19
    packed, dense = packed_case(m + 7, K, N, 8, 0.2, structured=False)
    rng = np.random.default_rng(m)
    c = rng.standard_normal((m, 1)).astype(np.float32)
    model = bcsr_model(packed, a_shape=[K, m], c=c, attrs={contract.ATTR_TRANS_A: 1})
    a = rng.standard_normal((K, m)).astype(np.float32)
    y = open_session(model, isa=isa).run(None, {"A": a})[0]
    assert_matches_reference(y, a, dense, c, trans_a=True)


def masked_dense_ieee(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A @ W in float64 term by term, so 0 * inf = NaN exactly as the masked dense layer has it."""
    with np.errstate(invalid="ignore", over="ignore"):
        return (a.astype(np.float64)[:, :, None] * w.astype(np.float64)[None]).sum(axis=1)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 6, 40])
def test_kernel_non_finite_a_is_the_masked_dense_result(isa: str, m: int) -> None:
    K, N = 40, 13
    packed, dense = packed_case(m + 11, K, N, 4, 0.3, structured=False)
    rng = np.random.default_rng(m)
    a = rng.standard_normal((m, K)).astype(np.float32)
    a[0, 3] = np.inf
    if m > 1:
        a[-1, 17], a[m // 2, 5] = np.nan, -np.inf
    y = open_session(bcsr_model(packed, a_shape=["M", K]), isa=isa).run(None, {"A": a})[0]
    expected = masked_dense_ieee(a, dense)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(y), np.isposinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(y[finite], expected[finite], rtol=1e-4, atol=1e-4)
    assert np.isnan(y).any() and np.isinf(y).any() and (m == 1 or finite.any())


def test_weights_as_graph_inputs_are_packed_at_run() -> None:
    weight, mask = random_case(5, 24, 12, 4, structured=True)
    packed = bcsr.dense_to_bcsr(weight, mask, 4)
    model = sparse_gemm_model(*packed.tensors, {contract.ATTR_K: 24, contract.ATTR_N: 12, contract.ATTR_FORMAT: "bcsr"},
                              a_shape=["M", 24], weights_as_inputs=True)
    a = np.random.default_rng(5).standard_normal((9, 24)).astype(np.float32)
    feeds = {"A": a, "values": packed.values, "indices": packed.indices, "offsets": packed.offsets}
    assert_matches_reference(open_session(model).run(None, feeds)[0], a, np.where(mask, weight, 0).astype(np.float64))


@pytest.mark.parametrize("change,message", [
    (lambda p: dict(values=np.zeros((len(p.indices), 2), np.float32)), r"the block size R \(its second dimension\) must be 4 or 8"),
    (lambda p: dict(indices=p.indices[:-1]), r"indices has \d+ entries but values has \d+ blocks"),
    (lambda p: dict(offsets=p.offsets[:-1]), r"offsets has 3 entries, expected ceil\(N / R\) \+ 1 = 4"),
    (lambda p: dict(offsets=np.r_[p.offsets[:-1], p.offsets[-1] + 1].astype(np.int32)), r"offsets\[3\] is \d+ but there are"),
    (lambda p: dict(indices=np.full_like(p.indices, 12)), r"indices\[0\] = 12 is outside \[0, K = 12\)"),
    (lambda p: dict(indices=np.zeros_like(p.indices)), r"indices\[1\] = 0 does not increase within block row 0"),
    (lambda p: dict(values=np.ones_like(p.values)), r"pads output 10 >= N = 10 and must be 0"),
    (lambda p: dict(values=p.values.astype(np.float64)), r"input values has type float64, expected float32 or float16"),
])
def test_kernel_rejects_invalid_weights_naming_the_node(change, message: str) -> None:
    packed = _valid()
    tensors = {"values": packed.values, "indices": packed.indices, "offsets": packed.offsets}
    tensors.update(change(packed))
    model = sparse_gemm_model(tensors["values"], tensors["indices"], tensors["offsets"],
                              {contract.ATTR_K: 12, contract.ATTR_N: 10, contract.ATTR_FORMAT: "bcsr"}, a_shape=[2, 12])
    with pytest.raises(Exception, match=r"SparseGemm node '[^']+': .*" + message):
        open_session(model).run(None, {"A": np.zeros((2, 12), np.float32)})


def test_kernel_checks_the_nnz_attribute() -> None:
    packed = _valid()
    model = bcsr_model(packed, a_shape=[2, 12], attrs={contract.ATTR_NNZ: packed.nnz + 1})
    with pytest.raises(Exception, match=rf"attribute nnz = {packed.nnz + 1} but the blocks store {packed.nnz} weights"):
        open_session(model)


# ---------------------------------------------------------------------------- fallback and CLI


def _fallback_model(packed: bcsr.BcsrWeight, tmp_path: Path) -> Path:
    from onnx_prune.sparse_gemm.fallback import add_fallback_functions

    model = bcsr_model(packed, a_shape=["M", packed.K])
    add_fallback_functions(model)
    path = tmp_path / "fallback.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("R,N,dtype", [(4, 10, np.float32), (8, 16, np.float32), (4, 10, np.float16)])
def test_fallback_without_library_folds_to_the_dense_weight(R: int, N: int, dtype, tmp_path: Path) -> None:
    import onnxruntime as ort

    weight, mask = random_case(R * N, 30, N, R, structured=False, density=0.3)
    weight = weight.astype(dtype).astype(np.float32)  # what float16 values store
    packed = bcsr.dense_to_bcsr(weight, mask, R, dtype)
    path = _fallback_model(packed, tmp_path)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(1).standard_normal((5, 30)).astype(np.float32)
    assert_matches_reference(session.run(None, {"A": a})[0], a, np.where(mask, weight, 0).astype(np.float64))
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    folded = [numpy_helper.to_array(t) for t in optimized.graph.initializer if list(t.dims) == [30, N]]
    assert len(folded) == 1
    np.testing.assert_array_equal(folded[0], np.where(mask, weight, 0))


def test_cli_prune_with_bcsr_verifies_runs_without_library_and_densifies(tmp_path: Path) -> None:
    import subprocess
    import sys

    import onnxruntime as ort

    bundled = Path(__file__).resolve().parents[2] / "models" / "mnist-mlp.onnx"
    pruned, dense = tmp_path / "bcsr.onnx", tmp_path / "dense.onnx"
    done = subprocess.run([sys.executable, "-m", "onnx_prune.cli", "prune", str(bundled), str(pruned), "--format", "bcsr",
                           "--verify", "-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    model = onnx.load(str(pruned))
    assert {a.s for n in model.graph.node if n.op_type == contract.OP_TYPE
            for a in n.attribute if a.name == contract.ATTR_FORMAT} == {b"bcsr"}
    feed_name = model.graph.input[0].name
    x = np.random.default_rng(0).standard_normal((3, 784)).astype(np.float32)
    with_library = open_session(model).run(None, {feed_name: x})[0]
    without = ort.InferenceSession(str(pruned), providers=["CPUExecutionProvider"]).run(None, {feed_name: x})[0]
    np.testing.assert_allclose(without, with_library, rtol=1e-4, atol=1e-4)
    done = subprocess.run([sys.executable, "-m", "onnx_prune.cli", "densify", str(pruned), str(dense)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    densified = ort.InferenceSession(str(dense), providers=["CPUExecutionProvider"]).run(None, {feed_name: x})[0]
    np.testing.assert_allclose(densified, with_library, rtol=1e-4, atol=1e-4)


def test_an_rx1_pattern_picks_bcsr() -> None:
    from onnx_prune.options import format_for_pattern, storage_format

    assert format_for_pattern("4x1") == format_for_pattern("8x1") == bcsr.NAME
    assert format_for_pattern(None) is format_for_pattern("2:4") is format_for_pattern("3x1") is None
    assert storage_format("fp32", pattern="4x1")[0].name == bcsr.NAME
    assert storage_format("fp32", pattern="2:4")[0].name == "csr"
    assert storage_format("int8")[0].name == "csr_int8"
    with pytest.raises(OnnxPruneError, match="--values int8 cannot be stored in format bcsr"):
        storage_format("int8", format="bcsr")


def test_bench_kernel_block_times_bcsr_after_checking_its_result(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "k.json"
    tool = Path(__file__).resolve().parents[2] / "tools" / "bench_kernel.py"
    done = subprocess.run([sys.executable, str(tool), "--quick", "--k", "64", "--n", "30", "--batch", "1", "20",
                           "--sparsity", "0.8", "--threads", "1", "--rounds", "1", "--block", "4", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for row in json.loads(out.read_text())["rows"]:
        assert "SparseGemm bcsr" not in row["problems"] and row["us"]["SparseGemm bcsr"] > 0
        assert row["ratios"]["dense/bcsr"] > 0 and row["ratios"]["csr/bcsr"] > 0
