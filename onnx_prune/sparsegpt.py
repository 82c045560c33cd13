"""SparseGPT (Frantar & Alistarh 2023): one-shot pruning with OBS-style weight updates.

W here is ``[K, N]`` (inputs x outputs), so the paper's rows (outputs) are our columns and its
columns (inputs) are our rows: the algorithm walks along K, and every step is vectorised over
the N outputs. ``H = XᵀX`` is the layer Hessian from calibration (capture.py).

Exact sparsity: the paper selects, per block of 128 inputs, the weights whose OBS error
``w² / [H⁻¹]²_kk`` is below the block's quantile, which need not add up to the requested count.
Here the layer's removal count ``drop`` is split over the blocks in proportion to their size
(masking.split_count) and each block removes exactly its share, lowest errors first (ties: first
in row-major order). N:M patterns choose, per group of m inputs and per output, the m - n
lowest errors when the walk reaches the group (the errors then reflect all earlier updates).

``sparsegpt_prune_with_bias`` also moves error into the bias (a constant input appended to X);
``reconstruction_curve`` measures a layer's output error at several sparsities, for
allocation.py.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from . import masking
from .errors import OnnxPruneError

BLOCK_SIZE = 128
PERCDAMP = 0.01
CURVE_GRID = (0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.96, 0.98)  # sparsities of reconstruction_curve
_DAMP_RETRIES = 4

BlockDone = Callable[[int, int], None]  # (blocks done, blocks in all)


def inverse_hessian_factor(hessian: np.ndarray, percdamp: float = PERCDAMP, layer: str = "?", *,
                           undamped: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Upper Cholesky factor U of the dampened H⁻¹ (H⁻¹ = UᵀU), and the dead-input flags.

    Dead inputs (never nonzero in calibration: diag(H) = 0) get the mean live diagonal so H
    stays invertible; their weights cost nothing on the calibration data and are removed first.
    Dampening is ``percdamp * mean(diag H)`` of the calibration H itself (before that fill-in:
    the dampening of the live inputs must not grow with the number of dead ones) and grows
    tenfold when H is still not positive definite (a few times, then a clear error). The last
    ``undamped`` entries (the constant input of bias compensation) are neither dampened nor
    counted in the mean: the bias must come out as the exact least-squares fit, not a
    ridge-shrunk one."""
    h = np.array(hessian, dtype=np.float64, copy=True)
    size = len(h) - undamped
    diag = np.diag(h).copy()
    dead = diag <= 0
    live = ~dead[:size]
    live_mean = float(diag[:size][live].mean()) if live.any() else 1.0
    damp = percdamp * float(diag[:size].mean()) if size else 0.0
    h[dead, dead] = live_mean
    scale = np.r_[np.ones(size), np.zeros(undamped)]
    for _ in range(_DAMP_RETRIES):
        try:
            dampened = h + damp * np.diag(scale)
            lower = np.linalg.cholesky(dampened)
            eye = np.eye(len(h))
            inv_lower = np.linalg.solve(lower, eye)
            hinv = inv_lower.T @ inv_lower
            return np.linalg.cholesky((hinv + hinv.T) / 2).T, dead
        except np.linalg.LinAlgError:
            damp *= 10
    raise OnnxPruneError(f"sparsegpt: the calibration Hessian of layer {layer} is not positive definite even "
                         "with strong dampening (calibration data with NaN/inf, or far too few samples?)")


def obs_errors(weight: np.ndarray, factor: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """OBS error ``w² / U_kk²`` of removing each weight alone (0 for dead inputs)."""
    d = np.diag(factor)[:, None]
    errors = np.asarray(weight, dtype=np.float64) ** 2 / d ** 2
    errors[dead, :] = 0.0
    return errors


def sparsegpt_prune(weight: np.ndarray, hessian: np.ndarray, drop: int, *, pattern: Optional[tuple[int, int]] = None,
                    block_size: int = BLOCK_SIZE, percdamp: float = PERCDAMP, layer: str = "?",
                    on_block: Optional[BlockDone] = None) -> tuple[np.ndarray, np.ndarray]:
    """Prune ``weight [K, N]`` given ``hessian [K, K]``: returns (updated weight, keep mask).

    Unstructured: exactly ``drop`` weights go. With ``pattern=(n, m)`` every group of m inputs
    keeps n weights per output and ``drop`` is ignored."""
    k, _ = np.shape(weight)
    if pattern is not None:
        masking.check_pattern_fits(k, pattern[1], layer)
        block_size = max(pattern[1], block_size // pattern[1] * pattern[1])  # blocks of whole groups
    factor, dead = inverse_hessian_factor(hessian, percdamp, layer)
    w, keep = _walk(weight, factor, dead, drop, k, pattern, block_size, on_block)
    return w.astype(np.float32), keep


def sparsegpt_prune_with_bias(weight: np.ndarray, hessian: np.ndarray, input_sum: np.ndarray, rows: int, drop: int, *,
                              block_size: int = BLOCK_SIZE, percdamp: float = PERCDAMP, layer: str = "?",
                              on_block: Optional[BlockDone] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SparseGPT that also moves error into the bias: returns (weight, keep, bias delta [N]).

    The layer computes ``x W + b``; appending a constant input 1 to every x makes the bias one
    more row of W, with the Hessian ``[[XᵀX, Xᵀ1], [1ᵀX, rows]]`` (``input_sum`` = Xᵀ1, the
    column sums of the calibration inputs). That row is walked last and never pruned, so every
    OBS update can shift it, and the walk leaves it at the least-squares optimum for the pruned
    weights: ``delta = (1/rows) · 1ᵀX (W - W_pruned)``, the mean error of the outputs (exactly:
    its dampening is zero). The weights themselves are chosen knowing that the bias absorbs any
    constant shift. Unstructured only; ``drop`` weights of ``weight`` go, as in sparsegpt_prune."""
    w = np.asarray(weight, dtype=np.float64)
    k, n = w.shape
    s = np.asarray(input_sum, dtype=np.float64).reshape(k, 1)
    augmented = np.block([[np.asarray(hessian, dtype=np.float64), s], [s.T, np.full((1, 1), float(rows))]])
    factor, dead = inverse_hessian_factor(augmented, percdamp, layer, undamped=1)
    full, keep = _walk(np.vstack([w, np.zeros((1, n))]), factor, dead, drop, k, None, block_size, on_block)
    return full[:k].astype(np.float32), keep[:k], full[k]


def _walk(weight: np.ndarray, factor: np.ndarray, dead: np.ndarray, drop: int, prunable: int,
          pattern: Optional[tuple[int, int]], block_size: int, on_block: Optional[BlockDone]
          ) -> tuple[np.ndarray, np.ndarray]:
    """The SparseGPT walk over all rows of ``weight`` (float64 result, keep mask); only the first
    ``prunable`` rows may lose weights (the rest, such as the bias row, only absorb updates)."""
    w = np.array(weight, dtype=np.float64, copy=True)
    k, _ = w.shape
    starts = list(range(0, k, block_size))
    sizes = [max(0, min(block_size, prunable - s)) for s in starts]
    shares = masking.split_count(drop, sizes) if pattern is None else [0] * len(starts)
    keep = np.ones(w.shape, dtype=bool)
    for b, start in enumerate(starts):
        end = min(start + block_size, k)
        errors = _prune_block(w, factor, dead, keep, start, end, shares[b], pattern, prunable)
        # lazy batch update: the rest of W absorbs the whole block's compensation at once
        w[end:] -= factor[start:end, end:].T @ errors
        if on_block is not None:
            on_block(b + 1, len(starts))
    w[~keep] = 0.0
    return w, keep


def _prune_block(w: np.ndarray, factor: np.ndarray, dead: np.ndarray, keep: np.ndarray, start: int, end: int,
                 drop: int, pattern: Optional[tuple[int, int]], prunable: int) -> np.ndarray:
    """Walk the rows (inputs) of one block: prune, then spread each row's error over the later
    rows of the block. Returns the scaled errors ``(w - q) / U_kk`` for the lazy update."""
    block = w[start:end]                       # a view: updated in place
    u = factor[start:end, start:end]
    d = np.diag(u)
    if pattern is None:
        scores = obs_errors(block, u, dead[start:end])
        scores[max(0, prunable - start):] = np.inf  # rows that only absorb updates
        keep[start:end] = masking._keep_mask(scores.ravel(), drop).reshape(block.shape)
    errors = np.zeros_like(block)
    for i in range(end - start):
        if pattern is not None and i % pattern[1] == 0:
            n, m = pattern
            group = obs_errors(block[i:i + m], u[i:i + m, i:i + m], dead[start + i:start + i + m])
            keep[start + i:start + i + m] = masking.nm_mask(group, n, m)
        row = block[i]
        pruned = ~keep[start + i]
        err = np.where(pruned, row, 0.0) / d[i]
        block[i] = np.where(pruned, 0.0, row)
        block[i + 1:] -= np.outer(u[i, i + 1:], err)
        errors[i] = err
    return errors


def reconstruction_curve(weight: np.ndarray, hessian: np.ndarray, input_sum: np.ndarray, rows: int,
                         grid: Sequence[float] = CURVE_GRID, *, percdamp: float = PERCDAMP, layer: str = "?"
                         ) -> list[float]:
    """Relative squared output error ``‖X ΔW + 1 Δb‖² / ‖X W‖²`` of the layer after
    sparsegpt_prune_with_bias at each sparsity of ``grid``: what allocation.error_driven_drops
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
