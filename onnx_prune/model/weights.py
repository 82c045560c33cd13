"""Where a layer's weight comes from: a stored constant, or the constants a chain of standard ops
computes it from (``Identity``, a 2-D ``Transpose``, ``Cast``, ``DequantizeLinear``, ``Mul`` by a
scale, ...), and which layers read the same weight.

Exporters reach one weight from several nodes (``Identity(W)`` per use, ``Transpose(W)`` for a
tied projection) and store quantized weights as ``int8 * scale``. Pruning each use on its own
would keep one mask per use and leave the dense weight in the file beside the sparse copies: every
layer that reads the same matrix is grouped by :attr:`WeightSource.key`, pruned once and packed
once (onnx_prune.model.shared_weights).

Identity and Transpose are followed without computing anything (the stored tensor is read, in the
other orientation after a Transpose). Any other chain is evaluated on its own (a few small ops, not
a graph-wide constant folding) with onnxruntime, else onnx.reference, when the layer reads it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import OnnxPruneError
from .graph import ONNX_DOMAINS, SMALL_TENSOR_ELEMENTS
from .modelio import read_external_array

MAX_CHAIN_NODES = 16  # producer chains longer than this are not folded (a weight is a few ops from its constants)
# ops whose output is not a function of their inputs: never folded
NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


@dataclass
class WeightSource:
    """The tensor a Gemm / MatMul reads as B, traced back to constants.

    ``dims`` / ``data_type``: of the tensor the node reads. ``key`` names the matrix: two nodes with
    the same key (and orientation, see :meth:`matrix_key`) read the same values. ``roots``: the
    stored constants it is computed from; ``chain``: the nodes in between (graph order)."""

    key: str
    dims: tuple[int, ...]
    data_type: int
    transposed: bool = False               # the node reads the transpose of the stored ``proto``
    proto: Optional[onnx.TensorProto] = None  # the stored tensor, when only Identity / Transpose lie between
    compute: Optional[Callable[[], np.ndarray]] = field(default=None, repr=False)  # a folded chain's value
    chain: list[str] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)

    @property
    def folded(self) -> bool:
        return self.compute is not None

    def matrix_key(self, trans_b: bool) -> tuple[str, bool]:
        """Identifies the [K, N] matrix a layer multiplies by: Gemm(transB=1) on W and MatMul on
        Transpose(W) share it."""
        return self.key, trans_b != self.transposed


def resolve(index, name: str) -> Optional[WeightSource]:
    """The source of tensor ``name`` in ``index``'s graph (a GraphIndex), or None when it is not
    computed from constants alone (or the chain cannot be folded)."""
    proto = index.constant_proto(name)
    if proto is not None:
        return WeightSource(key=name, dims=tuple(int(d) for d in proto.dims), data_type=proto.data_type,
                            proto=proto, roots=[name])
    node = index.producers.get(name)
    if node is None or node.domain not in ONNX_DOMAINS:
        return None
    if node.op_type == "Identity" and len(node.input) == 1:
        return _through(index, node, transpose=False)
    if node.op_type == "Transpose" and len(node.input) == 1:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        source = _through(index, node, transpose=True)
        if source is not None and len(source.dims) == 2 and perm in (None, [], [1, 0]):
            return source
    return _folded(index, name)


def _through(index, node: onnx.NodeProto, *, transpose: bool) -> Optional[WeightSource]:
    """The source of ``node``'s input, read through ``node`` (an Identity, or a 2-D Transpose)."""
    inner = resolve(index, node.input[0])
    if inner is None:
        return None
    dims = tuple(reversed(inner.dims)) if transpose else inner.dims
    return WeightSource(key=inner.key, dims=dims, data_type=inner.data_type, transposed=inner.transposed != transpose,
                        proto=inner.proto, compute=inner.compute, chain=[*inner.chain, node.name],
                        roots=list(inner.roots))


def _folded(index, name: str) -> Optional[WeightSource]:
    """``name`` as computed from the constants its producer chain reads. Its type and shape come
    from onnx shape inference on the chain, and the values are computed when the layer reads them
    (one layer's weight in memory at a time, as for stored weights); a chain shape inference cannot
    type is computed now."""
    chain, roots = _producer_chain(index, name)
    if chain is None:
        return None
    header = _inferred_header(index, chain, roots, name)
    if header is None:
        value = _evaluate(index, chain, roots, name)
        if value is None:
            return None
        header, compute = (tuple(value.shape), helper.np_dtype_to_tensor_dtype(value.dtype)), lambda: value
    else:
        def compute() -> np.ndarray:
            value = _evaluate(index, chain, roots, name)
            if value is None:
                raise OnnxPruneError(f"cannot compute the weight {name} from its constants (nodes "
                                     f"{', '.join(n.name for n in chain)}): onnxruntime and onnx.reference both fail")
            return value
    return WeightSource(key=name, dims=header[0], data_type=header[1], compute=compute,
                        chain=[n.name for n in chain], roots=sorted(roots))


def _inferred_header(index, chain, roots, name: str) -> Optional[tuple[tuple[int, ...], int]]:
    """(dims, element type) of ``name`` by onnx shape inference on the chain, its large constants
    given as typed inputs (no data copied), or None when inference cannot say."""
    inputs, initializers = [], []
    for root in sorted(roots):
        proto = index.constant_proto(root)
        if int(np.prod(proto.dims, dtype=np.int64)) > SMALL_TENSOR_ELEMENTS:
            inputs.append(helper.make_tensor_value_info(root, proto.data_type, list(proto.dims)))
        else:
            initializers.append(numpy_helper.from_array(index.constant(root), root))
    graph = helper.make_graph(list(chain), "weight_chain", inputs, [helper.make_value_info(name, onnx.TypeProto())],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=list(index.opset_import))
    model.ir_version = index.ir_version or model.ir_version
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception:  # noqa: BLE001 - inference is a shortcut, never a requirement
        return None
    tensor = inferred.graph.output[0].type.tensor_type
    if not tensor.elem_type or not tensor.HasField("shape") or not all(d.HasField("dim_value") for d in tensor.shape.dim):
        return None
    return tuple(int(d.dim_value) for d in tensor.shape.dim), int(tensor.elem_type)


def _producer_chain(index, name: str):
    """(nodes in graph order, constant names) computing ``name`` from constants only, or (None, None)."""
    nodes: dict[str, onnx.NodeProto] = {}
    roots: set[str] = set()
    stack = [name]
    while stack:
        tensor = stack.pop()
        if not tensor or tensor in roots:
            continue
        if index.constant_proto(tensor) is not None:
            roots.add(tensor)
            continue
        node = index.producers.get(tensor)
        if node is None or not _foldable(node):
            return None, None
        if node.name not in nodes:
            nodes[node.name] = node
            if len(nodes) > MAX_CHAIN_NODES:
                return None, None
            stack.extend(node.input)
    order = {n.name: i for i, n in enumerate(index.graph.node)}
    return sorted(nodes.values(), key=lambda n: order[n.name]), roots


def _foldable(node: onnx.NodeProto) -> bool:
    return (node.domain in ONNX_DOMAINS and node.op_type not in NOT_FOLDABLE and node.op_type != "Constant"
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute))


def _evaluate(index, chain, roots, name: str) -> Optional[np.ndarray]:
    """Run ``chain`` alone on its constants: with onnxruntime (it implements every opset version
    of the standard ops; onnx.reference lacks some older ones, e.g. DequantizeLinear before 19),
    else with onnx.reference.ReferenceEvaluator. None when neither can: the weight is then simply
    not a constant."""
    graph = helper.make_graph(list(chain), "weight_chain", [], [helper.make_value_info(name, onnx.TypeProto())],
                              initializer=[numpy_helper.from_array(index.constant(r), r) for r in sorted(roots)])
    model = helper.make_model(graph, opset_imports=list(index.opset_import))
    model.ir_version = index.ir_version or model.ir_version
    for run in (_run_onnxruntime, _run_reference):
        try:
            return np.asarray(run(model))
        except Exception:  # noqa: BLE001 - any failure means "not foldable here", never a crash
            continue
    return None


def _run_onnxruntime(model: onnx.ModelProto) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {})[0]


def _run_reference(model: onnx.ModelProto) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, {})[0]


def stored_bytes(index, names) -> int:
    """Bytes the constants ``names`` take in the model (their raw data size)."""
    total = 0
    for name in names:
        proto = index.constant_proto(name)
        if proto is not None:
            elements = int(np.prod(proto.dims, dtype=np.int64))
            total += elements * np.dtype(helper.tensor_dtype_to_np_dtype(proto.data_type)).itemsize
    return total


def reader(source: WeightSource, trans_b: bool, folder: Optional[str]) -> Callable[[], np.ndarray]:
    """Reads the layer's W [K, N] float32 from ``source`` when asked (``trans_b``: the node reads W as [N, K])."""
    transpose = trans_b != source.transposed
    if source.folded:
        compute = source.compute

        def computed() -> np.ndarray:
            value = compute()
            return np.ascontiguousarray(value.T if transpose else value, dtype=np.float32)
        return computed
    return _weight_reader(source.proto, transpose, folder)


def _weight_reader(proto: onnx.TensorProto, trans_b: bool, folder: Optional[str]) -> Callable[[], np.ndarray]:
    """Reads W [K, N] when asked: from the model's external data file when the tensor is still
    there (a finished layer then costs nothing), else from the proto."""
    def read() -> np.ndarray:
        if proto.data_location == onnx.TensorProto.EXTERNAL and folder is not None:
            return read_external_array(proto, folder, transpose=trans_b)
        w = numpy_helper.to_array(proto)
        return np.ascontiguousarray(w.T if trans_b else w, dtype=np.float32)
    return read
