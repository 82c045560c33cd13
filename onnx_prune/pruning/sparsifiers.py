"""Sparsifiers: one small class per pruning method (``--method``), found by name in a registry.

A sparsifier decides which weights of one layer go, in one hook, ``update_mask``: given the layer,
the calibration statistics of its input (when the method uses any) and how many weights to remove
(or an N:M pattern, or blocks to remove for an RxC pattern), it returns the new weight, the keep
mask and, for a method that compensates through the bias when asked (``bias=True``), the layer's
new bias (bias.py says when that is exact). ``saliency`` scores every weight
for ``--scope global``, where one threshold over all layers sets each layer's removal count first.
The numerics live in masking.py (scores, masks, the floor rule) and sparsegpt.py; calibration.py
gathers the statistics and drives the methods that need them.

A sparsifier says by attributes what it needs: ``statistics`` (calibration data) and ``refits``
(it updates the kept weights, so it can take the bias correction and reports its blocks); nothing
outside this module asks for a method by name.

Adding a method: subclass Sparsifier, set ``name`` (and ``statistics`` when it uses calibration
data, ``refits`` when it updates the kept weights), implement the hooks, decorate with ``@register``; --method and PruneOptions.validated follow.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Mapping, Optional, Sequence

import numpy as np

from . import bias as bias_terms
from . import masking
from ..errors import OnnxPruneError, UsageError
from .sparsegpt import inverse_hessian_factor, obs_errors, sparsegpt_prune, sparsegpt_prune_with_bias

if TYPE_CHECKING:
    from .capture import InputStats
    from ..model.layers import Layer

Pattern = masking.Pattern                     # None (unstructured), N:M as (n, m), or masking.Blocks
BlockDone = Callable[[int, int], None]        # (blocks done, blocks in all) while a layer is pruned
HESSIAN, SQ_NORMS = "hessian", "sq_norms"     # the calibration statistics a method may need


class Pruned:
    """A sparsifier's answer for one layer: ``weight`` [K, N] float32, zero where ``mask`` [K, N]
    bool (True = kept) is False, and the new bias (C as the layer reads it, bias.updated) when
    compensated."""

    def __init__(self, weight: Optional[np.ndarray], mask: np.ndarray, bias: Optional[np.ndarray] = None,
                 kept_from: Optional[np.ndarray] = None):
        self._weight, self.mask, self.bias = weight, mask, bias
        self.kept_from = kept_from  # the layer's own weights when they are the kept ones unchanged

    @staticmethod
    def masked(weight: np.ndarray, keep: np.ndarray) -> "Pruned":
        """The layer's own weights where kept, zeros elsewhere; the zeroed copy is made only when
        ``weight`` is read (a format packs the kept entries of ``kept_from`` directly)."""
        return Pruned(None, keep, kept_from=weight)

    @property
    def weight(self) -> np.ndarray:
        if self._weight is None:
            self._weight = np.where(self.mask, self.kept_from, np.float32(0)).astype(np.float32, copy=False)
        return self._weight


class Sparsifier:
    """A pruning method. ``statistics``: None (weights alone), SQ_NORMS (Σ x_k² per input) or
    HESSIAN (XᵀX), gathered from calibration data before the hooks run."""

    name: ClassVar[str]
    statistics: ClassVar[Optional[str]] = None
    refits: ClassVar[bool] = False  # updates the kept weights (and, with bias=True, the bias); prunes in blocks

    @property
    def needs_calibration(self) -> bool:
        return self.statistics is not None

    def saliency(self, layer: "Layer", stats: Optional["InputStats"]) -> np.ndarray:
        """[K, N] per-weight cost of removal, comparable across layers (for --scope global)."""
        raise NotImplementedError

    def update_mask(self, layer: "Layer", stats: Optional["InputStats"], drop: int, *, pattern: Pattern = None,
                    on_block: Optional[BlockDone] = None, bias: bool = False) -> Pruned:
        """Remove ``drop`` weights of ``layer`` (N:M ``pattern``: keep n of every m along K; a
        block pattern: ``drop`` counts blocks). ``bias``: compensate through the bias when the
        method can (``Pruned.bias``); the caller has checked bias.problem(layer)."""
        raise NotImplementedError


REGISTRY: dict[str, Sparsifier] = {}


def register(cls: type) -> type:
    REGISTRY[cls.name] = cls()
    return cls


def names() -> tuple[str, ...]:
    """The --method choices, in registration order."""
    return tuple(REGISTRY)


def get(name: str) -> Sparsifier:
    if name not in REGISTRY:
        raise UsageError(f"--method must be one of {', '.join(names())}, got '{name}'")
    return REGISTRY[name]


def drop_counts(layers: Sequence["Layer"], ratios: Mapping[str, float], *, scope: str = "layer",
                saliency: Optional[Callable[[], Sequence[np.ndarray]]] = None, pattern: Pattern = None
                ) -> dict[str, int]:
    """Weights each layer loses: ``floor(R * size)`` per layer, or with ``scope="global"`` the
    share one threshold over all layers' ``saliency()`` (called only then) takes from each.
    A block pattern counts blocks: ``floor(R * blocks)``. The one place a ratio becomes a count."""
    if isinstance(pattern, masking.Blocks):
        return {l.node: masking.removal_count(ratios[l.node], pattern.count(l.K, l.N)) for l in layers}
    if scope != "global":
        return {l.node: masking.removal_count(ratios[l.node], l.size) for l in layers}
    distinct = set(ratios[l.node] for l in layers)
    if len(distinct) > 1:
        raise UsageError("--layer-ratio cannot be combined with --scope global (one threshold for all layers)")
    return dict(zip((l.node for l in layers), masking.global_drop_counts(saliency(), distinct.pop())))


def prune_by_weights(sparsifier: Sparsifier, layers: Sequence["Layer"], ratios: Mapping[str, float], *,
                     scope: str, pattern: Pattern = None) -> dict[str, Pruned]:
    """node name -> Pruned for a method that needs no calibration statistics."""
    drops = drop_counts(layers, ratios, scope=scope, saliency=lambda: [sparsifier.saliency(l, None) for l in layers],
                        pattern=pattern)
    return {l.node: sparsifier.update_mask(l, None, drops[l.node], pattern=pattern) for l in layers}


def share_of_total(saliency: np.ndarray) -> np.ndarray:
    """Each weight's share of its layer's total saliency: comparable across layers, so one global
    threshold takes more weights from the layers where they matter least."""
    total = float(saliency.sum())
    return saliency / total if total > 0 else saliency


@register
class Magnitude(Sparsifier):
    """The smallest |w| go (ties: first in row-major W[K, N]); blocks by their mean w² (norm)."""

    name = "magnitude"

    def saliency(self, layer, stats=None) -> np.ndarray:
        return masking.magnitude_scores(layer.weight)

    def update_mask(self, layer, stats, drop, *, pattern=None, on_block=None, bias=False) -> Pruned:
        if pattern is None:  # the floor rule on |w| without a layer-sized score buffer
            return Pruned.masked(layer.weight, masking.magnitude_keep(layer.weight, drop))
        scores = masking.magnitude_scores(layer.weight)
        if isinstance(pattern, masking.Blocks):
            keep = pattern.mask(np.square(scores, dtype=np.float64), drop)
        else:
            keep = masking.nm_mask(scores, *pattern, layer=layer.node)
        return Pruned.masked(layer.weight, keep)


@register
class Wanda(Sparsifier):
    """Wanda (Sun et al. 2023): the smallest ``|w_kn| · ‖x_k‖₂`` within each output n go (blocks:
    the lowest mean score within each column of blocks, i.e. each group of R outputs)."""

    name = "wanda"
    statistics = SQ_NORMS

    def saliency(self, layer, stats) -> np.ndarray:
        # the output error of removing w alone, w² ‖x_k‖²: the square of Wanda's score
        return share_of_total(np.asarray(layer.weight, dtype=np.float64) ** 2 * stats.sq_norms[:, None])

    def update_mask(self, layer, stats, drop, *, pattern=None, on_block=None, bias=False) -> Pruned:
        scores = wanda_scores(layer.weight, stats.sq_norms)
        if isinstance(pattern, masking.Blocks):
            keep = pattern.expand(masking.per_output_mask(pattern.block_scores(scores), drop), *scores.shape)
        elif pattern is not None:
            keep = masking.nm_mask(scores, *pattern, layer=layer.node)
        else:
            keep = masking.per_output_mask(scores, drop)
        return Pruned.masked(layer.weight, keep)


@register
class SparseGPT(Sparsifier):
    """SparseGPT (Frantar & Alistarh 2023): OBS removal with the kept weights updated to make up
    for the removed ones (sparsegpt.py), and with ``bias=True`` the bias too."""

    name = "sparsegpt"
    statistics = HESSIAN
    refits = True

    def saliency(self, layer, stats) -> np.ndarray:
        # the OBS error of removing w alone, w² / [H⁻¹]_kk
        factor, dead = inverse_hessian_factor(stats.hessian, layer=layer.node)
        return share_of_total(obs_errors(layer.weight, factor, dead))

    def update_mask(self, layer, stats, drop, *, pattern=None, on_block=None, bias=False) -> Pruned:
        if bias:
            weight, keep, delta = sparsegpt_prune_with_bias(layer.weight, stats.hessian, stats.input_sum, stats.rows,
                                                            drop, pattern=pattern, layer=layer.node, on_block=on_block)
            return Pruned(weight, keep, bias_terms.updated(layer, delta))
        weight, keep = sparsegpt_prune(layer.weight, stats.hessian, drop, pattern=pattern, layer=layer.node,
                                       on_block=on_block)
        return Pruned(weight, keep)


def wanda_scores(weight: np.ndarray, sq_norms: np.ndarray) -> np.ndarray:
    """Wanda's score ``|w_kn| · ‖x_k‖₂``, compared within each output n."""
    return np.abs(np.asarray(weight, dtype=np.float64)) * np.sqrt(np.asarray(sq_norms, dtype=np.float64))[:, None]
