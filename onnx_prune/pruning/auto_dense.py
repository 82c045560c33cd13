"""Which pruned layers stay dense: at low sparsity the sparse kernel loses to onnxruntime's Gemm."""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ..model.layers import Layer
from ..options import PruneOptions
from ..sparse_gemm.rewrite import PrunedLayer

if TYPE_CHECKING:
    from .sparsifiers import Pruned

# A layer keeping more than this fraction of its weights (sparsity below 60%) stays a dense,
# unpruned Gemm / MatMul by default: there the sparse kernel does not beat onnxruntime's dense
# Gemm at batch >= 16 (tools/bench_kernel.py, 1000x1000, 1 thread, 2-core Zen 3: dense/ours at
# batch 16 was 0.96x at sparsity 0.5 and 1.15x at 0.6). An explicit N:M pattern is always kept
# sparse (the user asked for that structure). ``auto_dense=False`` (--no-auto-dense) prunes anyway.
DENSE_KEEP_THRESHOLD = 0.4


def stays_dense(mask: np.ndarray, options: PruneOptions) -> bool:
    """The auto-dense rule: whether a layer whose keep ``mask`` this is stays a dense Gemm / MatMul
    (--auto-dense on, no --pattern, more than DENSE_KEEP_THRESHOLD of its weights kept)."""
    return options.auto_dense and not options.pattern and np.count_nonzero(mask) / mask.size > DENSE_KEEP_THRESHOLD


def split_dense(layers: Sequence[Layer], weights: Mapping[str, "Pruned"],
                options: PruneOptions) -> tuple[list[PrunedLayer], list[Layer]]:
    """Layers that become SparseGemm, and those kept dense (weights and bias as they were)
    because too few weights go."""
    pruned, dense_kept = [], []
    for layer in layers:
        p = weights[layer.node]
        if stays_dense(p.mask, options):
            dense_kept.append(layer)
        else:
            pruned.append(PrunedLayer(layer, p.weight, p.mask, bias=p.bias))
    return pruned, dense_kept
