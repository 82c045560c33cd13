"""Fidelity: how far the pruned model is from the ORIGINAL dense model, on the verification's inputs.

The kernel check (verify.py) compares the pruned model with the input model carrying the same masks,
so it passes at any ratio: it says the kernel computes what the masks define, not that the pruned
model still does the original's job. This module measures the latter, per float output:

- ``max_rel_error``: max |pruned - original| / max |original| (max_relative_error, which the kernel
  check uses too);
- ``cosine``: the mean, over the output's vectors along its last axis (a sample's logits, a token's
  embedding), of the cosine similarity between the pruned and the original vector;
- ``top1_agreement``: for classifier-like outputs (2-D, last dimension > 1, made by a fully
  connected head or the softmax over it: ``score_outputs``), the fraction of rows whose argmax is
  the same. A 2-D output made otherwise (a sentence embedding is a masked mean, a Div) is a vector
  whose largest coordinate means nothing: it is judged by its cosine.

Fidelity is *poor* when a classifier-like output's top-1 agreement is below POOR_TOP1, or another
float output's cosine is below POOR_COSINE. A classifier is judged by its answers, not by the cosine
of its logits: softmax ignores a shift of all logits, and pruning shifts them (the bundled MNIST model
at 0.8 keeps 97% of its answers on its test images with a logits cosine of 0.88). The prune still
succeeds (the user asked for this ratio) but is warned, because a model whose outputs point elsewhere
needs a lower ratio, another method, or a check on real data. On generated inputs the figures are
only indicative (noise is not what a classifier was trained on; the same MNIST model agrees on about
75% of normal-noise rows), and the warning says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Optional, Sequence

import numpy as np
import onnx

# below this mean cosine the pruned outputs point in visibly other directions: sentence embeddings
# at 0.9 already rank neighbours differently, logits lose their top class on borderline samples
POOR_COSINE = 0.95
# a classifier that changes its answer on more than one input in ten is not the same classifier
POOR_TOP1 = 0.9


@dataclass
class OutputFidelity:
    max_rel_error: float
    cosine: float
    top1_agreement: Optional[float] = None  # classifier-like outputs only

    @property
    def poor(self) -> bool:
        if self.top1_agreement is not None:
            return self.top1_agreement < POOR_TOP1
        return not self.cosine >= POOR_COSINE  # NaN (nothing comparable) counts as poor

    def text(self) -> str:
        top1 = f", top-1 agreement {self.top1_agreement:.1%}" if self.top1_agreement is not None else ""
        return f"cosine {self.cosine:.4f}{top1}, max relative error {self.max_rel_error:.2e}"


@dataclass
class Fidelity:
    inputs: str  # what the outputs were computed on
    generated: bool = False  # inputs made up by onnx-prune (check/inputs.py), not the user's
    outputs: dict[str, OutputFidelity] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=lambda: {"cosine": POOR_COSINE, "top1_agreement": POOR_TOP1})

    @property
    def poor_outputs(self) -> list[str]:
        return [name for name, f in self.outputs.items() if f.poor]

    @property
    def poor(self) -> bool:
        return bool(self.poor_outputs)

    def lines(self) -> list[str]:
        """One line per output for the printed report."""
        return [f"fidelity to the original model, output '{name}': {f.text()}" for name, f in self.outputs.items()]

    def warning(self) -> str:
        """The one-line warning for poor fidelity (empty when it is not poor)."""
        if not self.poor:
            return ""
        worst = ", ".join(f"'{n}' {self.outputs[n].text()}" for n in self.poor_outputs[:3])
        caveat = ("; these inputs are generated and may not resemble real data: measure on real inputs with "
                  "--inputs data.npz" if self.generated else "")
        return (f"the pruned model is far from the original on {self.inputs}: {worst} (poor: top-1 agreement "
                f"below {POOR_TOP1:.0%}, or cosine below {POOR_COSINE} for outputs that are not a classifier's)"
                f"{caveat}; try a lower --ratio, or --method sparsegpt with --calibration (onnx-prune eval "
                "compares ratios and methods on labelled data)")


# The ops whose output reads as a classifier's scores: a fully connected head (SparseGemm once
# pruned), its bias add, or the softmax over it; shape-only ops in between are looked through.
SCORE_OPS = frozenset({"Gemm", "MatMul", "Add", "SparseGemm", "Softmax", "LogSoftmax"})
_SHAPE_ONLY_OPS = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Cast"})


def score_outputs(graph: onnx.GraphProto) -> set[str]:
    """The graph outputs made by one of SCORE_OPS: the ones whose top-1 agreement means something."""
    producer = {o: node for node in graph.node for o in node.output if o}
    found = set()
    for output in graph.output:
        node = producer.get(output.name)
        while node is not None and node.op_type in _SHAPE_ONLY_OPS and node.input:
            node = producer.get(node.input[0])
        if node is not None and node.op_type in SCORE_OPS:
            found.add(output.name)
    return found


def compare(names: Sequence[str], original: Sequence[np.ndarray], pruned: Sequence[np.ndarray],
            scores: Collection[str]) -> dict[str, OutputFidelity]:
    """OutputFidelity of every float output (by name), pruned against original; top-1 agreement
    for the ``scores`` outputs (score_outputs) of a classifier's shape."""
    out = {}
    for name, o, p in zip(names, original, pruned):
        o, p = np.asarray(o), np.asarray(p)
        if not np.issubdtype(o.dtype, np.floating):
            continue
        out[name] = OutputFidelity(max_rel_error=max_relative_error(o, p), cosine=mean_cosine(o, p),
                                   top1_agreement=top1_agreement(o, p) if name in scores else None)
    return out


def max_relative_error(reference: np.ndarray, actual: np.ndarray) -> float:
    """max |reference - actual| / max(max |reference|, tiny) over the finite entries; a
    non-finite value counts as equal only where the other side has the same one (NaN for NaN,
    inf for inf of the same sign), otherwise the error is infinite."""
    reference = np.asarray(reference, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if reference.shape != actual.shape:
        return float("inf")
    if reference.size == 0:
        return 0.0
    finite = np.isfinite(reference) & np.isfinite(actual)
    same_special = (np.isnan(reference) & np.isnan(actual)) | \
        (np.isinf(reference) & (reference == actual))
    if not np.all(finite | same_special):
        return float("inf")
    if not finite.any():
        return 0.0
    scale = max(float(np.max(np.abs(reference[finite]))), 1e-12)
    return float(np.max(np.abs(reference[finite] - actual[finite]))) / scale


def mean_cosine(original: np.ndarray, pruned: np.ndarray) -> float:
    """Mean cosine similarity of the vectors along the last axis (a scalar output is one vector).
    Two zero vectors agree (1), a zero against a non-zero one does not (0); vectors holding a
    non-finite value are left out, and NaN comes back when none is left."""
    if original.shape != pruned.shape:
        return float("nan")
    length = original.shape[-1] if original.ndim else 1
    a = original.reshape(-1, max(length, 1)).astype(np.float64)
    b = pruned.reshape(-1, max(length, 1)).astype(np.float64)
    finite = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    a, b = a[finite], b[finite]
    if len(a) == 0:
        return float("nan")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    dots = np.einsum("ij,ij->i", a, b)
    cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
    return float(np.mean(cosines))


def top1_agreement(original: np.ndarray, pruned: np.ndarray) -> Optional[float]:
    """Fraction of rows with the same argmax, for a classifier-like output [rows, classes > 1]."""
    if original.ndim != 2 or original.shape[1] < 2 or original.shape != pruned.shape or original.shape[0] == 0:
        return None
    return float(np.mean(np.argmax(original, axis=1) == np.argmax(pruned, axis=1)))
