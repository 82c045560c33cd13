"""Every setting of a prune run, in one object: :class:`PruneOptions`.

The CLI (cli.prune_command) and the Python API (``onnx_prune.prune(...)``'s keywords, or
``options=PruneOptions(...)``) build it once; ``validated()`` checks it once, before any work, with
the CLI flag's name in each message, and fills in the storage format the options select; the
pipeline (api.py) reads it; :class:`Settings` is what the report prints and the pruned model's
metadata records. Adding an option touches the dataclass, the CLI and the code that uses it.

The data a run reads (the model, calibration arrays, verification inputs) and how it reports
progress are not settings: api.prune takes them beside the options.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .errors import UsageError
from .pruning import masking, sparsifiers
from .pruning.bias import BIAS_CORRECTION
from .sparse_gemm import formats
from .sparse_gemm.formats import SparseFormat, bcsr

SCOPES = ("layer", "global")
DEFAULT_RATIO = 0.8  # --ratio when none is given (prune and bench), unless an N:M --pattern fixes it
DEFAULT_VALUES = "fp32"  # --values when not given: the only one --quantize (int8 values of its own) accepts
QUANTIZE_FORMATS = {"dynamic": "csr_int8_dynamic"}  # --quantize choice -> format (int8 values implied)
# --quantize choice with an R x 1 block pattern -> the block format with that arithmetic
BLOCK_QUANTIZE_FORMATS = {"dynamic": "bcsr_int8_dynamic"}


@dataclass(frozen=True)
class PruneOptions:
    """The settings of one prune run (the CLI flag of each is in brackets)."""

    ratio: Optional[float] = None           # fraction of each layer's weights removed, in [0, 1) (--ratio);
    #                                         None: DEFAULT_RATIO, or the sparsity an N:M pattern fixes
    scope: str = "layer"                    # "layer": the ratio per layer; "global": one threshold (--scope)
    include: Sequence[str] = ()             # only layers whose node or weight name matches a glob (--include)
    exclude: Sequence[str] = ()             # layers left dense (--exclude)
    layer_ratios: Mapping[str, float] = field(default_factory=dict)  # name or glob -> ratio (--layer-ratio)
    min_params: int = 0                     # layers with fewer weights stay dense (--min-params)
    method: str = "magnitude"               # a sparsifiers name (--method)
    calibration_samples: Optional[int] = None  # at most this many calibration samples (--calibration-samples)
    pattern: Optional[str] = None           # N:M or RxC structured sparsity (--pattern)
    bias_correction: bool = BIAS_CORRECTION  # a refitting method also updates the biases (--bias-correction)
    values: str = DEFAULT_VALUES            # stored weight values (--values)
    format: Optional[str] = None            # storage format; None: the one the other options select (--format)
    quantize: Optional[str] = None          # "dynamic": int8 arithmetic at run time (--quantize)
    fallback: bool = True                   # embed the standard-op fallback (--fallback)
    auto_dense: bool = True                 # keep layers dense where too few weights go (--auto-dense)
    verify: bool = False                    # compare with the masked dense model (--verify)

    def __post_init__(self) -> None:
        # lists and dicts given by callers become values the options own (the record is then stable)
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "layer_ratios", dict(self.layer_ratios or {}))

    @classmethod
    def of(cls, options: Optional["PruneOptions"] = None, **settings: Any) -> "PruneOptions":
        """``options`` (default: all defaults) with ``settings`` (field name -> value) replacing its
        fields: how api.prune turns its keywords into options. An unknown name is a TypeError, as
        for any misspelt keyword."""
        names = {f.name for f in fields(cls)}
        for name in settings:
            if name not in names:
                raise TypeError(f"prune() got an unexpected keyword argument '{name}'")
        return replace(options if options is not None else cls(), **settings)

    def validated(self) -> "PruneOptions":
        """These options checked (each error names the CLI flag), with ``format`` set to the storage
        format they select, and ``ratio`` set (default_ratio); checking validated options again
        changes nothing."""
        ratio = default_ratio(self.ratio, self.pattern)
        _check_ratio(ratio, "--ratio")
        for name, r in self.layer_ratios.items():
            _check_ratio(r, f"--layer-ratio {name}")
        if self.scope not in SCOPES:
            raise UsageError(f"--scope must be {alternatives(SCOPES)}, got '{self.scope}'")
        sparsifiers.get(self.method)
        if self.values not in value_types():
            raise UsageError(f"--values must be {alternatives(value_types(), quote=False)}, got '{self.values}'")
        if not isinstance(self.min_params, numbers.Integral) or self.min_params < 0:
            raise UsageError(f"--min-params must be a non-negative integer, got {self.min_params}")
        if self.calibration_samples is not None and self.calibration_samples < 1:
            raise UsageError(f"--calibration-samples must be at least 1, got {self.calibration_samples}")
        _check_pattern(self.pattern, self.scope)
        fmt, _ = storage_format(self.values, self.format, self.pattern, self.quantize)
        return replace(self, format=fmt.name, ratio=ratio)

    def storage(self) -> tuple[SparseFormat, np.dtype]:
        """The format that stores the pruned weights and its values dtype."""
        return storage_format(self.values, self.format, self.pattern, self.quantize)

    def to_dict(self) -> dict:
        """Every field, as JSON writes it (lists for sequences)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class Settings:
    """What a prune run records, in its report and in the pruned model's metadata: the validated
    options, and how many calibration samples went in when a method read calibration data."""

    options: PruneOptions
    calibration_samples_used: Optional[int] = None
    calibration_samples_held: Optional[int] = None

    def to_dict(self) -> dict:
        record = self.options.to_dict()
        if self.calibration_samples_used is not None:
            record["calibration_samples_used"] = self.calibration_samples_used
            record["calibration_samples_held"] = self.calibration_samples_held
        return record


def default_ratio(ratio: Optional[float], pattern: Optional[str]) -> float:
    """The ratio given, else the one an N:M pattern fixes (so that a ratio nobody asked for is not
    reported as overridden by the pattern), else DEFAULT_RATIO."""
    if ratio is not None:
        return ratio
    try:
        parsed = masking.parse_pattern(pattern) if pattern else None
    except ValueError:
        parsed = None  # _check_pattern says what is wrong with it
    if parsed is not None and masking.is_nm(parsed):
        n, m = parsed
        return 1 - n / m
    return DEFAULT_RATIO


def format_for_pattern(pattern: Optional[str]) -> Optional[str]:
    """bcsr for an R x 1 block pattern its kernels have (one activation load feeds R outputs), else none."""
    blocks = re.fullmatch(r"(\d+)x1", pattern or "")
    return bcsr.NAME if blocks and int(blocks.group(1)) in bcsr.BLOCK_SIZES else None


def storage_format(values: str, format: Optional[str] = None, pattern: Optional[str] = None,
                   quantize: Optional[str] = None) -> tuple[SparseFormat, np.dtype]:
    """The format that stores the pruned weights and its values dtype: the one ``quantize``
    (--quantize) selects, with int8 values (its block format for an Rx1 block pattern); else ``format`` (--format); else the one an Rx1 block
    pattern runs fastest in; else the default format of ``values`` (formats.DEFAULT_FORMAT_OF_VALUES)."""
    if quantize not in (None, "none"):
        if quantize not in QUANTIZE_FORMATS:
            raise UsageError(f"--quantize must be {alternatives(['none', *QUANTIZE_FORMATS])}, got '{quantize}'")
        allowed = (QUANTIZE_FORMATS[quantize], BLOCK_QUANTIZE_FORMATS[quantize])
        if format not in (None, *allowed):
            raise UsageError(f"--quantize {quantize} stores in format {' or '.join(allowed)}; "
                             f"it cannot be combined with --format {format}")
        if values != DEFAULT_VALUES:
            raise UsageError(f"--quantize {quantize} stores int8 values; it cannot be combined with --values {values}")
        name = format or (allowed[1] if format_for_pattern(pattern) else allowed[0])
        return formats.get(name), np.dtype(np.int8)
    name = format or format_for_pattern(pattern)
    if name is None:
        return formats.value_choices()[values]
    fmt = formats.get(name)
    if values not in fmt.value_types:
        raise UsageError(f"--values {values} cannot be stored in format {name} (it stores: "
                         f"{', '.join(fmt.value_types)})")
    return fmt, np.dtype(fmt.value_types[values])


def value_types() -> Mapping[str, np.dtype]:
    """The --values choices (name -> stored dtype), as the storage formats declare them."""
    return {choice: dtype for choice, (_, dtype) in formats.value_choices().items()}


def alternatives(names: Sequence[str], quote: bool = True) -> str:
    """'a' or 'b' / a, b or c: the choices of an option, for its error message."""
    shown = [f"'{n}'" if quote else n for n in names]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def _check_ratio(r: float, what: str) -> None:
    if isinstance(r, bool) or not isinstance(r, numbers.Real) or math.isnan(r) or not 0.0 <= r < 1.0:
        raise UsageError(f"{what} must be in [0, 1), got {r}")


def _check_pattern(pattern: Optional[str], scope: str) -> None:
    """A --pattern that parses, and that --scope global can take (neither N:M, which fixes every
    layer's sparsity, nor blocks); whether it fits each layer is checked on the layers (patterns.py)."""
    if not pattern:
        return
    try:
        parsed = masking.parse_pattern(pattern)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if scope != "global":
        return
    if isinstance(parsed, masking.Blocks):
        raise UsageError(f"--pattern {pattern} (blocks) cannot be combined with --scope global yet")
    n, m = parsed
    raise UsageError(f"--pattern {pattern} fixes every layer's sparsity at {1 - n / m:g}; "
                     "it cannot be combined with --scope global")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (tuple, list)):
        return list(value)
    return value
