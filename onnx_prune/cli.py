"""The ``onnx-prune`` command.

``onnx-prune IN.onnx OUT.onnx --ratio 0.8`` prunes (the ``prune`` subcommand is implied); ``bench``,
``eval`` and ``densify`` are subcommands whose work lives in bench.py, evaluate.py and densify.py.
Errors are one line ``error: ...`` on stderr with exit code 1 (2 for command-line usage errors);
``--debug`` shows the traceback instead. Ctrl-C and SIGTERM stop a running command cleanly (no
temporary file left, each output whole or untouched) with one line naming the outputs already
written and exit 130 / 143. Once prune or densify has written all its outputs it has succeeded:
an interrupt after that (while it prints the report and ``wrote``, or while Python shuts down)
ends the process at once with exit 0 (interrupts.py).
"""
from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

import typer

from . import interrupts
from ._version import __version__
from .measure import baselines
from .pruning import sparsifiers
from .options import DEFAULT_RATIO, SCOPES, PruneOptions, value_types
from .check.inputs import SEQ_LEN_FOR_GENERATED
from .pruning.auto_dense import DENSE_KEEP_THRESHOLD
from .pruning.bias import BIAS_CORRECTION
from .errors import OnnxPruneError, UsageError, import_failure
from .recover.options import LOSSES, RecoverOptions
from .sparse_gemm import formats

# --help is click's plain layout: it wraps every option's text under its name and keeps flag pairs
# (--verify / --no-verify) whole at 80 columns, where rich's five-column table cut names and help
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_show_locals=False, context_settings={"help_option_names": ["-h", "--help"]},
                  help="Prune the Gemm / MatMul weights of an ONNX model and run it faster in onnxruntime.\n\n"
                       "'onnx-prune IN.onnx OUT.onnx --ratio 0.8' prunes (same as 'onnx-prune prune ...').")

SUBCOMMANDS = ("prune", "bench", "eval", "densify")
ROOT_OPTIONS = ("-h", "--help", "--version")
EXIT_ERROR = 1
EXIT_USAGE = 2  # what typer uses for its own usage errors


@contextmanager
def _errors_as_one_line(debug: bool, outputs: Sequence[Optional[Path]] = ()) -> Iterator[None]:
    """OnnxPruneError → ``error: message``; anything unexpected → one line naming its type.
    An interrupt says which of ``outputs`` were already written. ``debug`` also lets onnxruntime
    log its own warnings."""
    before = {path: _file_identity(path) for path in outputs if path is not None}
    interrupts.command_over(None)
    try:
        with interrupts.terminate_as_interrupt():
            from .runtime import session as runtime

            runtime.set_verbose(debug)
            yield
        interrupts.command_over(0)
    except typer.Exit as done:
        interrupts.command_over(done.exit_code)
        raise
    except OnnxPruneError as exc:
        if debug:
            raise
        _print_error(str(exc))
        raise _exit(EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR) from None
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM (interrupts.Terminated)
        if debug:
            raise
        _print_error(_interrupted(before, interrupts.what(interrupt)))
        raise _exit(interrupts.exit_code(interrupt)) from None
    except Exception as exc:  # a bug or an environment problem: still one line, details with --debug
        if debug:
            raise
        interrupt = interrupts.interrupt_in(exc)  # e.g. ImportError: initialization failed, from Ctrl-C
        if interrupt is not None:
            _print_error(_interrupted(before, interrupts.what(interrupt)))
            raise _exit(interrupts.exit_code(interrupt)) from None
        if isinstance(exc, ImportError):  # a broken installation: which module, why, and the versions
            _print_error(import_failure(exc))
            raise _exit(EXIT_ERROR) from None
        text = (str(exc).strip() or "").splitlines()
        _print_error(f"unexpected {type(exc).__name__}: {text[0] if text else ''} (run with --debug for details)")
        raise _exit(EXIT_ERROR) from None


def _exit(code: int) -> typer.Exit:
    """The command's end with ``code``, recorded first so that a late interrupt keeps it."""
    interrupts.command_over(code)
    return typer.Exit(code)


def _file_identity(path: Path) -> Optional[tuple[int, int, int]]:
    """What changes when a file is (atomically) written: its inode, size and modification time."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _interrupted(before: dict[Path, Optional[tuple[int, int, int]]], what: str = "interrupted") -> str:
    """The interrupt message: what was written (whole: writes are atomic) before Ctrl-C or SIGTERM
    landed, and what was not."""
    written = [str(p) for p, identity in before.items() if _file_identity(p) not in (None, identity)]
    if not written:
        return f"{what}; nothing was written"
    missing = [str(p) for p in before if str(p) not in written]
    return (f"{what} after writing {', '.join(written)} (complete)"
            + (f"; {', '.join(missing)} not written" if missing else ""))


@contextmanager
def _warnings_as_lines(quiet: bool) -> Iterator[None]:
    """Python warnings raised inside become ``warning: message`` lines on stderr when the block
    ends (after any progress bar), without the source line Python would print."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # unclosed files of libraries, found by the garbage collector: nothing for the user to act on
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            yield
        finally:
            if not quiet:
                for message in dict.fromkeys(str(w.message) for w in caught):
                    typer.echo(f"warning: {message}", err=True)


def _print_error(message: str) -> None:
    typer.echo(f"error: {' '.join(message.split())}", err=True)


def choices(names: Sequence[str]) -> str:
    """An option's choices as --help shows them: ``[a|b|c]``."""
    return f"[{'|'.join(names)}]"


def _calibrated_methods() -> str:
    return " and ".join(n for n in sparsifiers.names() if sparsifiers.get(n).needs_calibration)


def parse_layer_ratios(items: List[str]) -> dict[str, float]:
    """``NAME=R`` items (NAME: node or weight name or glob; the last ``=`` separates R)."""
    ratios = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            ratios[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--layer-ratio takes NAME=R (e.g. fc1=0.5), got '{item}'") from None
    return ratios


@contextmanager
def _progress_bar(quiet: bool) -> Iterator[Optional[Callable[[str, int, int], None]]]:
    """A rich progress bar on stderr fed by a (message, done, total) progress callback (api.prune's,
    evaluate's); when stderr is not a terminal (logs, pipes), rate-limited plain lines instead
    (progress_lines.py); nothing when quiet."""
    from rich.console import Console

    console = Console(stderr=True)
    if quiet:
        yield None
        return
    if not console.is_terminal:
        from .progress_lines import ProgressLines

        yield ProgressLines(sys.stderr)
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("loading", total=1)

        def update(message: str, done: int, total: int) -> None:
            bar.update(task, description=message, completed=done, total=total)

        yield update


@app.command("prune", short_help="Prune IN.onnx into OUT.onnx (the default command).")
def prune_command(
    input_path: Path = typer.Argument(..., metavar="IN.onnx", help="Model to prune (never modified)."),
    output_path: Path = typer.Argument(..., metavar="OUT.onnx", help="Where to write the pruned model."),
    ratio: Optional[float] = typer.Option(None, "--ratio", "-r", show_default=False, help="Fraction of each layer's weights removed, in [0, 1): "
                                f"exactly floor(R x size) of the smallest-|w| weights (ties: first in row-major W[K,N]). [default: {DEFAULT_RATIO}; an N:M pattern sets its own sparsity]"),
    scope: str = typer.Option("layer", "--scope", metavar=choices(SCOPES), help="layer: the ratio applies per layer; global: one threshold over all layers."),
    include: List[str] = typer.Option([], "--include", metavar="GLOB", help="Only layers whose node or weight name matches (glob; repeatable)."),
    exclude: List[str] = typer.Option([], "--exclude", metavar="GLOB", help="Leave matching layers dense (glob; repeatable)."),
    layer_ratio: List[str] = typer.Option([], "--layer-ratio", metavar="NAME=R", help="Another ratio R for the layers NAME matches (node or weight name or glob; repeatable)."),
    min_params: int = typer.Option(0, "--min-params", metavar="N", help="Leave layers with fewer weights dense."),
    method: str = typer.Option("magnitude", "--method", metavar=choices(sparsifiers.names()), help=f"Pruning method ({_calibrated_methods()} use --calibration)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", metavar="NPZ", help=".npz of inputs keyed by graph input name, first axis = samples (other arrays, e.g. labels, are ignored with a warning)."),
    calibration_samples: Optional[int] = typer.Option(None, "--calibration-samples", metavar="N", help="Use at most N calibration samples."),
    pattern: Optional[str] = typer.Option(None, "--pattern", metavar="N:M|RxC", help="Structured sparsity: N:M (e.g. 2:4) along each output's inputs, or RxC blocks of R outputs x C inputs (e.g. 4x1)."),
    bias_correction: bool = typer.Option(BIAS_CORRECTION, "--bias-correction/--no-bias-correction", help="sparsegpt also updates each layer's bias to absorb the mean error (skipped, with a warning, where not exact)."),
    values: str = typer.Option("fp32", "--values", metavar=choices(value_types()), help="Stored weight values (fp16: a smaller file)."),
    format: Optional[str] = typer.Option(None, "--format", metavar=choices(formats.names()), help="Storage format of the pruned weights (default: bcsr for an Rx1 --pattern, else csr)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", metavar=choices(["dynamic"]), help="dynamic: int8 weights and int8 arithmetic on activations quantized per row at run time (format csr_int8_dynamic; bcsr_int8_dynamic for an Rx1 --pattern)."),
    fallback: bool = typer.Option(True, "--fallback/--no-fallback", help="Embed a standard-op fallback so the file also runs without the library."),
    auto_dense: bool = typer.Option(True, "--auto-dense/--no-auto-dense", help=f"Keep layers dense whose sparsity would be below {1 - DENSE_KEEP_THRESHOLD:.0%} (the sparse kernel does not win there; not applied with --pattern)."),
    recover: bool = typer.Option(False, "--recover", help="After pruning, train the kept weights (masks fixed) so the outputs match the dense model's on the --calibration inputs (distillation, no labels; needs onnx-prune[recover])."),
    recover_epochs: int = typer.Option(RecoverOptions.epochs, "--recover-epochs", metavar="N", help="Passes over the calibration data (fewer when the held-out loss stops improving)."),
    recover_steps: Optional[int] = typer.Option(None, "--recover-steps", metavar="N", help="At most N optimizer steps."),
    recover_lr: float = typer.Option(RecoverOptions.lr, "--recover-lr", metavar="LR", help="Adam learning rate (cosine decay to zero)."),
    recover_batch: int = typer.Option(RecoverOptions.batch_size, "--recover-batch", metavar="N", help="Calibration samples per step."),
    recover_held_out: float = typer.Option(RecoverOptions.held_out, "--recover-held-out", metavar="F", help="Fraction of the calibration samples held out to pick the best epoch and stop early."),
    recover_loss: str = typer.Option(RecoverOptions.loss, "--recover-loss", metavar=choices(LOSSES), help="auto: KL on Softmax outputs, else mean squared error; kl: also softmax of logits."),
    recover_layer_weight: float = typer.Option(RecoverOptions.layer_weight, "--recover-layer-weight", metavar="W", help="Also match each pruned layer's output to the dense one's, with weight W."),
    recover_threads: int = typer.Option(RecoverOptions.threads, "--recover-threads", metavar="N", help="torch threads for recovery (0: all cores)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Before writing, check OUT against the input model with the same masks (kernel check) and report its fidelity to the original model (cosine, max relative error, top-1 agreement; a warning when poor)."),
    inputs: Optional[Path] = typer.Option(None, "--inputs", metavar="NPZ", help=".npz of real inputs for the verification, keyed by graph input name (default: generated: token ids inside the embedding's vocabulary, masks of ones, normal floats)."),
    seq_len: int = typer.Option(SEQ_LEN_FOR_GENERATED, "--seq-len", metavar="N", help="Length of the generated inputs' symbolic non-batch dimensions (tokens of a transformer)."),
    report_json: Optional[Path] = typer.Option(None, "--report-json", metavar="PATH", help="Write the report as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Prune IN.onnx into OUT.onnx and print a per-layer report."""
    from . import api
    from .model import modelio

    with _errors_as_one_line(debug, outputs=[output_path, report_json]):
        modelio.check_output_path(input_path, output_path)
        if report_json is not None:
            modelio.check_output_path(input_path, report_json)
            if report_json.resolve() == output_path.resolve():
                raise OnnxPruneError(f"--report-json '{report_json}' is the output model path; choose another")
        options = PruneOptions(
            ratio=ratio, scope=scope, include=include, exclude=exclude, layer_ratios=parse_layer_ratios(layer_ratio),
            min_params=min_params, method=method, calibration_samples=calibration_samples, pattern=pattern,
            bias_correction=bias_correction, values=values, format=format, quantize=quantize, fallback=fallback,
            auto_dense=auto_dense, verify=verify)
        recovery = RecoverOptions(epochs=recover_epochs, steps=recover_steps, lr=recover_lr, batch_size=recover_batch,
                                  held_out=recover_held_out, loss=recover_loss, threads=recover_threads,
                                  layer_weight=recover_layer_weight) if recover else None
        with _warnings_as_lines(quiet), _progress_bar(quiet) as progress:
            model, report = api.prune(input_path, options=options, calibration=calibration, verify_inputs=inputs,
                                      seq_len=seq_len, recover=recovery, progress=progress)
        modelio.save_model_atomic(model, output_path, external_data=modelio.file_uses_external_data(input_path))
        report.size_after = modelio.written_size(output_path)
        if report_json is not None:
            modelio.write_text_atomic(report_json, report.to_json())
        interrupts.command_over(0)  # every output is whole: an interrupt from here on keeps the success
        if not quiet:
            report.print()
            typer.echo(f"wrote {output_path}")


@app.command("bench", short_help="Time the dense model against the pruned one.")
def bench_command(
    input_path: Path = typer.Argument(..., metavar="IN.onnx", help="The dense model."),
    pruned_path: Optional[Path] = typer.Argument(None, metavar="PRUNED.onnx", help="Its pruned version (default: prune IN in memory at --ratio)."),
    ratio: float = typer.Option(DEFAULT_RATIO, "--ratio", help="Ratio for the in-memory pruning when PRUNED is not given (as prune's default)."),
    batch: List[int] = typer.Option([1, 16, 64, 256], "--batch", "-b", metavar="N", help="Batch sizes (repeatable); a model whose batch dimension is fixed gets that batch only."),
    inputs: Optional[Path] = typer.Option(None, "--inputs", metavar="NPZ", help=".npz of real inputs keyed by graph input name; each batch is its first N rows (default: generated, like prune's)."),
    seq_len: int = typer.Option(SEQ_LEN_FOR_GENERATED, "--seq-len", metavar="N", help="Length of the generated inputs' symbolic non-batch dimensions (tokens of a transformer)."),
    threads: List[str] = typer.Option(["1"], "--threads", "-t", metavar="N|all", help="intra_op_num_threads values, or 'all' (repeatable)."),
    rounds: int = typer.Option(5, "--rounds", metavar="N", help="Interleaved timing rounds per configuration."),
    baseline: List[str] = typer.Option([], "--baseline", metavar=choices(baselines.names()), help="Also time onnxruntime's quantize_dynamic of IN (int8: per-tensor weights, onnxruntime's default; int8-per-channel). Repeatable or comma-separated."),
    json_path: Optional[Path] = typer.Option(None, "--json", metavar="PATH", help="Write the results as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines and no warnings (the table still prints)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Time the dense model against the pruned one (and baselines) in one onnxruntime process."""
    with _errors_as_one_line(debug, outputs=[json_path]):
        _check_output_folders(input_path, json_path)
        from .measure.bench import run_bench_cli

        with _warnings_as_lines(quiet):
            run_bench_cli(str(input_path), str(pruned_path) if pruned_path else None, ratio=ratio, batches=batch,
                          threads=threads, rounds=rounds, inputs=str(inputs) if inputs else None, seq_len=seq_len,
                          json_path=str(json_path) if json_path else None, quiet=quiet, baselines=baseline)


@app.command("eval", short_help="Accuracy and latency across ratios and methods.")
def eval_command(
    model: Path = typer.Argument(..., metavar="MODEL.onnx", help="The dense model."),
    data: Path = typer.Option(..., "--data", metavar="NPZ", help=".npz with 'labels' and arrays keyed by graph input name."),
    ratio: List[float] = typer.Option([0.0, 0.5, 0.7, 0.8, 0.9, 0.95], "--ratio", metavar="R", help="Ratios to sweep (repeatable)."),
    method: List[str] = typer.Option(["magnitude"], "--method", metavar=choices(sparsifiers.names()), help="Methods to compare (repeatable)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", metavar="NPZ", help="Calibration .npz for wanda / sparsegpt (other arrays are ignored with a warning)."),
    batch: int = typer.Option(64, "--batch", metavar="N", help="Batch size for the latency column."),
    threads: int = typer.Option(1, "--threads", metavar="N", help="intra_op_num_threads."),
    baseline: List[str] = typer.Option(["int8"], "--baseline", metavar=choices([*baselines.names(), "none"]), help="onnxruntime quantize_dynamic points to compare with (int8: per-tensor weights, onnxruntime's default). Repeatable or comma-separated."),
    auto_dense: bool = typer.Option(True, "--auto-dense/--no-auto-dense", help=f"As in prune: keep layers dense whose sparsity would be below {1 - DENSE_KEEP_THRESHOLD:.0%} (such points are marked 'kept dense')."),
    png: Optional[Path] = typer.Option(None, "--png", metavar="PATH", help="Save the plots here (needs matplotlib)."),
    json_path: Optional[Path] = typer.Option(None, "--json", metavar="PATH", help="Save the table as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no warnings (the table still prints)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Accuracy and latency of the pruned model across ratios (and methods), next to onnxruntime int8."""
    with _errors_as_one_line(debug, outputs=[png, json_path]):
        _check_output_folders(model, png, json_path)
        from .measure.evaluate import run_eval_cli

        with _warnings_as_lines(quiet), _progress_bar(quiet) as progress:
            run_eval_cli(str(model), str(data), ratios=ratio, methods=method, batch=batch, threads=threads,
                         png=str(png) if png else None, json_path=str(json_path) if json_path else None,
                         calibration=str(calibration) if calibration else None, baselines=baseline,
                         progress=progress, auto_dense=auto_dense)


@app.command("densify", short_help="SparseGemm back to standard Gemm / MatMul.")
def densify_command(
    input_path: Path = typer.Argument(..., metavar="IN.onnx", help="A pruned model."),
    output_path: Path = typer.Argument(..., metavar="OUT.onnx", help="Where to write the dense model."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Turn every SparseGemm back into standard Gemm / MatMul (+Add) with the zeros written out.

    A model without SparseGemm nodes is written unchanged, with a warning (so a script can densify
    every model it is given)."""
    from .model import modelio
    from .sparse_gemm import sparse_gemm_summary

    with _errors_as_one_line(debug):
        from .sparse_gemm.densify import densify_model

        modelio.check_output_path(input_path, output_path)
        model = modelio.load_model(input_path)
        if sparse_gemm_summary(model):
            model = densify_model(model)
        elif not quiet:
            typer.echo(f"warning: '{input_path}' has no SparseGemm node; {output_path} is an unchanged copy", err=True)
        modelio.save_model_atomic(model, output_path, external_data=modelio.file_uses_external_data(input_path))
        interrupts.command_over(0)
        if not quiet:
            typer.echo(f"wrote {output_path}")


def _check_output_folders(input_path: Path, *outputs: Optional[Path]) -> None:
    """Each output path given can be written (its folder exists and is writable, it is not the
    input): checked before a run of minutes, not after it."""
    from .model import modelio

    for path in outputs:
        if path is not None:
            modelio.check_output_path(input_path, path)


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
    interrupts.handle_signals()
    try:
        app(args=with_default_subcommand(args), prog_name="onnx-prune")
    except SystemExit as done:  # usage errors end here too: an interrupt from now on keeps the outcome
        interrupts.command_over(_exit_status(done.code))
        raise


def _exit_status(code: object) -> int:
    """The status the process exits with for ``SystemExit(code)``."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def with_default_subcommand(args: List[str]) -> List[str]:
    """Insert ``prune`` unless the first argument is a subcommand or a root option."""
    if args and args[0] not in SUBCOMMANDS and args[0] not in ROOT_OPTIONS:
        return ["prune", *args]
    return args


if __name__ == "__main__":
    main()
