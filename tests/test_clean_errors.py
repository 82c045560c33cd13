"""Things new users tripped over, each now one clear line (issues #13 and #14): corrupt .npz files,
broken external data, opset < 7 models, inputs that verify nothing, re-pruning a pruned file, the
interrupt message, and eval's warnings and plotting dependency."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from helpers_models import make_model, f32, mlp
from test_cli import cli, cli_inproc, one_line_error, save


@pytest.fixture()
def mlp_file(tmp_path: Path) -> Path:
    return save(mlp(), tmp_path / "mlp.onnx")


def _corrupt_npz(tmp_path: Path) -> Path:
    """A real .npz cut in half: a zip whose central directory is gone."""
    good = tmp_path / "good.npz"
    np.savez(good, input=np.ones((4, 20), np.float32), labels=np.zeros(4, np.int64))
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return bad


@pytest.mark.parametrize("option, what", [("--calibration", "calibration data"), ("--inputs", "inputs")])
def test_corrupt_npz_for_prune_is_one_line(mlp_file: Path, tmp_path: Path, option: str, what: str):
    bad = _corrupt_npz(tmp_path)
    extra = ["--method", "wanda"] if option == "--calibration" else []
    done = cli_inproc(str(mlp_file), str(tmp_path / "o.onnx"), option, str(bad), *extra)
    assert done.exit_code == 1
    one_line_error(done.stderr, f"{what} '{bad}' is not a valid .npz: File is not a zip file")
    assert not (tmp_path / "o.onnx").exists()


def test_corrupt_npz_for_eval_is_one_line(mlp_file: Path, tmp_path: Path):
    bad = _corrupt_npz(tmp_path)
    done = cli_inproc("eval", str(mlp_file), "--data", str(bad), "--ratio", "0.5")
    assert done.exit_code == 1
    one_line_error(done.stderr, f"evaluation data '{bad}' is not a valid .npz: File is not a zip file")


def _with_external_location(tmp_path: Path, location: str) -> Path:
    """An mlp whose first weight is external data at ``location`` (which may not exist)."""
    model = mlp()
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=location)
    return save(model, tmp_path / "m.onnx")


@pytest.mark.parametrize("location, detail", [("missing.bin", "missing.bin"), ("../outside.bin", "outside.bin")])
def test_broken_external_data_is_one_line(tmp_path: Path, location: str, detail: str):
    (tmp_path.parent / "outside.bin").write_bytes(np.zeros(20 * 16, np.float32).tobytes())
    model = _with_external_location(tmp_path, location)
    done = cli_inproc(str(model), str(tmp_path / "o.onnx"))
    assert done.exit_code == 1
    one_line_error(done.stderr, f"'{model}': cannot read its external data: ")
    assert detail in done.stderr and "unexpected" not in done.stderr


def test_opset_below_7_is_one_line_without_onnxruntime_logs(tmp_path: Path):
    model = mlp()
    src = save(make_model(list(model.graph.node), list(model.graph.input), list(model.graph.output),
                          list(model.graph.initializer), opset=6), tmp_path / "old.onnx")
    onnx.checker.check_model(str(src))
    done = cli(str(src), str(tmp_path / "o.onnx"))  # a real process: onnxruntime logs to its own stderr
    assert done.returncode == 1
    one_line_error(done.stderr, "the model imports ai.onnx opset 6; onnx-prune and onnxruntime support opset 7")
    assert not (tmp_path / "o.onnx").exists()


def test_onnxruntime_logs_only_with_debug(monkeypatch):
    from onnx_prune.runtime import session as runtime

    runtime.set_verbose(False)
    assert runtime.session_options().log_severity_level == runtime.QUIET
    runtime.set_verbose(True)
    try:
        assert runtime.session_options().log_severity_level == runtime.VERBOSE
    finally:
        runtime.set_verbose(False)


@pytest.mark.parametrize("inputs, message", [
    (np.zeros((0, 20), np.float32), "are empty: 'input' [0, 20]"),
    (np.full((3, 20), np.nan, np.float32), "compares nothing: output 'logits' has no finite value"),
])
def test_inputs_that_compare_nothing_are_refused(mlp_file: Path, tmp_path: Path, inputs, message):
    data = tmp_path / "inputs.npz"
    np.savez(data, input=inputs)
    done = cli_inproc(str(mlp_file), str(tmp_path / "o.onnx"), "--inputs", str(data))
    assert done.exit_code == 1
    one_line_error(done.stderr, message)
    assert not (tmp_path / "o.onnx").exists()


def test_inputs_with_some_nan_are_still_compared(mlp_file: Path, tmp_path: Path):
    x = np.random.default_rng(0).standard_normal((3, 20)).astype(np.float32)
    x[0] = np.nan  # row 0 is NaN in both models' outputs, rows 1 and 2 are compared
    data = tmp_path / "inputs.npz"
    np.savez(data, input=x)
    done = cli_inproc(str(mlp_file), str(tmp_path / "o.onnx"), "--inputs", str(data), "--report-json",
                      str(tmp_path / "r.json"))
    assert done.exit_code == 0, done.stderr
    import json

    verification = json.loads((tmp_path / "r.json").read_text())["verification"]
    assert verification["passed"] and 0 < verification["max_rel_error"] < 1e-4


def test_repruning_a_pruned_file_says_it_is_pruned(mlp_file: Path, tmp_path: Path):
    assert cli_inproc(str(mlp_file), str(tmp_path / "p.onnx"), "-q").exit_code == 0
    done = cli_inproc(str(tmp_path / "p.onnx"), str(tmp_path / "pp.onnx"))
    assert done.exit_code == 1
    one_line_error(done.stderr, "error: no prunable layer found: the model is already pruned, it has 3 SparseGemm "
                                "nodes (/fc0/Gemm, /fc1/Gemm, /fc2/Gemm); prune the original model, or densify this "
                                "one first (onnx-prune densify)")


def test_interrupt_before_writing_says_nothing_was_written(mlp_file: Path, tmp_path: Path, monkeypatch):
    from onnx_prune import api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "prune", interrupted)
    done = cli_inproc(str(mlp_file), str(tmp_path / "o.onnx"))
    assert done.exit_code == 130
    one_line_error(done.stderr, "interrupted; nothing was written")


def test_interrupt_after_writing_the_model_says_so(mlp_file: Path, tmp_path: Path, monkeypatch):
    from onnx_prune.model import modelio

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(modelio, "write_text_atomic", interrupted)
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    done = cli_inproc(str(mlp_file), str(out), "--report-json", str(report), "--no-verify")
    assert done.exit_code == 130 and out.exists() and not report.exists()
    one_line_error(done.stderr, f"interrupted after writing {out} (complete); {report} not written")


def test_interrupt_message_sees_a_replaced_output(mlp_file: Path, tmp_path: Path, monkeypatch):
    from onnx_prune.model import modelio

    out = tmp_path / "o.onnx"
    assert cli_inproc(str(mlp_file), str(out), "-q").exit_code == 0  # an older output is there

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(modelio, "write_text_atomic", interrupted)
    done = cli_inproc(str(mlp_file), str(out), "--report-json", str(tmp_path / "r.json"), "--no-verify")
    one_line_error(done.stderr, f"interrupted after writing {out} (complete);")


def test_eval_warnings_are_warning_lines(tmp_path: Path):
    model = mlp()
    old = save(make_model(list(model.graph.node), list(model.graph.input), list(model.graph.output),
                          list(model.graph.initializer), opset=11), tmp_path / "m11.onnx")
    data = tmp_path / "d.npz"
    np.savez(data, input=np.ones((8, 20), np.float32), labels=np.zeros(8, np.int64))
    done = cli_inproc("eval", str(old), "--data", str(data), "--ratio", "0.5", "--ratio", "0.8",
                      "--batch", "2", "--baseline", "none")
    assert done.exit_code == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == ["warning: no standard-op fallback embedded: it needs ai.onnx opset >= 12 and the model imports "
                     "opset 11; the pruned file runs only with the onnx-prune library registered (or after "
                     "`onnx-prune densify`)"]


def test_eval_png_without_matplotlib_fails_before_the_sweep(mlp_file: Path, tmp_path: Path, monkeypatch):
    from onnx_prune.measure import evaluate

    def no_sweep(*args, **kwargs):
        raise AssertionError("the sweep ran")

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setattr(evaluate, "sweep", no_sweep)
    data = tmp_path / "d.npz"
    np.savez(data, input=np.ones((8, 20), np.float32), labels=np.zeros(8, np.int64))
    done = cli_inproc("eval", str(mlp_file), "--data", str(data), "--png", str(tmp_path / "p.png"))
    assert done.exit_code == 1
    one_line_error(done.stderr, "--png needs matplotlib: pip install matplotlib")
    assert not os.path.exists(tmp_path / "p.png")
