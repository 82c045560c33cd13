"""The ``onnx-prune`` command.

``onnx-prune IN.onnx OUT.onnx --ratio 0.8`` prunes (the ``prune`` subcommand is implied); ``bench``,
``eval`` and ``densify`` are subcommands. Errors are one line on stderr with a non-zero exit code;
``--debug`` shows the traceback.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from ._version import __version__
from .errors import OnnxPruneError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Prune the Gemm / MatMul weights of an ONNX model and run it faster in onnxruntime.\n\n"
                       "[bold]onnx-prune IN.onnx OUT.onnx --ratio 0.8[/bold] prunes (same as "
                       "[bold]onnx-prune prune ...[/bold]).")

SUBCOMMANDS = ("prune", "bench", "eval", "densify")
EXIT_ERROR = 1


def _fail(message: str, debug: bool) -> None:
    if debug:
        raise
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_ERROR)


def _parse_layer_ratios(items: List[str]) -> dict[str, float]:
    ratios = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            ratios[name] = float(value)
        except ValueError:
            raise OnnxPruneError(f"--layer-ratio takes NAME=R (e.g. fc1=0.5), got '{item}'") from None
    return ratios


def _progress(quiet: bool):
    from rich.console import Console

    if quiet:
        return None, None
    console = Console(stderr=True)
    status = console.status("pruning…")
    return status, (lambda msg: status.update(f"{msg}…"))


@app.command("prune")
def prune_command(
    input_path: Path = typer.Argument(..., metavar="IN.onnx", help="Model to prune (never modified)."),
    output_path: Path = typer.Argument(..., metavar="OUT.onnx", help="Where to write the pruned model."),
    ratio: float = typer.Option(0.8, "--ratio", "-r", help="Fraction of each layer's weights removed, in [0, 1): "
                                "exactly floor(R x size) of the smallest-|w| weights (ties: first in row-major W[K,N])."),
    scope: str = typer.Option("layer", help="layer: the ratio applies per layer; global: one threshold over all layers."),
    include: List[str] = typer.Option([], "--include", help="Only layers whose node or weight name matches (glob; repeatable)."),
    exclude: List[str] = typer.Option([], "--exclude", help="Leave matching layers dense (glob; repeatable)."),
    layer_ratio: List[str] = typer.Option([], "--layer-ratio", help="NAME=R: another ratio for one layer (repeatable)."),
    min_params: int = typer.Option(0, "--min-params", help="Leave layers with fewer weights dense."),
    method: str = typer.Option("magnitude", help="magnitude, wanda or sparsegpt (the last two need --calibration)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help=".npz of inputs keyed by graph input name, first axis = samples."),
    calibration_samples: Optional[int] = typer.Option(None, "--calibration-samples", help="Use at most N calibration samples."),
    pattern: Optional[str] = typer.Option(None, "--pattern", help="Structured sparsity N:M (e.g. 2:4) along each output's inputs."),
    values: str = typer.Option("fp32", "--values", help="Stored weight values: fp32 or fp16 (smaller file)."),
    fallback: bool = typer.Option(True, "--fallback/--no-fallback", help="Embed a standard-op fallback so the file also runs without the library."),
    auto_dense: bool = typer.Option(True, "--auto-dense/--no-auto-dense", help="Keep layers dense where the sparse kernel cannot win (sparsity below 60%)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Compare OUT with the masked dense model in onnxruntime."),
    inputs: Optional[Path] = typer.Option(None, "--inputs", help=".npz of inputs for the verification (default: generated)."),
    report_json: Optional[Path] = typer.Option(None, "--report-json", help="Write the report as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Prune IN.onnx into OUT.onnx and print a per-layer report."""
    from . import api, modelio

    try:
        modelio.check_output_path(input_path, output_path)
        status, say = _progress(quiet)
        with warnings.catch_warnings(record=True) as caught, (status or _Null()):
            warnings.simplefilter("always")
            model, report = api.prune(
                input_path, ratio, scope=scope, include=include, exclude=exclude,
                layer_ratios=_parse_layer_ratios(layer_ratio), min_params=min_params, method=method,
                calibration=calibration, calibration_samples=calibration_samples, pattern=pattern,
                values=values, fallback=fallback, auto_dense=auto_dense, verify=verify, verify_inputs=inputs,
                progress=say)
        if report.verification and not report.verification.passed:
            raise OnnxPruneError(f"verification failed: max relative error {report.verification.max_rel_error:.2e} "
                                 f"exceeds {report.verification.tolerance:.0e}; nothing was written")
        modelio.save_model_atomic(model, output_path, external_data=_input_used_external_data(input_path))
        report.size_after = _written_size(output_path)
        if report_json:
            report_json.write_text(report.to_json())
        if not quiet:
            for w in caught:
                typer.echo(f"warning: {w.message}", err=True)
            report.print()
            typer.echo(f"wrote {output_path}")
    except OnnxPruneError as exc:
        _fail(str(exc), debug)
    except KeyboardInterrupt:
        _fail("interrupted; nothing was written", debug)


@app.command("bench")
def bench_command(
    input_path: Path = typer.Argument(..., metavar="IN.onnx", help="The dense model."),
    pruned_path: Optional[Path] = typer.Argument(None, metavar="[PRUNED.onnx]", help="Its pruned version (default: prune IN in memory at --ratio)."),
    ratio: float = typer.Option(0.9, "--ratio", help="Ratio for the in-memory pruning when PRUNED is not given."),
    batch: List[int] = typer.Option([1, 16, 64, 256], "--batch", "-b", help="Batch sizes (repeatable)."),
    threads: List[str] = typer.Option(["1"], "--threads", "-t", help="intra_op_num_threads values, or 'all' (repeatable)."),
    rounds: int = typer.Option(5, "--rounds", help="Interleaved timing rounds per configuration."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    debug: bool = typer.Option(False, "--debug"),
) -> None:
    """Time the dense model against the pruned one in one onnxruntime process."""
    from .bench import run_bench_cli

    try:
        run_bench_cli(str(input_path), str(pruned_path) if pruned_path else None, ratio=ratio, batches=batch,
                      threads=threads, rounds=rounds, json_path=str(json_path) if json_path else None, quiet=quiet)
    except OnnxPruneError as exc:
        _fail(str(exc), debug)


@app.command("eval")
def eval_command(
    model: Path = typer.Argument(..., metavar="MODEL.onnx", help="The dense model."),
    data: Path = typer.Option(..., "--data", help=".npz with 'labels' and arrays keyed by graph input name."),
    ratio: List[float] = typer.Option([0.0, 0.5, 0.7, 0.8, 0.9, 0.95], "--ratio", help="Ratios to sweep (repeatable)."),
    method: List[str] = typer.Option(["magnitude"], "--method", help="Methods to compare (repeatable)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="Calibration .npz for wanda / sparsegpt."),
    batch: int = typer.Option(64, "--batch", help="Batch size for the latency column."),
    threads: int = typer.Option(1, "--threads", help="intra_op_num_threads."),
    png: Optional[Path] = typer.Option(None, "--png", help="Save the plot here."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Save the table as JSON."),
    debug: bool = typer.Option(False, "--debug"),
) -> None:
    """Accuracy and latency of the pruned model across ratios (and methods)."""
    try:
        try:
            from .evaluate import run_eval_cli
        except ImportError:
            raise OnnxPruneError("eval needs onnx_prune.evaluate, which this installation lacks") from None
        run_eval_cli(str(model), str(data), ratios=ratio, methods=method, batch=batch, threads=threads,
                     png=str(png) if png else None, json_path=str(json_path) if json_path else None,
                     calibration=str(calibration) if calibration else None)
    except OnnxPruneError as exc:
        _fail(str(exc), debug)


@app.command("densify")
def densify_command(
    input_path: Path = typer.Argument(..., metavar="IN.onnx", help="A pruned model."),
    output_path: Path = typer.Argument(..., metavar="OUT.onnx", help="Where to write the dense model."),
    debug: bool = typer.Option(False, "--debug"),
) -> None:
    """Turn every SparseGemm back into standard Gemm / MatMul (+Add) with the zeros written out."""
    from . import modelio

    try:
        try:
            from .densify import densify_model
        except ImportError:
            raise OnnxPruneError("densify needs onnx_prune.densify, which this installation lacks") from None
        modelio.check_output_path(input_path, output_path)
        model = densify_model(modelio.load_model(input_path))
        modelio.save_model_atomic(model, output_path, external_data=_input_used_external_data(input_path))
        typer.echo(f"wrote {output_path}")
    except OnnxPruneError as exc:
        _fail(str(exc), debug)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _input_used_external_data(path: Path) -> bool:
    import onnx

    from .modelio import uses_external_data

    try:
        return uses_external_data(onnx.load(str(path), load_external_data=False))
    except Exception:
        return False


def _written_size(path: Path) -> int:
    size = path.stat().st_size
    data = path.parent / f"{path.name}.data"
    return size + (data.stat().st_size if data.exists() else 0)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"onnx-prune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    """Prune the Gemm / MatMul weights of an ONNX model and run it faster in onnxruntime."""


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point: ``onnx-prune IN OUT ...`` means ``onnx-prune prune IN OUT ...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] not in SUBCOMMANDS and not args[0].startswith("-"):
        args.insert(0, "prune")
    app(args=args, prog_name="onnx-prune")


if __name__ == "__main__":
    main()
