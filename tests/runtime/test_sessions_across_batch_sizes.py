"""A session we open gives the same results whatever batch sizes it ran before: calibration feeds
batches of different sizes through one session. onnxruntime 1.18's MatmulTransposeFusion broke this
for attention (runtime.session.broken_optimizers leaves it out)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_prune.pruning.capture import _exposing
from onnx_prune.runtime import session as runtime

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _attention_scores_model() -> onnx.ModelProto:
    """The torch transformer block exposing its attention output (after Q·Kᵀ, softmax, ·V)."""
    model = onnx.load(str(FIXTURES / "torch_transformer_block.onnx"))
    attention_output = next(n for n in model.graph.node if n.name == "/o/MatMul").input[0]
    return _exposing(model, [attention_output])


def test_results_do_not_depend_on_the_batch_sizes_run_before():
    model = _attention_scores_model()
    x = np.random.default_rng(4).standard_normal((9, 7, 32)).astype(np.float32)
    plain = runtime.open_session(model, graph_optimization_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    expected = runtime.run(plain, {"hidden": x})[0]
    session = runtime.open_session(model)
    for batch in [9, 1, 9, 2, 3, 1, 5]:
        got = runtime.run(session, {"hidden": x[:batch]})[0]
        np.testing.assert_allclose(got, expected[:batch], rtol=1e-4, atol=1e-5, err_msg=f"batch {batch}")


@pytest.mark.parametrize("version, left_out", [("1.18.1", ["MatmulTransposeFusion"]),
                                               ("1.18.0", ["MatmulTransposeFusion"]),
                                               ("1.19.2", []), ("1.32.0", []), ("2.0.0.dev1", [])])
def test_the_fusion_is_left_out_only_where_it_is_broken(version, left_out):
    assert runtime.broken_optimizers(version) == left_out
