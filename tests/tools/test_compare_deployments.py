"""tools/compare_deployments.py: accuracy and interleaved timings of dense, onnxruntime int8 and pruned files."""
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_prune

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import compare_deployments  # noqa: E402

MODEL, DATA = ROOT / "models" / "mnist-mlp.onnx", ROOT / "models" / "mnist-test.npz"


def plain_accuracy(path: Path, data: dict) -> float:
    session = ort.InferenceSession(str(path), onnx_prune.session_options(), providers=["CPUExecutionProvider"])
    scores = session.run(None, {session.get_inputs()[0].name: data["input"].astype(np.float32)})[0]
    return 100 * float((scores.argmax(1) == data["labels"]).mean())


def test_accuracies_and_ratios_of_every_candidate(tmp_path: Path) -> None:
    pruned = tmp_path / "p.onnx"
    model, _ = onnx_prune.prune(str(MODEL), 0.9)
    onnx.save(model, str(pruned))
    out = tmp_path / "c.json"
    assert compare_deployments.main([str(MODEL), str(DATA), "--pruned", f"csr-90={pruned}", "--batch", "1", "3",
                                     "--rounds", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    data = dict(np.load(DATA))
    assert list(result["accuracy"]) == ["dense", "ort int8", "csr-90"]
    assert result["accuracy"]["dense"] == pytest.approx(plain_accuracy(MODEL, data))
    assert result["accuracy"]["csr-90"] == pytest.approx(plain_accuracy(pruned, data))
    assert [(r["threads"], r["batch"]) for r in result["rows"]] == [(1, 1), (1, 3)]
    for row in result["rows"]:
        assert all(v > 0 for v in row["us"].values())
        assert row["vs_dense"]["dense"] == 1.0 and row["vs_int8"]["ort int8"] == 1.0


def test_a_pruned_argument_without_a_name_is_refused() -> None:
    with pytest.raises(SystemExit, match="NAME=PATH"):
        compare_deployments.load_candidates(str(MODEL), ["just-a-path.onnx"])
