"""Options that cannot work together, and options the user did not give, are handled before any
work: one usage line for a contradiction, no warning about a value nobody asked for, and the same
default ratio in every command."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_prune
from onnx_prune.errors import UsageError

from helpers_models import mlp
from test_cli import cli_inproc, one_line_error, save


@pytest.fixture()
def mlp_file(tmp_path: Path) -> Path:
    return save(mlp(), tmp_path / "mlp.onnx")


@pytest.mark.parametrize("values", ["fp16"])
def test_quantize_dynamic_refuses_another_values_type(mlp_file: Path, tmp_path: Path, values: str):
    out = tmp_path / "o.onnx"
    done = cli_inproc(str(mlp_file), str(out), "--quantize", "dynamic", "--values", values)
    assert done.exit_code == 2, done.stdout
    one_line_error(done.stderr, f"--quantize dynamic stores int8 values; it cannot be combined with --values {values}")
    assert not out.exists()
    with pytest.raises(UsageError, match="cannot be combined with --values fp16"):
        onnx_prune.prune(str(mlp_file), 0.5, quantize="dynamic", values="fp16")
