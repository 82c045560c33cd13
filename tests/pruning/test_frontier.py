"""frontier.py: the sequential capture that runs each node once gives, wave by wave, the same
statistics as running the whole model with the pruned weights written in (capture_stats on
with_weights), with and without compensated biases, and falls back to that when the cache would
be too large."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers_models import attention_block
from onnx_prune.model.layers import find_layers
from onnx_prune.pruning import bias as bias_terms
from onnx_prune.pruning import capture, frontier
from onnx_prune.pruning.calibration import checked_calibration
from onnx_prune.pruning.sparsifiers import Pruned

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _two_blocks():
    """attention_block twice in a row: block 2's q/k/v read block 1's output, an intermediate."""
    first, _ = attention_block(seed=0)
    second, _ = attention_block(seed=1)
    renamed = onnx.compose.add_prefix(second, "b2_")
    merged = onnx.compose.merge_models(first, renamed, io_map=[("Y", "b2_X")])
    x = np.random.default_rng(3).standard_normal((6, 5, 16)).astype(np.float32)
    return merged, {"X": x}


def _fixture_block():
    model = onnx.load(str(FIXTURES / "torch_transformer_block.onnx"))
    x = np.random.default_rng(4).standard_normal((9, 7, 32)).astype(np.float32)
    return model, {"hidden": x}


def _pruned(layer, seed: int) -> Pruned:
    """Half the weights zeroed, the rest perturbed, and a shifted bias where one can be written."""
    rng = np.random.default_rng(seed)
    w = np.asarray(layer.weight, np.float32)
    keep = rng.random(w.shape) < 0.5
    weight = np.where(keep, w * (1 + 0.1 * rng.standard_normal(w.shape)), 0).astype(np.float32)
    delta = rng.standard_normal(layer.N).astype(np.float32) * 0.2
    return Pruned(weight, keep, None if bias_terms.problem(layer) else bias_terms.updated(layer, delta))


def _both_ways(model, data, hessian=True):
    """Stats per wave from FrontierCapture and from the whole model with the weights written in."""
    layers = find_layers(model)[0]
    data, plan = checked_calibration(data, model)
    capturing = frontier.FrontierCapture(model, layers, data, plan, hessian=hessian)
    result, pairs = {}, []
    for w, wave in enumerate(capture.layer_groups(model, layers)):
        got = capturing.capture(wave, result)
        current = capture.with_weights(model, layers, {n: p.weight for n, p in result.items()},
                                       {n: p.bias for n, p in result.items() if p.bias is not None})
        expected = capture.capture_stats(current, wave, data, plan, hessian=hessian)
        pairs.append((got, expected))
        for i, layer in enumerate(wave):
            result[layer.node] = _pruned(layer, 10 * w + i)
    return pairs, capturing


def _assert_same(pairs, hessian=True):
    for got, expected in pairs:
        assert got.keys() == expected.keys()
        for node in got:
            g, e = got[node], expected[node]
            assert g.rows == e.rows
            np.testing.assert_allclose(g.sq_norms, e.sq_norms, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(g.input_sum, e.input_sum, rtol=1e-5, atol=1e-5)
            if hessian:
                np.testing.assert_allclose(g.hessian, e.hessian, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [_two_blocks, _fixture_block], ids=["two_attention_blocks", "torch_block"])
@pytest.mark.parametrize("hessian", [True, False])
def test_each_wave_sees_the_same_inputs_as_the_whole_pruned_model(make, hessian):
    model, data = make()
    pairs, capturing = _both_ways(model, data, hessian)
    assert len(pairs) >= 4 and capturing.cache is not None  # the cache was used all along
    _assert_same(pairs, hessian)


def test_every_node_runs_once(monkeypatch):
    """Before, every wave ran the model from its inputs: 8 waves of two blocks ran ~4x the nodes."""
    model, data = _two_blocks()
    names = {node.name for node in model.graph.node}
    ran = []
    original = capture._Session.__init__

    def counting(self, part):
        ran.extend(node.name for node in part.graph.node if node.name in names)
        original(self, part)

    monkeypatch.setattr(capture._Session, "__init__", counting)
    layers = find_layers(model)[0]
    data, plan = checked_calibration(data, model)
    capturing = frontier.FrontierCapture(model, layers, data, plan, hessian=True)
    result = {}
    for wave in capture.layer_groups(model, layers):
        capturing.capture(wave, result)
        result.update({layer.node: _pruned(layer, 0) for layer in wave})
    assert sorted(ran) == sorted(set(ran))  # no node twice
    assert len(ran) < len(names)  # the last layers' own nodes never need to run


def test_small_batches_keep_their_ranges_across_waves(monkeypatch):
    model, data = _fixture_block()
    monkeypatch.setattr(capture, "FIRST_BATCH", 2)
    monkeypatch.setattr(capture, "CAPTURE_BYTES", 7 * 32 * 4 * 6)  # a few samples per run
    pairs, capturing = _both_ways(model, data)
    assert capturing.cache is not None and len(capturing.ranges) > 2
    assert capturing.ranges[0] == (0, 2) and capturing.ranges[-1][1] == 9
    _assert_same(pairs)


def test_a_frontier_over_the_budget_falls_back_to_whole_model_runs(monkeypatch):
    model, data = _two_blocks()
    monkeypatch.setattr(frontier, "FRONTIER_BYTES", 0)
    pairs, capturing = _both_ways(model, data)
    assert capturing.cache is None
    _assert_same(pairs)
