"""Finding the layers onnx-prune can prune (the "eligible" patterns of the README).

A layer is a Gemm whose B is a constant, or a MatMul whose B is a constant 2-D tensor, together with
what can be fused into one SparseGemm: a following Add of a constant bias (MatMul) and a following
Relu. Everything else in the graph is left exactly as it is.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import OnnxPruneError
from .graph import ONNX_DOMAINS, NameScope, subgraph_reads
from .modelio import read_external_array
from . import weights as weight_sources


@dataclass
class Layer:
    """One prunable layer; ``weight`` is W as ``[K, N]`` (Gemm's B transposed when transB = 1),
    read from the model when first asked for: finding layers copies no weight, and a pruner that
    goes layer by layer holds one layer's weights at a time (``release``)."""

    node: str                 # name of the Gemm / MatMul node
    op: str                   # "Gemm" or "MatMul"
    weight_name: str          # the weight tensor (initializer or Constant output) in the input model
    shape: tuple[int, int]    # [K, N]
    trans_b: bool             # the weight is stored as [N, K] in the input model
    input_name: str           # A, the activations feeding the layer
    output_name: str          # output of the last fused node
    trans_a: bool = False
    alpha: float = 1.0
    beta: float = 1.0
    bias_name: Optional[str] = None      # C (Gemm) or the fused Add's constant
    bias: Optional[np.ndarray] = None    # its value when it is a constant (a Gemm's C may be computed)
    add_node: Optional[str] = None       # the Add fused into a MatMul layer
    fused_nodes: list[str] = field(default_factory=list)  # the nodes one SparseGemm replaces, in order
    activation: str = ""                 # "relu" when a Relu is fused
    read_weight: Optional[Callable[[], np.ndarray]] = field(default=None, repr=False, compare=False)
    # where W comes from (model.weights): layers with the same weight_key multiply by the same matrix
    weight_key: tuple = ()
    weight_chain: list[str] = field(default_factory=list)  # Identity / Transpose / folded nodes before the node
    weight_roots: list[str] = field(default_factory=list)  # the stored constants W is read or computed from
    source_bytes: int = 0                # bytes those constants take in the input model
    dense_reason: str = ""               # why the layer was kept dense, when it was
    _weight: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    @property
    def weight(self) -> np.ndarray:
        """W [K, N] float32, C-contiguous."""
        if self._weight is None:
            if self.read_weight is None:
                raise OnnxPruneError(f"internal error: the weight of layer {self.node} was released")
            self._weight = self.read_weight()
        return self._weight

    def release(self) -> None:
        """Forget the weight and how to read it (the model's tensor may be gone after a rewrite)."""
        self._weight = None
        self.read_weight = None

    @property
    def K(self) -> int:
        return int(self.shape[0])

    @property
    def N(self) -> int:
        return int(self.shape[1])

    @property
    def size(self) -> int:
        return self.K * self.N


@dataclass
class Skipped:
    node: str
    reason: str


class GraphIndex:
    """Lookups over one graph: constants by name, consumers of each tensor, nodes by name."""

    def __init__(self, model: onnx.ModelProto, folder: Optional[str] = None) -> None:
        graph = model.graph
        self.folder = folder  # where external tensors not yet loaded live
        name_nodes(graph)
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.constant_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
        self.opset_import = list(model.opset_import)
        self.ir_version = int(model.ir_version)
        self.producers = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        # tensors read from inside If / Loop / Scan bodies count as outputs: never fused away
        self.graph_outputs = {o.name for o in graph.output} | subgraph_reads(graph)
        self.nodes = {n.name: n for n in graph.node}
        self.ranks = {v.name: len(v.type.tensor_type.shape.dim)
                      for v in [*graph.input, *graph.value_info, *graph.output]
                      if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}

    def constant_proto(self, name: str) -> Optional[onnx.TensorProto]:
        if name in self.initializers:
            return self.initializers[name]
        node = self.constant_nodes.get(name)
        if node is not None:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    return attr.t
        return None

    def constant(self, name: str) -> Optional[np.ndarray]:
        proto = self.constant_proto(name)
        if proto is None:
            return None
        if proto.data_location == onnx.TensorProto.EXTERNAL and self.folder is not None:
            return read_external_array(proto, self.folder)
        return numpy_helper.to_array(proto)

    def sole_consumer(self, name: str) -> Optional[onnx.NodeProto]:
        """The one node reading ``name``, when ``name`` is not also a graph output."""
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.graph_outputs:
            return users[0]
        return None


def name_nodes(graph: onnx.GraphProto) -> None:
    """Give unnamed nodes stable unique names, and repeated names a suffix: the report, the
    selection patterns and the rewrite all address nodes by name."""
    names = NameScope(n.name for n in graph.node if n.name)
    seen: set[str] = set()
    for index, node in enumerate(graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        node.name = names.unique(node.name or f"{node.op_type}_{index}")
        seen.add(node.name)


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _is_onnx_op(node: onnx.NodeProto, op_type: str) -> bool:
    return node.op_type == op_type and node.domain in ONNX_DOMAINS


def _weight_problem(index: "GraphIndex", name: str, w: Optional[weight_sources.WeightSource]) -> Optional[str]:
    """Why a weight cannot be pruned, read from its header (no data copied unless a chain was folded)."""
    if w is None:
        return _not_constant(index, name)
    if len(w.dims) != 2:
        return f"its weight has shape {list(w.dims)}, not 2-D"
    if w.data_type != onnx.TensorProto.FLOAT:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(w.data_type) if w.data_type else "of unknown type"
        return f"its weight is {dtype}, only float32 weights are pruned"
    if w.dims[0] * w.dims[1] == 0:
        return "its weight is empty"
    return None


def _not_constant(index: "GraphIndex", name: str) -> str:
    """Says what the weight is computed from: a graph input, or constants through nodes not folded
    (no node names: the same reason for many layers reads as one line)."""
    if index.producers.get(name) is None:
        return f"its weight is not a constant: it is graph input {name}"
    source = _upstream_input(index, name)
    if source is not None:
        return f"its weight is not a constant: it is computed from graph input {source}"
    return (f"its weight is not a constant: it is computed from constants through more than "
            f"{weight_sources.MAX_CHAIN_NODES} nodes, or through an op onnx-prune does not fold")


def _upstream_input(index: "GraphIndex", name: str) -> Optional[str]:
    """A graph input (not an initializer) tensor ``name`` is computed from, or None."""
    seen, stack = set(), [name]
    while stack:
        tensor = stack.pop()
        if not tensor or tensor in seen or index.constant_proto(tensor) is not None:
            continue
        seen.add(tensor)
        node = index.producers.get(tensor)
        if node is None:
            return tensor
        stack.extend(node.input)
    return None


def find_layers(model: onnx.ModelProto, folder: Optional[str] = None) -> tuple[list[Layer], list[Skipped]]:
    """Every eligible layer in graph order, and the Gemm/MatMul nodes left alone with the reason;
    ``folder``: where the tensors of a model loaded without its external data live."""
    index = GraphIndex(model, folder)
    layers, skipped = [], []
    for node in model.graph.node:
        if _is_onnx_op(node, "Gemm"):
            found = _gemm_layer(index, node)
        elif _is_onnx_op(node, "MatMul"):
            found = _matmul_layer(index, node)
        else:
            skipped.extend(_layers_in_bodies(node))
            continue
        (layers if isinstance(found, Layer) else skipped).append(found)
    kept, shared_elsewhere = _weights_read_only_by_layers(index, layers)
    return kept, [*skipped, *shared_elsewhere]


def _layers_in_bodies(node: onnx.NodeProto, where: str = "") -> list[Skipped]:
    """Every Gemm / MatMul inside ``node``'s If / Loop / Scan bodies, at any depth, with why it is
    left alone: the rewrite, the verification and the calibration capture work on the main graph."""
    found = []
    for attr in node.attribute:
        bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for body in bodies:
            place = f"{where}the {attr.name} body of {node.op_type} node {node.name}"
            for inner in body.node:
                if _is_onnx_op(inner, "Gemm") or _is_onnx_op(inner, "MatMul"):
                    found.append(Skipped(inner.name or inner.op_type,
                                         f"it is inside {place}: layers in If / Loop / Scan bodies are not pruned, "
                                         "only those of the main graph"))
                found.extend(_layers_in_bodies(inner, f"{place}, "))
    return found


def _weights_read_only_by_layers(index: GraphIndex, layers: list[Layer]) -> tuple[list[Layer], list[Skipped]]:
    """The layers whose weight's stored constants nothing else reads, and the others (skipped, with
    the node that reads it): pruning those would keep the dense weight beside the sparse one and
    make the file larger. Small constants (a scale, a zero point) may be shared freely. Layers
    reading the stored weight in the other orientation (Gemm transB=1 and MatMul on one W) are
    pruned too, each orientation packed once."""
    groups: dict[str, list[Layer]] = {}
    for layer in layers:
        groups.setdefault(layer.weight_key[0], []).append(layer)
    blocked: dict[str, str] = {}
    for group in groups.values():
        allowed = {n for l in group for n in (*l.weight_chain, l.fused_nodes[0])}
        for tensor in _weight_tensors(index, group[0]):
            other = next((n for n in index.consumers.get(tensor, []) if n.name not in allowed), None)
            if other is not None or tensor in index.graph_outputs:
                what = f"node {other.name} ({other.op_type})" if other is not None else "a graph output or subgraph"
                for l in group:
                    blocked[l.node] = (f"its weight {tensor} is also read by {what}, which stays dense: pruning it "
                                       "would store the weight twice")
                break
    return ([l for l in layers if l.node not in blocked],
            [Skipped(l.node, blocked[l.node]) for l in layers if l.node in blocked])


def _weight_tensors(index: GraphIndex, layer: Layer) -> list[str]:
    """The stored constants holding the weight (at least as many values as it has) and the tensors
    the chain computes from them: what must have no other reader."""
    big = [r for r in layer.weight_roots if weight_sources.stored_bytes(index, [r]) and _elements(index, r) >= layer.size]
    return big + [o for n in layer.weight_chain for o in index.nodes[n].output if o]


def _elements(index: GraphIndex, name: str) -> int:
    proto = index.constant_proto(name)
    return int(np.prod(proto.dims, dtype=np.int64)) if proto is not None else 0


def _gemm_layer(index: GraphIndex, node: onnx.NodeProto):
    if len(node.input) < 2:
        return Skipped(node.name, f"it has {len(node.input)} inputs, not 2 or 3")
    w = weight_sources.resolve(index, node.input[1])
    problem = _weight_problem(index, node.input[1], w)
    if problem:
        return Skipped(node.name, problem)
    trans_b = bool(_attr(node, "transB", 0))
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    rows, cols = w.dims
    layer = Layer(node=node.name, op="Gemm", weight_name=node.input[1], shape=(cols, rows) if trans_b else (rows, cols),
                  read_weight=weight_sources.reader(w, trans_b, index.folder), trans_b=trans_b,
                  **_source_fields(index, w, trans_b),
                  input_name=node.input[0], output_name=node.output[0],
                  trans_a=bool(_attr(node, "transA", 0)), alpha=float(_attr(node, "alpha", 1.0)),
                  beta=float(_attr(node, "beta", 1.0)), bias_name=bias_name,
                  bias=index.constant(bias_name) if bias_name else None, fused_nodes=[node.name])
    _fuse_relu(index, layer)
    return layer


def _matmul_layer(index: GraphIndex, node: onnx.NodeProto):
    if len(node.input) != 2:
        return Skipped(node.name, f"it has {len(node.input)} inputs, not 2")
    w = weight_sources.resolve(index, node.input[1])
    if index.constant_proto(node.input[0]) is not None and w is None:
        return Skipped(node.name, "its constant operand is A, not the weight B")
    problem = _weight_problem(index, node.input[1], w)
    if problem:
        return Skipped(node.name, problem)
    layer = Layer(node=node.name, op="MatMul", weight_name=node.input[1], shape=w.dims,
                  read_weight=weight_sources.reader(w, False, index.folder), trans_b=False,
                  input_name=node.input[0], output_name=node.output[0], fused_nodes=[node.name],
                  **_source_fields(index, w, False))
    _fuse_bias_add(index, layer)
    _fuse_relu(index, layer)
    return layer


def _source_fields(index: GraphIndex, w: weight_sources.WeightSource, trans_b: bool) -> dict:
    """The Layer fields that say where its weight comes from."""
    return dict(weight_key=w.matrix_key(trans_b), weight_chain=list(w.chain), weight_roots=list(w.roots),
                source_bytes=weight_sources.stored_bytes(index, w.roots))


def _fuse_bias_add(index: GraphIndex, layer: Layer) -> None:
    """MatMul → Add(constant broadcastable as [N]) becomes one layer with C = the bias."""
    add = index.sole_consumer(layer.output_name)
    if add is None or not _is_onnx_op(add, "Add") or len(add.input) != 2:
        return
    other = add.input[1] if add.input[0] == layer.output_name else add.input[0]
    bias = index.constant(other)
    if bias is None or bias.dtype != np.float32:
        return
    if bias.size not in (1, layer.N) or any(d != 1 for d in bias.shape[:-1]):
        return
    if bias.ndim > 0 and bias.shape[-1] not in (1, layer.N):
        return
    if bias.ndim > 1 and index.ranks.get(layer.input_name, 0) < bias.ndim:
        return  # a bias of higher (or unknown) rank than the product would change the output's rank
    layer.bias_name = other
    layer.bias = bias
    layer.add_node = add.name
    layer.output_name = add.output[0]
    layer.fused_nodes.append(add.name)


def _fuse_relu(index: GraphIndex, layer: Layer) -> None:
    relu = index.sole_consumer(layer.output_name)
    if relu is not None and _is_onnx_op(relu, "Relu"):
        layer.activation = "relu"
        layer.output_name = relu.output[0]
        layer.fused_nodes.append(relu.name)


# ---------------------------------------------------------------------------- selection

def matches(layer: Layer, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(layer.node, p) or fnmatch.fnmatchcase(layer.weight_name, p) for p in patterns)


def select_layers(layers: Sequence[Layer], *, include: Sequence[str] = (), exclude: Sequence[str] = (),
                  min_params: int = 0) -> tuple[list[Layer], list[Skipped]]:
    """Apply --include / --exclude (glob patterns on node or weight names) and --min-params."""
    chosen, left = [], []
    for layer in layers:
        if include and not matches(layer, include):
            left.append(Skipped(layer.node, "not matched by --include"))
        elif exclude and matches(layer, exclude):
            left.append(Skipped(layer.node, "matched by --exclude"))
        elif layer.size < min_params:
            left.append(Skipped(layer.node, f"{layer.size} weights < --min-params {min_params}"))
        else:
            chosen.append(layer)
    return chosen, left


def resolve_layer_ratios(layers: Sequence[Layer], layer_ratios: dict[str, float]) -> dict[str, float]:
    """Map ``--layer-ratio NAME=R`` (NAME: node or weight name, or a glob) to node names."""
    resolved = {}
    for name, ratio in layer_ratios.items():
        hits = [l for l in layers if matches(l, [name])]
        if not hits:
            known = ", ".join(l.node for l in layers) or "none"
            raise OnnxPruneError(f"--layer-ratio {name}: no selected layer has that node or weight name "
                                 f"(selected layers: {known})")
        for layer in hits:
            resolved[layer.node] = ratio
    return resolved
