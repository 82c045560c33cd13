"""The bcsr_int8_dynamic format's Python side (onnx_prune/sparse_gemm/formats/bcsr_int8_dynamic.py):
packing against a reference written from the contract, validation errors by message, the choice
of the format by `--quantize dynamic` with an R x 1 block pattern, and the CLI end to end on the
bundled model (verification, the fallback without the library, densify)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import onnx_prune
from onnx_prune.options import storage_format
from onnx_prune.errors import OnnxPruneError, UsageError
from onnx_prune.sparse_gemm import contract, formats
from onnx_prune.sparse_gemm.formats import bcsr, bcsr_int8_dynamic

from test_bcsr import block_mask
from test_int8_dynamic_format import cli
from test_int8_format import MODEL, ROOT, needs_library

BLK = bcsr_int8_dynamic.BCSR_INT8_DYNAMIC


def reference_dequantized(weight: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The writer's quantization by the contract: per output, scale = max |kept| / 127 (1 if none),
    values = round half to even, clipped to ±127; W = values · scale in float32."""
    out = np.zeros(weight.shape, np.float32)
    for n in range(weight.shape[1]):
        kept = weight[keep[:, n], n].astype(np.float32)
        peak = np.float32(np.abs(kept).max()) if kept.size else np.float32(0)
        scale = peak / np.float32(127) if peak > 0 else np.float32(1)
        q = np.clip(np.round(weight[:, n].astype(np.float32) / scale), -127, 127)
        out[:, n] = np.where(keep[:, n], q.astype(np.float32) * scale, 0)
    return out


@pytest.mark.parametrize("K,N,R,density", [(40, 12, 4, 0.3), (301, 37, 8, 0.2), (9, 5, 8, 1.0), (20, 8, 8, 0.0)])
def test_pack_matches_the_contract(K: int, N: int, R: int, density: float) -> None:
    rng = np.random.default_rng(K * N + R)
    weight = rng.standard_normal((K, N)).astype(np.float32)
    keep = block_mask(rng, K, N, R, density)
    packed = BLK.pack(weight, keep)
    assert packed.format == "bcsr_int8_dynamic" and packed.values.dtype == np.int8 and packed.R == R
    blocks = bcsr.dense_to_bcsr(weight, keep, R)  # the same block structure as bcsr
    np.testing.assert_array_equal(packed.indices, blocks.indices)
    np.testing.assert_array_equal(packed.offsets, blocks.offsets)
    np.testing.assert_array_equal(packed.to_dense(), reference_dequantized(weight, keep))
    assert packed.nnz == blocks.nnz and packed.nbytes == sum(t.nbytes for t in packed.tensors)
    BLK.validate(BLK.from_tensors(packed.tensors, K, N), "node")


def test_validate_errors() -> None:
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((24, 10)).astype(np.float32)
    packed = BLK.pack(weight, block_mask(rng, 24, 10, 4, 0.5))
    low = packed.values.copy()
    low[1, 2] = -128
    padding = packed.values.copy()
    padding[-1, 3] = 1
    cases = [
        (dataclasses.replace(packed, values=low), r"^n: values\[1, 2\] = -128 is outside \[-127, 127\]$"),
        (dataclasses.replace(packed, values=padding), "padding of the last block row"),
        (dataclasses.replace(packed, values=packed.values.astype(np.float32)), "values must be int8, got float32"),
        (dataclasses.replace(packed, scales=packed.scales[:3]), "scales has shape"),
        (dataclasses.replace(packed, scales=np.zeros(10, np.float32)), "every scale must be finite, positive"),
    ]
    for bad, message in cases:
        with pytest.raises(OnnxPruneError, match=message):
            BLK.validate(bad, "n")
    K = 140000
    big = BLK.pack(np.ones((K, 4), np.float32))
    with pytest.raises(OnnxPruneError, match=r"^n: output 0 has sum \|values\| = 17780000, more than "
                                             r"\(2\^31 - 1\) / 127 = 16909320"):
        BLK.validate(big, "n")


def test_quantize_dynamic_with_a_block_pattern_picks_the_block_format() -> None:
    assert all(fmt.name != bcsr_int8_dynamic.NAME for fmt, _ in formats.value_choices().values())
    for pattern in ("4x1", "8x1"):
        assert storage_format("fp32", pattern=pattern, quantize="dynamic") == (BLK, np.dtype(np.int8))
    assert storage_format("fp32", quantize="dynamic")[0].name == "csr_int8_dynamic"
    assert storage_format("fp32", pattern="2:4", quantize="dynamic")[0].name == "csr_int8_dynamic"
    assert storage_format("fp32", pattern="4x1", quantize="dynamic", format="csr_int8_dynamic")[0].name == \
        "csr_int8_dynamic"
    with pytest.raises(UsageError, match="--quantize dynamic stores in format csr_int8_dynamic or "
                                         "bcsr_int8_dynamic; it cannot be combined with --format bcsr"):
        storage_format("fp32", pattern="4x1", quantize="dynamic", format="bcsr")


@needs_library
def test_pattern_4x1_quantize_dynamic_end_to_end_on_the_bundled_model(tmp_path: Path) -> None:
    out, dense_out = tmp_path / "blk.onnx", tmp_path / "dense.onnx"
    done = cli(str(MODEL), str(out), "--ratio", "0.8", "--pattern", "4x1", "--quantize", "dynamic",
               "--inputs", str(ROOT / "models" / "mnist-test.npz"))
    assert done.returncode == 0, done.stderr
    assert "kernel check passed" in done.stdout and "tolerance 5e-02" in done.stdout
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    nodes = [n for n in model.graph.node if n.op_type == contract.OP_TYPE]
    assert nodes and all(helper.get_attribute_value(a) == b"bcsr_int8_dynamic"
                         for n in nodes for a in n.attribute if a.name == contract.ATTR_FORMAT)

    x = np.load(ROOT / "models" / "mnist-test.npz")
    x = x[x.files[0]][:70].astype(np.float32).reshape(70, -1)
    with_library = ort.InferenceSession(str(out), onnx_prune.session_options(1), providers=["CPUExecutionProvider"])
    without = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y_lib = with_library.run(None, {"input": x})[0]
    np.testing.assert_array_equal(y_lib, without.run(None, {"input": x})[0])  # the fallback is the contract too
    np.testing.assert_array_equal(with_library.run(None, {"input": x[5:6]})[0], y_lib[5:6])  # no batch dependence

    done = cli("densify", str(out), str(dense_out))
    assert done.returncode == 0, done.stderr
    densified = ort.InferenceSession(str(dense_out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert 0 < np.abs(densified - y_lib).max() <= bcsr_int8_dynamic.CsrInt8DynamicFormat.verify_tolerance * \
        np.abs(densified).max()
