"""What ``--recover`` takes and what it reports; importable without torch (the CLI and the API
check options and print reports whether or not the extra is installed)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Union

from ..errors import UsageError

LOSSES = ("auto", "mse", "kl", "cosine")
EXTRA_HINT = "pip install 'onnx-prune[recover]'"


@dataclass
class RecoverOptions:
    """Distillation settings. ``steps`` caps the optimizer steps of ``epochs`` passes over the
    training part of the calibration data; ``held_out`` is the fraction kept aside to choose the
    best epoch, and training stops after ``patience`` epochs without a better held-out loss.
    The learning rate follows a cosine decay to zero over the planned steps (Adam)."""

    epochs: int = 10
    steps: Optional[int] = None
    lr: float = 2e-3
    batch_size: int = 128
    held_out: float = 0.1
    patience: int = 3
    loss: str = "auto"
    seed: int = 0
    threads: int = 0  # torch's intra-op threads; 0: torch's default (all cores)
    layer_weight: float = 0.0  # also match each pruned layer's output (relative MSE), with this weight

    def check(self) -> "RecoverOptions":
        """Each bad value named by its CLI flag."""
        if self.epochs < 1:
            raise UsageError(f"--recover-epochs must be at least 1, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"--recover-steps must be at least 1, got {self.steps}")
        if not self.lr > 0:
            raise UsageError(f"--recover-lr must be positive, got {self.lr}")
        if self.batch_size < 1:
            raise UsageError(f"--recover-batch must be at least 1, got {self.batch_size}")
        if not 0 < self.held_out < 1:
            raise UsageError(f"--recover-held-out must be in (0, 1), got {self.held_out}")
        if self.patience < 1:
            raise UsageError(f"recover patience must be at least 1, got {self.patience}")
        if not self.layer_weight >= 0:
            raise UsageError(f"--recover-layer-weight must be 0 or more, got {self.layer_weight}")
        if self.threads < 0:
            raise UsageError(f"--recover-threads must be 0 (all cores) or more, got {self.threads}")
        if self.loss not in LOSSES:
            raise UsageError(f"--recover-loss must be one of {', '.join(LOSSES)}, got '{self.loss}'")
        return self


STEP_PREFIX = "recovering: epoch"  # training.recover's progress messages start so
EPOCH_SUMMARY = "held-out"         # ... and its end-of-epoch ones contain this (the tests read them)


RecoverSetting = Union[None, bool, RecoverOptions, Mapping[str, Any]]


def resolve(recover: RecoverSetting) -> Optional[RecoverOptions]:
    """``prune(recover=...)``: None / False (off), True (defaults), a RecoverOptions, or a dict of
    its fields."""
    if recover is None or recover is False:
        return None
    if recover is True:
        return RecoverOptions()
    if isinstance(recover, RecoverOptions):
        return recover.check()
    if isinstance(recover, Mapping):
        unknown = set(recover) - set(RecoverOptions.__dataclass_fields__)
        if unknown:
            raise UsageError(f"recover: unknown setting {sorted(unknown)[0]!r} (settings: "
                             f"{', '.join(RecoverOptions.__dataclass_fields__)})")
        return RecoverOptions(**recover).check()
    raise UsageError(f"recover must be True, a RecoverOptions or a dict, got {type(recover).__name__}")


@dataclass
class RecoveryReport:
    """What recovery did, and the pruned model's fidelity to the dense one on the held-out
    calibration samples before (one-shot) and after it (per output: cosine, relative_error,
    top1_agreement)."""

    train_samples: int
    held_out_samples: int
    fidelity_before: dict = field(default_factory=dict)
    fidelity_after: dict = field(default_factory=dict)
    held_out_loss_before: float = 0.0
    held_out_loss_after: float = 0.0
    steps: int = 0
    best_epoch: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of this process meanwhile (all threads): what a loaded machine does not inflate
    epochs: list = field(default_factory=list)
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """The report's text: one line for the run, one per output."""
        kept = f"best epoch {self.best_epoch}" if self.best_epoch else "no epoch beat the one-shot weights: kept them"
        head = (f"recovery: {self.steps} steps on {self.train_samples} samples in {self.seconds:.1f} s "
                f"({self.cpu_seconds:.1f} s CPU), {kept}"
                f"{', stopped early' if self.stopped_early else ''}; held-out loss "
                f"{self.held_out_loss_before:.4g} -> {self.held_out_loss_after:.4g}")
        lines = [head]
        for name, before in self.fidelity_before.items():
            after = self.fidelity_after.get(name, {})
            parts = [f"cosine {before['cosine']:.4f} -> {after.get('cosine', float('nan')):.4f}"]
            if "top1_agreement" in before:
                parts.append(f"top-1 agreement {before['top1_agreement']:.2%} -> {after.get('top1_agreement', float('nan')):.2%}")
            parts.append(f"relative error {before['relative_error']:.3g} -> {after.get('relative_error', float('nan')):.3g}")
            lines.append(f"  fidelity to dense on {self.held_out_samples} held-out samples, output {name}: "
                         + ", ".join(parts))
        return lines
