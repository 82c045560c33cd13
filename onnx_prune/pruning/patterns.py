"""--pattern on the layers chosen for pruning: the structure every sparsifier then applies.

options.PruneOptions.validated has checked the text and that the scope can take it; what depends on
the layers is checked here: an N:M group must fit each layer's inputs, and since an N:M pattern
fixes the sparsity at 1 - N/M, a requested ratio it overrides is named in a warning. An RxC block
pattern keeps the ratios (it removes ``floor(R * blocks)`` whole blocks).
"""
from __future__ import annotations

import warnings
from typing import Mapping, Optional, Sequence

from . import masking
from ..errors import OnnxPruneError, UsageError


def layer_pattern(pattern: Optional[str], layers: Sequence, ratios: Mapping[str, float]) -> masking.Pattern:
    """The parsed ``pattern`` (None, (n, m) or masking.Blocks) for ``layers`` pruned at ``ratios``."""
    if not pattern:
        return None
    try:
        parsed = masking.parse_pattern(pattern)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if isinstance(parsed, masking.Blocks):
        return parsed
    n, m = parsed
    try:
        for layer in layers:
            masking.check_pattern_fits(layer.K, m, layer.node)
    except ValueError as exc:
        raise OnnxPruneError(str(exc)) from None
    other = sorted({r for r in ratios.values() if abs(r - (1 - n / m)) > 1e-9})
    if other:
        warnings.warn(f"--pattern {pattern} removes exactly {m - n} of every {m} weights (sparsity {1 - n / m:g}); "
                      f"the requested ratio {', '.join(f'{r:g}' for r in other)} is not used", stacklevel=3)
    return n, m
