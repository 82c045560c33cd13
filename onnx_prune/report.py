"""What a prune run did, for people (a rich table) and for scripts (JSON)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import onnx

from .auto_dense import DENSE_KEEP_THRESHOLD
from .layers import Layer, Skipped
from .modelio import written_size
from .sparsifiers import REGISTRY


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
    status: str  # "sparse" or "dense: <reason>"
    stored: int = -1  # values the format stores: nnz plus bcsr's zeros in partly kept blocks (-1: same as nnz)

    def __post_init__(self) -> None:
        if self.stored < 0:
            self.stored = self.nnz


@dataclass
class Verification:
    max_rel_error: float
    tolerance: float
    per_output: dict[str, float]
    passed: bool
    inputs: str


@dataclass
class PruneReport:
    layers: list[LayerReport]
    skipped: list[dict]
    settings: dict
    size_before: int
    size_after: int
    source: Optional[str] = None
    verification: Optional[Verification] = None
    recovery: Optional[Any] = None  # recover.RecoveryReport, with --recover

    @property
    def sparse_layers(self) -> list[LayerReport]:
        return [l for l in self.layers if l.status == "sparse"]

    @staticmethod
    def build(before: onnx.ModelProto, after: onnx.ModelProto, pruned: Sequence, dense_kept: Sequence[Layer],
              unselected: Sequence[Skipped], settings: dict, source: Optional[str] = None) -> "PruneReport":
        rows = []
        for p in pruned:
            layer = p.layer
            rows.append(LayerReport(node=layer.node, weight=layer.weight_name, op=layer.op,
                                    shape=[layer.K, layer.N], params=layer.size, nnz=p.kept,
                                    sparsity=1.0 - p.kept / layer.size, bytes_before=4 * layer.size,
                                    bytes_after=p.packed.nbytes, status="sparse", stored=p.nnz))
        for layer in dense_kept:
            rows.append(LayerReport(node=layer.node, weight=layer.weight_name, op=layer.op,
                                    shape=[layer.K, layer.N], params=layer.size, nnz=layer.size, sparsity=0.0,
                                    bytes_before=4 * layer.size, bytes_after=4 * layer.size,
                                    status=f"dense: it would keep more than {DENSE_KEEP_THRESHOLD:.0%} of its "
                                           "weights, where the sparse kernel does not beat dense Gemm "
                                           "(--no-auto-dense prunes it anyway)"))
        order = {n.name: i for i, n in enumerate(before.graph.node)}
        rows.sort(key=lambda r: order.get(r.node, 0))
        size_before = written_size(source) if source and os.path.isfile(source) else before.ByteSize()
        return PruneReport(layers=rows, skipped=[{"node": s.node, "reason": s.reason} for s in unselected],
                           settings=settings, size_before=size_before, size_after=after.ByteSize(), source=source)

    def to_dict(self) -> dict:
        return {
            "layers": [asdict(l) for l in self.layers],
            "skipped": self.skipped,
            "settings": self.settings,
            "file_size_before": self.size_before,
            "file_size_after": self.size_after,
            "total_params": sum(l.params for l in self.layers),
            "total_nnz": sum(l.nnz for l in self.layers),
            "verification": asdict(self.verification) if self.verification else None,
            "recovery": self.recovery.to_dict() if self.recovery else None,
        }

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
            sparsity = f"{l.sparsity:.1%}" if l.status == "sparse" else "[yellow]kept dense[/yellow]"
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
            if l.status != "sparse":
                console.print(f"[yellow]{escape(l.node)}[/yellow] {escape(l.status)}")
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
            console.print(f"verification {verdict}: max relative error {v.max_rel_error:.2e} "
                          f"(tolerance {v.tolerance:.0e}) vs the masked dense model, on {escape(v.inputs)}")


SKIPPED_SHOWN = 5


def human_size(nbytes: int) -> str:
    """Bytes as people read them (three significant digits), so the table fits 80 columns; the JSON
    report keeps exact counts."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            value = nbytes / scale
            return f"{value:.{0 if value >= 100 else 1 if value >= 10 else 2}f} {unit}"
    return f"{nbytes} B"


def settings_line(settings: dict) -> str:
    """The settings a rerun needs, in one line: always method, scope, ratio (or the N:M pattern, which
    replaces it), values and the storage format they selected; calibration samples, quantization and
    layer choices only when used."""
    amount = f"pattern {settings['pattern']}" if settings.get("pattern") else f"ratio {settings.get('ratio')}"
    parts = [f"method {settings.get('method')}", f"scope {settings.get('scope')}", amount,
             f"values {settings.get('values')}", f"format {settings.get('format')}"]
    if settings.get("quantize"):
        parts.append(f"quantize {settings['quantize']}")
    sparsifier = REGISTRY.get(settings.get("method"))
    if sparsifier is not None and sparsifier.needs_calibration:
        parts.append(_calibration_text(settings))
    for name, value in settings.get("layer_ratios", {}).items():
        parts.append(f"layer ratio {name}={value}")
    if settings.get("include"):
        parts.append(f"include {','.join(settings['include'])}")
    if settings.get("exclude"):
        parts.append(f"exclude {','.join(settings['exclude'])}")
    if settings.get("min_params"):
        parts.append(f"min params {settings['min_params']}")
    if settings.get("auto_dense") is False:
        parts.append("no auto dense")
    if settings.get("fallback") is False:
        parts.append("no fallback")
    return "settings: " + ", ".join(parts)


def _calibration_text(settings: dict) -> str:
    """How many calibration samples went in: all the file held, or the first N of them."""
    used, held = settings.get("calibration_samples_used"), settings.get("calibration_samples_held")
    if used is None:  # settings from before the counts were recorded: what was asked for
        samples = settings.get("calibration_samples")
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
