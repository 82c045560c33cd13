"""docs/sparse_gemm_op.md, the contract and format registry (onnx_prune/sparse_gemm/) and the kernel agree.

The document is parsed (its tables), so a renamed attribute, a new input dtype or a changed
constant on any one side fails here instead of drifting silently.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from onnx_prune.sparse_gemm import contract, formats
from onnx_prune.sparse_gemm.formats import csr as csr_format
from kernel_models import (Csr, assert_matches_reference, dense_of, finish_model, open_session, random_csr,
                           sparse_gemm_model)

DOC = Path(__file__).resolve().parents[2] / "docs" / "sparse_gemm_op.md"

CSR_INPUT_NAMES = (contract.INPUT_A, *formats.get(csr_format.NAME).tensor_names, contract.INPUT_C)

DTYPES = {"float32": np.float32, "float16": np.float16, "uint16": np.uint16, "int32": np.int32, "int64": np.int64}


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def doc_section(title: str) -> str:
    """The text under '## title' up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", doc_text(), re.S | re.M)
    assert match, f"section '## {title}' not found in {DOC.name}"
    return match.group(1)


def table_rows(section: str) -> list[list[str]]:
    """Cells of a markdown table's body rows (header and separator dropped)."""
    rows = [line.strip().strip("|").split("|") for line in section.splitlines() if line.strip().startswith("|")]
    return [[cell.strip() for cell in row] for row in rows[2:]]


def code_name(cell: str) -> str:
    """The `name` a cell starts with (a note such as "(optional)" may follow)."""
    match = re.match(r"`([^`]+)`", cell)
    assert match, f"expected a `name` cell, got {cell!r}"
    return match.group(1)


def doc_attributes() -> dict[str, tuple[str, str]]:
    """name -> (type, default) from the Attributes table."""
    return {code_name(row[0]): (row[1], row[2]) for row in table_rows(doc_section("Attributes"))}


def doc_inputs() -> list[tuple[str, list[str]]]:
    """(name, accepted dtypes) per row of the Inputs table, in order."""
    return [(code_name(row[1]), [t.strip() for t in row[2].split(" or ")]) for row in table_rows(doc_section("Inputs"))]


# ---------------------------------------------------------------------------- constants


def test_identity_constants_appear_in_the_doc() -> None:
    text = doc_text()
    assert f"| domain | `{contract.DOMAIN}`" in text
    assert f"| op type | `{contract.OP_TYPE}` |" in text
    assert f"| since_version | `{contract.OP_VERSION}`" in text
    assert f"imports `{contract.DOMAIN}` version {contract.OP_VERSION}" in text
    assert f"| contract revision | {contract.CONTRACT_REVISION} |" in text
    assert f"### `{csr_format.NAME}` (revision {contract.CONTRACT_REVISION})" in text


def test_every_format_and_activation_is_documented() -> None:
    text = doc_text()
    for name in formats.names():
        assert f"### `{name}`" in text, name
    for name in contract.ACTIVATIONS:
        if name:
            assert f'"{name}"' in doc_section("Attributes"), name


def doc_formats() -> list[str]:
    """The formats the doc's "Formats" section has a '### `name`' heading for, in order."""
    return re.findall(r"^### `([^`]+)`", doc_section("Formats"), re.M)


def library_supported_formats() -> list[str]:
    """The formats the C++ library lists when a node asks for one it does not know."""
    csr = random_csr(np.random.default_rng(3), 8, 4, 0.5)
    model = sparse_gemm_model(csr.values, csr.indices, csr.offsets, {"K": 8, "N": 4, "format": "nope"}, a_shape=[2, 8])
    with pytest.raises(Exception) as caught:
        open_session(model).run(None, {"A": np.zeros((2, 8), np.float32)})
    match = re.search(r"unknown format 'nope' \(this library supports: ([^)]*)\)", str(caught.value))
    assert match, str(caught.value)
    return [name.strip() for name in match.group(1).split(",")]


def test_registry_formats_are_the_documented_formats() -> None:
    assert list(formats.names()) == doc_formats()


def test_library_supports_exactly_the_registry_formats() -> None:
    assert library_supported_formats() == list(formats.names())


def test_uint16_limit_matches_the_doc() -> None:
    assert csr_format.UINT16_INDEX_LIMIT == 65536
    assert f"`uint16` indices when `K ≤ {csr_format.UINT16_INDEX_LIMIT}`" in doc_text()


def test_input_and_output_names_match_the_doc() -> None:
    assert tuple(name for name, _ in doc_inputs()) == CSR_INPUT_NAMES
    outputs = [code_name(row[1]) for row in table_rows(doc_section("Output"))]
    assert tuple(outputs) == contract.OUTPUT_NAMES


def test_attribute_table_matches_contract_constants() -> None:
    constants = {value for name, value in vars(contract).items() if name.startswith("ATTR_")}
    assert set(doc_attributes()) == constants


# ---------------------------------------------------------------------------- the kernel accepts the doc


def attribute_value(name: str, doc_type: str, csr: Csr):
    """A valid value of the documented type for every attribute of the table."""
    valid = {contract.ATTR_K: csr.K, contract.ATTR_N: csr.N, contract.ATTR_FORMAT: csr_format.NAME,
             contract.ATTR_ALPHA: 0.5, contract.ATTR_BETA: 2.0, contract.ATTR_TRANS_A: 0,
             contract.ATTR_ACTIVATION: contract.ACTIVATION_RELU, contract.ATTR_NNZ: csr.nnz,
             contract.ATTR_ORIGINAL_OP: "Gemm", contract.ATTR_DENSE_SHAPE: [csr.N, csr.K],
             contract.ATTR_SPARSITY: contract.sparsity_text(1.0 - csr.nnz / (csr.K * csr.N))}
    value = valid[name]
    python_type = {"int": int, "float": float, "string": str, "ints": list}[doc_type]
    assert isinstance(value, python_type), (name, doc_type, value)
    return value


def test_every_documented_attribute_is_accepted_by_the_kernel() -> None:
    rng = np.random.default_rng(11)
    csr = random_csr(rng, 40, 12, 0.6)
    c = rng.standard_normal(12).astype(np.float32)
    attrs = {name: attribute_value(name, doc_type, csr) for name, (doc_type, _) in doc_attributes().items()}
    model = sparse_gemm_model(csr.values, csr.indices, csr.offsets, attrs, a_shape=["M", 40], c=c, y_shape=["M", 12])
    onnx.checker.check_model(model, full_check=True)
    session = open_session(model)
    for m in (2, 40):
        a = rng.standard_normal((m, 40)).astype(np.float32)
        assert_matches_reference(session.run(None, {"A": a})[0], a, dense_of(csr), c, alpha=0.5, beta=2.0, relu=True)


def test_documented_defaults_are_the_kernel_defaults() -> None:
    """A node with every defaulted attribute written out equals one that leaves them out."""
    defaults = {name: default for name, (_, default) in doc_attributes().items() if default not in ("required", "optional")}
    parsed = {name: (value.strip("`").strip('"') if value.startswith('`"') else float(value.strip("`")))
              for name, value in defaults.items()}
    assert parsed == {contract.ATTR_FORMAT: "csr", contract.ATTR_ALPHA: 1.0, contract.ATTR_BETA: 1.0,
                      contract.ATTR_TRANS_A: 0.0, contract.ATTR_ACTIVATION: ""}
    explicit = {name: (int(v) if name == contract.ATTR_TRANS_A else v) for name, v in parsed.items()}
    rng = np.random.default_rng(12)
    csr = random_csr(rng, 20, 9, 0.5)
    c = rng.standard_normal(9).astype(np.float32)
    a = rng.standard_normal((5, 20)).astype(np.float32) * 3
    base = {contract.ATTR_K: 20, contract.ATTR_N: 9}
    results = [open_session(sparse_gemm_model(csr.values, csr.indices, csr.offsets, attrs, a_shape=[5, 20], c=c))
               .run(None, {"A": a})[0] for attrs in (base, {**base, **explicit})]
    np.testing.assert_array_equal(results[0], results[1])
    assert (results[0] < 0).any()  # activation "" really means none
    assert_matches_reference(results[0], a, dense_of(csr), c)


@pytest.mark.parametrize("position", [1, 2, 3])
def test_every_documented_weight_dtype_is_accepted(position: int) -> None:
    name, dtypes = doc_inputs()[position]
    rng = np.random.default_rng(position)
    for dtype in dtypes:
        csr = random_csr(rng, 30, 7, 0.5)
        tensors = {"values": csr.values, "indices": csr.indices, "offsets": csr.offsets}
        tensors[name] = tensors[name].astype(DTYPES[dtype])
        csr = Csr(values=tensors["values"], indices=tensors["indices"], offsets=tensors["offsets"], K=30, N=7)
        model = sparse_gemm_model(csr.values, csr.indices, csr.offsets, {"K": 30, "N": 7}, a_shape=["M", 30])
        a = rng.standard_normal((4, 30)).astype(np.float32)
        assert_matches_reference(open_session(model).run(None, {"A": a})[0], a, dense_of(csr))


def test_model_written_with_the_constants_runs() -> None:
    rng = np.random.default_rng(13)
    csr = random_csr(rng, 16, 5, 0.5)
    inits = [onnx.numpy_helper.from_array(arr, name)
             for name, arr in zip(CSR_INPUT_NAMES[1:4], (csr.values, csr.indices, csr.offsets))]
    node = helper.make_node(contract.OP_TYPE, list(CSR_INPUT_NAMES[:4]), list(contract.OUTPUT_NAMES),
                            name="from_constants", domain=contract.DOMAIN,
                            **{contract.ATTR_K: 16, contract.ATTR_N: 5, contract.ATTR_FORMAT: csr_format.NAME})
    graph = helper.make_graph([node], "constants", [helper.make_tensor_value_info("A", onnx.TensorProto.FLOAT, [3, 16])],
                              [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [3, 5])], initializer=inits)
    model = finish_model(graph)
    assert {(o.domain, o.version) for o in model.opset_import} >= {(contract.DOMAIN, contract.OP_VERSION)}
    onnx.checker.check_model(model, full_check=True)
    a = rng.standard_normal((3, 16)).astype(np.float32)
    assert_matches_reference(open_session(model).run(None, {"A": a})[0], a, dense_of(csr))


# ---------------------------------------------------------------------------- the csr format


@pytest.mark.parametrize("K,N,density", [(1, 1, 1.0), (7, 3, 0.0), (50, 30, 0.3), (129, 65, 0.05), (33, 17, 1.0)])
def test_dense_to_csr_round_trip(K: int, N: int, density: float) -> None:
    rng = np.random.default_rng(K * 1000 + N)
    dense = (rng.standard_normal((K, N)) * (rng.random((K, N)) < density)).astype(np.float32)
    csr = csr_format.dense_to_csr(dense)
    assert csr.K == K and csr.N == N and csr.format == csr_format.NAME
    assert csr.nnz == np.count_nonzero(dense)
    np.testing.assert_array_equal(csr_format.csr_to_dense(csr), dense)
    np.testing.assert_array_equal(csr.to_dense(), dense)
    assert csr.sparsity == pytest.approx(1 - np.count_nonzero(dense) / (K * N))
    # The contract's definition read independently: W[indices[j], n] = values[j].
    np.testing.assert_array_equal(dense_of(Csr(csr.values, csr.indices, csr.offsets, K, N)), dense)
    for n in range(N):  # strictly increasing indices within an output, as onnx-prune writes them
        row = csr.indices[csr.offsets[n]:csr.offsets[n + 1]].astype(np.int64)
        assert np.all(np.diff(row) > 0)


def test_dense_to_csr_with_mask_keeps_masked_zeros() -> None:
    rng = np.random.default_rng(5)
    dense = rng.standard_normal((20, 10)).astype(np.float32)
    dense[3, 4] = 0.0
    mask = rng.random((20, 10)) < 0.4
    mask[3, 4] = True
    csr = csr_format.dense_to_csr(dense, mask)
    assert csr.nnz == int(mask.sum())
    np.testing.assert_array_equal(csr_format.csr_to_dense(csr), np.where(mask, dense, 0))


@pytest.mark.parametrize("K,index_dtype", [(1, np.uint16), (65535, np.uint16), (65536, np.uint16),
                                           (65537, np.int32), (100000, np.int32)])
def test_index_dtype_rule(K: int, index_dtype: type) -> None:
    assert csr_format.index_dtype_for(K) == np.dtype(index_dtype)
    dense = np.zeros((K, 2), dtype=np.float32)
    dense[K - 1, 1] = 1.5
    dense[0, 0] = -2.0
    csr = csr_format.dense_to_csr(dense)
    assert csr.indices.dtype == np.dtype(index_dtype)
    assert csr.offsets.dtype == np.dtype(np.int32)
    assert csr.values.dtype == np.dtype(np.float32)
    assert csr.indices.tolist() == [0, K - 1] and csr.offsets.tolist() == [0, 1, 2]


def test_offset_dtype_rule() -> None:
    assert csr_format.offset_dtype_for(0) == np.dtype(np.int32)
    assert csr_format.offset_dtype_for(2**31 - 1) == np.dtype(np.int32)
    assert csr_format.offset_dtype_for(2**31) == np.dtype(np.int64)


def test_float16_values_on_request() -> None:
    dense = np.array([[0.5, 0.0], [0.0, -1.25]], dtype=np.float32)
    csr = csr_format.dense_to_csr(dense, values_dtype=np.float16)
    assert csr.values.dtype == np.dtype(np.float16)
    np.testing.assert_array_equal(csr_format.csr_to_dense(csr), dense)


def test_csr_from_formats_runs_in_the_kernel() -> None:
    """The csr packer and the kernel agree on the layout: a packed dense weight computes A @ W."""
    rng = np.random.default_rng(21)
    dense = (rng.standard_normal((70, 45)) * (rng.random((70, 45)) < 0.2)).astype(np.float32)
    csr = csr_format.dense_to_csr(dense)
    model = sparse_gemm_model(csr.values, csr.indices, csr.offsets,
                              {contract.ATTR_K: 70, contract.ATTR_N: 45, contract.ATTR_NNZ: csr.nnz}, a_shape=["M", 70])
    session = open_session(model)
    for m in (1, 4, 50):
        a = rng.standard_normal((m, 70)).astype(np.float32)
        assert_matches_reference(session.run(None, {"A": a})[0], a, dense.astype(np.float64))


def test_errors_section_says_each_thing_once() -> None:
    """The Errors section once repeated half a sentence (an editing slip); it names C's rank check."""
    section = doc_section("Errors")
    sentences = [s.strip() for s in " ".join(section.split()).split(". ") if s.strip()]
    assert len(sentences) == len(set(sentences)), sentences
    assert section.count("the list naming every format the library has") == 1
    assert "`C`'s rank" in section
