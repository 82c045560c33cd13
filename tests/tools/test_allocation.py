"""tools/allocation.py: per-layer removal counts that always sum to the floor rule's total, stay within
each layer, and follow the measured errors (error-driven) or outlier ratios (OWL)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from onnx_prune.pruning.sparsegpt import sparsegpt_prune_with_bias

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import allocation  # noqa: E402
from allocation import reconstruction_curve  # noqa: E402


@pytest.mark.parametrize("total", [0, 1, 7, 500, 999, 1000])
def test_exact_counts_hit_the_total_within_bounds(total):
    sizes = [600, 300, 100]
    counts = allocation.exact_counts(sizes, [0.95, 0.2, 1.0], total)
    assert sum(counts) == total
    assert all(0 <= c <= s for c, s in zip(counts, sizes))


def test_exact_counts_follow_the_targets_and_refuse_impossible_totals():
    assert allocation.exact_counts([100, 100], [0.3, 0.7], 100) == [30, 70]
    assert allocation.exact_counts([100, 100], [0.3, 0.7], 80) == [20, 60]  # one common shift of 10 %
    with pytest.raises(ValueError, match="cannot remove 201 weights from layers of 200 in all"):
        allocation.exact_counts([100, 100], [0.5, 0.5], 201)


def test_error_driven_takes_from_the_layer_where_error_grows_slowest():
    grid = [0.0, 0.5, 0.9, 0.99]
    cheap = [0.0, 0.01, 0.02, 0.05]
    costly = [0.0, 0.2, 0.6, 0.9]
    counts = allocation.error_driven_drops([1000, 1000], grid, [costly, cheap], 0.6)
    assert sum(counts) == math.floor(0.6 * 2000)
    # cheap goes to 99 % (990) before costly loses anything beyond what is left (210)
    assert counts == [210, 990]


def test_error_driven_uses_the_convex_hull_and_hits_the_total_for_any_ratio():
    grid = [0.0, 0.5, 0.8, 0.9, 0.95]
    rng = np.random.default_rng(0)
    sizes = [7840, 10000, 100]
    curves = [np.sort(rng.random(5)) * (i + 1) for i in range(3)]
    for curve in curves:
        curve[0] = 0
    for ratio in (0.0, 0.3, 0.8, 0.9, 0.94):
        counts = allocation.error_driven_drops(sizes, grid, curves, ratio)
        assert sum(counts) == math.floor(ratio * sum(sizes) + 1e-9)
        assert all(0 <= c <= s for c, s in zip(counts, sizes))
    with pytest.raises(ValueError, match="the sparsity grid must rise from 0"):
        allocation.error_driven_drops(sizes, [0.5, 0.9], [[0, 1]] * 3, 0.5)


def test_outlier_weighted_spares_the_layer_with_outliers():
    rng = np.random.default_rng(1)
    plain = rng.standard_normal((50, 40))
    spiky = rng.standard_normal((50, 40))
    spiky[rng.random(spiky.shape) < 0.05] *= 30  # 5 % outliers
    norms = [np.ones(50), np.ones(50)]
    counts = allocation.outlier_weighted_drops([plain, spiky], norms, 0.7, spread=0.1)
    assert sum(counts) == 2800
    assert counts[1] / 2000 == pytest.approx(0.6, abs=1e-3) and counts[0] / 2000 == pytest.approx(0.8, abs=1e-3)


def test_reconstruction_curve_is_the_relative_error_of_the_pruned_layer():
    rng = np.random.default_rng(2)
    x = np.maximum(rng.standard_normal((200, 24)) + 0.3, 0)
    w = rng.standard_normal((24, 5)).astype(np.float32)
    curve = reconstruction_curve(w, x.T @ x, x.sum(0), len(x), (0.0, 0.5, 0.9))
    assert curve[0] == 0.0 and curve[1] < curve[2]
    pruned, _, delta = sparsegpt_prune_with_bias(w, x.T @ x, x.sum(0), len(x), 60)  # floor(0.5 * 120)
    want = np.linalg.norm(x @ (w - pruned) - delta) ** 2 / np.linalg.norm(x @ w) ** 2
    assert curve[1] == pytest.approx(want, rel=1e-6)
