// SparseGemm computes what the dense product with the unstored weights as zeros computes, and
// there 0 * inf = 0 * NaN = NaN: a row of A' holding an inf or a NaN at position k makes every
// output whose column of W does not store k NaN (the alpha, bias and relu that follow keep it
// NaN). The kernels multiply stored weights only, so after them each format marks those outputs
// through this helper. Stored weights need nothing: the kernels multiply them, zeros included.
// The scan for such rows is vectorised (KernelTable::has_non_finite); the per-row work only runs
// when one is found.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/sparse_gemm_kernels.h"

namespace onnx_prune {

// Calls mark(m, ks) for every row m of A' (A' = A, or Aᵀ with trans_a) with non-finite entries,
// ks being their positions in increasing order. K is the inner dimension.
template <typename Mark>
void for_each_non_finite_row(const KernelTable& kernels, const GemmArgs& g, int64_t K, Mark&& mark) {
  if (g.M == 0 || K == 0 || !kernels.has_non_finite(g.a, g.M * K)) return;
  std::vector<int64_t> ks;
  for (int64_t m = 0; m < g.M; ++m) {
    ks.clear();
    if (g.trans_a) {
      for (int64_t k = 0; k < K; ++k)
        if (!std::isfinite(g.a[k * g.M + m])) ks.push_back(k);
    } else {
      const float* row = g.a + m * K;
      if (!kernels.has_non_finite(row, K)) continue;
      for (int64_t k = 0; k < K; ++k)
        if (!std::isfinite(row[k])) ks.push_back(k);
    }
    if (!ks.empty()) mark(m, ks);
  }
}

}  // namespace onnx_prune
