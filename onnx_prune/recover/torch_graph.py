"""An ONNX graph as a torch module: one torch call per ONNX node, run in the graph's own order.

Why our own converter (docs/recover.md): the ops recovery needs (MLPs, transformer encoders) are a
few dozen plain torch functions, the module must let recovery swap a node's weight input for a
trainable tensor and add a bias delta to a node's output, and the one third-party converter on PyPI
requires torchvision, which pulls another torch build. Shapes are whatever the inputs bring: the
graph runs eagerly, so shape subgraphs (Shape -> Gather -> Concat -> Reshape) compute on int64
tensors like any other value.

An op outside ``OPS`` (or any node with a subgraph) makes ``unsupported_ops`` name it; recovery
checks that before doing any work.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from ..model.graph import ONNX_DOMAINS, opset_version

Tensor = torch.Tensor
Op = Callable[[Sequence[Optional[Tensor]], dict, int], Sequence[Tensor]]

# ONNX element type -> torch dtype, for Cast and ConstantOfShape
_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT16: torch.int16, onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.BOOL: torch.bool,
}


def _axes(inputs: Sequence[Optional[Tensor]], attrs: dict, index: int) -> Optional[list[int]]:
    """Axes from the attribute (older opsets) or from input ``index`` (newer ones)."""
    if "axes" in attrs:
        return list(attrs["axes"])
    if len(inputs) > index and inputs[index] is not None:
        return [int(a) for a in inputs[index].reshape(-1).tolist()]
    return None


def _gemm(inputs, attrs, opset):
    a, b = inputs[0], inputs[1]
    if attrs.get("transA", 0):
        a = a.t()
    if attrs.get("transB", 0):
        b = b.t()
    y = attrs.get("alpha", 1.0) * (a @ b)
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + attrs.get("beta", 1.0) * inputs[2]
    return [y]


def _softmax_like(fn: Callable[..., Tensor]) -> Op:
    def run(inputs, attrs, opset):
        x = inputs[0]
        axis = attrs.get("axis", -1 if opset >= 13 else 1)
        if opset >= 13:
            return [fn(x, dim=axis)]
        axis = axis % x.dim()  # before opset 13: softmax over the input flattened to 2-D at axis
        flat = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
        return [fn(flat, dim=1).reshape(x.shape)]
    return run


def _layer_norm(inputs, attrs, opset):
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    axis = attrs.get("axis", -1) % x.dim()
    return [F.layer_norm(x, x.shape[axis:], scale, bias, attrs.get("epsilon", 1e-5))]


def _gelu(inputs, attrs, opset):
    approximate = attrs.get("approximate", b"none")
    return [F.gelu(inputs[0], approximate=approximate.decode() if isinstance(approximate, bytes) else approximate)]


def _reshape(inputs, attrs, opset):
    x, shape = inputs[0], [int(d) for d in inputs[1].tolist()]
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


def _transpose(inputs, attrs, opset):
    x = inputs[0]
    perm = attrs.get("perm", list(range(x.dim() - 1, -1, -1)))
    return [x.permute(*perm)]


def _flatten(inputs, attrs, opset):
    x = inputs[0]
    axis = attrs.get("axis", 1) % (x.dim() + 1) if x.dim() else 0
    return [x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)]


def _gather(inputs, attrs, opset):
    x, index = inputs[0], inputs[1].long()
    axis = attrs.get("axis", 0) % x.dim()
    index = torch.where(index < 0, index + x.shape[axis], index)
    out = torch.index_select(x, axis, index.reshape(-1))
    return [out.reshape((*x.shape[:axis], *index.shape, *x.shape[axis + 1:]))]  # a tuple: () for a scalar


def _unsqueeze(inputs, attrs, opset):
    x, axes = inputs[0], _axes(inputs, attrs, 1)
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return [x]


def _squeeze(inputs, attrs, opset):
    x, axes = inputs[0], _axes(inputs, attrs, 1)
    if axes is None:
        return [x.squeeze()]
    for a in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return [x]


def _concat(inputs, attrs, opset):
    return [torch.cat([t for t in inputs if t is not None], dim=attrs["axis"])]


def _slice(inputs, attrs, opset):
    x = inputs[0]
    if opset < 10:
        starts, ends = attrs["starts"], attrs["ends"]
        axes, steps = attrs.get("axes", list(range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = inputs[1].tolist(), inputs[2].tolist()
        axes = _axes(inputs, {}, 3) or list(range(len(starts)))
        steps = inputs[4].tolist() if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    flips = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= x.dim()
        size = x.shape[axis]
        if step > 0:
            lo, hi = _clamp(start, size, 0, size), _clamp(end, size, 0, size)
            index[axis] = slice(lo, max(lo, hi), step)
        else:  # negative step: take the range forward, then flip it
            hi, lo = _clamp(start, size, -1, size - 1), _clamp(end, size, -1, size - 1)
            index[axis] = slice(lo + 1, max(lo + 1, hi + 1))
            flips.append((axis, -step))
    y = x[tuple(index)]
    for axis, step in flips:
        y = y.flip(axis)[(slice(None),) * axis + (slice(None, None, step),)]
    return [y]


def _clamp(value: int, size: int, low: int, high: int) -> int:
    value = value + size if value < 0 else value
    return max(low, min(high, value))


def _split(inputs, attrs, opset, count: int):
    x = inputs[0]
    axis = attrs.get("axis", 0)
    sizes = attrs.get("split")
    if sizes is None and len(inputs) > 1 and inputs[1] is not None:
        sizes = inputs[1].tolist()
    if sizes is None:
        sizes = [math.ceil(x.shape[axis] / count)] * count
        sizes[-1] = x.shape[axis] - sum(sizes[:-1])
    return list(torch.split(x, list(sizes), dim=axis))


def _reduce(fn: Callable[..., Tensor]) -> Op:
    def run(inputs, attrs, opset):
        x, axes = inputs[0], _axes(inputs, attrs, 1)
        keep = bool(attrs.get("keepdims", 1))
        if axes is None or not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        return [fn(x, dim=[a % x.dim() for a in axes], keepdim=keep)]
    return run


def _clip(inputs, attrs, opset):
    x = inputs[0]
    low = attrs.get("min") if opset < 11 else (inputs[1] if len(inputs) > 1 else None)
    high = attrs.get("max") if opset < 11 else (inputs[2] if len(inputs) > 2 else None)
    return [torch.clamp(x, min=low, max=high)]


def _constant(inputs, attrs, opset):
    if "value" in attrs:
        return [torch.from_numpy(numpy_helper.to_array(attrs["value"]).copy())]
    for key, dtype in (("value_float", torch.float32), ("value_int", torch.int64)):
        if key in attrs:
            return [torch.tensor(attrs[key], dtype=dtype)]
    for key, dtype in (("value_floats", torch.float32), ("value_ints", torch.int64)):
        if key in attrs:
            return [torch.tensor(list(attrs[key]), dtype=dtype)]
    raise NotImplementedError("Constant without a tensor, float or int value")


def _constant_of_shape(inputs, attrs, opset):
    shape = [int(d) for d in inputs[0].tolist()]
    value = torch.from_numpy(numpy_helper.to_array(attrs["value"]).copy()) if "value" in attrs else torch.zeros(1)
    return [torch.full(shape, value.reshape(-1)[0].item(), dtype=value.dtype)]


def _cast(inputs, attrs, opset):
    return [inputs[0].to(_DTYPES[attrs["to"]])]


def _expand(inputs, attrs, opset):
    x, shape = inputs[0], [int(d) for d in inputs[1].tolist()]
    return [x * torch.ones(shape, dtype=x.dtype)]  # ONNX Expand broadcasts both ways


def _range(inputs, attrs, opset):
    return [torch.arange(inputs[0].item(), inputs[1].item(), inputs[2].item(), dtype=inputs[0].dtype)]


def _elementwise(fn: Callable[..., Tensor]) -> Op:
    return lambda inputs, attrs, opset: [fn(*inputs)]


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> Op:
    def run(inputs, attrs, opset):
        y = inputs[0]
        for t in inputs[1:]:
            y = fn(y, t)
        return [y]
    return run


def _div(a: Tensor, b: Tensor) -> Tensor:
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")  # ONNX integer Div truncates
    return a / b


OPS: dict[str, Op] = {
    "Gemm": _gemm,
    "MatMul": _elementwise(torch.matmul),
    "Add": _elementwise(torch.add), "Sub": _elementwise(torch.sub), "Mul": _elementwise(torch.mul),
    "Div": _elementwise(_div), "Pow": _elementwise(torch.pow),
    "Sqrt": _elementwise(torch.sqrt), "Exp": _elementwise(torch.exp), "Log": _elementwise(torch.log),
    "Neg": _elementwise(torch.neg), "Abs": _elementwise(torch.abs), "Reciprocal": _elementwise(torch.reciprocal),
    "Erf": _elementwise(torch.erf), "Tanh": _elementwise(torch.tanh), "Sigmoid": _elementwise(torch.sigmoid),
    "Relu": _elementwise(torch.relu), "Gelu": _gelu,
    "LeakyRelu": lambda i, a, o: [F.leaky_relu(i[0], a.get("alpha", 0.01))],
    "Softmax": _softmax_like(torch.softmax), "LogSoftmax": _softmax_like(torch.log_softmax),
    "LayerNormalization": _layer_norm,
    "ReduceMean": _reduce(torch.mean), "ReduceSum": _reduce(torch.sum),
    "ReduceMax": _reduce(lambda x, dim, keepdim: torch.amax(x, dim=dim, keepdim=keepdim)),
    "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum), "Sum": _variadic(torch.add),
    "Clip": _clip,
    "Reshape": _reshape, "Transpose": _transpose, "Flatten": _flatten,
    "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Concat": _concat, "Slice": _slice,
    "Gather": _gather, "Expand": _expand, "Where": _elementwise(torch.where),
    "Equal": _elementwise(torch.eq), "Less": _elementwise(torch.lt), "Greater": _elementwise(torch.gt),
    "LessOrEqual": _elementwise(torch.le), "GreaterOrEqual": _elementwise(torch.ge),
    "Not": _elementwise(torch.logical_not), "And": _elementwise(torch.logical_and),
    "Or": _elementwise(torch.logical_or), "IsNaN": _elementwise(torch.isnan),
    "Shape": lambda i, a, o: [torch.tensor(i[0].shape[a.get("start", 0):a.get("end", None)], dtype=torch.int64)],
    "Cast": _cast, "Constant": _constant, "ConstantOfShape": _constant_of_shape, "Range": _range,
    "Identity": lambda i, a, o: [i[0]],
    "Split": lambda i, a, o: _split(i, a, o, 2),  # TorchGraph.forward passes the node's output count
    "Dropout": lambda i, a, o: [i[0], torch.ones_like(i[0], dtype=torch.bool)],  # inference: identity
}


def unsupported_ops(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(op type, node name) of each node this converter cannot run, in graph order."""
    found = []
    for node in model.graph.node:
        known = node.domain in ONNX_DOMAINS and node.op_type in OPS
        has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if not known or has_subgraph:
            op = node.op_type if node.domain in ONNX_DOMAINS else f"{node.domain}.{node.op_type}"
            found.append((op, node.name))
    return found


class TorchGraph(torch.nn.Module):
    """``model``'s graph as a torch module. ``replace_inputs`` maps (node name, input index) to a
    tensor that node reads instead (a trainable weight); ``add_to_outputs`` maps a tensor name to a
    tensor added to it where it is produced (a trainable bias delta); ``extra_outputs``: inner
    tensors returned after the graph outputs. Constants are frozen buffers."""

    def __init__(self, model: onnx.ModelProto, replace_inputs: Optional[Mapping[tuple[str, int], Tensor]] = None,
                 add_to_outputs: Optional[Mapping[str, Tensor]] = None, extra_outputs: Sequence[str] = ()) -> None:
        super().__init__()
        self.opset = opset_version(model) or 1
        self.nodes = [(n.name, n.op_type, list(n.input), list(n.output), _attributes(n)) for n in model.graph.node]
        self.constants = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
        produced = {o for n in model.graph.node for o in n.output} | set(self.constants)
        self.input_names = [i.name for i in model.graph.input if i.name not in produced]
        self.output_names = [o.name for o in model.graph.output] + [t for t in extra_outputs]
        self.replace_inputs = dict(replace_inputs or {})
        self.add_to_outputs = dict(add_to_outputs or {})
        self._last_use = _last_uses(self.nodes, self.output_names)

    def forward(self, feeds: Mapping[str, Tensor]) -> list[Tensor]:
        values: dict[str, Tensor] = dict(self.constants)
        values.update(feeds)
        for position, (name, op, inputs, outputs, attrs) in enumerate(self.nodes):
            args = [self.replace_inputs.get((name, i), values.get(t)) if t else None for i, t in enumerate(inputs)]
            if op == "Split":  # the one op whose result count is its node's output count
                results = _split(args, attrs, self.opset, len(outputs))
            else:
                results = OPS[op](args, attrs, self.opset)
            for out, value in zip(outputs, results):
                if out:
                    values[out] = value + self.add_to_outputs[out] if out in self.add_to_outputs else value
            for t in self._last_use.get(position, ()):  # free what no later node reads
                values.pop(t, None)
        return [values[o] for o in self.output_names]


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _last_uses(nodes: Sequence[tuple], keep: Sequence[str]) -> dict[int, list[str]]:
    """Node position -> the tensors read for the last time there (graph outputs are kept)."""
    last: dict[str, int] = {}
    for position, (_, _, inputs, _, _) in enumerate(nodes):
        for t in inputs:
            if t:
                last[t] = position
    by_position: dict[int, list[str]] = {}
    for t, position in last.items():
        if t not in keep:
            by_position.setdefault(position, []).append(t)
    return by_position
