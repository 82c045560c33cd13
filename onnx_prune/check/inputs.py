"""Generated inputs that look like what the model is fed in use, for the verification and the
benchmark when the user gives none (``--inputs`` gives real ones).

Zeros for every integer input made a transformer "pass" with an all-padding attention mask and
token 0 everywhere, and 3-token sequences timed nothing a user runs. So each input is read by how
the graph uses it and what it is called:

- an integer input that indexes an embedding (the indices of a ``Gather`` on a constant table,
  directly or through shape-only ops such as ``Cast`` / ``Unsqueeze``) draws ids uniformly inside
  the table's row count (the vocabulary);
- inputs named like attention / padding masks, and boolean inputs, are ones (attend everywhere);
- token-type / segment ids are zeros (one segment), position ids count 0, 1, 2, ... along the last
  axis;
- float inputs are standard normal; other integer inputs stay zeros.

A symbolic first dimension is the batch; any other symbolic dimension is a sequence length
(``seq_len``, 128 by default: the length sentence encoders are usually run at). Inputs sharing a
symbolic name share its size.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import onnx

from ..errors import OnnxPruneError, UsageError

BATCH_FOR_GENERATED = 4
SEQ_LEN_FOR_GENERATED = 128
# ops that pass integer indices on unchanged in value (only shape or dtype changes) between a graph
# input and the Gather that reads them
_INDEX_PRESERVING = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand", "Transpose"}
_MASK_NAME = re.compile(r"mask", re.IGNORECASE)
_SEGMENT_NAME = re.compile(r"token_?type|segment", re.IGNORECASE)
_POSITION_NAME = re.compile(r"position_?ids", re.IGNORECASE)

NORMAL, IDS, ONES, ZEROS, POSITIONS = "normal", "ids", "ones", "zeros", "positions"


@dataclass(frozen=True)
class InputPlan:
    """How one graph input is generated: its shape, dtype and kind (ids below ``vocabulary``)."""
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    kind: str
    vocabulary: int = 0

    def describe(self) -> str:
        what = {NORMAL: "normal", ONES: "ones", ZEROS: "zeros", POSITIONS: "positions 0..n-1",
                IDS: f"ids in [0, {self.vocabulary})"}[self.kind]
        return f"{self.name} {list(self.shape)} {what}"


def check_seq_len(seq_len: int) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise UsageError(f"--seq-len must be a positive integer, got {seq_len}")


def input_plans(model: onnx.ModelProto, batch: int = BATCH_FOR_GENERATED,
                seq_len: int = SEQ_LEN_FOR_GENERATED) -> list[InputPlan]:
    """The plan of every graph input that is not an initializer, in graph order."""
    check_seq_len(seq_len)
    initializers = {t.name for t in model.graph.initializer}
    tables = _embedding_rows(model.graph)
    symbols: dict[str, int] = {}
    plans = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        t = value.type.tensor_type
        if not value.type.HasField("tensor_type") or t.elem_type in (0, onnx.TensorProto.STRING):
            raise OnnxPruneError(f"cannot generate a value for input '{value.name}' (not a numeric tensor); "
                                 "pass --inputs data.npz or --no-verify")
        shape = _shape(t, batch, seq_len, symbols)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
        kind, vocabulary = _kind(value.name, dtype, tables.get(value.name))
        plans.append(InputPlan(value.name, shape, dtype, kind, vocabulary))
    return plans


def generated_inputs(model: onnx.ModelProto, seed: int = 0, batch: int = BATCH_FOR_GENERATED,
                     seq_len: int = SEQ_LEN_FOR_GENERATED) -> dict[str, np.ndarray]:
    """Inputs made by ``input_plans`` (see the module docstring), reproducible for a ``seed``."""
    return make(input_plans(model, batch, seq_len), seed)


def make(plans: Sequence[InputPlan], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for p in plans:
        if p.kind == NORMAL:
            feeds[p.name] = rng.standard_normal(p.shape).astype(p.dtype)
        elif p.kind == IDS:
            feeds[p.name] = rng.integers(0, p.vocabulary, size=p.shape).astype(p.dtype)
        elif p.kind == ONES:
            feeds[p.name] = np.ones(p.shape, dtype=p.dtype)
        elif p.kind == POSITIONS:
            feeds[p.name] = np.broadcast_to(np.arange(p.shape[-1] if p.shape else 1), p.shape).astype(p.dtype)
        else:
            feeds[p.name] = np.zeros(p.shape, dtype=p.dtype)
    return feeds


def describe(plans: Sequence[InputPlan]) -> str:
    """'generated inputs (input_ids [4, 128] ids in [0, 30522), attention_mask [4, 128] ones)'."""
    return "generated inputs (" + ", ".join(p.describe() for p in plans) + ")"


def _shape(t: onnx.TypeProto.Tensor, batch: int, seq_len: int, symbols: dict[str, int]) -> tuple[int, ...]:
    dims = []
    for axis, d in enumerate(t.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(d.dim_value)
        else:  # one size per symbolic name, so inputs sharing "batch" or "seq" agree
            default = batch if axis == 0 else seq_len
            dims.append(symbols.setdefault(d.dim_param, default) if d.dim_param else default)
    return tuple(dims)


def _kind(name: str, dtype: np.dtype, table_rows: Optional[int]) -> tuple[str, int]:
    if dtype == np.bool_ or (_MASK_NAME.search(name) and not np.issubdtype(dtype, np.floating)):
        return ONES, 0
    if np.issubdtype(dtype, np.floating):
        return (ONES, 0) if _MASK_NAME.search(name) else (NORMAL, 0)
    if _SEGMENT_NAME.search(name):
        return ZEROS, 0
    if _POSITION_NAME.search(name):
        return POSITIONS, 0
    if table_rows:
        return IDS, table_rows
    return ZEROS, 0


def _embedding_rows(graph: onnx.GraphProto) -> dict[str, int]:
    """Graph input name -> the fewest rows of the constant tables its values index through Gather
    (followed through index-preserving ops); inputs that index no table are absent."""
    constants = _constant_dims(graph)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    rows: dict[str, int] = {}
    for value in graph.input:
        found = _rows_indexed(value.name, readers, constants, seen=set())
        if found:
            rows[value.name] = min(found)
    return rows


def _rows_indexed(name: str, readers: dict, constants: dict[str, Sequence[int]], seen: set) -> list[int]:
    if name in seen:
        return []
    seen.add(name)
    found = []
    for node in readers.get(name, ()):
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name:
            dims = constants.get(node.input[0])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if dims and -len(dims) <= axis < len(dims) and dims[axis] > 0:
                found.append(int(dims[axis]))
        elif node.op_type in _INDEX_PRESERVING and node.input and node.input[0] == name:
            for out in node.output:
                found += _rows_indexed(out, readers, constants, seen)
    return found


def _constant_dims(graph: onnx.GraphProto) -> dict[str, Sequence[int]]:
    """Shapes of the graph's constants: initializers, Constant nodes, and their Identity copies."""
    dims = {t.name: list(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                dims[node.output[0]] = list(value.dims)
        elif node.op_type == "Identity" and node.input and node.input[0] in dims:
            dims[node.output[0]] = dims[node.input[0]]
    return dims
