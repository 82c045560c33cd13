"""What a prune run did, for people (a rich table) and for scripts (JSON)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import onnx

from .fidelity import Fidelity
from ..pruning.auto_dense import DENSE_KEEP_THRESHOLD
from ..model.layers import Layer, Skipped
from ..model.modelio import written_size
from ..options import Settings
from ..pruning import sparsifiers


SPARSE = "sparse"  # LayerReport.status: the layer is a SparseGemm now
KEPT_DENSE = "kept_dense"  # LayerReport.status: auto-dense kept the layer's Gemm / MatMul as it was
KEPT_DENSE_REASON = (f"it would keep more than {DENSE_KEEP_THRESHOLD:.0%} of its weights, where the sparse kernel "
                     "does not beat dense Gemm (--no-auto-dense prunes it anyway)")


@dataclass
class LayerReport:
    node: str
    weight: str
    op: str
    shape: list[int]
    params: int
    nnz: int
    sparsity: float
    bytes_before: int
    bytes_after: int
    status: str  # a stable code for scripts: SPARSE or KEPT_DENSE
    stored: int = -1  # values the format stores: nnz plus bcsr's zeros in partly kept blocks (-1: same as nnz)
    shares: Optional[str] = None  # the layer whose weight this one reads: its bytes are counted there, once
    reason: str = ""  # why a layer has the status it has, in words ("" for a sparse layer)

    def __post_init__(self) -> None:
        if self.stored < 0:
            self.stored = self.nnz


@dataclass
class Verification:
    """The kernel check (the pruned model against the input model with the same masks applied
    densely) and, when the original outputs were computed, the fidelity to the original model."""
    max_rel_error: float
    tolerance: float
    per_output: dict[str, float]
    passed: bool
    inputs: str
    fidelity: Optional[Fidelity] = None


@dataclass
class PruneReport:
    layers: list[LayerReport]
    skipped: list[dict]
    settings: Settings
    size_before: int
    size_after: int
    source: Optional[str] = None
    verification: Optional[Verification] = None
    recovery: Optional[Any] = None  # recover.RecoveryReport, with --recover

    @property
    def sparse_layers(self) -> list[LayerReport]:
        return [l for l in self.layers if l.status == SPARSE]

    @staticmethod
    def build(before: onnx.ModelProto, after: onnx.ModelProto, pruned: Sequence, dense_kept: Sequence[Layer],
              unselected: Sequence[Skipped], settings: Settings, source: Optional[str] = None) -> "PruneReport":
        rows = []
        for p in pruned:
            layer, shares = p.layer, getattr(p, "shares", None)
            stored_bytes = _stored_bytes(layer)
            rows.append(LayerReport(node=layer.node, weight=layer.weight_name, op=layer.op,
                                    shape=[layer.K, layer.N], params=layer.size, nnz=p.kept,
                                    sparsity=1.0 - p.kept / layer.size, bytes_before=0 if shares else stored_bytes,
                                    bytes_after=0 if shares else p.packed.nbytes, status=SPARSE, stored=p.nnz,
                                    shares=shares))
        counted: set = set()
        for layer in dense_kept:
            key = getattr(layer, "weight_key", ()) or layer.node
            stored_bytes = 0 if key in counted else _stored_bytes(layer)
            counted.add(key)
            rows.append(LayerReport(node=layer.node, weight=layer.weight_name, op=layer.op,
                                    shape=[layer.K, layer.N], params=layer.size, nnz=layer.size, sparsity=0.0,
                                    bytes_before=stored_bytes, bytes_after=stored_bytes,
                                    status=KEPT_DENSE, reason=getattr(layer, "dense_reason", "") or KEPT_DENSE_REASON))
        order = {n.name: i for i, n in enumerate(before.graph.node)}
        rows.sort(key=lambda r: order.get(r.node, 0))
        size_before = written_size(source) if source and os.path.isfile(source) else before.ByteSize()
        return PruneReport(layers=rows, skipped=[{"node": s.node, "reason": s.reason} for s in unselected],
                           settings=settings, size_before=size_before, size_after=after.ByteSize(), source=source)

    def to_dict(self) -> dict:
        return {
            "layers": [asdict(l) for l in self.layers],
            "skipped": self.skipped,
            "settings": self.settings.to_dict(),
            "file_size_before": self.size_before,
            "file_size_after": self.size_after,
            "total_params": sum(l.params for l in self.layers),
            "total_nnz": sum(l.nnz for l in self.layers),
            "verification": _kernel_check(self.verification),
            "fidelity": _fidelity(self.fidelity),
            "recovery": self.recovery.to_dict() if self.recovery else None,
        }

    @property
    def fidelity(self) -> Optional[Fidelity]:
        """How far the pruned model is from the original on the verification inputs (None
        without verification)."""
        return self.verification.fidelity if self.verification else None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def print(self, console=None) -> None:
        """The per-layer table with totals (80 columns wide for the MNIST model), then the settings, sizes
        and the verification verdict."""
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        if console is None:
            console = Console()
            if not console.is_terminal:  # logs and pipes: wide enough that no column is cut
                console = Console(width=max(console.width, 160))
        table = Table(title="onnx-prune", title_justify="left")
        table.add_column("node", overflow="fold")
        table.add_column("op")
        padded = any(l.stored != l.nnz for l in self.layers)  # bcsr: blocks stored with zeros in them
        stored = ["stored\nvalues"] if padded else []
        for column in ("K×N", "kept\nweights", *stored, "sparsity", "size\nbefore", "size\nafter"):
            table.add_column(column, justify="right", no_wrap=True)
        for l in self.layers:
            sparsity = f"{l.sparsity:.1%}" if l.status == SPARSE else "[yellow]kept dense[/yellow]"
            table.add_row(escape(l.node), l.op, f"{l.shape[0]}×{l.shape[1]}", f"{l.nnz:,}",
                          *([f"{l.stored:,}"] if padded else []), sparsity,
                          human_size(l.bytes_before), human_size(l.bytes_after))
        total_p = sum(l.params for l in self.layers)
        total_k = sum(l.nnz for l in self.layers)
        total_s = sum(l.stored for l in self.layers)
        table.add_section()
        table.add_row("total", "", "", f"{total_k:,}", *([f"{total_s:,}"] if padded else []),
                      f"{1 - total_k / max(total_p, 1):.1%}",
                      human_size(sum(l.bytes_before for l in self.layers)),
                      human_size(sum(l.bytes_after for l in self.layers)))
        console.print(table)
        if padded:
            console.print(f"stored values: the format stores whole blocks, {total_s - total_k:,} of its values "
                          "are zeros of blocks only partly kept")
        for l in self.layers:
            if l.status != SPARSE:
                console.print(f"[yellow]{escape(l.node)}[/yellow] kept dense: {escape(l.reason)}")
        for line in _skipped_lines(self.skipped):
            console.print(f"[dim]{escape(line)}[/dim]")
        console.print(escape(settings_line(self.settings)))
        console.print(f"file size: {self.size_before:,} → {self.size_after:,} bytes "
                      f"({self.size_after / max(self.size_before, 1):.1%})")
        for line in self.recovery.lines() if self.recovery else []:
            console.print(escape(line))
        if self.verification:
            v = self.verification
            verdict = "[green]passed[/green]" if v.passed else "[red]FAILED[/red]"
            console.print(f"kernel check {verdict}: max relative error {v.max_rel_error:.2e} "
                          f"(tolerance {v.tolerance:.0e}) against the input model with the same masks, "
                          f"on {escape(v.inputs)}")
        if self.fidelity:
            for line in self.fidelity.lines():
                console.print(escape(line))
            if self.fidelity.poor:
                console.print("[red]fidelity poor[/red]: " + escape(", ".join(self.fidelity.poor_outputs))
                              + " far from the original (see the warning)")


SKIPPED_SHOWN = 5


def _fidelity(fidelity: Optional[Fidelity]) -> Optional[dict]:
    return {**asdict(fidelity), "poor_outputs": fidelity.poor_outputs} if fidelity else None


def _kernel_check(verification: Optional[Verification]) -> Optional[dict]:
    """The JSON of the kernel check; its fidelity is the report's own "fidelity" key."""
    if verification is None:
        return None
    return {k: v for k, v in asdict(verification).items() if k != "fidelity"}


def human_size(nbytes: int) -> str:
    """Bytes as people read them (three significant digits), so the table fits 80 columns; the JSON
    report keeps exact counts."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            value = nbytes / scale
            return f"{value:.{0 if value >= 100 else 1 if value >= 10 else 2}f} {unit}"
    return f"{nbytes} B"


def settings_line(settings: Settings) -> str:
    """The settings a rerun needs, in one line: always method, scope, ratio (or the N:M pattern, which
    replaces it), values and the storage format they selected; calibration samples, quantization and
    layer choices only when used."""
    options = settings.options
    amount = f"pattern {options.pattern}" if options.pattern else f"ratio {options.ratio}"
    parts = [f"method {options.method}", f"scope {options.scope}", amount, f"values {options.values}",
             f"format {options.format}"]
    if options.quantize:
        parts.append(f"quantize {options.quantize}")
    if sparsifiers.get(options.method).needs_calibration:
        parts.append(_calibration_text(settings))
    for name, value in options.layer_ratios.items():
        parts.append(f"layer ratio {name}={value}")
    if options.include:
        parts.append(f"include {','.join(options.include)}")
    if options.exclude:
        parts.append(f"exclude {','.join(options.exclude)}")
    if options.min_params:
        parts.append(f"min params {options.min_params}")
    if not options.auto_dense:
        parts.append("no auto dense")
    if not options.fallback:
        parts.append("no fallback")
    return "settings: " + ", ".join(parts)


def _calibration_text(settings: Settings) -> str:
    """How many calibration samples went in: all the file held, or the first N of them."""
    used, held = settings.calibration_samples_used, settings.calibration_samples_held
    if used is None:  # no method read the data (settings built by hand): what was asked for
        samples = settings.options.calibration_samples
        return f"calibration samples {samples if samples else 'all'}"
    if used == held:
        return f"calibration samples {used:,} (all)"
    return f"calibration samples {used:,} of {held:,} (the first {used:,})"


def _skipped_lines(skipped: Sequence[dict]) -> list[str]:
    """One line per node left alone, or one per reason when there are many (attention MatMuls of a
    transformer would otherwise fill the screen; the JSON report keeps every node)."""
    if len(skipped) <= SKIPPED_SHOWN:
        return [f"{s['node']} left alone: {s['reason']}" for s in skipped]
    by_reason: dict[str, list[str]] = {}
    for s in skipped:
        by_reason.setdefault(s["reason"], []).append(s["node"])
    return [f"{len(nodes)} nodes left alone ({reason}): {', '.join(nodes[:3])}{', …' if len(nodes) > 3 else ''}"
            for reason, nodes in by_reason.items()]


def _stored_bytes(layer: Layer) -> int:
    """What a layer's weight takes in the input file: the constants it is read from (an int8 weight
    and its scale, say), float32 K x N where nothing is known."""
    return getattr(layer, "source_bytes", 0) or 4 * layer.size
