"""onnx_prune/graph.py: subgraph walks, dead-tensor removal, unique names and opset lookup."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_prune.graph import NameScope, iter_nodes, node_reads, opset_version, remove_dead_tensors, subgraph_reads


def if_node(name: str, then_reads: str, else_reads: str) -> onnx.NodeProto:
    """An If whose branches each read one outer tensor (the else branch one level deeper)."""
    out = helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, None)
    then_graph = helper.make_graph([helper.make_node("Identity", [then_reads], ["branch_out"], name="then_id")],
                                   "then", [], [out])
    inner = helper.make_graph([helper.make_node("Neg", [else_reads], ["branch_out"], name="inner_neg")], "inner", [], [out])
    nested = helper.make_node("If", ["cond"], ["branch_out"], name="nested_if", then_branch=inner, else_branch=inner)
    else_graph = helper.make_graph([nested], "else", [], [out])
    return helper.make_node("If", ["cond"], [f"{name}_out"], name=name, then_branch=then_graph, else_branch=else_graph)


def model_with(nodes: list[onnx.NodeProto], initializers: list[str], ir_version: int = 8) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.full(2, i, np.float32), name) for i, name in enumerate(initializers)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("x.y", 3)])
    model.ir_version = ir_version
    return model


def test_walks_and_reads_reach_nested_bodies() -> None:
    node = if_node("branch", "outer_a", "outer_b")
    graph = model_with([node], ["outer_a", "outer_b"]).graph
    names = [n.name for n in iter_nodes(graph)]  # onnx.helper stores else_branch before then_branch
    assert names == ["branch", "nested_if", "inner_neg", "inner_neg", "then_id"]
    assert subgraph_reads(graph) == {"outer_a", "outer_b", "cond", "branch_out"}
    assert node_reads(node)[0] == "cond" and {"outer_a", "outer_b"} <= set(node_reads(node))


def test_dead_tensors_go_and_tensors_read_in_subgraphs_stay() -> None:
    constant = helper.make_node("Constant", [], ["dead_const"], value=numpy_helper.from_array(np.ones(1, np.float32)))
    model = model_with([constant, if_node("branch", "outer_a", "outer_b")], ["outer_a", "outer_b", "dead", "other"])
    removed = remove_dead_tensors(model, {"outer_a", "outer_b", "dead", "dead_const"})
    assert removed == {"dead", "dead_const"}
    assert [t.name for t in model.graph.initializer] == ["outer_a", "outer_b", "other"]  # "other": not a candidate
    assert [n.name for n in model.graph.node] == ["branch"]


def test_dead_initializers_leave_the_graph_inputs_of_old_ir_versions() -> None:
    model = model_with([if_node("branch", "outer_a", "outer_a")], ["outer_a", "dead"], ir_version=3)
    model.graph.input.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("outer_a", "dead")])
    remove_dead_tensors(model, {"outer_a", "dead"})
    assert [i.name for i in model.graph.input] == ["cond", "outer_a"]


def test_unique_names_avoid_every_name_of_the_graph() -> None:
    model = model_with([helper.make_node("Relu", ["cond"], ["y"], name="w.sparse_values")], ["w", "w_1"])
    scope = NameScope.of_graph(model.graph)
    assert {"cond", "y", "w", "w_1", "w.sparse_values"} <= scope.taken
    assert [scope.unique("w"), scope.unique("w"), scope.unique("w.sparse_values"), scope.unique("new")] == \
        ["w_2", "w_3", "w.sparse_values_1", "new"]
    assert "new" in scope


def test_opset_lookup_returns_none_when_absent() -> None:
    model = model_with([helper.make_node("Relu", ["cond"], ["y"])], [])
    assert opset_version(model) == 17 and opset_version(model, "ai.onnx") == 17
    assert opset_version(model, "x.y") == 3 and opset_version(model, "missing") is None
    del model.opset_import[0]
    assert opset_version(model) is None
