"""PruneOptions: one object carries every prune setting from the CLI or the API to the pipeline,
is validated once, and is what the report and the model's metadata record. Adding an option
touches the dataclass, the CLI and the code that uses it: these tests fail when the CLI and the
dataclass disagree or when a field is not recorded."""
from __future__ import annotations

import json
import warnings
from dataclasses import fields
from pathlib import Path

import onnx
import pytest

import onnx_prune
from onnx_prune import api, cli
from onnx_prune.errors import OnnxPruneError, UsageError
from onnx_prune.options import PruneOptions, Settings

from helpers_models import mlp
from test_cli import cli_inproc

FIELDS = [f.name for f in fields(PruneOptions)]
# prune's CLI parameters that are not settings: the files it reads and writes, and how it talks
NOT_SETTINGS = {"input_path", "output_path", "calibration", "inputs", "seq_len", "report_json", "quiet", "debug",
                # the --recover group: a RecoverOptions of its own (onnx_prune.recover), reported under 'recovery'
                "recover", "recover_epochs", "recover_steps", "recover_lr", "recover_batch", "recover_held_out",
                "recover_loss", "recover_layer_weight", "recover_threads"}  # the files and the verification inputs (--inputs, or generated at --seq-len)
CLI_NAME_OF = {"layer_ratios": "layer_ratio"}  # the CLI parameter is repeatable, one NAME=R each
# every field set away from the CLI's default, by its flag
NON_DEFAULT_FLAGS = {
    "ratio": ["--ratio", "0.5"], "scope": ["--scope", "global"], "include": ["--include", "fc*"],
    "exclude": ["--exclude", "/fc2/*"], "layer_ratios": ["--layer-ratio", "fc0.weight=0.3"],
    "min_params": ["--min-params", "7"], "method": ["--method", "wanda"],
    "calibration_samples": ["--calibration-samples", "5"], "pattern": ["--pattern", "2:4"],
    "bias_correction": ["--no-bias-correction"], "values": ["--values", "fp16"], "format": ["--format", "bcsr"],
    "quantize": ["--quantize", "dynamic"], "fallback": ["--no-fallback"], "auto_dense": ["--no-auto-dense"],
    "verify": ["--no-verify"],
}


def test_every_cli_prune_parameter_is_a_field_or_an_input_and_every_field_has_one():
    params = [p.name for p in cli.typer.main.get_command(cli.app).commands["prune"].params]
    settings = sorted(p for p in params if p not in NOT_SETTINGS)
    assert settings == sorted(CLI_NAME_OF.get(f, f) for f in FIELDS)


def _options_the_cli_builds(monkeypatch, tmp_path: Path, *flags: str) -> PruneOptions:
    """The PruneOptions the CLI hands to api.prune for ``flags`` (api.prune stopped right there)."""
    seen = []

    def stop(model_or_path, *, options, **rest):
        seen.append(options)
        raise OnnxPruneError("stopped")

    monkeypatch.setattr(api, "prune", stop)
    model = tmp_path / "m.onnx"
    onnx.save(mlp(), str(model))
    done = cli_inproc(str(model), str(tmp_path / "out.onnx"), *flags)
    assert done.exit_code == 1 and "error: stopped" in done.stderr, done.output
    (options,) = seen
    return options


def test_every_cli_flag_lands_in_its_field(monkeypatch, tmp_path: Path):
    assert sorted(NON_DEFAULT_FLAGS) == sorted(FIELDS)
    defaults = _options_the_cli_builds(monkeypatch, tmp_path)
    assert defaults == PruneOptions(verify=True)  # the CLI's defaults are the API's, but it verifies
    flags = [arg for f in FIELDS for arg in NON_DEFAULT_FLAGS[f]]
    changed = _options_the_cli_builds(monkeypatch, tmp_path, *flags)
    assert [f for f in FIELDS if getattr(changed, f) == getattr(defaults, f)] == []
    assert changed.layer_ratios == {"fc0.weight": 0.3} and changed.include == ("fc*",)


def test_every_field_is_recorded_in_the_metadata_and_the_report(tmp_path: Path):
    options = PruneOptions(ratio=0.6, exclude=["/fc2/*"], values="fp16", fallback=False)
    out, report = onnx_prune.prune(mlp(), options=options)
    metadata = json.loads({p.key: p.value for p in out.metadata_props}["onnx_prune.settings"])
    expected = dict(options.to_dict(), format="csr")  # the storage format the options selected
    assert {k: metadata[k] for k in FIELDS} == expected
    assert report.to_dict()["settings"] == metadata
    assert sorted(report.settings.options.to_dict()) == sorted(FIELDS)


def test_the_calibration_counts_join_the_record():
    settings = Settings(PruneOptions(method="wanda"), calibration_samples_used=30, calibration_samples_held=40)
    record = settings.to_dict()
    assert record["calibration_samples_used"] == 30 and record["calibration_samples_held"] == 40
    assert "calibration_samples_used" not in Settings(PruneOptions()).to_dict()


def test_keywords_and_options_build_the_same_run():
    by_keywords = onnx_prune.prune(mlp(), 0.7, scope="global", values="fp16")[1]
    by_options = onnx_prune.prune(mlp(), options=PruneOptions(ratio=0.7, scope="global", values="fp16"))[1]
    assert by_keywords.settings == by_options.settings
    assert by_keywords.settings.options.format == "csr"
    # keywords given with options replace those fields only
    mixed = onnx_prune.prune(mlp(), options=PruneOptions(ratio=0.7, values="fp16"), scope="global")[1]
    assert mixed.settings == by_options.settings


def test_the_package_exports_the_options():
    assert onnx_prune.PruneOptions is PruneOptions


def test_an_unknown_keyword_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="unexpected keyword argument 'ratoi'"):
        onnx_prune.prune(mlp(), ratoi=0.5)


@pytest.mark.parametrize("options,message", [
    (PruneOptions(ratio=1.0), r"^--ratio must be in \[0, 1\), got 1.0$"),
    (PruneOptions(layer_ratios={"fc0": -0.1}), r"^--layer-ratio fc0 must be in \[0, 1\), got -0.1$"),
    (PruneOptions(scope="model"), r"^--scope must be 'layer' or 'global', got 'model'$"),
    (PruneOptions(values="bf16"), r"^--values must be fp32, fp16 or int8, got 'bf16'$"),
    (PruneOptions(min_params=-1), r"^--min-params must be a non-negative integer, got -1$"),
    (PruneOptions(calibration_samples=0), r"^--calibration-samples must be at least 1, got 0$"),
    (PruneOptions(pattern="2:4", scope="global"), r"^--pattern 2:4 fixes every layer's sparsity at 0.5; "),
    (PruneOptions(pattern="4x1", scope="global"), r"^--pattern 4x1 \(blocks\) cannot be combined with --scope"),
    (PruneOptions(pattern="4:2"), r"^--pattern takes N:M"),
    (PruneOptions(quantize="dynamic", format="csr"), r"^--quantize dynamic stores in format csr_int8_dynamic"),
])
def test_validation_names_the_flag(options: PruneOptions, message: str):
    with pytest.raises(UsageError, match=message):
        options.validated()


def test_validated_options_name_their_storage_format_and_validate_unchanged():
    for options, name in [(PruneOptions(), "csr"), (PruneOptions(values="int8"), "csr_int8"),
                          (PruneOptions(pattern="4x1"), "bcsr"), (PruneOptions(quantize="dynamic"), "csr_int8_dynamic"),
                          (PruneOptions(format="bcsr", values="fp16"), "bcsr")]:
        checked = options.validated()
        assert checked.format == name and checked.validated() == checked
        assert checked.storage()[0].name == name


def test_validation_comes_before_any_work(tmp_path: Path):
    """A bad option is refused before the model is even read."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UsageError, match="--scope"):
            onnx_prune.prune(tmp_path / "missing.onnx", scope="model")
