"""onnx_prune/graph.py: subgraph walks, dead-tensor removal, unique names and opset lookup."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_prune.model.graph import (SMALL_TENSOR_ELEMENTS, NameScope, inferred_value_info, iter_nodes, keep_known_shapes,
                              node_reads, opset_version, remove_dead_tensors, subgraph_reads, weight_free_copy)


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


def reshape_mlp(ir_version: int = 8) -> onnx.ModelProto:
    """X [batch, 2, 600] -> Reshape([0, 1200]) -> MatMul(W [1200, 1000], an initializer) ->
    MatMul(V [1000, 3], a Constant node) -> Y: inference needs the small Reshape target's value,
    not the weights."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((1200, 1000)).astype(np.float32), "W")
    v = numpy_helper.from_array(rng.standard_normal((1000, 3)).astype(np.float32), "V")
    target = numpy_helper.from_array(np.array([0, 1200], np.int64), "target")
    nodes = [helper.make_node("Reshape", ["X", "target"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["h"]),
             helper.make_node("Constant", [], ["V"], value=v),
             helper.make_node("MatMul", ["h", "V"], ["Y"])]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 2, 600])]
    if ir_version < 4:
        inputs += [helper.make_tensor_value_info(t.name, TensorProto.FLOAT if t.name == "W" else TensorProto.INT64,
                                                 list(t.dims)) for t in (w, target)]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3])],
                              initializer=[target, w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=ir_version)


def dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_weight_free_copy_keeps_small_constants_and_declares_large_ones_as_inputs() -> None:
    for ir_version in (3, 8):
        model = reshape_mlp(ir_version)
        light = weight_free_copy(model)
        assert [t.name for t in light.graph.initializer] == ["target"]
        assert [n.op_type for n in light.graph.node] == ["Reshape", "MatMul", "MatMul"]
        declared = {i.name: (i.type.tensor_type.elem_type, dims(i)) for i in light.graph.input}
        assert declared == {"X": (TensorProto.FLOAT, ["batch", 2, 600]), "target": (TensorProto.INT64, [2]),
                            "W": (TensorProto.FLOAT, [1200, 1000]), "V": (TensorProto.FLOAT, [1000, 3])} \
            if ir_version < 4 else {"X": (TensorProto.FLOAT, ["batch", 2, 600]),
                                    "W": (TensorProto.FLOAT, [1200, 1000]), "V": (TensorProto.FLOAT, [1000, 3])}
        assert light.ByteSize() < 10_000 < model.ByteSize() // 100
        assert SMALL_TENSOR_ELEMENTS < 3000 and len(model.graph.initializer) == 2  # the input is untouched


def test_inferred_value_info_equals_inference_on_the_whole_model() -> None:
    model = reshape_mlp()
    full = {v.name: dims(v) for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    assert {name: dims(v) for name, v in inferred_value_info(model).items()} == full
    assert full["flat"] == ["batch", 1200] and full["h"] == ["batch", 1000]


def test_keep_known_shapes_fills_missing_shapes_only_and_invents_none() -> None:
    original = reshape_mlp()
    out = onnx.ModelProto()
    out.CopyFrom(original)
    out.graph.node[1].op_type, out.graph.node[1].domain = "Opaque", "x.y"  # no shape function: h loses its shape
    out.graph.node.append(helper.make_node("Neg", ["h"], ["new_tensor"]))  # unknown to the original
    out.graph.value_info.extend([helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["b", 1200]),
                                 helper.make_tensor_value_info("h", TensorProto.FLOAT, None)])
    keep_known_shapes(out, inferred_value_info(original))
    stated = {v.name: dims(v) for v in out.graph.value_info}
    assert stated == {"flat": ["b", 1200], "h": ["batch", 1000], "V": [1000, 3]}  # stated shapes win; Y is an output
