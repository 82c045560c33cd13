"""--recover's errors that need no torch: a missing --calibration, a missing extra, bad settings.
These run on every stack (the oldest one has no torch)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_prune
from onnx_prune.errors import OnnxPruneError, UsageError

from helpers_models import mlp
from test_cli import cli_inproc, one_line_error


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "mlp.onnx"
    onnx.save(mlp(), str(model))
    calibration = tmp_path / "calib.npz"
    np.savez(calibration, input=np.random.default_rng(0).standard_normal((16, 20)).astype(np.float32))
    return model, calibration


def test_recover_without_calibration_is_a_usage_error(files, tmp_path: Path):
    model, _ = files
    out = tmp_path / "out.onnx"
    done = cli_inproc(str(model), str(out), "--recover")
    assert done.exit_code == 2 and not out.exists()
    one_line_error(done.stderr, "error: --recover needs --calibration (the inputs whose dense outputs the pruned "
                                "model learns)")
    with pytest.raises(UsageError, match="--recover needs --calibration"):
        onnx_prune.prune(str(model), 0.5, recover=True)


def test_recover_without_torch_names_the_extra(files, tmp_path: Path, monkeypatch):
    model, calibration = files
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    out = tmp_path / "out.onnx"
    done = cli_inproc(str(model), str(out), "--recover", "--calibration", str(calibration))
    assert done.exit_code == 1 and not out.exists()
    one_line_error(done.stderr, "error: --recover needs torch: pip install 'onnx-prune[recover]'")
    with pytest.raises(OnnxPruneError, match=r"pip install 'onnx-prune\[recover\]'"):
        onnx_prune.prune(str(model), 0.5, calibration=str(calibration), recover=True)


@pytest.mark.parametrize("option, value, message", [
    ("--recover-lr", "0", "--recover-lr must be positive, got 0.0"),
    ("--recover-epochs", "0", "--recover-epochs must be at least 1, got 0"),
    ("--recover-batch", "0", "--recover-batch must be at least 1, got 0"),
    ("--recover-held-out", "1", "--recover-held-out must be in (0, 1), got 1.0"),
    ("--recover-layer-weight", "-1", "--recover-layer-weight must be 0 or more, got -1.0"),
    ("--recover-loss", "l1", "--recover-loss must be one of auto, mse, kl, cosine, got 'l1'"),
])
def test_bad_recover_settings_are_usage_errors(files, tmp_path: Path, option: str, value: str, message: str):
    model, calibration = files
    done = cli_inproc(str(model), str(tmp_path / "out.onnx"), "--recover", "--calibration", str(calibration),
                      option, value)
    assert done.exit_code == 2
    one_line_error(done.stderr, message)


def test_recover_settings_of_the_api_are_checked(files):
    model, calibration = files
    with pytest.raises(UsageError, match="recover: unknown setting 'epoch'"):
        onnx_prune.prune(str(model), 0.5, calibration=str(calibration), recover={"epoch": 3})
    with pytest.raises(UsageError, match="recover must be True, a RecoverOptions or a dict, got str"):
        onnx_prune.prune(str(model), 0.5, calibration=str(calibration), recover="yes")
