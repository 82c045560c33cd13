"""``--recover``: after one-shot pruning, train the kept weights toward the dense model's outputs
on the calibration inputs (distillation: no labels), masks fixed. Needs torch, the optional extra
``onnx-prune[recover]``; this package's options and report import without it."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence

import numpy as np
import onnx

from ..errors import OnnxPruneError
from .options import EXTRA_HINT, LOSSES, RecoverOptions, RecoveryReport, resolve

if TYPE_CHECKING:
    from ..sparse_gemm.rewrite import PrunedLayer

__all__ = ["RecoverOptions", "RecoveryReport", "LOSSES", "resolve", "require_torch", "check_convertible",
           "recover_layers"]


def require_torch() -> None:
    """One line naming the extra when torch is missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise OnnxPruneError(f"--recover needs torch: {EXTRA_HINT}") from None


def check_convertible(model: onnx.ModelProto) -> None:
    """One line naming the first op recovery's torch converter lacks (before any pruning work)."""
    require_torch()
    from .training import check_convertible as check

    check(model)


def recover_layers(model: onnx.ModelProto, pruned: Sequence["PrunedLayer"], data: Mapping[str, np.ndarray],
                   options: RecoverOptions, progress: Optional[Callable[[str, int, int], None]] = None
                   ) -> RecoveryReport:
    """Train ``pruned``'s kept weights (and biases) in place toward ``model``'s outputs on ``data``."""
    require_torch()
    from .training import recover

    report = recover(model, pruned, data, options, progress)
    report.options = {k: v for k, v in vars(options).items()}
    return report
