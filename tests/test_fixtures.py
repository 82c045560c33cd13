"""Guards the committed real-exporter fixtures: each loads, passes onnx.checker, and onnxruntime
reproduces the output the exporting framework itself computed (stored next to it)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

FIXTURE_DIR = Path(__file__).parent / "fixtures"
EXPECTED = "expected:"
NAMES = ("torch_mlp", "torch_transformer_block", "sklearn_mlp", "torch_constant_weights", "gemm_opset7",
         "torch_shared_weight", "torch_tied_identity", "torch_tied_transpose", "torch_int8_weight", "torch_if_branch")


def test_every_listed_fixture_is_committed_and_documented():
    readme = (FIXTURE_DIR / "README.md").read_text()
    for name in NAMES:
        assert (FIXTURE_DIR / f"{name}.onnx").is_file() and (FIXTURE_DIR / f"{name}.npz").is_file(), name
        assert f"{name}.onnx" in readme, name
    assert sorted(p.stem for p in FIXTURE_DIR.glob("*.onnx")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_fixture_is_valid_small_and_matches_exporter_output(name: str):
    path = FIXTURE_DIR / f"{name}.onnx"
    assert path.stat().st_size < 300 * 1024
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    data = np.load(FIXTURE_DIR / f"{name}.npz")
    feeds = {k: data[k] for k in data.files if not k.startswith(EXPECTED)}
    initializers = {t.name for t in model.graph.initializer}
    assert set(feeds) == {i.name for i in model.graph.input if i.name not in initializers}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, feeds)))
    expected = {k[len(EXPECTED):]: data[k] for k in data.files if k.startswith(EXPECTED)}
    assert expected and set(expected) <= set(got)
    for key, want in expected.items():
        assert got[key].shape == want.shape, key
        if np.issubdtype(want.dtype, np.integer):
            np.testing.assert_array_equal(got[key], want)
        else:
            np.testing.assert_allclose(got[key], want, rtol=1e-4, atol=1e-5)


def test_fixtures_carry_the_patterns_they_stand_for():
    load = lambda n: onnx.load(str(FIXTURE_DIR / f"{n}.onnx"))  # noqa: E731
    ops = lambda m: [n.op_type for n in m.graph.node]  # noqa: E731
    assert ops(load("torch_mlp")).count("Gemm") == 3
    block = load("torch_transformer_block")
    inits = {t.name for t in block.graph.initializer}
    matmuls = [n for n in block.graph.node if n.op_type == "MatMul"]
    assert sum(n.input[1] in inits for n in matmuls) == 6 and sum(n.input[1] not in inits for n in matmuls) == 2
    assert any(o.domain == "ai.onnx.ml" for o in load("sklearn_mlp").opset_import)
    const = load("torch_constant_weights")
    assert not const.graph.initializer and "Constant" in ops(const)
    assert load("gemm_opset7").opset_import[0].version == 7
    shared = load("torch_shared_weight")
    assert sum("fc.weight" in n.input for n in shared.graph.node if n.op_type == "Gemm") == 2
