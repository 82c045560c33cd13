"""The format registry, the csr format and the SparseGemm node reader, without the kernel.

The kernel-side agreement (the packed tensors compute A @ W in onnxruntime) is in test_contract.py;
here packing is checked against a numpy reference written from the contract's definition.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnx_prune.errors import OnnxPruneError
from onnx_prune.sparse_gemm import SparseGemmNode, contract, formats, formats_used, is_sparse_gemm, make_sparse_gemm
from onnx_prune.sparse_gemm.formats import PackedWeight, SparseFormat
from onnx_prune.sparse_gemm.formats.csr import CsrWeight


def reference_csr(dense: np.ndarray, keep: np.ndarray) -> tuple[list[float], list[int], list[int]]:
    """values / indices / offsets by the contract: output n's kept weights in increasing row k."""
    values, indices, offsets = [], [], [0]
    for n in range(dense.shape[1]):
        for k in range(dense.shape[0]):
            if keep[k, n]:
                values.append(float(dense[k, n]))
                indices.append(k)
        offsets.append(len(values))
    return values, indices, offsets


def random_weight(seed: int, K: int, N: int, density: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((K, N)).astype(np.float32), rng.random((K, N)) < density


# ---------------------------------------------------------------------------- registry


def test_registry_lists_csr_and_hands_out_a_format() -> None:
    assert "csr" in formats.names()
    fmt = formats.get("csr")
    assert isinstance(fmt, SparseFormat) and fmt.name == "csr"
    assert fmt.tensor_names == ("values", "indices", "offsets")
    assert formats.is_known("csr") and not formats.is_known("nope")


def test_unknown_format_is_one_line_listing_the_known_ones() -> None:
    known = ", ".join(formats.names())
    assert known.startswith("csr")
    with pytest.raises(OnnxPruneError, match=rf"^unknown SparseGemm format 'nope' \(known formats: {known}\)$"):
        formats.get("nope")


def test_a_name_cannot_be_registered_twice() -> None:
    with pytest.raises(ValueError, match="format 'csr' is registered twice"):
        formats.register(formats.get("csr"))


def test_value_types_are_the_stored_dtypes() -> None:
    value_types = formats.get("csr").value_types
    assert list(value_types) == ["fp32", "fp16"]
    weight, keep = random_weight(1, 9, 4, 0.5)
    for dtype in value_types.values():
        assert formats.get("csr").pack(weight, keep, values_dtype=dtype).values_dtype == dtype


def test_every_stored_kind_of_values_names_its_default_format() -> None:
    """Each --values choice a format stores has a default format that stores it, named in one table
    (not picked by the order the format modules are imported in)."""
    stored = {choice for name in formats.names() for choice in formats.get(name).value_types}
    assert set(formats.DEFAULT_FORMAT_OF_VALUES) == stored
    for choice, (fmt, dtype) in formats.value_choices().items():
        assert fmt.name == formats.DEFAULT_FORMAT_OF_VALUES[choice] and fmt.value_types[choice] == dtype
    assert list(formats.value_choices()) == ["fp32", "fp16", "int8"]  # the order --help shows


# ---------------------------------------------------------------------------- csr


@pytest.mark.parametrize("K,N,density", [(1, 1, 1.0), (6, 5, 0.0), (40, 17, 0.3), (70000, 2, 0.0001)])
def test_pack_matches_the_reference_and_unpacks_to_the_masked_weight(K: int, N: int, density: float) -> None:
    weight, keep = random_weight(K + N, K, N, density)
    packed = formats.get("csr").pack(weight, keep)
    values, indices, offsets = reference_csr(weight, keep)
    assert isinstance(packed, PackedWeight) and packed.format == "csr" and (packed.K, packed.N) == (K, N)
    np.testing.assert_array_equal(packed.values, np.array(values, np.float32))
    assert packed.indices.tolist() == indices and packed.offsets.tolist() == offsets
    assert packed.indices.dtype == (np.uint16 if K <= 65536 else np.int32)
    np.testing.assert_array_equal(packed.to_dense(), np.where(keep, weight, 0))
    assert packed.nnz == int(keep.sum())
    assert packed.sparsity == pytest.approx(1 - keep.sum() / (K * N))


def test_pack_in_column_blocks_reads_only_the_kept_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A few outputs at a time (the block does not divide N) and from the unmasked weight: the
    dropped entries, NaN here, are never read."""
    from onnx_prune.sparse_gemm.formats import csr

    weight, keep = random_weight(5, 30, 23, 0.3)
    unmasked = np.where(keep, weight, np.float32(np.nan))
    monkeypatch.setattr(csr, "_PACK_BLOCK", 2 * 30)  # two outputs per block
    packed = formats.get("csr").pack(unmasked, keep, values_dtype=np.float16)
    values, indices, offsets = reference_csr(weight, keep)
    np.testing.assert_array_equal(packed.values, np.array(values, np.float32).astype(np.float16))
    assert packed.indices.tolist() == indices and packed.offsets.tolist() == offsets


@pytest.mark.parametrize("values_dtype", [np.float32, np.float16])
def test_byte_counts_are_the_packed_tensors_bytes(values_dtype: type) -> None:
    weight, keep = random_weight(2, 300, 20, 0.25)
    packed = formats.get("csr").pack(weight, keep, values_dtype=values_dtype)
    assert packed.nbytes == sum(t.nbytes for t in packed.tensors)
    per_value = np.dtype(values_dtype).itemsize
    assert packed.nbytes == int(keep.sum()) * (per_value + 2) + 4 * (20 + 1)  # uint16 indices, int32 offsets


def test_unpack_sums_duplicates_like_the_kernel() -> None:
    packed = formats.get("csr").from_tensors(
        [np.array([1.0, 2.0, 5.0], np.float32), np.array([1, 1, 0], np.uint16), np.array([0, 2, 3], np.int32)], 2, 2)
    np.testing.assert_array_equal(packed.to_dense(), [[0.0, 5.0], [3.0, 0.0]])


def csr_with(**changes) -> CsrWeight:
    base = dict(values=np.array([1.0, 2.0], np.float32), indices=np.array([0, 2], np.uint16),
                offsets=np.array([0, 1, 2], np.int32), K=3, N=2)
    return CsrWeight(**{**base, **changes})


@pytest.mark.parametrize("changes,message", [
    (dict(K=0), r"^node x: K and N must be positive, got K=0, N=2$"),
    (dict(indices=np.array([0], np.uint16)), r"^node x: values \[2\] and indices \[1\] must be 1-D of the same length$"),
    (dict(offsets=np.array([0, 2], np.int32)), r"^node x: offsets has shape \[2\], expected \[3\]$"),
    (dict(offsets=np.array([0, 2, 1], np.int32)), r"^node x: offsets must start at 0, never decrease and end at nnz=2$"),
    (dict(indices=np.array([0, 3], np.uint16)), r"^node x: an index is outside \[0, K=3\)$"),
])
def test_validate_names_the_broken_rule(changes: dict, message: str) -> None:
    formats.get("csr").validate(csr_with(), "node x")  # the unchanged weight is valid
    with pytest.raises(OnnxPruneError, match=message):
        formats.get("csr").validate(csr_with(**changes), "node x")


# ---------------------------------------------------------------------------- the node reader / writer


def test_node_written_and_read_back_by_input_position() -> None:
    weight, keep = random_weight(3, 12, 5, 0.4)
    packed = formats.get("csr").pack(weight, keep)
    names = ["p", "q", "r"]  # deliberately not "<weight>.sparse_*"
    node = make_sparse_gemm("fc", "X", packed, names, "bias", "Y", {contract.ATTR_ALPHA: 0.5})
    assert is_sparse_gemm(node) and not is_sparse_gemm(helper.make_node("Gemm", ["a", "b"], ["c"]))
    sparse = SparseGemmNode(node)
    assert (sparse.a, sparse.tensor_inputs, sparse.c, sparse.y) == ("X", names, "bias", "Y")
    assert (sparse.alpha, sparse.beta, sparse.trans_a, sparse.activation, sparse.format_name) == (0.5, 1.0, 0, "", "csr")
    assert sparse.weight_stem() == "fc.weight"
    constants = {name: numpy_helper.from_array(t, name) for name, t in zip(names, packed.tensors)}
    np.testing.assert_array_equal(sparse.packed(constants).to_dense(), np.where(keep, weight, 0))
    assert formats_used([node, helper.make_node("Relu", ["Y"], ["Z"])]) == {"csr": "fc"}


def test_node_reader_errors_name_the_node() -> None:
    node = helper.make_node(contract.OP_TYPE, ["X", "v", "i", "o"], ["Y"], name="fc", domain=contract.DOMAIN, N=2)
    with pytest.raises(OnnxPruneError, match=r"^SparseGemm node 'fc': the required attribute 'K' is missing$"):
        SparseGemmNode(node).packed({})
    node = helper.make_node(contract.OP_TYPE, ["X", "v", "i", "o"], ["Y"], name="fc", domain=contract.DOMAIN, K=3, N=2)
    with pytest.raises(OnnxPruneError, match=r"^SparseGemm node 'fc': its weight 'v' is not a constant initializer"):
        SparseGemmNode(node).packed({})


def test_fallback_refuses_a_model_mixing_formats(monkeypatch: pytest.MonkeyPatch) -> None:
    """One fallback function serves one format: two formats in one model are one clear error,
    which add_optional_parts turns into a warning (the pruned file still needs the library)."""
    from onnx_prune.sparse_gemm.fallback import has_fallback_function, model_format
    from onnx_prune.sparse_gemm.rewrite import add_optional_parts
    from onnx_prune.sparse_gemm.formats import base
    from onnx_prune.sparse_gemm.formats.csr import CsrFormat

    class Other(CsrFormat):
        name = "other"

    monkeypatch.setitem(base._REGISTRY, "other", Other())
    nodes = [helper.make_node(contract.OP_TYPE, ["X", "v", "i", "o"], [f"Y{i}"], name=f"fc{i}", domain=contract.DOMAIN,
                              K=2, N=2, format=fmt) for i, fmt in enumerate(("csr", "other"))]
    graph = helper.make_graph(nodes, "g", [], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(contract.DOMAIN, 1)])
    with pytest.raises(OnnxPruneError, match=r"^SparseGemm nodes use several formats \('csr' \(node 'fc0'\), "
                                             r"'other' \(node 'fc1'\)\); the fallback function serves one format"):
        model_format(model)
    with pytest.warns(UserWarning, match="no standard-op fallback embedded .*several formats"):
        add_optional_parts(model)
    assert not has_fallback_function(model)
    del model.graph.node[0]
    assert model_format(model) == "other"
