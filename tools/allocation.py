"""Per-layer sparsity allocation: how many weights each layer loses, for one requested total.

An experiment, not wired into onnx-prune (docs/calibration.md, "Bias compensation and per-layer
allocation", has the measurements: neither rule beats --scope global's saliency on the MLPs
measured). Run from the repository root with tools/ on sys.path.

Two rules, both removing exactly ``floor(ratio · total)`` weights over all layers
(``exact_counts`` turns target sparsities into integer counts with that sum):

* ``error_driven_drops``: from each layer's measured reconstruction error at a few sparsities
  (``reconstruction_curve``), the counts that minimise the summed relative errors: weights
  are taken where the next removal costs the least error per weight.
* ``outlier_weighted_drops``: OWL (Yin et al. 2023, "outlier weighted layerwise sparsity")
  gives layers with many outlier weights (Wanda score ``|w| · ‖x_k‖`` above ``threshold`` × the
  layer mean) a lower sparsity, within ``ratio ± spread``. Made for LLM blocks of equal size; on
  MLPs whose last layer is tiny it over-prunes that layer (docs/calibration.md).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from onnx_prune.pruning import masking
from onnx_prune.pruning.sparsegpt import PERCDAMP, sparsegpt_prune_with_bias

CURVE_GRID = (0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.96, 0.98)  # sparsities of reconstruction_curve
OUTLIER_THRESHOLD = 5.0
SPREAD = 0.08


def outlier_ratios(weights: Sequence[np.ndarray], sq_norms: Sequence[np.ndarray],
                   threshold: float = OUTLIER_THRESHOLD) -> list[float]:
    """Share of each layer's weights whose Wanda score exceeds ``threshold`` × the layer mean."""
    ratios = []
    for w, sq in zip(weights, sq_norms):
        score = np.abs(np.asarray(w, dtype=np.float64)) * np.sqrt(np.asarray(sq, dtype=np.float64))[:, None]
        mean = float(score.mean())
        ratios.append(float((score > threshold * mean).mean()) if mean > 0 else 0.0)
    return ratios


def outlier_weighted_drops(weights: Sequence[np.ndarray], sq_norms: Sequence[np.ndarray], ratio: float, *,
                           threshold: float = OUTLIER_THRESHOLD, spread: float = SPREAD) -> list[int]:
    """Removal count of each layer (``weights [K, N]``, input ``sq_norms [K]`` = Σ x_k²): OWL
    sparsities ``ratio - spread · (o_l - ō) / max|o - ō|`` (o: outlier ratios, ō their
    size-weighted mean), clipped to [0, 1), summing to exactly ``floor(ratio · total)``."""
    masking.check_ratio(ratio)
    sizes = [int(np.size(w)) for w in weights]
    outliers = np.array(outlier_ratios(weights, sq_norms, threshold))
    deviation = outliers - float(np.average(outliers, weights=sizes)) if sum(sizes) else outliers * 0
    largest = float(np.abs(deviation).max()) if len(deviation) else 0.0
    targets = ratio - spread * deviation / largest if largest > 0 else np.full(len(sizes), ratio)
    return exact_counts(sizes, np.clip(targets, 0.0, 1.0), masking.removal_count(ratio, sum(sizes)))


def error_driven_drops(sizes: Sequence[int], grid: Sequence[float], errors: Sequence[Sequence[float]],
                       ratio: float) -> list[int]:
    """Removal count of each layer minimising Σ_l err_l(s_l) for ``floor(ratio · total)`` in all.

    ``errors[l][j]``: layer l's relative squared reconstruction error at sparsity ``grid[j]``
    (``grid`` ascending from 0), linear in between. The lower convex hull of each curve is
    taken (a layer's next weight never costs less than its previous one), and removals go,
    hull segment by segment, to the cheapest error per weight until the total is reached."""
    masking.check_ratio(ratio)
    grid = np.asarray(grid, dtype=np.float64)
    if grid[0] != 0 or np.any(np.diff(grid) <= 0):
        raise ValueError("the sparsity grid must rise from 0")
    sizes = [int(s) for s in sizes]
    total = masking.removal_count(ratio, sum(sizes))
    segments = []  # (cost per weight, layer, weights in the segment)
    for layer, (size, curve) in enumerate(zip(sizes, errors)):
        hull = _lower_hull(grid * size, np.maximum.accumulate(np.asarray(curve, dtype=np.float64)))
        for (x0, y0), (x1, y1) in zip(hull, hull[1:]):
            segments.append(((y1 - y0) / (x1 - x0), layer, x1 - x0))
    targets = np.zeros(len(sizes))
    left = float(total)
    for _, layer, width in sorted(segments, key=lambda s: (s[0], s[1])):
        take = min(width, left)
        targets[layer] += take
        left -= take
        if left <= 0:
            break
    return exact_counts(sizes, targets / np.maximum(sizes, 1), total)


def _lower_hull(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
    hull: list[tuple[float, float]] = []
    for point in zip(x.tolist(), y.tolist()):
        while len(hull) >= 2 and _turn(hull[-2], hull[-1], point) <= 0:
            hull.pop()
        hull.append(point)
    return hull


def _turn(a, b, c) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def exact_counts(sizes: Sequence[int], targets: Sequence[float], total: int) -> list[int]:
    """Integer counts ``0 <= c_l <= sizes[l]`` summing to ``total``, as close as possible to
    ``targets[l] · sizes[l]`` after one common shift of the targets (largest remainder rounding;
    ties to the earlier layer)."""
    sizes = [int(s) for s in sizes]
    if not 0 <= total <= sum(sizes):
        raise ValueError(f"cannot remove {total} weights from layers of {sum(sizes)} in all")
    want = np.array(targets, dtype=np.float64) * np.array(sizes, dtype=np.float64)
    shift = _shift_to_total(np.array(sizes, dtype=np.float64), want, total)
    ideal = np.clip(want + shift * np.array(sizes), 0, sizes)
    counts = [min(s, int(math.floor(v))) for s, v in zip(sizes, ideal)]
    short = total - sum(counts)
    order = sorted(range(len(sizes)), key=lambda i: (-(ideal[i] - counts[i]), i))
    for i in order * 2:  # one extra per layer and round; the second round covers full layers
        if short <= 0:
            break
        if counts[i] < sizes[i]:
            counts[i] += 1
            short -= 1
    return counts


def _shift_to_total(sizes: np.ndarray, want: np.ndarray, total: int) -> float:
    """The sparsity shift t with Σ clip(want + t · size, 0, size) = total (bisection)."""
    low, high = -1.0 - 1e-9, 1.0 + 1e-9
    for _ in range(100):
        mid = (low + high) / 2
        if np.clip(want + mid * sizes, 0, sizes).sum() < total:
            low = mid
        else:
            high = mid
    return high


def reconstruction_curve(weight: np.ndarray, hessian: np.ndarray, input_sum: np.ndarray, rows: int,
                         grid: Sequence[float] = CURVE_GRID, *, percdamp: float = PERCDAMP, layer: str = "?"
                         ) -> list[float]:
    """Relative squared output error ``‖X ΔW + 1 Δb‖² / ‖X W‖²`` of the layer after
    sparsegpt_prune_with_bias at each sparsity of ``grid``: what error_driven_drops
    needs to spread a total over the layers."""
    w = np.asarray(weight, dtype=np.float64)
    k, n = w.shape
    h = np.asarray(hessian, dtype=np.float64)
    s = np.asarray(input_sum, dtype=np.float64).reshape(k, 1)
    augmented = np.block([[h, s], [s.T, np.full((1, 1), float(rows))]])
    energy = float(np.einsum("kn,kj,jn->", w, h, w))
    curve = []
    for ratio in grid:
        if ratio == 0:
            curve.append(0.0)
            continue
        drop = masking.removal_count(ratio, w.size)
        pruned, _, delta = sparsegpt_prune_with_bias(w, h, input_sum, rows, drop, percdamp=percdamp, layer=layer)
        diff = np.vstack([w - pruned, -delta[None, :]])
        curve.append(float(np.einsum("kn,kj,jn->", diff, augmented, diff)) / energy if energy > 0 else 0.0)
    return curve
