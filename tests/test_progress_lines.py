"""Progress when stderr is not a terminal: plain, rate-limited lines (progress_lines.py), from the
real command with its stderr a pipe; none with --quiet."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

from helpers_models import mlp
from onnx_prune.progress_lines import ProgressLines

LINE = re.compile(r"^\[ *(\d+\.\d) s\] (.+)$")


def _prune(tmp_path: Path, *extra: str, interval: str = "0") -> subprocess.CompletedProcess:
    model = mlp((20, 16, 12, 5))
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((64, 20)).astype(np.float32))
    return subprocess.run([sys.executable, "-m", "onnx_prune.cli", str(tmp_path / "m.onnx"), str(tmp_path / "o.onnx"),
                           "--method", "sparsegpt", "--calibration", str(tmp_path / "calib.npz"), *extra],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ONNX_PRUNE_PROGRESS_INTERVAL": interval})


def test_a_piped_prune_prints_a_line_per_layer_with_the_elapsed_time(tmp_path: Path):
    done = _prune(tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [l for l in done.stderr.splitlines() if not l.startswith("warning: ")]
    assert lines and all(LINE.match(l) for l in lines), done.stderr
    assert "\x1b" not in done.stderr  # no terminal drawing codes in a log
    messages = [LINE.match(l).group(2) for l in lines]
    for i, node in enumerate(["/fc0/Gemm", "/fc1/Gemm", "/fc2/Gemm"], start=1):
        assert f"sparsegpt: layer {i}/3 {node}" in messages
    assert any(m.startswith("verifying") for m in messages)
    seconds = [float(LINE.match(l).group(1)) for l in lines]
    assert seconds == sorted(seconds)
    assert "wrote" in done.stdout and "wrote" not in done.stderr


def test_quiet_and_the_default_interval_keep_a_quick_run_silent(tmp_path: Path):
    assert _prune(tmp_path, "--quiet").stderr == ""
    assert not [l for l in _prune(tmp_path, interval="3600").stderr.splitlines() if LINE.match(l)]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_are_rate_limited():
    clock, out = _Clock(), io.StringIO()
    lines = ProgressLines(out, min_interval=1.0, clock=clock)
    lines("loading", 0, 5)              # within the first 5 s: silent
    clock.now += 6
    lines("layer 1/3 a", 0, 3)          # printed
    clock.now += 0.5
    lines("layer 2/3 b", 1, 3)          # < 1 s after the last line: skipped
    clock.now += 0.6
    lines("layer 3/3 c", 2, 3)          # printed
    clock.now += 5
    lines("layer 3/3 c", 1, 4)          # same message within 10 s: skipped
    clock.now += 6
    lines("layer 3/3 c", 2, 4)          # same message after 11 s: printed with its count
    assert out.getvalue().splitlines() == ["[    6.0 s] layer 1/3 a", "[    7.1 s] layer 3/3 c",
                                           "[   18.1 s] layer 3/3 c (2/4)"]
