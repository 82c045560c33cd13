"""Graph housekeeping, once: walking nodes into If / Loop / Scan bodies, what those bodies read,
removing dead tensors, unique names and opset lookup.

Everything edits the protobuf in place: no copy of the weights is made (a 1 GB model stays
within the memory budget of docs/deployment.md).
"""
from __future__ import annotations

from typing import Iterable, Iterator, Mapping, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

ONNX_DOMAINS = ("", "ai.onnx")


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The bodies held in ``node``'s attributes (If branches, Loop / Scan bodies)."""
    bodies: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            bodies.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            bodies.extend(attr.graphs)
    return bodies


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and, depth first after each node, of its subgraphs."""
    for node in graph.node:
        yield node
        for body in subgraphs(node):
            yield from iter_nodes(body)


def body_reads(node: onnx.NodeProto) -> set[str]:
    """The tensor names read inside ``node``'s subgraphs, at any depth (inputs and body outputs)."""
    names: set[str] = set()
    for body in subgraphs(node):
        names.update(o.name for o in body.output)
        for inner in body.node:
            names.update(inner.input)
            names |= body_reads(inner)
    names.discard("")
    return names


def node_reads(node: onnx.NodeProto) -> list[str]:
    """A node's inputs followed by the outer tensors its bodies read (empty names dropped)."""
    return [name for name in node.input if name] + sorted(body_reads(node))


def subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read by a subgraph (at any depth) of ``graph``'s nodes."""
    names: set[str] = set()
    for node in graph.node:
        names |= body_reads(node)
    return names


def read_names(graph: onnx.GraphProto) -> set[str]:
    """Tensors something reads: node inputs, graph outputs and reads inside subgraphs."""
    return {name for n in graph.node for name in n.input} | {o.name for o in graph.output} | subgraph_reads(graph)


def remove_dead_tensors(model: onnx.ModelProto, candidates: Iterable[str]) -> set[str]:
    """Remove the initializers, Constant nodes and graph inputs (IR < 4 lists initializers there)
    named in ``candidates`` that nothing reads any more; returns the names removed.

    A tensor still read (also from inside a subgraph) stays; tensors not named are untouched.
    """
    graph = model.graph
    dead = set(candidates) - read_names(graph)
    if not dead:
        return dead
    _keep(graph.node, lambda n: not (n.op_type == "Constant" and n.output and n.output[0] in dead))
    _keep(graph.initializer, lambda t: t.name not in dead)
    _keep(graph.input, lambda i: i.name not in dead)
    return dead


def remove_dead_nodes(graph: onnx.GraphProto, candidates: Iterable[str]) -> set[str]:
    """Remove the nodes named in ``candidates`` none of whose outputs anything reads, again until
    none goes (a chain Identity -> Transpose -> Cast dies from its end); returns the names removed.
    Nodes not named are untouched."""
    removed: set[str] = set()
    wanted = set(candidates)
    while True:
        read = read_names(graph)
        dead = {n.name for n in graph.node
                if n.name in wanted and n.name not in removed and not any(o in read for o in n.output if o)}
        if not dead:
            return removed
        _keep(graph.node, lambda n: n.name not in dead)
        removed |= dead


def _keep(field, wanted) -> None:
    """Delete the entries of a repeated protobuf field for which ``wanted`` is false, in place
    (index by index: the kept entries, weights included, are never copied)."""
    for i in reversed(range(len(field))):
        if not wanted(field[i]):
            del field[i]


def add_initializer(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    """A new initializer (also declared as a graph input where IR < 4 requires it)."""
    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
    if model.ir_version < 4:
        model.graph.input.append(helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape)))


class NameScope:
    """Names already taken; :meth:`unique` hands out ``stem``, ``stem_1``, ``stem_2``, … and takes it."""

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self.taken = set(taken)

    @classmethod
    def of_graph(cls, graph: onnx.GraphProto) -> "NameScope":
        """Every tensor and node name of ``graph`` (the top level: bodies have scopes of their own)."""
        names = {t.name for t in graph.initializer} | {i.name for i in graph.input} | \
                {o.name for o in graph.output} | {n.name for n in graph.node}
        for node in graph.node:
            names.update(node.input)
            names.update(node.output)
        names.discard("")
        return cls(names)

    def unique(self, stem: str) -> str:
        candidate, n = stem, 1
        while candidate in self.taken:
            candidate, n = f"{stem}_{n}", n + 1
        self.taken.add(candidate)
        return candidate

    def __contains__(self, name: str) -> bool:
        return name in self.taken


def opset_version(model: onnx.ModelProto, domain: str = "") -> Optional[int]:
    """The version ``model`` imports of ``domain`` ("" and "ai.onnx" are the same), or None."""
    domains = ONNX_DOMAINS if domain in ONNX_DOMAINS else (domain,)
    return next((int(o.version) for o in model.opset_import if o.domain in domains), None)


# ----------------------------------------------------------------------------- shapes

SMALL_TENSOR_ELEMENTS = 1024  # constants up to this size keep their values for shape inference (Reshape targets)


def inferred_value_info(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """The typed value_info onnx shape inference finds for ``model``'s intermediate tensors (those
    it states included), by name; empty when inference fails (it is a hint, never a requirement).

    Inference copies the model it is given, so it runs on :func:`weight_free_copy`: a multi-GB
    model costs the size of its graph, not of its weights."""
    light = weight_free_copy(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(light)
    except Exception:  # a model onnx cannot infer keeps what it states, nothing more
        inferred = light
    produced = {o for n in model.graph.node for o in n.output}
    large_constants = [i for i in light.graph.input if i.name in produced]  # their nodes became inputs
    return {v.name: v for v in [*inferred.graph.value_info, *large_constants] if v.type.HasField("tensor_type")}


def weight_free_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every constant larger than :data:`SMALL_TENSOR_ELEMENTS` (initializer or top-level
    Constant node) replaced by a graph input of the same type and shape: what shape inference needs,
    without the weights. Small constants keep their values (shape inference reads Reshape targets)."""
    graph = model.graph
    light = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    out = light.graph
    out.name = graph.name
    out.input.extend(graph.input)
    out.output.extend(graph.output)
    out.value_info.extend(graph.value_info)
    declared = {i.name for i in graph.input}
    for tensor in graph.initializer:
        if _elements(tensor) <= SMALL_TENSOR_ELEMENTS:
            out.initializer.append(tensor)
        elif tensor.name not in declared:
            out.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    for node in graph.node:
        value = _large_constant_value(node)
        if value is None:
            out.node.append(node)
        else:
            out.input.append(helper.make_tensor_value_info(node.output[0], value.data_type, list(value.dims)))
    return light


def _elements(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64))


def _large_constant_value(node: onnx.NodeProto) -> Optional[onnx.TensorProto]:
    """The tensor of a Constant node holding more than SMALL_TENSOR_ELEMENTS elements, else None."""
    if node.op_type != "Constant" or node.domain not in ONNX_DOMAINS or len(node.output) != 1:
        return None
    value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
    return value if value is not None and _elements(value) > SMALL_TENSOR_ELEMENTS else None


def keep_known_shapes(out: onnx.ModelProto, known: Mapping[str, onnx.ValueInfoProto]) -> None:
    """Give every tensor ``out``'s top-level nodes produce its value_info from ``known`` (what
    :func:`inferred_value_info` found on the model ``out`` was rewritten from) where ``out``
    states none with a shape (in place).

    A rewritten node (a SparseGemm) has no shape function, so without this every tensor after it
    has an element type only: netron draws no shapes and shape-dependent tools lose them. A
    tensor the original knew nothing about gets nothing: no shape is invented."""
    graph = out.graph
    stated = {v.name: i for i, v in enumerate(graph.value_info)}
    io = {v.name for v in graph.input} | {v.name for v in graph.output}
    for name in dict.fromkeys(o for n in graph.node for o in n.output if o):
        value = known.get(name)
        if name in io or value is None or not value.type.tensor_type.HasField("shape"):
            continue
        if name not in stated:
            graph.value_info.append(value)
        elif not graph.value_info[stated[name]].type.tensor_type.HasField("shape"):
            graph.value_info[stated[name]].CopyFrom(value)
