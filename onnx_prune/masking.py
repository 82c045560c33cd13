"""Scoring and masking: which weights a layer keeps.

The rule (documented in the README): for a ratio ``R`` a layer of ``size`` weights loses exactly
``floor(R * size)`` of them, those with the smallest score; ties are broken deterministically by
position (the weight that comes first in row-major order of ``W [K, N]`` is removed first).
With ``scope="global"`` the same rule applies once to all selected layers together.
Scores default to ``|w|`` (magnitude pruning); other methods supply their own scores.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def removal_count(ratio: float, size: int) -> int:
    """``floor(ratio * size)``, robust to binary rounding (0.7 * 10 must give 7, not 6)."""
    check_ratio(ratio)
    return min(size, int(math.floor(ratio * size + 1e-9)))


def check_ratio(ratio: float) -> None:
    if not (0.0 <= ratio < 1.0) or math.isnan(ratio):
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")


def magnitude_scores(weight: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(weight, dtype=np.float32))


def mask_from_scores(scores: np.ndarray, ratio: float) -> np.ndarray:
    """Boolean keep-mask of ``scores``'s shape removing the ``floor(ratio*size)`` lowest scores."""
    flat = np.asarray(scores).ravel()
    drop = removal_count(ratio, flat.size)
    return _keep_mask(flat, drop).reshape(np.shape(scores))


def global_masks(scores: Sequence[np.ndarray], ratio: float) -> list[np.ndarray]:
    """One threshold over all layers: ``floor(ratio * total)`` lowest scores removed in all."""
    flats = [np.asarray(s, dtype=np.float64).ravel() for s in scores]
    if not flats:
        return []
    joined = np.concatenate(flats)
    keep = _keep_mask(joined, removal_count(ratio, joined.size))
    masks, start = [], 0
    for s, flat in zip(scores, flats):
        masks.append(keep[start:start + flat.size].reshape(np.shape(s)))
        start += flat.size
    return masks


def magnitude_mask(weight: np.ndarray, ratio: float) -> np.ndarray:
    return mask_from_scores(magnitude_scores(weight), ratio)


def _keep_mask(flat_scores: np.ndarray, drop: int) -> np.ndarray:
    keep = np.ones(flat_scores.size, dtype=bool)
    if drop > 0:
        # A stable sort makes ties resolve by position, independent of platform or numpy version.
        order = np.argsort(flat_scores, kind="stable")
        keep[order[:drop]] = False
    return keep
