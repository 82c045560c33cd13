"""The sparsifier registry: its names are the --method choices, each method's hook gives the masks
of the README's rules (an independent numpy reference), unknown names are one clear error."""
from __future__ import annotations

import numpy as np
import pytest

from onnx_prune import cli
from onnx_prune.pruning import sparsifiers
from onnx_prune.pruning.capture import InputStats
from onnx_prune.errors import OnnxPruneError, UsageError
from onnx_prune.options import PruneOptions
from onnx_prune.model.layers import find_layers

from helpers_models import global_keep_masks, keep_mask, mlp, mlp_weights_kn


def test_registry_names_and_what_each_needs():
    assert sparsifiers.names() == ("magnitude", "wanda", "sparsegpt")
    needs = {n: sparsifiers.get(n).statistics for n in sparsifiers.names()}
    assert needs == {"magnitude": None, "wanda": sparsifiers.SQ_NORMS, "sparsegpt": sparsifiers.HESSIAN}
    assert [n for n in sparsifiers.names() if sparsifiers.get(n).needs_calibration] == ["wanda", "sparsegpt"]


def test_cli_choices_are_the_registry_names():
    options = {p.name: p for p in cli.typer.main.get_command(cli.app).commands["prune"].params}
    assert options["method"].metavar == "[" + "|".join(sparsifiers.names()) + "]"
    for name in sparsifiers.names():
        PruneOptions(0.5, method=name).validated()


def test_unknown_method_is_a_usage_error_naming_the_choices():
    with pytest.raises(UsageError, match=r"^--method must be one of magnitude, wanda, sparsegpt, got 'obs'$"):
        sparsifiers.get("obs")
    with pytest.raises(UsageError, match="--method must be one of"):
        PruneOptions(0.5, method="obs").validated()


def test_magnitude_hook_follows_the_floor_rule_per_layer_and_globally():
    model = mlp()
    layers = find_layers(model)[0]
    weights = mlp_weights_kn(model)
    ratios = {l.node: r for l, r in zip(layers, (0.3, 0.55, 0.9))}
    pruned = sparsifiers.prune_by_weights(sparsifiers.get("magnitude"), layers, ratios, scope="layer")
    for layer, w, r in zip(layers, weights, (0.3, 0.55, 0.9)):
        p = pruned[layer.node]
        assert np.array_equal(p.mask, keep_mask(w, r)) and p.bias is None
        assert p.weight.dtype == np.float32 and np.array_equal(p.weight, np.where(p.mask, w, 0))
    same = {l.node: 0.7 for l in layers}
    pruned = sparsifiers.prune_by_weights(sparsifiers.get("magnitude"), layers, same, scope="global")
    for layer, expected in zip(layers, global_keep_masks(weights, 0.7)):
        assert np.array_equal(pruned[layer.node].mask, expected)
    with pytest.raises(OnnxPruneError, match="--layer-ratio cannot be combined with --scope global"):
        sparsifiers.prune_by_weights(sparsifiers.get("magnitude"), layers, ratios, scope="global")


def test_wanda_hook_drops_the_lowest_scores_of_each_output():
    rng = np.random.default_rng(3)
    layer = find_layers(mlp())[0][1]  # K 16, N 12
    sq_norms = rng.uniform(0.1, 4.0, layer.K)
    drop = 5 * layer.weight.shape[1]  # five per output
    p = sparsifiers.get("wanda").update_mask(layer, InputStats(10, sq_norms, None), drop)
    scores = np.abs(layer.weight.astype(np.float64)) * np.sqrt(sq_norms)[:, None]
    for n in range(layer.weight.shape[1]):
        assert set(np.flatnonzero(~p.mask[:, n])) == set(np.argsort(scores[:, n], kind="stable")[:5])
    assert np.array_equal(p.weight, np.where(p.mask, layer.weight, 0))


def test_block_patterns_for_weight_and_activation_methods():
    """magnitude: the blocks of lowest mean w² go, over the layer; wanda: within each column of
    blocks (R outputs), each losing its share (per-output rule on the block scores)."""
    from onnx_prune.pruning import masking

    layer = find_layers(mlp((21, 10)))[0][0]  # K = 21, N = 10: partial blocks both ways for 4x2
    rng = np.random.default_rng(1)
    sq = rng.random(21) + 0.1
    pattern = masking.Blocks(4, 2)
    drop = masking.removal_count(0.6, pattern.count(21, 10))
    w = layer.weight.astype(np.float64)
    got = sparsifiers.get("magnitude").update_mask(layer, None, drop, pattern=pattern)
    means = np.array([[(w[k:k + 2, n:n + 4] ** 2).mean() for n in range(0, 10, 4)] for k in range(0, 21, 2)])
    order = sorted(range(means.size), key=lambda i: (means.ravel()[i], i))[:drop]
    want = np.ones(means.size, bool)
    want[order] = False
    want = np.repeat(np.repeat(want.reshape(means.shape), 2, 0), 4, 1)[:21, :10]
    assert np.array_equal(got.mask, want) and np.array_equal(got.weight, np.where(want, layer.weight, 0))

    stats = InputStats(rows=5, sq_norms=sq, hessian=None)
    got = sparsifiers.get("wanda").update_mask(layer, stats, drop, pattern=pattern)
    scores = np.abs(w) * np.sqrt(sq)[:, None]
    blocks = np.array([[scores[k:k + 2, n:n + 4].mean() for n in range(0, 10, 4)] for k in range(0, 21, 2)])
    removed = ~pattern.block_scores(got.mask.astype(float)).astype(bool)
    assert removed.sum() == drop
    per_column = removed.sum(axis=0)
    assert per_column.max() - per_column.min() <= 1  # each column of blocks loses its share, up to one
    for col in range(blocks.shape[1]):  # and within a column the lowest scores go
        gone, kept = blocks[removed[:, col], col], blocks[~removed[:, col], col]
        assert gone.max() <= kept.min()
