"""One weight, one mask: layers that multiply by the same matrix (one Linear used twice, ``Identity(W)``
per use, ``Transpose(W)`` for a tied projection; model.weights groups them by ``weight_key``) are
pruned once, through the first of them in graph order, and every other one reads the same packed
tensors. ``--scope global`` thereby counts a shared weight once, and no dense copy stays behind.

A method that reads calibration activations scores a shared weight on its first user's inputs, and a
compensated bias (SparseGPT) goes to that user only: the others keep their own bias.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ..model.layers import Layer, Skipped
from ..sparse_gemm.formats.base import PackedWeight
from ..sparse_gemm.rewrite import PrunedLayer

Followers = dict[str, list[Layer]]  # first user's node name -> the other layers reading its weight


def whole_groups(chosen: Sequence[Layer], found: Sequence[Layer]) -> tuple[list[Layer], list[Skipped]]:
    """``chosen`` without the layers whose weight another, unchosen layer also reads (--include,
    --exclude, --min-params took only part of the group): the unchosen one keeps the weight dense,
    so pruning the rest would store it twice."""
    chosen_nodes = {l.node for l in chosen}
    left_out = {l.weight_key: l.node for l in found if l.node not in chosen_nodes}
    keep, skipped = [], []
    for layer in chosen:
        other = left_out.get(layer.weight_key)
        if other is None:
            keep.append(layer)
        else:
            skipped.append(Skipped(layer.node, f"its weight {layer.weight_key[0]} is also read by layer {other}, which "
                                               "is not selected: pruning it would store the weight twice"))
    return keep, skipped


def split(layers: Sequence[Layer]) -> tuple[list[Layer], Followers]:
    """The first layer of each weight (in the given order), and the others by that first layer."""
    first: dict[tuple, Layer] = {}
    followers: Followers = {}
    for layer in layers:
        lead = first.setdefault(layer.weight_key, layer)
        if lead is not layer:
            followers.setdefault(lead.node, []).append(layer)
    return list(first.values()), followers


def follow(pruned: Sequence[PrunedLayer], followers: Followers) -> list[PrunedLayer]:
    """``pruned`` with, after each, the layers sharing its weight: the same mask and packed tensors,
    their own bias."""
    out = []
    for p in pruned:
        out.append(p)
        for layer in followers.get(p.layer.node, []):
            out.append(PrunedLayer(layer, p.weight, p.mask, packed=p.packed, kept_count=p.kept, shares=p.layer.node))
    return out


def dense_followers(dense_kept: Sequence[Layer], followers: Followers) -> list[Layer]:
    """``dense_kept`` with the layers sharing each one's weight, kept dense for the same reason."""
    out = []
    for layer in dense_kept:
        out.append(layer)
        for other in followers.get(layer.node, []):
            other.dense_reason = layer.dense_reason
            out.append(other)
    return out


def larger_than_source(layer: Layer, packed: PackedWeight, auto_dense: bool) -> Optional[str]:
    """Why ``layer`` stays dense when its packed form would take more bytes than the constants it
    replaces (an int8 weight times a scale, or a low sparsity): the file must not grow. A float32
    weight pruned with --no-auto-dense is packed anyway, as asked."""
    compressed = layer.source_bytes < 4 * layer.size
    if packed.nbytes < layer.source_bytes or not (auto_dense or compressed):
        return None
    return (f"its packed form ({packed.nbytes:,} bytes) would be larger than the constants it is "
            f"read from ({layer.source_bytes:,} bytes)")
