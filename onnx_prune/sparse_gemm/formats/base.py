"""The storage-format protocol (PackedWeight, SparseFormat) and the registry the formats join.

Kept apart from the package's ``__init__`` so that each format module imports it at its top and
the package imports the formats, without either importing the other.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping, Optional, Sequence

import numpy as np

from ...errors import OnnxPruneError
from ..function_body import FunctionBody


class PackedWeight(ABC):
    """A ``K × N`` weight packed in one format: the tensors a SparseGemm node stores, in input order."""

    format: str
    K: int
    N: int

    @property
    @abstractmethod
    def tensors(self) -> tuple[np.ndarray, ...]:
        """The format's tensors in the order of ``SparseFormat.tensor_names``."""

    @property
    def nnz(self) -> int:
        """Number of stored weights: the length of the first tensor, the values, in every format."""
        return int(self.tensors[0].shape[0])

    @property
    def values_dtype(self) -> np.dtype:
        """The dtype the weights themselves are stored in (the first tensor's)."""
        return self.tensors[0].dtype

    @property
    def nbytes(self) -> int:
        """Bytes of all stored tensors: what the pruned layer costs in the file and in memory."""
        return int(sum(t.nbytes for t in self.tensors))

    @property
    def sparsity(self) -> float:
        size = self.K * self.N
        return 1.0 - self.nnz / size if size else 0.0

    def to_dense(self) -> np.ndarray:
        """The dense ``[K, N]`` float32 weight with zeros written out."""
        return get(self.format).unpack(self)


class SparseFormat(ABC):
    """One storage format. Subclasses set the class attributes and implement the methods."""

    name: str                                   # the ``format`` attribute's value
    tensor_names: tuple[str, ...]               # the node inputs after A, in order
    value_types: Mapping[str, np.dtype]         # --values choices it serves -> stored dtype
    description: str                            # one sentence on the layout, for netron / docs
    input_docs: Sequence[tuple[str, str, str]]  # (input name, type parameter, description)
    type_constraints: Sequence[tuple[str, Sequence[str], str]]  # (type parameter, onnx types, description)

    @abstractmethod
    def pack(self, weight: np.ndarray, mask: np.ndarray | None = None,
             values_dtype: np.dtype | type = np.float32) -> PackedWeight:
        """Pack ``weight [K, N]`` keeping the entries where ``mask`` is true (non-zeros without one)."""

    @abstractmethod
    def from_tensors(self, tensors: Sequence[np.ndarray], K: int, N: int) -> PackedWeight:
        """Wrap tensors read from a node (unchecked: call :meth:`validate`)."""

    @abstractmethod
    def unpack(self, packed: PackedWeight) -> np.ndarray:
        """The dense ``[K, N]`` float32 weight (duplicate entries summed, as in the kernel)."""

    @abstractmethod
    def validate(self, packed: PackedWeight, where: str) -> None:
        """Raise OnnxPruneError with one line starting with ``where`` unless the contract's rules hold."""

    @abstractmethod
    def fallback_dense_weight(self, body: FunctionBody, opset: int) -> str:
        """Add the standard-op nodes that rebuild ``W [K, N]`` float32 inside the fallback function
        (its inputs are named ``tensor_names``; K and N are attributes); returns W's name."""

    # Max relative error --verify accepts against the masked dense fp32 model (None: verify's default).
    verify_tolerance: Optional[float] = None

    def fallback_output(self, body: FunctionBody, opset: int) -> Optional[str]:
        """For a format whose arithmetic is not the float Gemm with the dense W: add the nodes that
        compute the whole output ``Y`` and return its name. None (the default): the fallback runs
        Gemm / MatMul on ``fallback_dense_weight``."""
        return None


def keep_mask(weight: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The entries ``pack`` keeps: ``mask``, or the non-zeros of ``weight`` without one (shapes checked)."""
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D [K, N], got shape {list(weight.shape)}")
    keep = weight != 0 if mask is None else np.asarray(mask, dtype=bool)
    if keep.shape != weight.shape:
        raise ValueError(f"mask shape {list(keep.shape)} != weight shape {list(weight.shape)}")
    return keep


_REGISTRY: dict[str, SparseFormat] = {}


def register(fmt: SparseFormat) -> SparseFormat:
    """Add ``fmt`` to the registry (one name, one format). Which format a --values choice is
    written in by default is the table formats.DEFAULT_FORMAT_OF_VALUES, not the registration order."""
    if fmt.name in _REGISTRY:
        raise ValueError(f"format '{fmt.name}' is registered twice")
    _REGISTRY[fmt.name] = fmt
    return fmt


def names() -> tuple[str, ...]:
    """The registered format names, in registration order."""
    return tuple(_REGISTRY)


def is_known(name: str) -> bool:
    return name in _REGISTRY


def get(name: str) -> SparseFormat:
    """The format called ``name``; an unknown name is a one-line OnnxPruneError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise OnnxPruneError(f"unknown SparseGemm format '{name}' (known formats: {', '.join(names())})") from None
