"""Peak memory of pruning WITH verification, as a structure (no timing): a prune of a model with
external data must not grow the process by more than twice the model's size beyond the fixed
overhead of the imports, the onnxruntime sessions and the SparseGemm library.

The model and the measurement come from tools/bench_memory.py (the benchmark of the 3 GiB run);
the fixed overhead is measured in the same test, by the same command on a tiny model of the same
shape, so it follows whatever this machine's onnxruntime and numpy cost.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_memory.py"


def _bench_memory():
    spec = importlib.util.spec_from_file_location("bench_memory", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peak_of_prune(bench, folder: Path, size: int, layers: int) -> tuple[int, int, dict]:
    """(peak RSS bytes of the CLI prune with verification, model bytes, its JSON report)."""
    folder.mkdir()
    model, model_bytes = bench.write_model(folder, size, layers)
    report = folder / "report.json"
    code, _, peak, output = bench.run_measured(bench.prune_command(model, folder / "pruned.onnx", 0.9, verify=True,
                                                                   extra=("--report-json", str(report))))
    assert code == 0, output
    return peak, model_bytes, json.loads(report.read_text())


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="peak RSS as Linux reports it")
def test_prune_with_verification_grows_by_less_than_twice_the_model(tmp_path: Path):
    bench = _bench_memory()
    fixed, _, _ = _peak_of_prune(bench, tmp_path / "tiny", 64, 2)
    peak, model_bytes, report = _peak_of_prune(bench, tmp_path / "large", 4096, 2)  # 2 x 64 MiB, external data
    assert report["verification"]["passed"] is True  # the verification really ran, on both layers
    assert report["verification"]["max_rel_error"] <= report["verification"]["tolerance"]
    assert len(report["layers"]) == 2
    growth = peak - fixed
    assert growth < 2 * model_bytes, (f"peak RSS {peak / 2**20:.0f} MiB = fixed overhead {fixed / 2**20:.0f} MiB + "
                                      f"{growth / model_bytes:.2f}x the model ({model_bytes / 2**20:.0f} MiB)")


@pytest.mark.parametrize("shared", [False, True])
def test_a_model_pruned_from_its_external_files_equals_the_same_model_in_memory(tmp_path: Path, monkeypatch,
                                                                               shared: bool):
    """Weights read straight from the data file, the reference written beside them (with a layer kept
    dense and every bias still external, so both are copied into the reference's folder): the same
    pruned model, verified, as from the loaded ModelProto; the reference's folder is gone afterwards."""
    import tempfile

    import onnx
    from helpers_models import mlp

    import onnx_prune

    model = mlp((16, 16, 16, 16), shared=True) if shared else mlp((20, 16, 16, 12, 5))
    path = tmp_path / "m.onnx"
    onnx.save_model(onnx.ModelProto.FromString(model.SerializeToString()), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    options = dict(ratio=0.8, verify=True, layer_ratios={"/fc1/Gemm": 0.1})
    from_file, file_report = onnx_prune.prune(path, **options)
    in_memory, memory_report = onnx_prune.prune(model, **options)
    assert file_report.verification.passed and memory_report.verification.passed
    assert [n for n in from_file.graph.node] == [n for n in in_memory.graph.node]
    assert {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in from_file.graph.initializer} == \
           {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in in_memory.graph.initializer}
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in from_file.graph.initializer)
    assert list(scratch.iterdir()) == []
