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

After the walk, ``refit_kept`` refits the kept weights exactly given the mask (``REFIT``).
Block patterns (masking.Blocks) are chosen like unstructured removals, per walk block, by the
mean OBS error of each block's weights.

``sparsegpt_prune_with_bias`` also moves error into the bias (a constant input appended to X).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from . import masking
from .blas_threads import one_blas_thread
from ..errors import OnnxPruneError

BLOCK_SIZE = 128
PERCDAMP = 0.01
REFIT = True    # refit_kept after the walk (docs/calibration.md: +0.8 to +4.5 points at 90 %)
_DAMP_RETRIES = 4
_REFIT_BYTES = 64 * 2**20   # the batched systems of refit_kept, at most (per worker)
REFIT_WORKERS = 4           # threads solving refit_kept's batches, at most (refit_workers)

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
    factor, dead, _ = _factor(hessian, percdamp, layer, undamped)
    return factor, dead


def _factor(hessian: np.ndarray, percdamp: float, layer: str, undamped: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """inverse_hessian_factor, plus the dampened H it factored (for refit_kept)."""
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
            return np.linalg.cholesky((hinv + hinv.T) / 2).T, dead, dampened
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


def sparsegpt_prune(weight: np.ndarray, hessian: np.ndarray, drop: int, *, pattern: masking.Pattern = None,
                    refit: Optional[bool] = None, block_size: int = BLOCK_SIZE, percdamp: float = PERCDAMP,
                    layer: str = "?", on_block: Optional[BlockDone] = None) -> tuple[np.ndarray, np.ndarray]:
    """Prune ``weight [K, N]`` given ``hessian [K, K]``: returns (updated weight, keep mask).

    Unstructured: exactly ``drop`` weights go. ``pattern=(n, m)``: every group of m inputs keeps
    n weights per output and ``drop`` is ignored. ``pattern=Blocks``: ``drop`` counts blocks.
    ``refit``: the kept weights are then refitted exactly (refit_kept; None: REFIT)."""
    w, keep = _prune(np.asarray(weight, dtype=np.float64), hessian, 0, drop, pattern, refit, block_size, percdamp,
                     layer, on_block)
    return w.astype(np.float32), keep


def sparsegpt_prune_with_bias(weight: np.ndarray, hessian: np.ndarray, input_sum: np.ndarray, rows: int, drop: int, *,
                              pattern: masking.Pattern = None, refit: Optional[bool] = None,
                              block_size: int = BLOCK_SIZE, percdamp: float = PERCDAMP, layer: str = "?",
                              on_block: Optional[BlockDone] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SparseGPT that also moves error into the bias: returns (weight, keep, bias delta [N]).

    The layer computes ``x W + b``; appending a constant input 1 to every x makes the bias one
    more row of W, with the Hessian ``[[XᵀX, Xᵀ1], [1ᵀX, rows]]`` (``input_sum`` = Xᵀ1, the
    column sums of the calibration inputs). That row is walked last and never pruned, so every
    OBS update can shift it, and the walk leaves it at the least-squares optimum for the pruned
    weights: ``delta = (1/rows) · 1ᵀX (W - W_pruned)``, the mean error of the outputs (exactly:
    its dampening is zero). The weights themselves are chosen knowing that the bias absorbs any
    constant shift. ``drop`` and ``pattern`` as in sparsegpt_prune."""
    w = np.asarray(weight, dtype=np.float64)
    k, n = w.shape
    s = np.asarray(input_sum, dtype=np.float64).reshape(k, 1)
    augmented = np.block([[np.asarray(hessian, dtype=np.float64), s], [s.T, np.full((1, 1), float(rows))]])
    full, keep = _prune(np.vstack([w, np.zeros((1, n))]), augmented, 1, drop, pattern, refit, block_size, percdamp,
                        layer, on_block)
    return full[:k].astype(np.float32), keep[:k], full[k]


def _prune(weight: np.ndarray, hessian: np.ndarray, extra: int, drop: int, pattern: masking.Pattern,
           refit: Optional[bool], block_size: int, percdamp: float, layer: str, on_block: Optional[BlockDone]
           ) -> tuple[np.ndarray, np.ndarray]:
    """The walk (and the refit) on ``weight`` whose last ``extra`` rows are never pruned nor
    dampened (the bias row): float64 weight and keep mask, all rows."""
    k = len(weight) - extra
    if masking.is_nm(pattern):
        masking.check_pattern_fits(k, pattern[1], layer)
    group = pattern[1] if masking.is_nm(pattern) else pattern.cols if pattern is not None else 1
    block_size = max(group, block_size // group * group)  # walk blocks of whole groups / block rows
    # one BLAS thread: the refit's hundreds of small solves and the walk's small products gain
    # nothing from threads and, on a busy machine, lose up to 20x to them (blas_threads.py)
    with one_blas_thread():
        factor, dead, dampened = _factor(hessian, percdamp, layer, extra)
        w, keep = _walk(weight, factor, dead, drop, k, pattern, block_size, on_block)
        if REFIT if refit is None else refit:
            w = refit_kept(weight, dampened, keep)
    return w, keep


def refit_kept(weight: np.ndarray, hessian: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The kept weights refitted exactly to the layer's dense outputs, each output on its own:
    ``w_S = H_SS⁻¹ (H w)_S`` for the kept inputs S of that output, the minimum of
    ``(w - ŵ)ᵀ H (w - ŵ)`` over weights zero outside S. SparseGPT's sequential updates
    approximate this (each removal fixes the weights before it); given the mask it is the optimum.
    The outputs are solved in batches of similar kept counts, each output's system padded to the
    batch's largest count with identity rows (the pads solve to 0). The batches are independent
    and go to ``refit_workers()`` threads, each solving with one BLAS thread: every system is
    solved the same way whatever the thread count, so the result does not depend on it (BLAS's
    own threads would split each solve, differently by thread count, and spin against a loaded
    machine: blas_threads.py)."""
    w = np.asarray(weight, dtype=np.float64)
    h = np.asarray(hessian, dtype=np.float64)
    target = h @ w
    out = np.zeros_like(w)
    batches = list(_refit_batches(keep.sum(axis=0)))
    workers = min(refit_workers(), len(batches))
    if workers <= 1:
        for cols in batches:
            _refit_batch(h, target, keep, cols, out)
        return out
    with ThreadPoolExecutor(workers) as pool:   # numpy's solve and take release the GIL
        list(pool.map(lambda cols: _refit_batch(h, target, keep, cols, out), batches))
    return out


def refit_workers() -> int:
    """Threads for refit_kept: the CPUs this process may use, at most REFIT_WORKERS."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(REFIT_WORKERS, cpus))


def _refit_batches(counts: np.ndarray) -> Iterator[np.ndarray]:
    """The outputs in batches of similar kept counts, each batch's systems under _REFIT_BYTES."""
    by_count = np.argsort(counts, kind="stable")
    start = 0
    while start < len(by_count):
        width = max(1, int(counts[by_count[start]]))
        stop = start + 1
        while stop < len(by_count) and counts[by_count[stop]] <= width * 1.1 + 2 and \
                (stop - start + 1) * 8 * int(counts[by_count[stop]]) ** 2 <= _REFIT_BYTES:
            stop += 1
        yield by_count[start:stop]
        start = stop


def _refit_batch(h: np.ndarray, target: np.ndarray, keep: np.ndarray, cols: np.ndarray, out: np.ndarray) -> None:
    """refit_kept for the outputs ``cols``, one batched solve. The systems are gathered from the
    flattened H in one ``take`` (a 2-D fancy index and a masked ``where`` over the whole stack
    cost as much as the solve itself on 768-wide systems), then each output's padding rows and
    columns are set to the identity."""
    counts = keep[:, cols].sum(axis=0)
    width = int(counts.max())
    if width == 0:
        return
    idx = np.argsort(~keep[:, cols], axis=0, kind="stable")[:width].T   # [cols, width]: kept inputs first
    k = len(h)
    a = np.take(h.ravel(), idx[:, :, None] * k + idx[:, None, :])
    b = np.take_along_axis(target[:, cols].T, idx, axis=1)
    for j, count in enumerate(counts):
        if count < width:
            a[j, count:, :] = 0.0
            a[j, :, count:] = 0.0
            a[j, range(count, width), range(count, width)] = 1.0
            b[j, count:] = 0.0
    solved = np.linalg.solve(a, b[..., None])[..., 0]
    valid = np.arange(width)[None, :] < counts[:, None]
    out[idx[valid], np.broadcast_to(cols[:, None], idx.shape)[valid]] = solved[valid]


def _walk(weight: np.ndarray, factor: np.ndarray, dead: np.ndarray, drop: int, prunable: int,
          pattern: masking.Pattern, block_size: int, on_block: Optional[BlockDone]
          ) -> tuple[np.ndarray, np.ndarray]:
    """The SparseGPT walk over all rows of ``weight`` (float64 result, keep mask); only the first
    ``prunable`` rows may lose weights (the rest, such as the bias row, only absorb updates)."""
    w = np.array(weight, dtype=np.float64, copy=True)
    k, n = w.shape
    starts = list(range(0, k, block_size))
    sizes = [max(0, min(block_size, prunable - s)) for s in starts]
    if isinstance(pattern, masking.Blocks):
        sizes = [pattern.count(size, n) for size in sizes]  # blocks of each walk block
    shares = [0] * len(starts) if masking.is_nm(pattern) else masking.split_count(drop, sizes)
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
                 drop: int, pattern: masking.Pattern, prunable: int) -> np.ndarray:
    """Walk the rows (inputs) of one block: prune, then spread each row's error over the later
    rows of the block. Returns the scaled errors ``(w - q) / U_kk`` for the lazy update.
    Unstructured and block patterns choose the whole block's removals when the walk reaches it
    (a block of R outputs x C inputs goes by the mean OBS error of its weights); N:M chooses per
    group of m inputs when the walk reaches the group."""
    block = w[start:end]                       # a view: updated in place
    u = factor[start:end, start:end]
    d = np.diag(u)
    last = max(0, min(end, prunable) - start)  # rows below ``last`` only absorb updates
    if not masking.is_nm(pattern) and last:
        scores = obs_errors(block[:last], u[:last, :last], dead[start:start + last])
        keep[start:start + last] = pattern.mask(scores, drop) if pattern is not None else \
            masking._keep_mask(scores.ravel(), drop).reshape(scores.shape)
    errors = np.zeros_like(block)
    for i in range(end - start):
        if masking.is_nm(pattern) and i % pattern[1] == 0 and i < last:
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
