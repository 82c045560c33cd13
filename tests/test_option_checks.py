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


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def test_nm_pattern_without_ratio_warns_of_nothing(mlp_file: Path, tmp_path: Path):
    """No --ratio: the N:M pattern sets the sparsity and no 'requested ratio' is mentioned."""
    done = cli_inproc(str(mlp_file), str(tmp_path / "o.onnx"), "--pattern", "2:4", "--no-verify")
    assert done.exit_code == 0, done.stderr
    assert _warnings(done.stderr) == []
    assert "pattern 2:4" in done.stdout


def test_nm_pattern_with_another_ratio_warns_once(mlp_file: Path, tmp_path: Path):
    done = cli_inproc(str(mlp_file), str(tmp_path / "o.onnx"), "--pattern", "2:4", "--ratio", "0.8", "--no-verify")
    assert done.exit_code == 0, done.stderr
    assert _warnings(done.stderr) == ["warning: --pattern 2:4 removes exactly 2 of every 4 weights (sparsity 0.5); "
                                      "the requested ratio 0.8 is not used"]


def test_api_default_ratio_is_the_patterns_or_the_default():
    from onnx_prune.options import DEFAULT_RATIO, default_ratio

    assert default_ratio(None, None) == DEFAULT_RATIO == 0.8
    assert default_ratio(None, "1:4") == 0.75 and default_ratio(None, "4x1") == DEFAULT_RATIO
    assert default_ratio(0.3, "2:4") == 0.3 and default_ratio(None, "junk") == DEFAULT_RATIO


def test_prune_and_bench_share_one_default_ratio(mlp_file: Path, tmp_path: Path):
    """prune without --ratio writes what --ratio 0.8 writes; bench's --ratio default is the same 0.8."""
    import typer

    from onnx_prune import cli as cli_module

    for name, args in (("default", ()), ("explicit", ("--ratio", "0.8"))):
        done = cli_inproc(str(mlp_file), str(tmp_path / f"{name}.onnx"), "--no-verify", *args)
        assert done.exit_code == 0, done.stderr
    assert (tmp_path / "default.onnx").read_bytes() == (tmp_path / "explicit.onnx").read_bytes()
    command = typer.main.get_command(cli_module.app)
    bench_ratio = next(p for p in command.commands["bench"].params if p.name == "ratio")
    assert bench_ratio.default == 0.8


def test_a_run_that_prunes_nothing_says_so_in_one_line(mlp_file: Path, tmp_path: Path):
    """--ratio 0.4: auto-dense keeps every layer; the user is told plainly, with the flags that change it."""
    out = tmp_path / "o.onnx"
    done = cli_inproc(str(mlp_file), str(out), "--ratio", "0.4")
    assert done.exit_code == 0, done.stderr
    assert _warnings(done.stderr) == [
        "warning: nothing was pruned: at ratio 0.4 all 3 layers would keep more than 40% of their weights, where "
        "the sparse kernel does not beat dense Gemm, so auto-dense kept them as they were; use --ratio 0.6 or "
        "more, or --no-auto-dense to prune them anyway"]
    assert not [n for n in onnx.load(str(out)).graph.node if n.op_type == "SparseGemm"]
    for args in (("--ratio", "0.6"), ("--ratio", "0.4", "--no-auto-dense")):
        # (--no-verify: the fidelity check would warn of its own on generated inputs)
        done = cli_inproc(str(mlp_file), str(tmp_path / "p.onnx"), *args, "--no-verify")
        assert done.exit_code == 0 and _warnings(done.stderr) == [], done.stderr


def test_api_warns_when_nothing_is_pruned(mlp_file: Path):
    from onnx_prune.api import NothingPruned

    with pytest.warns(NothingPruned, match="nothing was pruned: at ratios 0.1, 0.3 all 3 layers"):
        _, report = onnx_prune.prune(str(mlp_file), 0.3, layer_ratios={"/fc0/Gemm": 0.1})
    assert not report.sparse_layers


@pytest.mark.parametrize("command,option", [("eval", "--png"), ("eval", "--json"), ("bench", "--json")])
@pytest.mark.parametrize("folder", ["missing", "locked"])
def test_output_folder_is_checked_before_any_work(mlp_file: Path, tmp_path: Path, monkeypatch, command: str,
                                                  option: str, folder: str):
    """A missing or unwritable folder fails at once, before a model is loaded or pruned."""
    import onnx_prune.api as api
    import onnx_prune.model.modelio as modelio

    def no_work(*args, **kwargs):
        raise AssertionError("the run started before the output folder was checked")

    monkeypatch.setattr(api, "prune", no_work)
    monkeypatch.setattr(modelio, "load_model", no_work)
    target = tmp_path / folder
    if folder == "locked":
        target.mkdir()
        monkeypatch.setattr(modelio.os, "access", lambda path, mode: Path(path) != target)  # as if read-only
    data = tmp_path / "data.npz"
    np.savez(data, input=np.zeros((4, 20), np.float32), labels=np.zeros(4, np.int64))
    args = ["--data", str(data)] if command == "eval" else []
    done = cli_inproc(command, str(mlp_file), *args, option, str(target / "out.file"))
    assert done.exit_code == 1, done.stdout
    reason = "does not exist" if folder == "missing" else "is not writable"
    one_line_error(done.stderr, f"cannot write '{target / 'out.file'}': folder '{target}' {reason}")
