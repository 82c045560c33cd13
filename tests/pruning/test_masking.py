"""masking.py: the floor rule, N:M groups, the per-output (Wanda) rule and global allocation,
each checked against an independent plain-Python reading of the rule."""
from __future__ import annotations

import math

import numpy as np
import pytest

from onnx_prune.pruning import masking


def test_removal_count_is_the_floor_even_where_binary_rounding_bites():
    assert masking.removal_count(0.7, 10) == 7
    assert masking.removal_count(0.29, 100) == 29
    assert masking.removal_count(0.5, 7) == 3
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        masking.removal_count(1.0, 10)


def test_mask_from_scores_drops_the_lowest_and_breaks_ties_by_position():
    scores = np.array([[3.0, 1.0], [1.0, 2.0], [1.0, 5.0]])
    keep = masking.mask_from_scores(scores, 0.5)  # floor(0.5 * 6) = 3: the three 1.0s
    assert keep.tolist() == [[True, False], [False, True], [False, True]]
    keep = masking.mask_from_scores(scores, 0.34)  # 2 of the three tied 1.0s: row-major first
    assert keep.tolist() == [[True, False], [False, True], [True, True]]


def _plain_floor_rule(scores: np.ndarray, drop: int) -> np.ndarray:
    """The rule read literally: a stable sort of the scores, NaNs last, the first ``drop`` go."""
    flat = scores.ravel()
    order = sorted(range(flat.size), key=lambda i: (math.isnan(flat[i]), 0.0 if math.isnan(flat[i]) else flat[i], i))
    keep = np.ones(flat.size, dtype=bool)
    keep[order[:drop]] = False
    return keep.reshape(scores.shape)


@pytest.mark.parametrize("block", [1, 7, 1 << 20])
def test_magnitude_keep_is_the_floor_rule_on_abs_w_block_by_block(monkeypatch, block: int):
    """Ties (±0 tie, as do NaNs of any sign or payload, which count as the highest), infinities,
    subnormals, and ties spread over several blocks."""
    monkeypatch.setattr(masking, "_BLOCK", block)
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FFFFFFF], dtype=np.uint32).view(np.float32)
    values = np.concatenate([np.array([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, np.inf, -np.inf, 1e-45, -1e-45],
                                      np.float32), nans])
    rng = np.random.default_rng(block)
    for shape in [(9, 13), (1, 40), (40, 1), (6, 6)]:
        weight = rng.choice(values, shape)
        for drop in sorted({0, 1, weight.size // 3, weight.size // 2, weight.size - 1, weight.size}):
            with np.errstate(invalid="ignore"):  # the signalling NaNs' cast
                expected = _plain_floor_rule(np.abs(weight.astype(np.float64)), drop)
            np.testing.assert_array_equal(masking.magnitude_keep(weight, drop), expected)
    weight = rng.standard_normal((50, 70)).astype(np.float32)
    for ratio in (0.1, 0.5, 0.9):
        np.testing.assert_array_equal(masking.magnitude_mask(weight, ratio),
                                      masking.mask_from_scores(np.abs(weight), ratio))


@pytest.mark.parametrize("pattern,expected", [("2:4", (2, 4)), ("1:2", (1, 2)), (" 4:8", (4, 8))])
def test_parse_pattern(pattern, expected):
    assert masking.parse_pattern(pattern) == expected


@pytest.mark.parametrize("pattern", ["2-4", "4:2", "0:4", "2:2", "a:b", "2:4:8", "", "0x4", "4x", "2x2x2",
                                     "4x1:2"])
def test_parse_pattern_rejects_bad_text(pattern):
    with pytest.raises(ValueError, match="--pattern takes N:M with integers 0 < N < M"):
        masking.parse_pattern(pattern)


def test_parse_pattern_1x1_says_to_leave_the_pattern_out():
    with pytest.raises(ValueError, match="--pattern 1x1 removes single weights, which is unstructured pruning"):
        masking.parse_pattern("1x1")


@pytest.mark.parametrize("pattern,rows,cols", [("4x1", 4, 1), ("8x1", 8, 1), ("2x2", 2, 2), (" 1X4", 1, 4)])
def test_parse_block_pattern(pattern, rows, cols):
    assert masking.parse_pattern(pattern) == masking.Blocks(rows, cols)


def _block_reference(scores: np.ndarray, rows: int, cols: int, drop: int) -> np.ndarray:
    """Plain loops: blocks of ``rows`` outputs (columns of W) x ``cols`` inputs, edge blocks
    partial, mean score, the ``drop`` lowest go (ties: first block in row-major order)."""
    k, n = scores.shape
    blocks = []
    for bk in range(0, k, cols):
        for bn in range(0, n, rows):
            cells = [scores[i, j] for i in range(bk, min(bk + cols, k)) for j in range(bn, min(bn + rows, n))]
            blocks.append((sum(cells) / len(cells), len(blocks), bk, bn))
    keep = np.ones(scores.shape, bool)
    for _, _, bk, bn in sorted(blocks)[:drop]:
        keep[bk:bk + cols, bn:bn + rows] = False
    return keep


@pytest.mark.parametrize("rows,cols", [(4, 1), (8, 1), (2, 2), (3, 2), (1, 4)])
@pytest.mark.parametrize("shape", [(16, 16), (13, 10), (7, 3)])  # whole, partial and single-block edges
def test_block_mask_matches_the_reference(rows, cols, shape):
    scores = np.random.default_rng(0).random(shape)
    scores[0, :] = scores[1, :]  # some ties
    pattern = masking.Blocks(rows, cols)
    assert pattern.count(*shape) == math.ceil(shape[0] / cols) * math.ceil(shape[1] / rows)
    for ratio in (0.0, 0.5, 0.8, 0.99):
        drop = masking.removal_count(ratio, pattern.count(*shape))
        assert np.array_equal(pattern.mask(scores, drop), _block_reference(scores, rows, cols, drop))


def test_block_ties_go_to_the_first_block_in_row_major_order():
    keep = masking.Blocks(2, 1).mask(np.ones((2, 4)), 3)
    assert keep.tolist() == [[False, False, False, False], [False, False, True, True]]


def _nm_reference(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    keep = np.ones(scores.shape, bool)
    for col in range(scores.shape[1]):
        for g in range(0, scores.shape[0], m):
            group = [(scores[g + i, col], i) for i in range(m)]
            for _, i in sorted(group)[: m - n]:  # lowest score first, then lowest row
                keep[g + i, col] = False
    return keep


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8), (1, 2)])
def test_nm_mask_keeps_the_n_largest_of_each_group_along_k(n, m):
    rng = np.random.default_rng(n * 10 + m)
    scores = np.round(rng.random((4 * m, 7)), 1)  # rounded: plenty of ties
    keep = masking.nm_mask(scores, n, m)
    assert np.array_equal(keep, _nm_reference(scores, n, m))
    assert np.all(keep.reshape(4, m, 7).sum(axis=1) == n)


def test_nm_mask_names_the_layer_when_k_does_not_fit():
    with pytest.raises(ValueError, match="layer fc1: its 10 inputs .K. are not a multiple of the pattern's group size 4"):
        masking.nm_mask(np.ones((10, 3)), 2, 4, layer="fc1")


def test_per_output_mask_removes_exactly_drop_and_the_lowest_of_each_column():
    rng = np.random.default_rng(0)
    scores = rng.random((9, 5))
    for drop in range(0, 46, 7):
        keep = masking.per_output_mask(scores, drop)
        assert (~keep).sum() == drop
        per_col = (~keep).sum(axis=0)
        assert per_col.max() - per_col.min() <= 1
        for col in range(5):
            removed, kept = scores[~keep[:, col], col], scores[keep[:, col], col]
            if removed.size and kept.size:
                assert removed.max() <= kept.min()


def test_per_output_remainder_goes_to_the_cheapest_next_weight():
    scores = np.array([[0.1, 0.2, 0.3], [0.9, 0.5, 0.4]])
    # drop 4 over 3 columns: each column loses 1, one column loses its second weight too;
    # second-lowest per column is 0.9, 0.5, 0.4 -> column 2 pays the least
    keep = masking.per_output_mask(scores, 4)
    assert keep.tolist() == [[False, False, False], [True, True, False]]


def test_per_output_ties_resolve_by_position():
    keep = masking.per_output_mask(np.ones((4, 2)), 3)
    assert keep.tolist() == [[False, False], [False, True], [True, True], [True, True]]


def test_global_drop_counts_sum_to_the_floor_of_the_total():
    rng = np.random.default_rng(1)
    scores = [rng.random((7, 3)), rng.random((5, 11)) * 2, rng.random((13,))]
    for ratio in (0.1, 0.33, 0.5, 0.9):
        counts = masking.global_drop_counts(scores, ratio)
        assert sum(counts) == math.floor(ratio * (21 + 55 + 13))
        joined = np.concatenate([s.ravel() for s in scores])
        threshold = np.sort(joined)[sum(counts) - 1] if sum(counts) else -1
        assert counts == [int((s <= threshold).sum()) for s in scores]  # distinct random scores


def test_split_count_is_exact_and_proportional():
    assert masking.split_count(10, [4, 4, 2]) == [4, 4, 2]
    assert masking.split_count(7, [128, 128, 16]) == [3, 3, 1]
    parts = masking.split_count(1001, [128] * 7 + [104])
    assert sum(parts) == 1001 and max(parts[:7]) - min(parts[:7]) <= 1
    assert masking.split_count(0, [3, 5]) == [0, 0]
