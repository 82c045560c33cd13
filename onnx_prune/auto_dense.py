"""When a pruned layer stays dense: the sparse kernel must beat onnxruntime's dense Gemm."""
from __future__ import annotations

# A layer keeping more than this fraction of its weights (sparsity below 60%) stays a dense,
# unpruned Gemm / MatMul by default: there the sparse kernel does not beat onnxruntime's dense
# Gemm at batch >= 16 (tools/bench_kernel.py, 1000x1000, 1 thread, 2-core Zen 3: dense/ours at
# batch 16 was 0.96x at sparsity 0.5 and 1.15x at 0.6). An explicit N:M pattern is always kept
# sparse (the user asked for that structure). ``auto_dense=False`` (--no-auto-dense) prunes anyway.
DENSE_KEEP_THRESHOLD = 0.4
