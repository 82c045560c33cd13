"""The rewritten graph itself: SparseGemm nodes as docs/sparse_gemm_op.md defines them, the weights
they replace gone, everything else (names, shapes, metadata, other nodes) kept; plus layer
discovery (layers.find_layers) and model I/O (modelio)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnx_prune
from onnx_prune.model import modelio
from onnx_prune.sparse_gemm import contract
from onnx_prune.errors import OnnxPruneError
from onnx_prune.model.layers import find_layers

from helpers_models import f32, gemm, keep_mask, make_model, matmul, mlp


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def decode_csr(values: np.ndarray, indices: np.ndarray, offsets: np.ndarray, K: int, N: int) -> np.ndarray:
    """The contract's csr rule, written out: W[indices[j], n] = values[j] for offsets[n] <= j < offsets[n+1]."""
    w = np.zeros((K, N), np.float64)
    for n in range(N):
        for j in range(offsets[n], offsets[n + 1]):
            assert w[indices[j], n] == 0
            w[indices[j], n] = values[j]
    return w


# ----------------------------------------------------------------------------- the node

def test_sparse_gemm_node_follows_the_contract():
    model, p = gemm(30, 12, trans_b=1, alpha=0.5, beta=2.0, bias_shape=(12,), node_name="/fc/Gemm")
    out, _ = onnx_prune.prune(model, 0.9, fallback=False)
    (node,) = out.graph.node
    assert (node.op_type, node.domain, node.name) == (contract.OP_TYPE, contract.DOMAIN, "/fc/Gemm")
    assert list(node.input) == ["A", "B.sparse_values", "B.sparse_indices", "B.sparse_offsets", "C"]
    assert list(node.output) == ["Y"]
    a = attrs(node)
    nnz = 360 - 324
    assert a == {"K": 30, "N": 12, "format": b"csr", "alpha": 0.5, "beta": 2.0, "transA": 0, "nnz": nnz,
                 "original_op": b"Gemm", "dense_shape": [12, 30], "sparsity": b"0.9"}
    assert node.doc_string.startswith(f"pruned Gemm 12x30 -> nnz {nnz} (90.0% sparse)")
    values, indices, offsets = (initializer(out, f"B.sparse_{k}") for k in ("values", "indices", "offsets"))
    assert (values.dtype, indices.dtype, offsets.dtype) == (np.float32, np.uint16, np.int32)
    assert offsets.shape == (13,) and offsets[0] == 0 and offsets[-1] == nnz and np.all(np.diff(offsets) >= 0)
    for n in range(12):  # indices strictly increasing within each output row
        assert np.all(np.diff(indices[offsets[n]:offsets[n + 1]].astype(int)) > 0)
    expected = np.where(keep_mask(p["W"], 0.9), p["W"], 0)
    np.testing.assert_array_equal(decode_csr(values, indices, offsets, 30, 12), expected)


def test_matmul_node_attributes_and_fused_bias():
    model, p = matmul(16, 8, a_rank=3, bias_shape=(8,), relu=True)
    out, _ = onnx_prune.prune(model, 0.75, values="fp16", fallback=False)
    node = out.graph.node[0]
    a = attrs(node)
    assert a["original_op"] == b"MatMul" and a["activation"] == b"relu" and a["dense_shape"] == [16, 8]
    assert a["alpha"] == 1.0 and a["beta"] == 1.0 and a["transA"] == 0
    assert list(node.input) == ["X", "W.sparse_values", "W.sparse_indices", "W.sparse_offsets", "bias"]
    assert node.name == "/linear/MatMul" and list(node.output) == ["relu"]
    assert "fused /linear/Add + /act/Relu" in node.doc_string and "values float16" in node.doc_string
    assert initializer(out, "W.sparse_values").dtype == np.float16
    assert {t.name for t in out.graph.initializer} == {"W.sparse_values", "W.sparse_indices", "W.sparse_offsets", "bias"}


def test_row_shaped_matmul_bias_becomes_a_flat_c():
    model, p = matmul(12, 6, a_rank=3, bias_shape=(1, 1, 6))
    out, _ = onnx_prune.prune(model, 0.75, fallback=False)
    node = out.graph.node[0]
    assert node.input[4] == "bias.flat"
    np.testing.assert_array_equal(initializer(out, "bias.flat"), p["bias"].reshape(6))
    assert "bias" not in {t.name for t in out.graph.initializer}


def test_shared_weight_is_packed_once_and_read_by_both_nodes():
    out, report = onnx_prune.prune(mlp(dims=(12, 12, 12), shared=True), 0.8, fallback=False)
    names = [t.name for t in out.graph.initializer]
    assert names.count("shared.weight.sparse_values") == 1 and "shared.weight" not in names
    assert not any(n.startswith("/fc1/Gemm.sparse") for n in names)
    first, second = (n for n in out.graph.node if n.op_type == "SparseGemm")
    assert list(first.input[1:4]) == list(second.input[1:4])
    assert [l.shares for l in report.layers] == [None, "/fc0/Gemm"]


# ----------------------------------------------------------------------------- the rest of the graph

def test_graph_io_value_info_and_metadata_are_kept():
    model = mlp()
    model.graph.value_info.extend([f32("h0_relu", ["batch", 16]), f32("h0", ["batch", 16])])
    model.metadata_props.add(key="author", value="someone")
    model.doc_string, model.producer_name, model.model_version = "my model", "pytorch", 3
    out, _ = onnx_prune.prune(model, 0.9, scope="global")
    assert [i.name for i in out.graph.input] == ["input"] and [o.name for o in out.graph.output] == ["logits"]
    assert out.graph.input[0] == model.graph.input[0] and out.graph.output[0] == model.graph.output[0]
    stated = {v.name: v for v in out.graph.value_info}
    assert "h0" not in stated and stated["h0_relu"] == model.graph.value_info[0]  # h0 was fused away
    assert (out.doc_string, out.producer_name, out.model_version) == ("my model", "pytorch", 3)
    meta = {p.key: p.value for p in out.metadata_props}
    assert meta["author"] == "someone" and meta["onnx_prune.version"] == onnx_prune.__version__
    settings = json.loads(meta["onnx_prune.settings"])
    assert settings["ratio"] == 0.9 and settings["scope"] == "global" and settings["method"] == "magnitude"
    onnx.checker.check_model(out, full_check=True)


def test_unrelated_initializers_and_nodes_are_untouched():
    model, _ = matmul(8, 4, a_rank=2, bias_shape=(4,))
    model.graph.initializer.append(numpy_helper.from_array(np.arange(3, dtype=np.float32), "unused"))
    out, _ = onnx_prune.prune(model, 0.75, fallback=False)
    assert "unused" in {t.name for t in out.graph.initializer}
    assert out.graph.node[1] == model.graph.node[2]  # the Identity


def test_optional_parts_netron_metadata_and_fallback_switch():
    out_on, _ = onnx_prune.prune(mlp(), 0.9, fallback=True)
    out_off, _ = onnx_prune.prune(mlp(), 0.9, fallback=False)
    assert not out_off.functions
    assert [(f.domain, f.name) for f in out_on.functions] == [(contract.DOMAIN, contract.OP_TYPE)]
    for out in (out_on, out_off):
        meta = {p.key: p.value for p in out.metadata_props}
        assert contract.OP_TYPE in meta["metadata.json"]


# ----------------------------------------------------------------------------- layers

def test_find_layers_describes_each_pattern():
    model, p = gemm(10, 4, trans_a=1, trans_b=1, alpha=0.5, beta=0.25, bias_shape=(4,))
    (layer,), skipped = find_layers(model)
    assert skipped == [] and (layer.node, layer.op, layer.weight_name, layer.input_name) == ("gemm", "Gemm", "B", "A")
    assert layer.trans_a and layer.trans_b and (layer.alpha, layer.beta) == (0.5, 0.25)
    np.testing.assert_array_equal(layer.weight, p["W"])  # [K, N] although stored [N, K]
    assert layer.bias_name == "C" and np.array_equal(layer.bias, p["C"]) and layer.add_node is None
    model, p = matmul(10, 4, a_rank=3, bias_shape=(4,))
    (layer,), _ = find_layers(model)
    assert (layer.op, layer.add_node, layer.bias_name, layer.fused_nodes) == (
        "MatMul", "/linear/Add", "bias", ["/linear/MatMul", "/linear/Add"])
    assert layer.weight.dtype == np.float32 and layer.weight.shape == (10, 4)


def test_constant_a_with_dynamic_b_is_not_a_layer():
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "Wleft")
    model = make_model([helper.make_node("MatMul", ["Wleft", "X"], ["Y"], name="left")],
                       [f32("X", [3, 4])], [f32("Y", [2, 4])], [w])
    layers, skipped = find_layers(model)
    assert layers == [] and skipped[0].reason == "its constant operand is A, not the weight B"


# ----------------------------------------------------------------------------- model I/O

def test_load_errors_are_one_clear_line(tmp_path: Path):
    with pytest.raises(OnnxPruneError, match="does not exist"):
        modelio.load_model(tmp_path / "nope.onnx")
    with pytest.raises(OnnxPruneError, match="is not a file"):
        modelio.load_model(tmp_path)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xfe garbage \x00\x01")
    with pytest.raises(OnnxPruneError, match="'.*junk.onnx' is not a valid ONNX model"):
        modelio.load_model(junk)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(OnnxPruneError, match="is not a valid ONNX model"):
        modelio.load_model(empty)


def test_truncated_files_never_escape_as_other_errors(tmp_path: Path):
    full = mlp().SerializeToString()
    for cut in range(1, len(full), max(1, len(full) // 40)):
        path = tmp_path / "cut.onnx"
        path.write_bytes(full[:cut])
        try:
            onnx_prune.prune(str(path), 0.9)
        except OnnxPruneError:
            pass  # the expected outcome; a parse that happens to succeed must still prune cleanly


def test_external_data_loaded_and_written_back_external(tmp_path: Path):
    src = tmp_path / "in" / "model.onnx"
    src.parent.mkdir()
    model = mlp(dims=(64, 48, 8))
    onnx.save_model(mlp(dims=(64, 48, 8)), str(src), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert modelio.file_uses_external_data(src)
    loaded = modelio.load_model(src)
    assert not modelio.uses_external_data(loaded)
    assert initializer(loaded, "fc0.weight").tolist() == initializer(model, "fc0.weight").tolist()
    out, _ = onnx_prune.prune(str(src), 0.9)
    dest = tmp_path / "out.onnx"
    modelio.save_model_atomic(out, dest, external_data=True)
    assert (tmp_path / "out.onnx.data").exists() and modelio.file_uses_external_data(dest)
    back = onnx.load(str(dest))
    assert {t.name for t in back.graph.initializer} == {t.name for t in out.graph.initializer}
    assert sorted(os.listdir(tmp_path)) == ["in", "out.onnx", "out.onnx.data"]


def test_output_path_checks(tmp_path: Path):
    src = tmp_path / "m.onnx"
    onnx.save(mlp(), str(src))
    with pytest.raises(OnnxPruneError, match="is the input file"):
        modelio.check_output_path(src, tmp_path / "." / "m.onnx")
    link = tmp_path / "link.onnx"
    link.symlink_to(src)
    with pytest.raises(OnnxPruneError, match="is the input file"):
        modelio.check_output_path(src, link)
    with pytest.raises(OnnxPruneError, match="does not exist"):
        modelio.check_output_path(src, tmp_path / "missing" / "o.onnx")
    with pytest.raises(OnnxPruneError, match="it is a folder"):
        modelio.check_output_path(src, tmp_path)
    ext = tmp_path / "ext.onnx"
    onnx.save_model(mlp(), str(ext), save_as_external_data=True, location="o.onnx.data", size_threshold=0)
    with pytest.raises(OnnxPruneError, match="would overwrite the input's external data"):
        modelio.check_output_path(ext, tmp_path / "o.onnx")


def test_failed_save_leaves_nothing_behind(tmp_path: Path, monkeypatch):
    out, _ = onnx_prune.prune(mlp(), 0.9)
    dest = tmp_path / "o.onnx"

    def broken_save(model, path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", broken_save)
    with pytest.raises(OnnxPruneError, match="cannot write .*No space left on device"):
        modelio.save_model_atomic(out, dest)
    assert os.listdir(tmp_path) == []


def test_report_printout_summarises_many_skipped_nodes():
    from rich.console import Console

    from onnx_prune.check.report import PruneReport, human_size

    model, _ = matmul(8, 4, a_rank=2, bias_shape=(None,))
    _, report = onnx_prune.prune(model, 0.75)
    report.skipped = [{"node": f"attn{i}", "reason": "its weight is not a constant"} for i in range(7)]
    console = Console(width=200, record=True)
    report.print(console)
    text = console.export_text()
    assert "7 nodes left alone (its weight is not a constant): attn0, attn1, attn2, …" in text
    row = next(line for line in text.splitlines() if "/linear/MatMul" in line)
    assert [cell.strip() for cell in row.split("│")[2:8]] == ["MatMul", "8×4", "8", "75.0%", "128 B", "68 B"], row
    assert "total" in text
    assert [human_size(n) for n in (999, 1000, 40_000, 4_000_000, 3_136_000, 1_078_298)] == \
        ["999 B", "1.00 kB", "40.0 kB", "4.00 MB", "3.14 MB", "1.08 MB"]
    assert isinstance(report, PruneReport)


def test_max_relative_error_definition():
    from onnx_prune.check.verify import max_relative_error

    assert max_relative_error(np.array([2.0, -4.0]), np.array([2.0, -3.0])) == pytest.approx(0.25)
    assert max_relative_error(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) == 0.0
    assert max_relative_error(np.array([np.inf, 1.0]), np.array([np.inf, 1.5])) == pytest.approx(0.5)
    assert max_relative_error(np.array([np.nan, 1.0]), np.array([0.0, 1.0])) == float("inf")
    assert max_relative_error(np.array([np.inf]), np.array([-np.inf])) == float("inf")
    assert max_relative_error(np.zeros(3), np.full(3, 1e-13)) == pytest.approx(0.1)
    assert max_relative_error(np.zeros((2, 3)), np.zeros((3, 2))) == float("inf")


def test_generated_inputs_share_symbolic_sizes():
    from onnx_prune.check.verify import generated_inputs

    model = make_model([helper.make_node("Add", ["a", "b"], ["c"])],
                       [f32("a", ["batch", "seq", 4]), f32("b", ["seq", "batch", 1]),
                        helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["batch"])],
                       [f32("c", None)], [])
    feeds = generated_inputs(model)
    assert feeds["a"].shape == (4, 128, 4) and feeds["b"].shape == (128, 4, 1) and feeds["ids"].shape == (4,)
    assert feeds["ids"].dtype == np.int64 and not feeds["ids"].any()
    np.testing.assert_array_equal(generated_inputs(model)["a"], feeds["a"])  # seeded


def inferred_shapes(model: onnx.ModelProto) -> dict[str, list | None]:
    """What onnx shape inference knows of each intermediate tensor: its dims, None for a type without a shape."""
    values = onnx.shape_inference.infer_shapes(model).graph.value_info
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            if v.type.tensor_type.HasField("shape") else None for v in values}


def uninferable_mlp() -> onnx.ModelProto:
    """Gemm -> Relu -> Gemm -> Relu -> Gemm after an op of a domain onnx does not know: shape
    inference knows no intermediate shape of it."""
    rng = np.random.default_rng(5)
    dims = (12, 10, 8, 4)
    nodes = [helper.make_node("Opaque", ["X"], ["x2d"], name="opaque", domain="x.y")]
    inits, src = [], "x2d"
    for i, (k, n) in enumerate(zip(dims, dims[1:])):
        inits.append(numpy_helper.from_array(rng.standard_normal((n, k)).astype(np.float32), f"W{i}"))
        nodes.append(helper.make_node("Gemm", [src, f"W{i}"], [f"g{i}"], name=f"fc{i}", transB=1))
        src = f"g{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [src], [f"r{i}"], name=f"relu{i}"))
            src = f"r{i}"
    nodes.append(helper.make_node("Identity", [src], ["Y"], name="out"))
    return make_model(nodes, [f32("X", ["batch", 3, 4])], [f32("Y", ["batch", 4])], inits,
                      extra_opsets=[helper.make_opsetid("x.y", 1)])


SHAPE_MODELS = {
    "bundled_mnist": lambda: onnx.load(str(Path(__file__).resolve().parents[2] / "models" / "mnist-mlp.onnx")),
    "nd_matmul_mlp": lambda: __import__("helpers_models").attention_block()[0],
    "uninferable": uninferable_mlp,
}


@pytest.mark.parametrize("from_path", [False, True], ids=["proto", "path_in_place"])
@pytest.mark.parametrize("name", sorted(SHAPE_MODELS))
def test_pruned_file_keeps_the_intermediate_shapes_the_original_knew(name: str, from_path: bool, tmp_path: Path):
    """Issue #13: a SparseGemm node has no shape function, so the file itself must state the
    shapes after it. Shape inference on the pruned file knows exactly what it knew on the
    original for every surviving tensor -- none lost, none invented -- and each edge between
    SparseGemm nodes has value_info in the file (what netron draws) when the original knew it."""
    model = SHAPE_MODELS[name]()
    if from_path:  # a model loaded from a path is rewritten in place: shapes are taken before that
        onnx.save(model, str(tmp_path / "in.onnx"))
        out, _ = onnx_prune.prune(str(tmp_path / "in.onnx"), 0.8)
    else:
        out, _ = onnx_prune.prune(model, 0.8)
    onnx.checker.check_model(out, full_check=True)
    before, after = inferred_shapes(model), inferred_shapes(out)
    surviving = {o for n in out.graph.node for o in n.output} - {o.name for o in out.graph.output}
    assert {t: after.get(t) for t in surviving & set(before)} == {t: before[t] for t in surviving & set(before)}
    assert all(after.get(t) is None for t in surviving - set(before))
    sparse = [n for n in out.graph.node if n.domain == contract.DOMAIN]
    read_by_sparse = {n.input[0] for n in sparse}
    edges = [o for n in out.graph.node for o in n.output if o in read_by_sparse] + \
        [o for n in sparse for o in n.output if o not in {v.name for v in out.graph.output}]
    assert len(sparse) >= 3 and edges
    stated = {v.name: v for v in out.graph.value_info}
    for edge in edges:
        if before.get(edge) is None:  # unknown to the original: nothing written
            assert edge not in stated or not stated[edge].type.tensor_type.HasField("shape")
        else:
            assert stated[edge].type.tensor_type.HasField("shape"), edge
    if name == "uninferable":
        assert all(before.get(e) is None for e in edges)
    else:
        assert all(before.get(e) for e in edges)


def test_sparsity_attribute_reads_as_written() -> None:
    """A string, the shortest text of the float64 value: 0.9 shows as "0.9", not as float32's 0.8999999761581421."""
    model, _ = gemm(30, 12, trans_b=1, bias_shape=(12,), node_name="/fc/Gemm")
    out, _ = onnx_prune.prune(model, 0.9, fallback=False)
    (attribute,) = [a for a in out.graph.node[0].attribute if a.name == contract.ATTR_SPARSITY]
    assert attribute.type == onnx.AttributeProto.STRING and attribute.s == b"0.9"
    assert contract.sparsity_text(172 / 192) == "0.8958333333333334" and contract.sparsity_text(0.0) == "0.0"
    assert contract.sparsity_text(1 - 1 / 3_000_000) != "1.0"  # a weight kept never reads as all pruned
