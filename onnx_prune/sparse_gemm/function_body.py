"""The builder of standard-op function bodies for the SparseGemm fallback, and the small pieces of
body every part of it shares.

The fallback function (onnx_prune/fallback.py) and each storage format's part of it
(``SparseFormat.fallback_dense_weight`` / ``fallback_output``) write their nodes through one
:class:`FunctionBody`, so intermediate names stay unique and constants are stored once. Inside the
body the node's attributes are reached by reference (``ref_attr_name``): the helpers here turn
them into tensors, compare them and shape ``A`` and ``Y`` the way the op contract says.
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from . import contract

INT64_MAX = np.iinfo(np.int64).max  # a Slice end meaning "to the end"
FLOAT_ZERO = numpy_helper.from_array(np.zeros(1, dtype=np.float32))  # ConstantOfShape's value for float zeros


class FunctionBody:
    """Collects body nodes with short unique intermediate names (t1, t2, ...: the body is stored
    in every pruned file); :meth:`if_` builds ``If`` branches with bodies of their own that share
    the numbering."""

    def __init__(self, counter: Optional[Iterator[int]] = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._counter = counter if counter is not None else itertools.count(1)
        self._consts: dict[tuple, str] = {}

    def _name(self) -> str:
        return f"t{next(self._counter)}"

    def node(self, op: str, inputs: Sequence[str], out: str | None = None,
             attrs: Sequence[AttributeProto] = (), **kwargs: object) -> str:
        name = out or self._name()
        node = helper.make_node(op, list(inputs), [name], **kwargs)
        node.attribute.extend(attrs)
        self.nodes.append(node)
        return name

    def node2(self, op: str, inputs: Sequence[str], **kwargs: object) -> str:
        """A two-output node (TopK) of which only the second output is used."""
        first = self._name()
        second = f"{first}_1"
        self.nodes.append(helper.make_node(op, list(inputs), [first, second], **kwargs))
        return second

    def if_(self, condition: str, then: Callable[["FunctionBody"], str], otherwise: Callable[["FunctionBody"], str],
            out: str | None = None) -> str:
        """``If(condition)`` whose branches are built by ``then`` / ``otherwise`` (each returns its
        branch's float output); branch bodies read this body's tensors from the outer scope."""
        branches = {}
        for attr, build in (("then_branch", then), ("else_branch", otherwise)):
            body = FunctionBody(self._counter)
            result = build(body)
            branches[attr] = helper.make_graph(body.nodes, f"{attr}_{result}", [],
                                               [helper.make_tensor_value_info(result, TensorProto.FLOAT, None)])
        return self.node("If", [condition], out=out, **branches)

    def const(self, array: np.ndarray) -> str:
        """One Constant node per distinct value (keeps the stored function small)."""
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes() if array.dtype != object else repr(array.tolist()))
        if key not in self._consts:
            self._consts[key] = self.node("Constant", [], value=numpy_helper.from_array(array))
        return self._consts[key]

    def attr_scalar(self, attr: str, attr_type: int) -> str:
        """A Constant holding the caller's attribute ``attr`` as a scalar tensor."""
        field = {AttributeProto.INT: "value_int", AttributeProto.FLOAT: "value_float",
                 AttributeProto.STRING: "value_string"}[attr_type]
        ref = AttributeProto(name=field, ref_attr_name=attr, type=attr_type)
        return self.node("Constant", [], attrs=[ref])


def ref_attr(attr: str, attr_type: int) -> AttributeProto:
    """Attribute ``attr`` of a body node that takes the caller's attribute of the same name."""
    return AttributeProto(name=attr, ref_attr_name=attr, type=attr_type)


def attr_vector(b: FunctionBody, attr: str) -> str:
    """The caller's int attribute ``attr`` (K, N) as a [1] int64 tensor: a piece of a shape."""
    return b.node("Reshape", [b.attr_scalar(attr, AttributeProto.INT), b.const(np.array([1], np.int64))])


def attr_equals(b: FunctionBody, attr: str, value: str) -> str:
    """Whether string attribute ``attr`` equals ``value``: ``Unique`` of the two has one element
    (``Equal`` on strings needs opset 19, ``Unique`` is there from opset 11)."""
    one = b.const(np.array([1], np.int64))
    got = b.node("Reshape", [b.attr_scalar(attr, AttributeProto.STRING), one])
    unique = b.node("Unique", [b.node("Concat", [got, b.const(np.array([value], dtype=object))], axis=0)])
    return b.node("Equal", [b.node("Size", [unique]), b.const(np.array(1, np.int64))])


def flatten_a_nodes(b: FunctionBody) -> tuple[str, str]:
    """A as [-1, A.shape[-1]] (unchanged for 2-D A) and A's shape."""
    shape_a = b.node("Shape", [contract.INPUT_A])
    last = b.node("Slice", [shape_a, b.const(np.array([-1], np.int64)),
                            b.const(np.array([INT64_MAX], np.int64))])
    target = b.node("Concat", [b.const(np.array([-1], np.int64)), last], axis=0)
    return b.node("Reshape", [contract.INPUT_A, target]), shape_a


def output_shape_nodes(b: FunctionBody, shape_a: str) -> str:
    """The output's shape ``A.shape[t*(r-1) : r-1+t] + [N]`` with ``t = transA``, ``r = rank(A)``."""
    one = b.const(np.array([1], np.int64))
    trans = b.node("Reshape", [b.attr_scalar(contract.ATTR_TRANS_A, AttributeProto.INT), one])
    rank_minus_1 = b.node("Sub", [b.node("Reshape", [b.node("Size", [shape_a]), one]), one])
    start = b.node("Mul", [trans, rank_minus_1])
    end = b.node("Add", [rank_minus_1, trans])
    leading = b.node("Slice", [shape_a, start, end])
    return b.node("Concat", [leading, attr_vector(b, contract.ATTR_N)], axis=0)
