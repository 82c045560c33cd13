"""The csr_int8_dynamic format's Python side (onnx_prune/sparse_gemm/formats/csr_int8_dynamic.py):
packing (csr_int8's tensors), validation errors by message, the registry and API wiring of
`--quantize dynamic`, and the CLI end to end on the bundled model (verification, with and without
the library, densify)."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import onnx_prune
from onnx_prune.errors import OnnxPruneError, UsageError
from onnx_prune.sparse_gemm import contract, formats
from onnx_prune.sparse_gemm.formats import csr_int8, csr_int8_dynamic

from test_int8_format import DENSE_BYTES, MODEL, ROOT, needs_library, random_layer

DYN = csr_int8_dynamic.CSR_INT8_DYNAMIC


def test_pack_stores_csr_int8_tensors_under_its_own_format() -> None:
    w, keep = random_layer(3, 300, 20, 0.3)
    packed, int8 = DYN.pack(w, keep), csr_int8.CSR_INT8.pack(w, keep)
    assert packed.format == "csr_int8_dynamic" and DYN.tensor_names == csr_int8.CSR_INT8.tensor_names
    for mine, theirs in zip(packed.tensors, int8.tensors):
        np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(packed.to_dense(), int8.to_dense())
    assert packed.nbytes == sum(t.nbytes for t in packed.tensors)
    DYN.validate(DYN.from_tensors(packed.tensors, packed.K, packed.N), "node")


def test_selected_by_quantize_not_by_a_values_choice() -> None:
    assert "csr_int8_dynamic" in formats.names()
    assert all(fmt.name != "csr_int8_dynamic" for fmt, _ in formats.value_choices().values())
    with pytest.raises(UsageError, match="--quantize must be 'none' or 'dynamic', got 'static'"):
        onnx_prune.prune(str(MODEL), 0.5, quantize="static")


def test_validate_errors() -> None:
    w, keep = random_layer(4, 40, 3, 0.5)
    packed = DYN.pack(w, keep)
    bad = dataclasses.replace(packed, values=np.where(np.arange(packed.nnz) == 1, -128, packed.values).astype(np.int8))
    with pytest.raises(OnnxPruneError, match=r"^node 'x': values\[1\] = -128 is outside \[-127, 127\]$"):
        DYN.validate(bad, "node 'x'")
    K = 140000
    big = DYN.pack(np.ones((K, 1), np.float32))
    with pytest.raises(OnnxPruneError, match=r"^n: an output's sum \|values\| is 17780000, more than "
                                             r"\(2\^31 - 1\) / 127 = 16909320"):
        DYN.validate(big, "n")
    with pytest.raises(OnnxPruneError, match="scales has shape"):
        DYN.validate(dataclasses.replace(packed, scales=packed.scales[:2]), "n")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnx_prune.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})


@needs_library
def test_quantize_dynamic_end_to_end_on_the_bundled_model(tmp_path: Path) -> None:
    out, dense_out = tmp_path / "dyn.onnx", tmp_path / "dense.onnx"
    done = cli(str(MODEL), str(out), "--ratio", "0.9", "--quantize", "dynamic",
               "--inputs", str(ROOT / "models" / "mnist-test.npz"))
    assert done.returncode == 0, done.stderr
    assert "kernel check passed" in done.stdout and "tolerance 5e-02" in done.stdout
    assert MODEL.stat().st_size == DENSE_BYTES
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    nodes = [n for n in model.graph.node if n.op_type == contract.OP_TYPE]
    assert nodes and all(helper.get_attribute_value(a) == b"csr_int8_dynamic"
                         for n in nodes for a in n.attribute if a.name == contract.ATTR_FORMAT)

    x = np.load(ROOT / "models" / "mnist-test.npz")
    x = x[x.files[0]][:64].astype(np.float32).reshape(64, -1)
    with_library = ort.InferenceSession(str(out), onnx_prune.session_options(1), providers=["CPUExecutionProvider"])
    without = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y_lib = with_library.run(None, {"input": x})[0]
    np.testing.assert_array_equal(y_lib, without.run(None, {"input": x})[0])  # the fallback is the contract too
    one = with_library.run(None, {"input": x[5:6]})[0]
    np.testing.assert_array_equal(one, y_lib[5:6])  # per-row quantization: no batch dependence

    done = cli("densify", str(out), str(dense_out))
    assert done.returncode == 0, done.stderr
    densified = ort.InferenceSession(str(dense_out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert not any(n.op_type == contract.OP_TYPE for n in onnx.load(str(dense_out)).graph.node)
    scale = np.abs(densified).max()
    assert 0 < np.abs(densified - y_lib).max() <= csr_int8_dynamic.VERIFY_TOLERANCE * scale
