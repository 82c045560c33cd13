"""Scoring and masking: which weights a layer keeps.

The rule (documented in the README): for a ratio ``R`` a layer of ``size`` weights loses exactly
``floor(R * size)`` of them, those with the smallest score; ties are broken deterministically by
position (the weight that comes first in row-major order of ``W [K, N]`` is removed first).
With ``scope="global"`` the same rule applies once to all selected layers together.
Scores default to ``|w|`` (magnitude pruning); other methods supply their own scores.

The calibration-aware methods (calibration.py) add three ways to pick: N:M groups along K
(``nm_mask``), the per-output rule of Wanda that still removes exactly the floor count
(``per_output_mask``), and removal counts from one global threshold (``global_drop_counts``).
``--pattern RxC`` (``Blocks``) removes whole blocks of R outputs x C inputs instead of weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

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
    return magnitude_keep(weight, removal_count(ratio, np.size(weight)))


def _keep_mask(flat_scores: np.ndarray, drop: int) -> np.ndarray:
    """False for the ``drop`` lowest scores, ties removed first by position: what a stable sort
    gives, found with one partition (a copy of the scores) instead of a sort's 8-byte index per
    weight, the largest buffer of pruning a big layer. NaN scores count as the highest."""
    keep = np.ones(flat_scores.size, dtype=bool)
    if drop <= 0:
        return keep
    if drop >= flat_scores.size:
        keep[:] = False
        return keep
    threshold = np.partition(flat_scores, drop - 1)[drop - 1]
    if np.isnan(threshold):
        below, ties = ~np.isnan(flat_scores), np.isnan(flat_scores)
    else:
        below, ties = flat_scores < threshold, flat_scores == threshold
    keep[below] = False
    keep[np.flatnonzero(ties)[:drop - int(np.count_nonzero(below))]] = False
    return keep


# ---------------------------------------------------------------------------- magnitude, block by block

_NAN_KEY = 0x7F800001        # the key of every NaN: above +inf (0x7F800000), all NaNs tied
_BLOCK = 1 << 20             # weights per block: 4 MiB of float32, and its keys


def magnitude_keep(weight: np.ndarray, drop: int) -> np.ndarray:
    """The floor rule on ``|w|`` (``_keep_mask(|w|, drop)``, same mask) without a layer-sized
    copy: ``|w|``'s float32 bits are integer keys in the same order, so the threshold is a
    two-pass radix selection (histograms of the high, then the low 16 bits) over blocks, and the
    mask is written block by block. Extra memory: the bool mask and a few blocks."""
    rows = _as_rows(weight)
    keep = np.empty(rows.shape, dtype=bool)
    if drop <= 0 or drop >= keep.size:
        keep[:] = drop <= 0
        return keep.reshape(np.shape(weight))
    threshold, ties_to_drop = _magnitude_threshold(rows, drop)
    for block, out in zip(_key_blocks(rows), _row_blocks(keep)):
        out = out.reshape(-1)
        if ties_to_drop == 0:
            np.greater_equal(block, threshold, out=out)
            continue
        np.greater(block, threshold, out=out)
        ties = np.flatnonzero(block == threshold)
        out[ties[ties_to_drop:]] = True   # the first ties in row-major order go, the later stay
        ties_to_drop -= min(ties_to_drop, ties.size)
    return keep.reshape(np.shape(weight))


def _magnitude_threshold(rows: np.ndarray, drop: int) -> tuple[int, int]:
    """(key of the ``drop``-th smallest ``|w|``, how many weights with that key are removed)."""
    high = np.zeros(1 << 15, dtype=np.int64)   # the keys are < 2^31
    for block in _key_blocks(rows):
        high += np.bincount(block >> 16, minlength=high.size)
    top = _bin_of(high, drop)
    below = int(high[:top].sum())
    low = np.zeros(1 << 16, dtype=np.int64)
    for block in _key_blocks(rows):
        low += np.bincount(block[(block >> 16) == top] & 0xFFFF, minlength=low.size)
    bottom = _bin_of(low, drop - below)
    below += int(low[:bottom].sum())
    return (top << 16) | bottom, drop - below


def _bin_of(histogram: np.ndarray, rank: int) -> int:
    """The bin holding the ``rank``-th smallest entry (1-based)."""
    return int(np.searchsorted(np.cumsum(histogram), rank))


def _as_rows(weight: np.ndarray) -> np.ndarray:
    weight = np.asarray(weight, dtype=np.float32)
    return weight.reshape(weight.shape[0] if weight.ndim else 1, -1)


def _row_blocks(rows: np.ndarray):
    """Consecutive row blocks of about ``_BLOCK`` entries: row-major order, block by block."""
    step = max(1, _BLOCK // max(rows.shape[1], 1))
    for start in range(0, rows.shape[0], step):
        yield rows[start:start + step]


def _key_blocks(rows: np.ndarray):
    """``|w|`` of each row block as uint32 keys in the same order: a non-negative float's bits
    order like the float (sign bit cleared, so -0 ties +0), every NaN one key above +inf."""
    for block in _row_blocks(rows):
        keys = np.ascontiguousarray(block).reshape(-1).view(np.uint32) & np.uint32(0x7FFFFFFF)
        yield np.minimum(keys, np.uint32(_NAN_KEY), out=keys)


# ---------------------------------------------------------------------------- patterns

@dataclass(frozen=True)
class Blocks:
    """``--pattern RxC``: weights go in blocks of ``rows`` consecutive outputs x ``cols``
    consecutive inputs, i.e. ``W[k:k+cols, n:n+rows]`` of ``W [K, N]``. The grid starts at
    (0, 0); when K or N is not a multiple of the block, the last block of a row or column is
    partial (fewer weights), and still one block. A layer loses ``floor(R * blocks)`` whole blocks.
    A block's score is the mean of its weights' scores (for whole blocks the same order as the sum;
    a partial block is compared per weight it would remove)."""

    rows: int   # R: consecutive outputs (along N)
    cols: int   # C: consecutive inputs (along K)

    @property
    def size(self) -> int:
        return self.rows * self.cols

    def grid(self, k: int, n: int) -> tuple[int, int]:
        """Blocks along K and along N (partial edge blocks included)."""
        return -(-k // self.cols), -(-n // self.rows)

    def count(self, k: int, n: int) -> int:
        gk, gn = self.grid(k, n)
        return gk * gn

    def block_scores(self, scores: np.ndarray) -> np.ndarray:
        """``scores [K, N]`` -> ``[K/C, N/R]`` (rounded up): each block's mean score."""
        scores = np.asarray(scores, dtype=np.float64)
        k, n = scores.shape
        rows_k, cols_n = np.arange(0, k, self.cols), np.arange(0, n, self.rows)
        sums = np.add.reduceat(np.add.reduceat(scores, rows_k, axis=0), cols_n, axis=1)
        sizes = np.outer(np.minimum(self.cols, k - rows_k), np.minimum(self.rows, n - cols_n))
        return sums / sizes

    def expand(self, keep_blocks: np.ndarray, k: int, n: int) -> np.ndarray:
        """A ``[K/C, N/R]`` block keep-mask as the ``[K, N]`` weight keep-mask."""
        return np.repeat(np.repeat(keep_blocks, self.cols, axis=0), self.rows, axis=1)[:k, :n]

    def mask(self, scores: np.ndarray, drop_blocks: int) -> np.ndarray:
        """Keep-mask removing the ``drop_blocks`` blocks of lowest mean score (ties: first in
        row-major order of the block grid)."""
        blocks = self.block_scores(scores)
        keep = _keep_mask(blocks.ravel(), drop_blocks).reshape(blocks.shape)
        return self.expand(keep, *np.shape(scores))

    def __str__(self) -> str:
        return f"{self.rows}x{self.cols}"


Pattern = Union[None, tuple[int, int], Blocks]   # None: unstructured; (n, m): N:M; Blocks: RxC

_PATTERN_HELP = "--pattern takes N:M with integers 0 < N < M (e.g. 2:4) or RxC blocks with R, C >= 1 (e.g. 4x1)"


def parse_pattern(pattern: str) -> Union[tuple[int, int], Blocks]:
    """``"2:4"`` -> ``(2, 4)``: keep ``n`` of every ``m`` consecutive weights along K;
    ``"4x1"`` -> ``Blocks(rows=4, cols=1)``: remove whole blocks of 4 outputs x 1 input."""
    text = str(pattern).strip()
    if "x" in text.lower() and ":" not in text:
        try:
            r_text, c_text = text.lower().split("x")
            rows, cols = int(r_text), int(c_text)
        except ValueError:
            raise ValueError(f"{_PATTERN_HELP}, got '{pattern}'") from None
        if rows < 1 or cols < 1:
            raise ValueError(f"{_PATTERN_HELP}, got '{pattern}'")
        if rows * cols == 1:
            raise ValueError("--pattern 1x1 removes single weights, which is unstructured pruning: leave --pattern out")
        return Blocks(rows, cols)
    try:
        n_text, m_text = text.split(":")
        n, m = int(n_text), int(m_text)
    except ValueError:
        raise ValueError(f"{_PATTERN_HELP}, got '{pattern}'") from None
    if not 0 < n < m:
        raise ValueError(f"{_PATTERN_HELP}, got '{pattern}'")
    return n, m


def is_nm(pattern: Pattern) -> bool:
    return isinstance(pattern, tuple)


def check_pattern_fits(k: int, m: int, layer: str) -> None:
    if k % m != 0:
        raise ValueError(f"layer {layer}: its {k} inputs (K) are not a multiple of the pattern's group size {m}")


def nm_mask(scores: np.ndarray, n: int, m: int, layer: str = "?") -> np.ndarray:
    """Keep the ``n`` largest scores of every group of ``m`` consecutive rows (along K) in each
    column of ``scores [K, N]`` (the usual 2:4 convention: groups run along the inner dimension).
    Ties: the weight that comes first along K is removed first, as in the floor rule."""
    scores = np.asarray(scores)
    k, cols = scores.shape
    check_pattern_fits(k, m, layer)
    groups = scores.reshape(k // m, m, cols)
    order = np.argsort(groups, axis=1, kind="stable")  # ascending: the first m - n go
    keep = np.ones_like(groups, dtype=bool)
    np.put_along_axis(keep, order[:, : m - n, :], False, axis=1)
    return keep.reshape(k, cols)


# ---------------------------------------------------------------------------- per-output (Wanda) rule

def per_output_drops(scores: np.ndarray, drop: int) -> np.ndarray:
    """How many weights each output (column of ``scores [K, N]``) loses so that together they
    lose exactly ``drop``: every column ``drop // N``, and the ``drop % N`` columns whose next
    weight in line is cheapest (smallest score; ties: lower column index) one more."""
    k, cols = scores.shape
    base, extra = divmod(int(drop), cols)
    counts = np.full(cols, base, dtype=np.int64)
    if extra:
        next_in_line = np.sort(scores, axis=0, kind="stable")[base]
        counts[np.argsort(next_in_line, kind="stable")[:extra]] += 1
    return counts


def per_output_mask(scores: np.ndarray, drop: int) -> np.ndarray:
    """Keep-mask removing ``drop`` weights in all, the lowest scores of each column separately
    (counts from per_output_drops; ties within a column: lower row first)."""
    scores = np.asarray(scores)
    counts = per_output_drops(scores, drop)
    order = np.argsort(scores, axis=0, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(scores.shape[0])[:, None].repeat(scores.shape[1], 1), axis=0)
    return rank >= counts[None, :]


# ---------------------------------------------------------------------------- global allocation

def global_drop_counts(scores: Sequence[np.ndarray], ratio: float) -> list[int]:
    """How many weights each layer loses when one threshold over all ``scores`` removes exactly
    ``floor(ratio * total)`` (the global floor rule); the methods then pick *which* weights."""
    return [int((~m).sum()) for m in global_masks(scores, ratio)]


def split_count(total: int, sizes: Sequence[int]) -> list[int]:
    """Split ``total`` over consecutive parts of ``sizes`` in proportion, exactly and
    deterministically: part i gets floor(total*end_i/S) - floor(total*start_i/S)."""
    whole, start, out = max(int(sum(sizes)), 1), 0, []
    for size in sizes:
        out.append(int(total) * (start + int(size)) // whole - int(total) * start // whole)
        start += int(size)
    return out
