"""Inputs a user gives (--inputs) checked against the model's declared input shapes before any
session runs: onnxruntime's own message for a wrong shape is several lines, cut to a first line
that names no expected shape."""
from __future__ import annotations

from typing import Mapping, Optional, Union

import numpy as np
import onnx

from ..errors import OnnxPruneError

Dim = Union[int, str, None]  # a fixed size, a symbolic name, or unknown


def declared_shapes(model: onnx.ModelProto) -> dict[str, list[Dim]]:
    """Graph input name -> its declared dims (initializers that double as inputs left out); an
    input without a declared shape is left out too (anything goes)."""
    initializers = {t.name for t in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        t = value.type.tensor_type
        if value.name in initializers or not value.type.HasField("tensor_type") or not t.HasField("shape"):
            continue
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return shapes


def shape_text(dims: list[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def check_input_shapes(feeds: Mapping[str, np.ndarray], model: onnx.ModelProto, described: str) -> None:
    """Each fed array has the rank and the fixed sizes its input declares, and a symbolic size
    (e.g. 'batch', 'seq') is the same in every input that names it; else one line naming the
    input, the shape the model expects and the shape given."""
    seen: dict[str, tuple[int, str]] = {}  # symbolic name -> (size, the input that set it)
    for name, dims in declared_shapes(model).items():
        if name not in feeds:
            continue
        given = tuple(np.shape(feeds[name]))
        problem = _mismatch(dims, given, name, seen)
        if problem is not None:
            raise OnnxPruneError(f"{described}: input '{name}' has shape {list(given)} but the model expects "
                                 f"{shape_text(dims)}{problem}")


def _mismatch(dims: list[Dim], given: tuple, name: str, seen: dict[str, tuple[int, str]]) -> Optional[str]:
    """None when ``given`` fits ``dims``; else what to add to the message ('' when the shapes say it)."""
    if len(given) != len(dims):
        return f" (rank {len(dims)}, given {len(given)})"
    for axis, (want, got) in enumerate(zip(dims, given)):
        if isinstance(want, int) and want > 0 and want != got:
            return ""
        if isinstance(want, str):
            size, where = seen.setdefault(want, (got, name))
            if size != got:
                return f" ('{want}' is {size} in input '{where}', {got} here)"
    return None
