"""The onnx-prune command as users run it: outputs against a numpy reference, the report, exit
codes and one-line errors, and the promises that the input is never modified and that a failed
run leaves no output behind.

A few tests start the real process (``python -m onnx_prune.cli``); the pattern sweep and the
failure injections run the same entry point in-process (typer's CliRunner) to stay fast.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import onnx_prune
from onnx_prune import cli as cli_module
from onnx_prune.sparse_gemm import contract

from helpers_models import (a_input, assert_close, f32, gemm, gemm_forward, make_model, masked, matmul, mlp,
                            mlp_reference, newest_opset, non_constant_b_gemm, relu_only, x_input)


def cli(*args: str) -> subprocess.CompletedProcess:
    """The real command in a fresh process (wide help text, so no option name is cut)."""
    return subprocess.run([sys.executable, "-m", "onnx_prune.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})


def cli_inproc(*args: str):
    """The same entry point in this process; result has exit_code, stdout and stderr."""
    return _runner().invoke(cli_module.app, cli_module.with_default_subcommand(list(args)))


def _runner() -> CliRunner:
    """A runner keeping stderr apart from stdout: click < 8.2 (the newest on Python 3.9) mixes them
    unless told not to; click 8.2 keeps them apart and no longer takes the argument."""
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def run_file(path: Path, feeds: dict, library: bool = True) -> list[np.ndarray]:
    options = onnx_prune.session_options() if library else ort.SessionOptions()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def one_line_error(stderr: str, message: str) -> None:
    assert stderr.startswith("error: ") and "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert message in stderr, stderr


@pytest.fixture()
def mlp_file(tmp_path: Path) -> Path:
    return save(mlp(), tmp_path / "mlp.onnx")


# ----------------------------------------------------------------------------- the real process

def test_prune_writes_model_report_and_json(mlp_file: Path, tmp_path: Path):
    before = digest(mlp_file)
    out, report_path = tmp_path / "out.onnx", tmp_path / "report.json"
    done = cli(str(mlp_file), str(out), "--ratio", "0.9", "--report-json", str(report_path))
    assert done.returncode == 0, done.stderr
    assert "kernel check passed" in done.stdout and "/fc0/Gemm" in done.stdout and "total" in done.stdout
    assert f"wrote {out}" in done.stdout
    assert digest(mlp_file) == before
    report = json.loads(report_path.read_text())
    assert [l["node"] for l in report["layers"]] == ["/fc0/Gemm", "/fc1/Gemm", "/fc2/Gemm"]
    assert [l["weight"] for l in report["layers"]] == ["fc0.weight", "fc1.weight", "fc2.weight"]
    assert [l["shape"] for l in report["layers"]] == [[20, 16], [16, 12], [12, 5]]
    assert [l["nnz"] for l in report["layers"]] == [320 - 288, 192 - 172, 60 - 54]
    assert report["verification"]["passed"] and report["file_size_after"] == out.stat().st_size
    assert report["file_size_before"] == mlp_file.stat().st_size
    x = np.random.default_rng(0).standard_normal((5, 20)).astype(np.float32)
    assert_close(run_file(out, {"input": x})[0], mlp_reference(mlp(), x, 0.9))


def test_explicit_subcommand_options_first_and_quiet(mlp_file: Path, tmp_path: Path):
    done = cli("prune", str(mlp_file), str(tmp_path / "o.onnx"), "--ratio", "0.8", "--quiet")
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    done = cli("--ratio", "0.8", "-q", str(mlp_file), str(tmp_path / "o2.onnx"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o2.onnx").exists()


def test_help_and_version():
    done = cli("--help")
    assert done.returncode == 0
    for word in ("prune", "bench", "eval", "densify"):
        assert word in done.stdout
    done = cli("prune", "--help")
    for option in ("--ratio", "--scope", "--include", "--exclude", "--layer-ratio", "--min-params", "--method",
                   "--calibration", "--calibration-samples", "--pattern", "--values", "--fallback",
                   "--auto-dense", "--verify", "--inputs", "--report-json", "--quiet", "--debug"):
        assert option in done.stdout, option
    assert cli("-h").stdout == cli("--help").stdout
    done = cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"onnx-prune {onnx_prune.__version__}"


@pytest.mark.parametrize("command", ["prune", "bench", "eval", "densify", None])
def test_help_reads_well_at_80_columns(command):
    """Every option whole at 80 columns: its names, flag pairs together, a value name instead of a
    type like <bool>, and a help text for each."""
    done = subprocess.run([sys.executable, "-m", "onnx_prune.cli", *([command] if command else []), "--help"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert all(len(line) <= 80 for line in text.splitlines()), text
    for cut in ("…", "<bool>", "<list[", "[["):
        assert cut not in text, (cut, text)
    assert not re.search(r"\w\.\.\.$", text, re.MULTILINE), text  # click's cut of a long command summary
    options = text.split("Options:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    # an option's line is '  --name VALUE   help' or '  --a / --no-a' with its help on the next line
    for i, line in enumerate(options):
        if line.lstrip().startswith("-"):
            has_help = "  " in line.strip() or (i + 1 < len(options) and not options[i + 1].lstrip().startswith("-"))
            assert has_help, line
    if command == "prune":
        for pair in ("--verify / --no-verify", "--fallback / --no-fallback", "--auto-dense / --no-auto-dense",
                     "--bias-correction / --no-bias-correction", "--calibration-samples N",
                     "--format [csr|csr_int8|bcsr|csr_int8_dynamic|bcsr_int8_dynamic]", "--quantize [dynamic]", "--pattern N:M|RxC"):
            assert pair in text, pair


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated(d: Path) -> Path:
    full = mlp().SerializeToString()
    return _write(d / "truncated.onnx", full[: len(full) // 3])


@pytest.mark.parametrize("make_input,args,message", [
    (lambda d: d / "missing.onnx", ["--ratio", "0.5"], "does not exist"),
    (lambda d: _write(d / "text.onnx", b"this is not a model"), [], "is not a valid ONNX model"),
    (_truncated, [], "is not a valid ONNX model"),
    (lambda d: save(mlp(), d / "m.onnx"), ["--layer-ratio", "nosuchlayer=0.5"],
     "no selected layer has that node or weight name"),
    (lambda d: save(mlp(), d / "m.onnx"), ["--include", "nothing*"], "no prunable layer left"),
    (lambda d: save(relu_only(), d / "relu.onnx"), [], "no prunable layer found"),
    (lambda d: save(non_constant_b_gemm(), d / "dyn.onnx"), [], "no prunable layer found"),
    (lambda d: save(mlp(), d / "m.onnx"), ["--inputs", "nowhere.npz"], "inputs 'nowhere.npz' does not exist"),
])
def test_bad_input_one_line_error_exit_1_no_output(tmp_path: Path, make_input, args, message):
    src = make_input(tmp_path)
    before = digest(src) if src.exists() else None
    out = tmp_path / "out.onnx"
    done = cli(str(src), str(out), *args)
    assert done.returncode == 1
    one_line_error(done.stderr, message)
    assert not out.exists() and not list(tmp_path.glob(".out.onnx*"))
    if before:
        assert digest(src) == before


@pytest.mark.parametrize("args,message", [
    (["--ratio", "1.0"], "--ratio must be in [0, 1)"),
    (["--ratio", "1.5"], "--ratio must be in [0, 1)"),
    (["--ratio", "-0.2"], "--ratio must be in [0, 1)"),
    (["--layer-ratio", "oops"], "--layer-ratio takes NAME=R"),
    (["--layer-ratio", "fc0=abc"], "--layer-ratio takes NAME=R"),
    (["--layer-ratio", "=0.5"], "--layer-ratio takes NAME=R"),
    (["--layer-ratio", "/fc0/Gemm=1.5"], "--layer-ratio /fc0/Gemm must be in"),
    (["--scope", "everything"], "--scope must be 'layer' or 'global'"),
    (["--method", "magic"], "--method must be one of magnitude, wanda, sparsegpt, got 'magic'"),
    (["--values", "int4"], "--values must be fp32"),  # then every registered choice
    (["--min-params", "-3"], "--min-params must be a non-negative integer"),
    (["--calibration-samples", "0"], "--calibration-samples must be at least 1"),
    (["--pattern", "3:2"], "--pattern takes N:M with integers 0 < N < M (e.g. 2:4) or RxC blocks with R, C >= 1 "
                           "(e.g. 4x1), got '3:2'"),
    (["--pattern", "foo"], "--pattern takes N:M with integers 0 < N < M (e.g. 2:4) or RxC blocks with R, C >= 1 "
                           "(e.g. 4x1), got 'foo'"),
    (["--pattern", "0x1"], "(e.g. 4x1), got '0x1'"),
    (["--pattern", "1x1"], "--pattern 1x1 removes single weights, which is unstructured pruning: leave --pattern out"),
    (["--pattern", "4x1", "--scope", "global"], "--pattern 4x1 (blocks) cannot be combined with --scope global"),
    (["--pattern", "2:4", "--scope", "global"], "it cannot be combined with --scope global"),
    (["--layer-ratio", "fc0.weight=0.5", "--scope", "global"], "--layer-ratio cannot be combined with --scope global"),
    (["--method", "sparsegpt"], "--method sparsegpt needs --calibration: an .npz of model inputs"),
    (["--method", "wanda"], "--method wanda needs --calibration: an .npz of model inputs"),
])
def test_bad_option_value_one_line_error_exit_2_no_output(mlp_file: Path, tmp_path: Path, args, message):
    before = digest(mlp_file)
    out = tmp_path / "out.onnx"
    done = cli(str(mlp_file), str(out), *args)
    assert done.returncode == 2
    one_line_error(done.stderr, message)
    assert not out.exists() and digest(mlp_file) == before


@pytest.mark.parametrize("args,message", [
    (["--rounds", "0"], "--rounds must be a positive integer, got 0"),
    (["--threads", "none"], "--threads takes a positive number or 'all', got 'none'"),
    (["--batch", "0"], "--batch takes positive numbers, got [0]"),
])
def test_bench_bad_option_value_exit_2(mlp_file: Path, args, message):
    done = cli_inproc("bench", str(mlp_file), "--quiet", *args)
    assert done.exit_code == 2
    one_line_error(done.stderr, message)


def test_help_lists_the_choices_of_the_registries(mlp_file: Path):
    from onnx_prune import options
    from onnx_prune.pruning import sparsifiers

    done = cli("prune", "--help")
    assert done.returncode == 0
    for names in (sparsifiers.names(), options.SCOPES, options.value_types()):
        assert f"[{'|'.join(names)}]" in done.stdout, done.stdout
    assert "[magnitude|wanda|sparsegpt]" in cli("eval", "--help").stdout
    assert "below 60%" in done.stdout


def test_npy_file_given_as_calibration_is_one_clear_error(mlp_file: Path, tmp_path: Path):
    calib = tmp_path / "calib.npz"
    with open(calib, "wb") as handle:  # np.save would append .npy to the name
        np.save(handle, np.zeros((8, 20), np.float32))
    done = cli_inproc(str(mlp_file), str(tmp_path / "o.onnx"), "--method", "wanda", "--calibration", str(calib))
    assert done.exit_code == 1
    one_line_error(done.stderr, f"calibration data '{calib}' is not a valid .npz: it holds a single array")
    assert not (tmp_path / "o.onnx").exists()


def test_calibration_labels_next_to_the_inputs_are_ignored_with_one_warning(mlp_file: Path, tmp_path: Path):
    x = np.random.default_rng(0).standard_normal((32, 20)).astype(np.float32)
    np.savez(tmp_path / "clean.npz", input=x)
    np.savez(tmp_path / "labelled.npz", input=x, labels=np.arange(32))
    reports = []
    for name in ("clean", "labelled"):
        report = tmp_path / f"{name}.json"
        done = cli_inproc(str(mlp_file), str(tmp_path / f"{name}.onnx"), "--method", "sparsegpt", "--calibration",
                          str(tmp_path / f"{name}.npz"), "--report-json", str(report),
                          "--no-verify")  # only the calibration's warning: no fidelity warning
        assert done.exit_code == 0, done.stderr
        reports.append(json.loads(report.read_text())["layers"])
        if name == "labelled":
            assert done.stderr.strip().splitlines() == [
                "warning: calibration data: ignoring 'labels', not an input of the model "
                "(its inputs: input)"]
    assert reports[0] == reports[1]


def test_usage_errors_exit_2(mlp_file: Path, tmp_path: Path):
    done = cli(str(mlp_file), str(tmp_path / "o.onnx"), "--ratio", "abc")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    done = cli(str(mlp_file))
    assert done.returncode == 2 and "Missing argument" in done.stderr


def test_output_equal_to_input_is_refused(mlp_file: Path):
    before = digest(mlp_file)
    for same in (str(mlp_file), str(mlp_file.parent / "." / mlp_file.name)):
        done = cli(str(mlp_file), same)
        assert done.returncode == 1
        one_line_error(done.stderr, "is the input file")
    assert digest(mlp_file) == before


def test_missing_output_folder(mlp_file: Path, tmp_path: Path):
    done = cli(str(mlp_file), str(tmp_path / "no" / "such" / "o.onnx"))
    assert done.returncode == 1
    one_line_error(done.stderr, "does not exist")


def test_debug_shows_traceback(tmp_path: Path):
    done = cli(str(tmp_path / "missing.onnx"), str(tmp_path / "o.onnx"), "--debug")
    assert done.returncode != 0 and "Traceback" in done.stderr and "does not exist" in done.stderr


def test_external_data_in_and_out(tmp_path: Path):
    src = tmp_path / "ext.onnx"
    onnx.save_model(mlp(dims=(64, 48, 8)), str(src), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    before = (digest(src), digest(tmp_path / "ext.onnx.data"))
    out = tmp_path / "pruned.onnx"
    done = cli(str(src), str(out), "--ratio", "0.9", "-q")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pruned.onnx.data").exists()
    assert (digest(src), digest(tmp_path / "ext.onnx.data")) == before
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    assert_close(run_file(out, {"input": x})[0], mlp_reference(mlp(dims=(64, 48, 8)), x, 0.9))
    assert len(onnx.load(str(out)).graph.node) == 2


# ----------------------------------------------------------------------------- in-process

def test_inputs_npz_for_verification(mlp_file: Path, tmp_path: Path):
    data = tmp_path / "inputs.npz"
    np.savez(data, input=np.ones((3, 20), np.float32))
    done = cli_inproc(str(mlp_file), str(tmp_path / "o.onnx"), "--inputs", str(data))
    assert done.exit_code == 0 and str(data) in done.stdout
    np.savez(data, wrong=np.ones((3, 20), np.float32))
    done = cli_inproc(str(mlp_file), str(tmp_path / "o2.onnx"), "--inputs", str(data))
    assert done.exit_code == 1
    one_line_error(done.stderr, "lack input")
    assert not (tmp_path / "o2.onnx").exists()


def _gemm_case(**kw):
    def build():
        model, p = gemm(18, 8, **kw)
        a = a_input(18, kw.get("trans_a", 0))
        ref = gemm_forward(a, masked(p["W"], 0.8), p["C"], trans_a=kw.get("trans_a", 0),
                           alpha=kw.get("alpha", 1.0), beta=kw.get("beta", 1.0))
        return model, {"A": a}, [ref]
    return build


def _matmul_case(a_rank, bias_shape=(8,), **kw):
    def build():
        model, p = matmul(18, 8, a_rank=a_rank, bias_shape=bias_shape, **kw)
        x = x_input(18, a_rank)
        ref = x.astype(np.float64) @ masked(p["W"], 0.8)
        if p["bias"] is not None:
            ref = ref + p["bias"]
        return model, {"X": x}, [np.maximum(ref, 0) if kw.get("relu") else ref]
    return build


def _shared_case():
    w = np.random.default_rng(3).standard_normal((10, 10)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["X", "W"], ["h"], name="g1", transB=1),
             helper.make_node("MatMul", ["h", "W"], ["Y"], name="m2")]
    model = make_model(nodes, [f32("X", ["b", 10])], [f32("Y", ["b", 10])], [numpy_helper.from_array(w, "W")])
    x = x_input(10, 2)
    return model, {"X": x}, [(x.astype(np.float64) @ masked(w.T, 0.8)) @ masked(w, 0.8)]


def _mixed_domains_case():
    model = mlp()
    model.graph.node.append(helper.make_node("Normalizer", ["logits"], ["normalized"], domain="ai.onnx.ml",
                                             name="norm", norm="L1"))
    model.graph.output.append(f32("normalized", ["batch", 5]))
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    x = np.random.default_rng(4).standard_normal((2, 20)).astype(np.float32)
    ref = mlp_reference(mlp(), x, 0.8)
    return model, {"input": x}, [ref, ref / np.abs(ref).sum(axis=1, keepdims=True)]


def _opset_case(opset):
    def build():
        return _gemm_case(trans_b=1, bias_shape=(8,), opset=opset)()
    return build


PATTERNS = {
    "gemm-plain": _gemm_case(),
    "gemm-transA-transB-alpha-beta-bias-row": _gemm_case(trans_a=1, trans_b=1, alpha=0.5, beta=-1.0, bias_shape=(1, 8)),
    "gemm-scalar-bias": _gemm_case(bias_shape=()),
    "gemm-bias-M-by-1": _gemm_case(trans_b=1, bias_shape=(7, 1)),
    "gemm-constant-node": _gemm_case(trans_b=1, bias_shape=(8,), constant_node=True),
    "matmul-2d-add": _matmul_case(2),
    "matmul-3d-add-relu": _matmul_case(3, relu=True),
    "matmul-4d-bias-first": _matmul_case(4, bias_first=True),
    "matmul-no-bias": _matmul_case(3, bias_shape=(None,)),
    "matmul-constant-node": _matmul_case(3, constant_node=True),
    "shared-weight": _shared_case,
    "mixed-domains": _mixed_domains_case,
    "opset-7": _opset_case(7),
    "opset-newest": _opset_case(newest_opset()),
}


@pytest.mark.parametrize("name", list(PATTERNS))
def test_every_eligible_pattern_through_the_cli(tmp_path: Path, name: str):
    model, feeds, expected = PATTERNS[name]()
    src = save(model, tmp_path / "in.onnx")
    before = digest(src)
    out = tmp_path / "out.onnx"
    done = cli_inproc(str(src), str(out), "--ratio", "0.8", "--report-json", str(tmp_path / "r.json"))
    assert done.exit_code == 0, done.output
    assert digest(src) == before
    written = onnx.load(str(out))
    onnx.checker.check_model(written)
    assert any(n.op_type == contract.OP_TYPE for n in written.graph.node)
    for got, want in zip(run_file(out, feeds), expected):
        assert_close(got, want)
    assert json.loads((tmp_path / "r.json").read_text())["verification"]["passed"]


def test_options_reach_the_output(mlp_file: Path, tmp_path: Path):
    out = tmp_path / "o.onnx"
    done = cli_inproc(str(mlp_file), str(out), "--ratio", "0.9", "--scope", "global", "--values", "fp16",
                      "--no-fallback", "--no-verify", "--exclude", "/fc2/*", "--layer-ratio", "fc0.weight=0.9",
                      "--report-json", str(tmp_path / "r.json"))
    assert done.exit_code == 0, done.output
    assert "verification" not in done.stdout
    written = onnx.load(str(out))
    assert not written.functions
    assert [n.op_type for n in written.graph.node] == [contract.OP_TYPE, contract.OP_TYPE, "Gemm"]
    assert {t.data_type for t in written.graph.initializer if t.name.endswith("sparse_values")} == {TensorProto.FLOAT16}
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["settings"]["scope"] == "global" and report["verification"] is None
    assert report["skipped"] == [{"node": "/fc2/Gemm", "reason": "matched by --exclude"}]
    assert sum(l["params"] - l["nnz"] for l in report["layers"]) == int(0.9 * (320 + 192))
    settings = json.loads({p.key: p.value for p in written.metadata_props}["onnx_prune.settings"])
    assert settings["values"] == "fp16" and settings["exclude"] == ["/fc2/*"]


def test_printed_report_states_the_settings(mlp_file: Path, tmp_path: Path):
    done = cli_inproc(str(mlp_file), str(tmp_path / "o.onnx"), "--ratio", "0.9")
    assert done.exit_code == 0, done.output
    assert "settings: method magnitude, scope layer, ratio 0.9, values fp32, format csr\n" in done.stdout
    done = cli_inproc(str(mlp_file), str(tmp_path / "o8.onnx"), "--ratio", "0.8", "--values", "int8",
                      "--scope", "global", "--exclude", "/fc2/*")
    assert done.exit_code == 0, done.output
    assert ("settings: method magnitude, scope global, ratio 0.8, values int8, format csr_int8, exclude /fc2/*\n"
            in done.stdout)
    assert "calibration" not in done.stdout


def test_bcsr_report_counts_kept_weights_apart_from_the_stored_block_values(mlp_file: Path, tmp_path: Path):
    """Unstructured masks in bcsr store whole blocks: 'kept weights' and the sparsity are the mask's
    (the floor rule), 'stored values' what the file holds, zeros of partly kept blocks included."""
    out, report = tmp_path / "b.onnx", tmp_path / "r.json"
    done = cli_inproc(str(mlp_file), str(out), "--ratio", "0.9", "--format", "bcsr", "--no-auto-dense",
                      "--report-json", str(report))
    assert done.exit_code == 0, done.stderr
    layers = json.loads(report.read_text())["layers"]
    assert [l["nnz"] for l in layers] == [320 - 288, 192 - 172, 60 - 54]
    assert [l["sparsity"] for l in layers] == pytest.approx([288 / 320, 172 / 192, 54 / 60])
    model = onnx.load(str(out))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    stored = []
    for node, layer in zip([n for n in model.graph.node if n.op_type == contract.OP_TYPE], layers):
        values, offsets = inits[node.input[1]], inits[node.input[3]].astype(int)
        n, r = layer["shape"][1], values.shape[1]
        padding = (offsets[-1] - offsets[-2]) * (-(-n // r) * r - n)  # the last block row's outputs >= N
        stored.append(values.size - int(padding))
        assert np.count_nonzero(values) == layer["nnz"]
    assert [l["stored"] for l in layers] == stored and sum(stored) > sum(l["nnz"] for l in layers)
    assert "values ┃" in done.stdout  # the column's header (second line)
    zeros = sum(stored) - sum(l["nnz"] for l in layers)
    assert (f"stored values: the format stores whole blocks, {zeros:,} of its values are zeros of blocks only "
            "partly kept") in done.stdout


def test_csr_report_has_no_stored_values_column(mlp_file: Path, tmp_path: Path):
    done = cli_inproc(str(mlp_file), str(tmp_path / "c.onnx"), "--ratio", "0.9", "--report-json",
                      str(tmp_path / "r.json"))
    assert done.exit_code == 0, done.stderr
    assert "stored values" not in done.stdout and "values ┃" not in done.stdout
    assert all(l["stored"] == l["nnz"] for l in json.loads((tmp_path / "r.json").read_text())["layers"])


def test_settings_line_names_calibration_and_pattern():
    from onnx_prune.check.report import settings_line
    from onnx_prune.options import PruneOptions, Settings

    line = settings_line(Settings(PruneOptions(method="sparsegpt", scope="layer", ratio=0.5, values="fp16",
                                               format="csr", pattern="2:4", calibration_samples=256,
                                               layer_ratios={"fc0.weight": 0.7}, auto_dense=True, fallback=False)))
    assert line == ("settings: method sparsegpt, scope layer, pattern 2:4, values fp16, format csr, "
                    "calibration samples 256, layer ratio fc0.weight=0.7, no fallback")
    assert "calibration samples all" in settings_line(Settings(PruneOptions(method="wanda", ratio=0.5)))


@pytest.mark.parametrize("cap,expected", [
    (None, "calibration samples 40 (all)"),
    ("16", "calibration samples 16 of 40 (the first 16)"),
    ("100", "calibration samples 40 (all)"),
])
def test_report_says_how_many_calibration_samples_were_used(mlp_file: Path, tmp_path: Path, cap, expected):
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(1).standard_normal((40, 20)).astype(np.float32))
    report = tmp_path / "r.json"
    done = cli_inproc(str(mlp_file), str(tmp_path / "o.onnx"), "--method", "wanda", "--calibration",
                      str(tmp_path / "calib.npz"), "--report-json", str(report),
                      *(["--calibration-samples", cap] if cap else []))
    assert done.exit_code == 0, done.stderr
    assert f", {expected}" in done.stdout, done.stdout
    settings = json.loads(report.read_text())["settings"]
    used = 16 if cap == "16" else 40
    assert (settings["calibration_samples_used"], settings["calibration_samples_held"]) == (used, 40)


def test_auto_dense_reported_and_overridable(mlp_file: Path, tmp_path: Path):
    done = cli_inproc(str(mlp_file), str(tmp_path / "o.onnx"), "--ratio", "0.3")
    assert done.exit_code == 0 and "kept dense" in done.stdout and "--no-auto-dense" in done.stdout
    assert not [n for n in onnx.load(str(tmp_path / "o.onnx")).graph.node if n.op_type == contract.OP_TYPE]
    done = cli_inproc(str(mlp_file), str(tmp_path / "o2.onnx"), "--ratio", "0.3", "--no-auto-dense")
    assert done.exit_code == 0 and "kept dense" not in done.stdout


def test_non_float32_layer_warning_is_printed(tmp_path: Path):
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("MatMul", ["X", "W32"], ["h"], name="fp32_layer"),
             helper.make_node("Cast", ["h"], ["h64"], to=TensorProto.DOUBLE, name="cast"),
             helper.make_node("MatMul", ["h64", "W64"], ["Y"], name="fp64_layer")]
    model = make_model(nodes, [f32("X", [2, 8])], [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, [2, 4])],
                       [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W32"),
                        numpy_helper.from_array(rng.standard_normal((8, 4)), "W64")])
    src = save(model, tmp_path / "in.onnx")
    done = cli_inproc(str(src), str(tmp_path / "o.onnx"))
    assert done.exit_code == 0, done.output
    assert "warning: layer fp64_layer skipped: its weight is float64" in done.stderr


def test_unwritable_output_folder(mlp_file: Path, tmp_path: Path, monkeypatch):
    import onnx_prune.model.modelio as modelio

    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(modelio.os, "access", lambda path, mode: Path(path) != locked)  # as if read-only
    done = cli_inproc(str(mlp_file), str(locked / "o.onnx"))
    assert done.exit_code == 1
    one_line_error(done.stderr, "is not writable")
    assert os.listdir(locked) == []


def test_failed_write_leaves_no_output(mlp_file: Path, tmp_path: Path, monkeypatch):
    def broken_save(model, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", broken_save)
    done = cli_inproc(str(mlp_file), str(tmp_path / "o.onnx"))
    assert done.exit_code == 1
    one_line_error(done.stderr, "No space left on device")
    assert sorted(os.listdir(tmp_path)) == ["mlp.onnx"]


def test_failed_verification_writes_nothing(mlp_file: Path, tmp_path: Path, monkeypatch):
    import onnx_prune.check.verify as verify

    monkeypatch.setattr(verify, "VERIFY_TOLERANCE", -1.0)
    done = cli_inproc(str(mlp_file), str(tmp_path / "o.onnx"), "--report-json", str(tmp_path / "r.json"))
    assert done.exit_code == 1
    one_line_error(done.stderr, "verification failed")
    assert sorted(os.listdir(tmp_path)) == ["mlp.onnx"]


def test_unexpected_exception_is_one_line(mlp_file: Path, tmp_path: Path, monkeypatch):
    from onnx_prune import api

    def boom(*args, **kwargs):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(api, "rewrite", boom)
    done = cli_inproc(str(mlp_file), str(tmp_path / "o.onnx"))
    assert done.exit_code == 1
    one_line_error(done.stderr, "unexpected RuntimeError: something broke (run with --debug")
    assert not (tmp_path / "o.onnx").exists()


def test_densify_round_trip(mlp_file: Path, tmp_path: Path):
    pruned, dense = tmp_path / "p.onnx", tmp_path / "d.onnx"
    assert cli_inproc(str(mlp_file), str(pruned), "--ratio", "0.9", "-q").exit_code == 0
    done = cli_inproc("densify", str(pruned), str(dense))
    if "lacks onnx_prune.sparse_gemm.densify" in done.stderr:
        pytest.skip("onnx_prune.sparse_gemm.densify is not part of this installation")
    assert done.exit_code == 0, done.output
    model = onnx.load(str(dense))
    assert not [n for n in model.graph.node if n.domain == contract.DOMAIN]
    x = np.random.default_rng(6).standard_normal((3, 20)).astype(np.float32)
    assert_close(run_file(dense, {"input": x}, library=False)[0], mlp_reference(mlp(), x, 0.9))
    done = cli_inproc("densify", str(pruned), str(pruned))
    assert done.exit_code == 1
    one_line_error(done.stderr, "is the input file")


def test_densify_of_a_model_without_sparse_gemm_writes_an_unchanged_copy_and_says_so(mlp_file: Path,
                                                                                       tmp_path: Path):
    out = tmp_path / "d.onnx"
    done = cli_inproc("densify", str(mlp_file), str(out))
    assert done.exit_code == 0, done.stderr
    assert done.stderr.strip().splitlines() == [f"warning: '{mlp_file}' has no SparseGemm node; {out} is an "
                                                "unchanged copy"]
    assert done.stdout.strip() == f"wrote {out}"
    assert onnx.load(str(out)) == onnx.load(str(mlp_file))


def test_bench_refuses_a_pruned_model_as_the_dense_one(mlp_file: Path, tmp_path: Path):
    pruned = tmp_path / "p.onnx"
    assert cli_inproc(str(mlp_file), str(pruned), "-q").exit_code == 0
    usage = "onnx-prune bench DENSE.onnx [PRUNED.onnx]"
    nodes = "3 SparseGemm nodes (/fc0/Gemm, /fc1/Gemm, /fc2/Gemm)"
    for args, message in [
        ((pruned, mlp_file), f"error: the arguments look swapped: '{pruned}' is pruned ({nodes}) and '{mlp_file}' "
                             f"is not; {usage}"),
        ((pruned,), f"error: '{pruned}' is already pruned ({nodes}); bench takes the dense model first: {usage}"),
        ((pruned, pruned), f"error: '{pruned}' is already pruned ({nodes}); bench takes the dense model first"),
        ((mlp_file, mlp_file), f"error: '{mlp_file}' has no SparseGemm node, so it is not a pruned model; {usage}"),
    ]:
        done = cli_inproc("bench", *map(str, args), "--batch", "1", "--rounds", "1")
        assert done.exit_code == 2, done.stdout
        one_line_error(done.stderr, message)
        assert "dense µs" not in done.stdout


# ----------------------------------------------------------------------------- real-exporter fixtures

# weights behind Identity / Transpose / int8 * scale, and If bodies, have tests of their own
# (test_shared_weights.py): the masked reference below writes masks into initializers by name
FIXTURES = sorted(p for p in (Path(__file__).parent / "fixtures").glob("*.onnx")
                  if p.stem not in ("torch_tied_identity", "torch_tied_transpose", "torch_int8_weight"))


def _feeds_for(model: onnx.ModelProto) -> dict:
    """Seeded inputs from the declared shapes (symbolic dims: 2), zeros for integer inputs."""
    rng = np.random.default_rng(0)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        t = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 2 for d in t.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        feeds[value.name] = (rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating)
                             else np.zeros(shape, dtype))
    return feeds


def _masked_dense_reference(model: onnx.ModelProto, report: dict, ratio: float) -> onnx.ModelProto:
    """IN with every pruned layer's weight masked by the test's own floor rule (standard ops only)."""
    from helpers_models import keep_mask

    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    nodes = {n.name: n for n in ref.graph.node}
    inits = {t.name: t for t in ref.graph.initializer}
    for layer in report["layers"]:
        if layer["status"] != "sparse":
            continue
        node = nodes[layer["node"]]
        trans_b = any(a.name == "transB" and a.i for a in node.attribute) if node.op_type == "Gemm" else False
        if layer["weight"] in inits:
            target = inits[layer["weight"]]
        else:  # a Constant node's value (exporters that never use initializers)
            const = next(n for n in ref.graph.node if n.op_type == "Constant" and n.output[0] == layer["weight"])
            target = next(a for a in const.attribute if a.name == "value").t
        stored = numpy_helper.to_array(target)
        w_kn = stored.T if trans_b else stored
        kept = np.where(keep_mask(w_kn, ratio), w_kn, 0).astype(np.float32)
        target.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(kept.T if trans_b else kept), target.name))
    return ref


@pytest.mark.skipif(not FIXTURES, reason="no real-exporter fixtures in tests/fixtures yet")
@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_real_exporter_fixtures(tmp_path: Path, fixture: Path):
    before = digest(fixture)
    out, report_path = tmp_path / "out.onnx", tmp_path / "r.json"
    done = cli_inproc(str(fixture), str(out), "--ratio", "0.8", "--report-json", str(report_path))
    assert done.exit_code == 0, done.output
    assert digest(fixture) == before
    report = json.loads(report_path.read_text())
    assert report["verification"]["passed"] and any(l["status"] == "sparse" for l in report["layers"])
    model = onnx.load(str(fixture))
    weights = [l["weight"] for l in report["layers"]]
    if len(set(weights)) != len(weights):
        pytest.skip("shared weights: one masked initializer cannot stand for several masks")
    feeds = _feeds_for(model)
    reference = ort.InferenceSession(_masked_dense_reference(model, report, 0.8).SerializeToString(),
                                     providers=["CPUExecutionProvider"]).run(None, feeds)
    for got, want in zip(run_file(out, feeds), reference):
        if np.issubdtype(np.asarray(want).dtype, np.floating):
            assert_close(got, want.astype(np.float64), rtol=1e-4)


# ----------------------------------------------------------------------------- calibration wiring

def test_calibration_methods_and_patterns_reach_the_sparsifier(mlp_file: Path, tmp_path: Path):
    import importlib.util

    if importlib.util.find_spec("onnx_prune.pruning.calibration") is None:
        done = cli_inproc(str(mlp_file), str(tmp_path / "o.onnx"), "--pattern", "2:4")
        assert done.exit_code == 1
        one_line_error(done.stderr, "pattern 2:4 needs onnx_prune.pruning.calibration")
        return
    cal = tmp_path / "cal.npz"
    np.savez(cal, input=np.random.default_rng(9).standard_normal((16, 20)).astype(np.float32))
    for method in ("wanda", "sparsegpt"):
        out, report = tmp_path / f"{method}.onnx", tmp_path / f"{method}.json"
        done = cli_inproc(str(mlp_file), str(out), "--method", method, "--calibration", str(cal), "--ratio", "0.75",
                          "--calibration-samples", "8", "--report-json", str(report))
        assert done.exit_code == 0, done.output
        data = json.loads(report.read_text())
        assert data["settings"]["method"] == method and data["verification"]["passed"]
        assert [l["nnz"] for l in data["layers"]] == [320 - 240, 192 - 144, 60 - 45]
    out = tmp_path / "nm.onnx"
    done = cli_inproc(str(mlp_file), str(out), "--pattern", "2:4", "--ratio", "0.5")
    assert done.exit_code == 0, done.output
    model = onnx.load(str(out))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in (n for n in model.graph.node if n.op_type == contract.OP_TYPE):
        indices, offsets = inits[node.input[2]].astype(int), inits[node.input[3]]
        for n in range(len(offsets) - 1):  # at most 2 kept in every group of 4 consecutive inputs
            groups = np.bincount(indices[offsets[n]:offsets[n + 1]] // 4)
            assert groups.max(initial=0) <= 2
    done = cli_inproc(str(mlp_file), str(tmp_path / "w.onnx"), "--method", "wanda")
    assert done.exit_code == 2
    one_line_error(done.stderr, "needs --calibration")
