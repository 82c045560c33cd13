"""Issue 20, items 2 and 3: one weight, one mask. A weight reached through Identity / Transpose
or computed from constants (int8 * scale, DequantizeLinear) is pruned once, packed once and read by
every SparseGemm that uses it; no dense copy stays; the report's sizes are the written file's. Gemm /
MatMul inside If / Loop / Scan bodies are named as skipped, with why.

Real exporter fixtures (tools/make_fixtures.py) carry the node layouts; each pruned model is
compared with a numpy computation of the masked model written here from the fixture's own tensors.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_prune
from onnx_prune import cli as cli_module
from onnx_prune.errors import OnnxPruneError
from onnx_prune.sparse_gemm import contract

from helpers_models import assert_close, f32, global_keep_masks, make_model, masked

FIXTURES = Path(__file__).parents[1] / "fixtures"


def fixture(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, np.ndarray]]:
    model = onnx.load(str(FIXTURES / f"{name}.onnx"))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    data = np.load(FIXTURES / f"{name}.npz")
    feeds = {k: data[k] for k in data.files if not k.startswith("expected:")}
    return model, weights, feeds


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), onnx_prune.session_options(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def sparse_nodes(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in model.graph.node if n.op_type == contract.OP_TYPE}


def packed_inputs(node: onnx.NodeProto) -> list[str]:
    """The packed weight tensors a SparseGemm reads (between A and the optional C)."""
    return [name for name in node.input[1:] if ".sparse_" in name]


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


# ----------------------------------------------------------------------------- Identity: one Linear used twice

def test_weight_read_through_identity_is_pruned_once_and_shared():
    """Before: the MatMul reading Identity(W) was 'not a constant' and W stayed dense beside the sparse copy."""
    model, w, feeds = fixture("torch_tied_identity")
    out, report = onnx_prune.prune(model, 0.8, fallback=False, verify=True)

    nodes = sparse_nodes(out)
    assert set(nodes) == {"/fc/MatMul", "/fc_1/MatMul", "/MatMul"}
    assert packed_inputs(nodes["/fc/MatMul"]) == packed_inputs(nodes["/fc_1/MatMul"])
    assert packed_inputs(nodes["/fc/MatMul"]) != packed_inputs(nodes["/MatMul"])
    names = [t.name for t in out.graph.initializer]
    assert sum(n.endswith(".sparse_values") for n in names) == 2  # one per distinct weight
    assert "onnx::MatMul_15" not in names and "onnx::MatMul_17" not in names  # no dense copy behind
    assert not any(n.op_type == "Identity" for n in out.graph.node)
    rows = {l.node: l for l in report.layers}
    assert rows["/fc_1/MatMul"].shares == "/fc/MatMul" and rows["/fc_1/MatMul"].bytes_after == 0
    assert rows["/fc/MatMul"].nnz == rows["/fc_1/MatMul"].nnz
    assert sum(l.bytes_before for l in report.layers) == w["onnx::MatMul_15"].nbytes + w["onnx::MatMul_17"].nbytes
    assert sum(l.bytes_after for l in report.layers) == sum(t.nbytes for t in map(numpy_helper.to_array, (
        t for t in out.graph.initializer if ".sparse_" in t.name)))
    assert report.verification.passed

    fc, head = masked(w["onnx::MatMul_15"], 0.8), masked(w["onnx::MatMul_17"], 0.8)
    h = relu(w["emb.weight"][feeds["ids"]].astype(np.float64) @ fc + w["fc.bias"])
    expected = relu(h @ fc + w["fc.bias"]) @ head
    assert_close(run(out, feeds)[0], expected)


def test_global_scope_counts_a_shared_weight_once():
    """Before: the Identity user was not a layer; with two direct users, global scope counted W twice."""
    model, w, feeds = fixture("torch_tied_identity")
    out, report = onnx_prune.prune(model, 0.7, scope="global", fallback=False, auto_dense=False)
    fc_keep, head_keep = global_keep_masks([w["onnx::MatMul_15"], w["onnx::MatMul_17"]], 0.7)
    rows = {l.node: l for l in report.layers}
    assert rows["/fc/MatMul"].nnz == rows["/fc_1/MatMul"].nnz == int(fc_keep.sum())
    assert rows["/MatMul"].nnz == int(head_keep.sum())
    fc = np.where(fc_keep, w["onnx::MatMul_15"].astype(np.float64), 0.0)
    head = np.where(head_keep, w["onnx::MatMul_17"].astype(np.float64), 0.0)
    h = relu(w["emb.weight"][feeds["ids"]].astype(np.float64) @ fc + w["fc.bias"])
    assert_close(run(out, feeds)[0], relu(h @ fc + w["fc.bias"]) @ head)


# ----------------------------------------------------------------------------- Transpose: tied weights

def test_weight_read_through_transposes_is_packed_once_and_a_table_gather_reads_stays_dense():
    model, w, feeds = fixture("torch_tied_transpose")
    out, report = onnx_prune.prune(model, 0.8, fallback=False, verify=True)
    nodes = sparse_nodes(out)
    assert set(nodes) == {"/fc/MatMul", "/fc_1/MatMul"}
    assert packed_inputs(nodes["/fc/MatMul"]) == packed_inputs(nodes["/fc_1/MatMul"])
    names = {t.name for t in out.graph.initializer}
    assert "fc.weight" not in names and "emb.weight" in names
    assert [n.input[0] for n in out.graph.node if n.op_type == "Transpose"] == ["emb.weight"]
    assert {"node": "/MatMul", "reason": "its weight emb.weight is also read by node /emb/Gather (Gather), which "
            "stays dense: pruning it would store the weight twice"} in report.skipped

    fc = masked(w["fc.weight"].T, 0.8)
    h = relu(w["emb.weight"][feeds["ids"]].astype(np.float64) @ fc + w["fc.bias"])
    assert_close(run(out, feeds)[0], relu(h @ fc + w["fc.bias"]) @ w["emb.weight"].T.astype(np.float64))


def test_gemm_trans_b_and_matmul_on_transpose_share_one_mask():
    """Gemm(transB=1) on W and MatMul on Transpose(W) multiply by the same matrix: one packed weight."""
    rng = np.random.default_rng(20)
    w = rng.standard_normal((12, 10)).astype(np.float32)  # [N, K] as nn.Linear stores it
    nodes = [helper.make_node("Gemm", ["X", "W"], ["h"], name="g", transB=1),
             helper.make_node("Transpose", ["W"], ["Wt"], name="t", perm=[1, 0]),
             helper.make_node("MatMul", ["h2", "Wt"], ["Y"], name="m"),
             helper.make_node("Slice", ["h", "zero", "ten", "one"], ["h2"], name="cut")]
    inits = [numpy_helper.from_array(w, "W"), *(numpy_helper.from_array(np.array([v], np.int64), n)
                                                for n, v in (("zero", 0), ("ten", 10), ("one", 1)))]
    model = make_model([nodes[0], nodes[3], nodes[1], nodes[2]], [f32("X", ["b", 10])], [f32("Y", ["b", 12])], inits)
    out, report = onnx_prune.prune(model, 0.75, fallback=False)
    nodes = sparse_nodes(out)
    assert packed_inputs(nodes["g"]) == packed_inputs(nodes["m"])
    assert {t.name for t in out.graph.initializer}.isdisjoint({"W"}) and "t" not in {n.name for n in out.graph.node}
    x = rng.standard_normal((3, 10)).astype(np.float32)
    wk = masked(w.T, 0.75)
    assert_close(run(out, {"X": x})[0], (x.astype(np.float64) @ wk)[:, :10] @ wk)


# ----------------------------------------------------------------------------- weights computed from constants

def test_int8_weight_times_scale_is_folded_pruned_and_its_int8_source_dropped():
    """Before: 'its weight is not a constant' (Cast(int8) * scale)."""
    model, w, feeds = fixture("torch_int8_weight")
    out, report = onnx_prune.prune(model, 0.9, fallback=False, verify=True)
    assert [n.op_type for n in out.graph.node] == [contract.OP_TYPE]
    assert {"w_q", "w_scale"}.isdisjoint(t.name for t in out.graph.initializer)
    (row,) = report.layers
    assert row.bytes_before == w["w_q"].nbytes + w["w_scale"].nbytes and row.bytes_after < row.bytes_before
    weight = w["w_q"].astype(np.float32) * w["w_scale"]
    expected = relu(feeds["x"].astype(np.float64) @ masked(weight, 0.9) + w["bias"])
    assert_close(run(out, feeds)[0], expected)


def test_int8_weight_stays_dense_when_packing_it_would_grow_the_file():
    model, w, feeds = fixture("torch_int8_weight")
    out, report = onnx_prune.prune(model, 0.8, fallback=False)  # 20% of 64x48 as fp32 + indices > 3 kB int8
    assert not sparse_nodes(out) and "w_q" in {t.name for t in out.graph.initializer}
    (row,) = report.layers
    assert row.status == "kept_dense" and row.reason.startswith("its packed form (")
    assert "larger than the constants it is read from (3,076 bytes)" in row.reason


def test_dequantize_linear_weight_per_column_scale():
    rng = np.random.default_rng(21)
    q = rng.integers(-127, 128, (16, 8)).astype(np.int8)
    scale = rng.uniform(0.01, 0.05, 8).astype(np.float32)
    zero = rng.integers(-3, 4, 8).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["Wq", "s", "z"], ["W"], name="dq", axis=1),
             helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")]
    inits = [numpy_helper.from_array(a, n) for a, n in ((q, "Wq"), (scale, "s"), (zero, "z"))]
    model = make_model(nodes, [f32("X", ["b", 16])], [f32("Y", ["b", 8])], inits)
    out, _ = onnx_prune.prune(model, 0.9, fallback=False)
    assert [n.op_type for n in out.graph.node] == [contract.OP_TYPE] and not out.graph.initializer[0].name == "Wq"
    weight = (q.astype(np.float64) - zero) * scale
    x = rng.standard_normal((5, 16)).astype(np.float32)
    assert_close(run(out, {"X": x})[0], x.astype(np.float64) @ masked(weight, 0.9))


def test_activation_operand_is_named_as_computed_from_the_graph_input():
    """Before: 'its weight is not a constant', with no hint of what it is computed from."""
    model, _, _ = fixture("torch_transformer_block")
    _, report = onnx_prune.prune(model, 0.8, fallback=False)
    reasons = {s["reason"] for s in report.skipped}
    assert reasons == {"its weight is not a constant: it is computed from graph input hidden"}
    assert len(report.skipped) == 2  # Q.K^T and softmax.V


# ----------------------------------------------------------------------------- subgraphs

def test_layers_in_if_bodies_are_named_as_skipped_with_why():
    model, w, feeds = fixture("torch_if_branch")
    out, report = onnx_prune.prune(model, 0.75, fallback=False, verify=True)
    assert set(sparse_nodes(out)) == {"/pre/Gemm"}
    reasons = {s["node"]: s["reason"] for s in report.skipped}
    assert reasons["/a/Gemm"] == ("it is inside the then_branch body of If node /If: layers in If / Loop / Scan "
                                  "bodies are not pruned, only those of the main graph")
    assert reasons["/b/Gemm"].startswith("it is inside the else_branch body of If node /If")
    h = relu(feeds["x"].astype(np.float64) @ masked(w["pre.weight"].T, 0.75) + w["pre.bias"])
    expected = h @ w["a.weight"].T + w["a.bias"] if h.sum() > 0 else relu(h @ w["b.weight"].T + w["b.bias"])
    assert_close(run(out, feeds)[0], expected)


def test_model_whose_only_layers_are_in_a_body_gets_a_true_message():
    """Before: 'the model has no Gemm or MatMul with a constant float32 2-D weight'."""
    rng = np.random.default_rng(22)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    then_body = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["t"], name="inside")], "then", [],
                                  [f32("t", ["b", 4])])
    else_body = helper.make_graph([helper.make_node("Identity", ["Z"], ["e"], name="other")], "else", [],
                                  [f32("e", ["b", 4])])
    nodes = [helper.make_node("If", ["C"], ["Y"], name="branch", then_branch=then_body, else_branch=else_body)]
    model = make_model(nodes, [f32("X", ["b", 6]), helper.make_tensor_value_info("C", TensorProto.BOOL, []),
                               f32("Z", ["b", 4])], [f32("Y", ["b", 4])], [numpy_helper.from_array(w, "W")])
    with pytest.raises(OnnxPruneError) as err:
        onnx_prune.prune(model, 0.5)
    assert str(err.value) == ("no prunable layer found: the model's 1 Gemm / MatMul node is not eligible (inside: "
                              "it is inside the then_branch body of If node branch: layers in If / Loop / Scan "
                              "bodies are not pruned, only those of the main graph)")


# ----------------------------------------------------------------------------- file sizes, as written

def identity_shared_model(n: int = 256, users: int = 3) -> tuple[onnx.ModelProto, np.ndarray]:
    """One [n, n] weight read by ``users`` MatMuls, each through an Identity of its own (as
    BERT-style exports read a reused weight)."""
    w = np.random.default_rng(23).standard_normal((n, n)).astype(np.float32)
    nodes, x = [], "X"
    for i in range(users):
        nodes += [helper.make_node("Identity", ["W"], [f"W_{i}"], name=f"id{i}"),
                  helper.make_node("MatMul", [x, f"W_{i}"], [f"h{i}"], name=f"mm{i}")]
        x = f"h{i}"
    nodes.append(helper.make_node("Identity", [x], ["Y"], name="out"))
    return make_model(nodes, [f32("X", ["b", n])], [f32("Y", ["b", n])], [numpy_helper.from_array(w, "W")]), w


def test_written_file_is_smaller_and_the_report_states_its_real_size(tmp_path: Path):
    """Before: the file grew to ~130% (dense W kept beside per-use sparse copies)."""
    from typer.testing import CliRunner

    model, w = identity_shared_model()
    source, target, report_path = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "report.json"
    onnx.save(model, str(source))
    result = CliRunner().invoke(cli_module.app, cli_module.with_default_subcommand(
        ["prune", str(source), str(target), "--ratio", "0.8", "--report-json", str(report_path), "-q"]))
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["file_size_before"] == os.path.getsize(source)
    assert report["file_size_after"] == os.path.getsize(target) < os.path.getsize(source)
    assert [l["shares"] for l in report["layers"]] == [None, "mm0", "mm0"]
    out = onnx.load(str(target))
    assert sum(t.name.endswith(".sparse_values") for t in out.graph.initializer) == 1
    assert "W" not in {t.name for t in out.graph.initializer}
    x = np.random.default_rng(24).standard_normal((2, 256)).astype(np.float32)
    wm = masked(w, 0.8)
    session = ort.InferenceSession(str(target), onnx_prune.session_options(), providers=["CPUExecutionProvider"])
    assert_close(session.run(None, {"X": x})[0], x.astype(np.float64) @ wm @ wm @ wm)


def test_excluding_one_user_of_a_shared_weight_leaves_the_others_dense_with_why():
    model, w = identity_shared_model(n=16)
    v = np.random.default_rng(25).standard_normal((16, 16)).astype(np.float32)
    model.graph.node[-1].CopyFrom(helper.make_node("MatMul", ["h2", "V"], ["Y"], name="own"))
    model.graph.initializer.append(numpy_helper.from_array(v, "V"))
    out, report = onnx_prune.prune(model, 0.8, exclude=["mm1"], fallback=False)
    assert set(sparse_nodes(out)) == {"own"} and "W" in {t.name for t in out.graph.initializer}
    reasons = {s["node"]: s["reason"] for s in report.skipped}
    assert reasons["mm1"] == "matched by --exclude"
    assert reasons["mm0"] == reasons["mm2"] == ("its weight W is also read by layer mm1, which is not selected: "
                                                "pruning it would store the weight twice")
    x = np.random.default_rng(26).standard_normal((2, 16)).astype(np.float32)
    assert_close(run(out, {"X": x})[0], x.astype(np.float64) @ w @ w @ w @ masked(v, 0.8))


def test_shared_weight_in_external_data_is_read_through_identity_and_transpose(tmp_path: Path):
    """The layer-by-layer path reads each weight from the external data file, here through the chain."""
    model, w = identity_shared_model(n=64, users=2)
    model.graph.node.insert(0, helper.make_node("Transpose", ["W"], ["Wt"], name="t"))
    model.graph.node[-1].CopyFrom(helper.make_node("MatMul", ["h1", "Wt"], ["Y"], name="mm_t"))
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    out, report = onnx_prune.prune(str(path), 0.8, fallback=False, verify=True)
    assert set(sparse_nodes(out)) == {"mm0", "mm1", "mm_t"} and report.verification.passed
    assert packed_inputs(sparse_nodes(out)["mm0"]) == packed_inputs(sparse_nodes(out)["mm1"])
    assert [l.shares for l in report.layers] == [None, "mm0", None]
    x = np.random.default_rng(27).standard_normal((2, 64)).astype(np.float32)
    wm, wtm = masked(w, 0.8), masked(w.T, 0.8)
    assert_close(run(out, {"X": x})[0], x.astype(np.float64) @ wm @ wm @ wtm)


def test_densify_writes_a_shared_weight_once():
    """Before: one dense copy per SparseGemm node reading the packed weight."""
    from onnx_prune.sparse_gemm.densify import densify_model

    model, w, feeds = fixture("torch_tied_identity")
    pruned, _ = onnx_prune.prune(model, 0.8)
    dense = densify_model(pruned)
    weights = [t for t in dense.graph.initializer if list(t.dims) == [24, 24]]
    assert len(weights) == 1
    assert [n.input[1] for n in dense.graph.node if n.op_type == "MatMul"][:2] == [weights[0].name] * 2
    fc, head = masked(w["onnx::MatMul_15"], 0.8), masked(w["onnx::MatMul_17"], 0.8)
    h = relu(w["emb.weight"][feeds["ids"]].astype(np.float64) @ fc + w["fc.bias"])
    session = ort.InferenceSession(dense.SerializeToString(), providers=["CPUExecutionProvider"])
    assert_close(session.run(None, feeds)[0], relu(h @ fc + w["fc.bias"]) @ head)
