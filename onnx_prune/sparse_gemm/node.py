"""The one reader and writer of SparseGemm NodeProtos (docs/sparse_gemm_op.md).

Inputs are addressed by position: ``A``, then the format's tensors (as many as the format names),
then the optional ``C``. Attributes are read with the contract's defaults.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import OnnxPruneError
from . import contract, formats
from .formats import PackedWeight, SparseFormat

_DEFAULTS = {contract.ATTR_FORMAT: contract.DEFAULT_FORMAT, contract.ATTR_ALPHA: 1.0, contract.ATTR_BETA: 1.0,
             contract.ATTR_TRANS_A: 0, contract.ATTR_ACTIVATION: ""}
_TENSOR_PREFIX = ".sparse_"  # rewrite names a layer's tensors "<weight>.sparse_<tensor name>"


def is_sparse_gemm(node: onnx.NodeProto) -> bool:
    """Whether ``node`` is a SparseGemm node of this project's domain."""
    return node.op_type == contract.OP_TYPE and node.domain == contract.DOMAIN


def sparse_gemm_summary(model: onnx.ModelProto, shown: int = 3) -> str:
    """``"3 SparseGemm nodes (/fc1/Gemm, /fc2/Gemm, /fc3/Gemm)"`` for messages about a model that is
    (or is not) already pruned; ``""`` when its graph has none."""
    names = [node.name or "(unnamed)" for node in model.graph.node if is_sparse_gemm(node)]
    if not names:
        return ""
    more = ", …" if len(names) > shown else ""
    return f"{len(names)} SparseGemm node{'s' if len(names) > 1 else ''} ({', '.join(names[:shown])}{more})"


def formats_used(nodes: Iterable[onnx.NodeProto]) -> dict[str, str]:
    """The formats the SparseGemm nodes among ``nodes`` store, each with the first node using it."""
    used: dict[str, str] = {}
    for node in filter(is_sparse_gemm, nodes):
        used.setdefault(SparseGemmNode(node).format_name, node.name)
    return used


def sparse_tensor_names(stem: str, fmt: SparseFormat) -> list[str]:
    """The initializer names rewrite gives a layer's packed tensors (``stem`` = the weight's name)."""
    return [f"{stem}{_TENSOR_PREFIX}{name}" for name in fmt.tensor_names]


def make_sparse_gemm(name: str, a: str, packed: PackedWeight, tensor_names: Sequence[str], c: Optional[str],
                     y: str, attributes: Mapping[str, object], doc_string: str = "") -> onnx.NodeProto:
    """A SparseGemm node reading ``a``, the packed tensors (``tensor_names``) and ``c``; the
    format, K, N, nnz and sparsity attributes come from ``packed``."""
    inputs = [a, *tensor_names] + ([c] if c else [])
    attrs = {contract.ATTR_K: packed.K, contract.ATTR_N: packed.N, contract.ATTR_FORMAT: packed.format,
             **attributes, contract.ATTR_NNZ: packed.nnz, contract.ATTR_SPARSITY: contract.sparsity_text(packed.sparsity)}
    return helper.make_node(contract.OP_TYPE, inputs, [y], name=name, domain=contract.DOMAIN,
                            doc_string=doc_string, **attrs)


class SparseGemmNode:
    """Typed access to one SparseGemm NodeProto; ``where`` starts every error about it."""

    def __init__(self, node: onnx.NodeProto) -> None:
        if not is_sparse_gemm(node):
            raise ValueError(f"node '{node.name}' is a {node.domain}:{node.op_type}, not SparseGemm")
        self.proto = node
        self.where = f"SparseGemm node '{node.name}'"
        self._attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def attr(self, name: str, default: object = None) -> object:
        """An attribute (strings decoded), the contract's default when it is absent."""
        value = self._attrs.get(name, _DEFAULTS.get(name, default))
        return value.decode() if isinstance(value, bytes) else value

    def required(self, name: str) -> object:
        if name not in self._attrs:
            raise OnnxPruneError(f"{self.where}: the required attribute '{name}' is missing")
        return self.attr(name)

    @property
    def name(self) -> str:
        return self.proto.name

    @property
    def format_name(self) -> str:
        return str(self.attr(contract.ATTR_FORMAT))

    @property
    def format(self) -> SparseFormat:
        return formats.get(self.format_name)

    @property
    def alpha(self) -> float:
        return float(self.attr(contract.ATTR_ALPHA))

    @property
    def beta(self) -> float:
        return float(self.attr(contract.ATTR_BETA))

    @property
    def trans_a(self) -> int:
        return int(self.attr(contract.ATTR_TRANS_A))

    @property
    def activation(self) -> str:
        return str(self.attr(contract.ATTR_ACTIVATION))

    @property
    def original_op(self) -> str:
        return str(self.attr(contract.ATTR_ORIGINAL_OP, ""))

    @property
    def a(self) -> str:
        return self.proto.input[0]

    @property
    def y(self) -> str:
        return self.proto.output[0]

    @property
    def tensor_inputs(self) -> list[str]:
        """The names of the format's tensors (inputs 1 .. len(tensor_names))."""
        return list(self.proto.input[1:1 + len(self.format.tensor_names)])

    @property
    def c(self) -> Optional[str]:
        position = 1 + len(self.format.tensor_names)
        inputs = self.proto.input
        return inputs[position] if len(inputs) > position and inputs[position] else None

    def weight_stem(self) -> str:
        """The dense weight's name: what rewrite named the packed tensors after, else ``<node>.weight``."""
        first, suffix = self.tensor_inputs[0], f"{_TENSOR_PREFIX}{self.format.tensor_names[0]}"
        return first[: -len(suffix)] if first.endswith(suffix) else f"{self.name}.weight"

    def packed(self, constants: Mapping[str, onnx.TensorProto]) -> PackedWeight:
        """The node's weight read from the constant initializers and checked against the contract."""
        fmt = self.format
        count = 1 + len(fmt.tensor_names)
        if len(self.proto.input) < count:
            raise OnnxPruneError(f"{self.where}: has {len(self.proto.input)} inputs, needs at least {count}")
        K, N = int(self.required(contract.ATTR_K)), int(self.required(contract.ATTR_N))
        tensors = []
        for name in self.tensor_inputs:
            if name not in constants:
                raise OnnxPruneError(f"{self.where}: its weight '{name}' is not a constant initializer, "
                                     "so it cannot be written out dense")
            tensors.append(numpy_helper.to_array(constants[name]))
        packed = fmt.from_tensors([np.asarray(t) for t in tensors], K, N)
        fmt.validate(packed, self.where)
        return packed
