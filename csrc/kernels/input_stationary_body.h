// The input-stationary paths of SparseGemm, included by kernel_body.h inside its ISA namespace (same
// rules: no std:: templates, no includes). In a ReLU network most inputs of a layer are exactly
// zero, and a zero input row k of A' contributes nothing through W's row k, so these paths walk W by
// its rows (the CSC layout, CsrArrays::col_*) and visit only the rows whose input is nonzero:
//  * few rows (M <= 8): per output range, sums[n][0..8) += w_kn * At[k] for the group's nonzero k
//    (M = 1: a scalar scatter into Y itself);
//  * tiled: per 32-column tile of A' and output range, sums[n][0..32) += w_kn * tile[k] over the rows
//    that are nonzero anywhere in the tile;
//  * row by row (A' rows contiguous, very sparse A: zeros scattered, so few rows are zero across a
//    group or tile): each row of A' scatters its own nonzero inputs' weights into its row of Y.
// Which path runs is decided per group of rows / per tile from the count of nonzero rows by the cost
// model below (docs/bench_kernel.md, "Kernel paths and the cost model"). Exactness: a row is skipped only when all its
// inputs are +0 or -0 (a bit test: inf and NaN are never skipped) and only when no stored weight is
// non-finite (CsrArrays::skip_zeros; 0 * inf must stay NaN); the non-finite fix-up of
// formats/non_finite.h then marks unstored weights' NaN exactly as after the other paths.

#ifndef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#error "include input_stationary_body.h only from kernel_body.h"
#endif

// ---------------------------------------------------------------- the cost model
// Measured on the 2-core dev VM (Intel Xeon, AVX-512 variant), 1000 x 1000 at 90% sparsity,
// 1 thread, with a fraction f of W's rows given nonzero inputs (docs/bench_kernel.md, "Kernel paths
// and the cost model"): the input-stationary path's time grows with f, the output-stationary one's
// does not, and they cross at these f. Each is the largest fraction of nonzero rows (of K) at which
// the input-stationary path still runs.
constexpr double kIsMaxFractionGemv = 0.45;    // M = 1 (scalar scatter vs the vector sparse dot)
constexpr double kIsMaxFractionNarrow = 0.33;  // 2 <= M <= 8, per group of 8 rows
constexpr double kIsMaxFractionTiled = 0.65;   // per 32-column tile (vs the blocked pair layout)
// M >= 2, A not transposed: row by row while fewer than this fraction of the single inputs (of the
// first 8 rows) are nonzero, whatever the zero rows per group or tile (vs the best batched path).
constexpr double kIsMaxFractionRowsNarrow = 0.12;  // 2 <= M <= 8
constexpr double kIsMaxFractionRowsTiled = 0.04;   // M > 8

// input_stationary_rows falls back to input_stationary where rows of A' are not contiguous.
inline bool forces_input_stationary(KernelPath path) {
  return path == KernelPath::kInputStationary || path == KernelPath::kInputStationaryRows;
}

template <typename Val>
bool choose_input_stationary(const CsrArraysOf<Val>& w, double max_fraction, int64_t nonzero_rows) {
  if (w.n_col_parts == 0) return false;
  if (w.forced_path != KernelPath::kAuto) return forces_input_stationary(w.forced_path);
  return static_cast<double>(nonzero_rows) < max_fraction * static_cast<double>(w.K);
}

// ---------------------------------------------------------------- nonzero rows

// The magnitude bits of x: zero exactly for +0 and -0.
inline uint32_t magnitude_bits(float x) {
  uint32_t bits;
  __builtin_memcpy(&bits, &x, sizeof bits);
  return bits & 0x7fffffffu;
}

// Nonzero (not +-0) entries among x[0..count): a vectorisable count.
inline int64_t count_nonzero(const float* x, int64_t count) {
  int64_t n = 0;
  for (int64_t i = 0; i < count; ++i) n += magnitude_bits(x[i]) != 0u;
  return n;
}

// Writes the k < K whose `width` floats at x + k * stride are not all +-0 (all k when !skip_zeros)
// to rows, in increasing order; returns their count. Branch-free, one pass.
inline int64_t nonzero_rows(const float* x, int64_t K, int64_t stride, int64_t width, bool skip_zeros,
                            int64_t* rows) {
  int64_t count = 0;
  for (int64_t k = 0; k < K; ++k) {
    uint32_t any = skip_zeros ? 0u : 1u;
    for (int64_t i = 0; i < width; ++i) any |= magnitude_bits(x[k * stride + i]);
    rows[count] = k;
    count += any != 0u;
  }
  return count;
}

// ---------------------------------------------------------------- few rows

template <typename Val>
struct IsNarrowTask {
  const CsrJob<Val>* g;
  const float* at;      // [K][kNarrowCols] copy of A' rows [r0, r0 + rows) (unused when M = 1)
  const int64_t* nz;    // the nonzero rows of W to visit
  int64_t n_nz;
  float* acc;           // [N][kNarrowCols] sums (unused when M = 1)
  int64_t r0;
  int64_t rows;
};

// One row m of A' (contiguous: M = 1, or A not transposed): Y[m][n] = sum over its nonzero inputs k
// of A'[m][k] * W[k][n] for the outputs of range `part`, scattered into Y itself, then the epilogue.
template <typename Val, typename Out>
void is_row_range(const CsrJob<Val>& g, const Out* out, int64_t part, int64_t m, const int64_t* nz, int64_t n_nz) {
  const CsrArraysOf<Val>& w = g.w;
  const int64_t n0 = w.col_parts[part], n1 = w.col_parts[part + 1];
  const int64_t* ptr = w.col_ptr + part * (w.K + 1);
  const float* a = g.a + m * w.K;
  float* y = g.y + m * w.N;
  for (int64_t n = n0; n < n1; ++n) y[n] = 0.f;
  for (int64_t i = 0; i < n_nz; ++i) {
    const int64_t k = nz[i];
    const float x = a[k];
    const int64_t e = ptr[k + 1];
    int64_t j = ptr[k];
    for (; j + 4 <= e; j += 4) {
      y[out[j]] += x * static_cast<float>(w.col_values[j]);
      y[out[j + 1]] += x * static_cast<float>(w.col_values[j + 1]);
      y[out[j + 2]] += x * static_cast<float>(w.col_values[j + 2]);
      y[out[j + 3]] += x * static_cast<float>(w.col_values[j + 3]);
    }
    for (; j < e; ++j) y[out[j]] += x * static_cast<float>(w.col_values[j]);
  }
  for (int64_t n = n0; n < n1; ++n) y[n] = finish(g, y[n], m, n);
}

// 2 <= rows <= 8: sums[n] (8 floats) += W[k][n] * At[k] over the group's nonzero k.
template <typename Val, typename Out>
void is_narrow_range(const IsNarrowTask<Val>& t, const Out* out, int64_t part) {
  const CsrJob<Val>& g = *t.g;
  const CsrArraysOf<Val>& w = g.w;
  const int64_t n0 = w.col_parts[part], n1 = w.col_parts[part + 1];
  const int64_t* ptr = w.col_ptr + part * (w.K + 1);
  for (int64_t n = n0; n < n1; ++n) V8::store(t.acc + n * kNarrowCols, V8::zero());
  for (int64_t i = 0; i < t.n_nz; ++i) {
    const int64_t k = t.nz[i];
    const typename V8::reg x = V8::load(t.at + k * kNarrowCols);
    for (int64_t j = ptr[k]; j < ptr[k + 1]; ++j) {
      float* sum = t.acc + static_cast<int64_t>(out[j]) * kNarrowCols;
      V8::store(sum, V8::fmadd(V8::set1(static_cast<float>(w.col_values[j])), x, V8::load(sum)));
    }
  }
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t r = 0; r < t.rows; ++r)
      g.y[(t.r0 + r) * w.N + n] = finish(g, t.acc[n * kNarrowCols + r], t.r0 + r, n);
}

template <typename Val>
void is_narrow_task(void* data, size_t part) {
  const IsNarrowTask<Val>& t = *static_cast<const IsNarrowTask<Val>*>(data);
  const CsrArraysOf<Val>& w = t.g->w;
  const int64_t p = static_cast<int64_t>(part);
  if (t.g->M == 1) {
    if (w.col_out16) is_row_range(*t.g, w.col_out16, p, 0, t.nz, t.n_nz);
    else is_row_range(*t.g, w.col_out32, p, 0, t.nz, t.n_nz);
  } else {
    if (w.col_out16) is_narrow_range(t, w.col_out16, p); else is_narrow_range(t, w.col_out32, p);
  }
}

// At M = 1: whether the input-stationary path may run (forced, or enough zeros by the count).
template <typename Val>
bool gemv_may_skip_zeros(const CsrJob<Val>& g) {
  const CsrArraysOf<Val>& w = g.w;
  if (w.forced_path != KernelPath::kAuto) return forces_input_stationary(w.forced_path);
  return w.skip_zeros && choose_input_stationary(w, kIsMaxFractionGemv, count_nonzero(g.a, w.K));
}

// Runs the group [r0, r0 + rows) input-stationary when the cost model (or ONNX_PRUNE_PATH) says
// so; false leaves it to the output-stationary loop. `at` is the group's copy of A' (M > 1), `nz`
// and `acc` scratch of K ints and N x 8 floats.
template <typename Val>
bool try_input_stationary_group(const CsrJob<Val>& g, const float* at, int64_t r0, int64_t rows, int64_t* nz,
                                       float* acc, const ParallelRunner& parallel) {
  if (g.w.forced_path == KernelPath::kGemv || g.w.n_col_parts == 0) return false;
  int64_t n_nz;
  if (g.M == 1) {  // a vectorised count decides; the list is built only for the path that needs it
    const int64_t count = g.w.skip_zeros ? count_nonzero(g.a, g.w.K) : g.w.K;
    if (!choose_input_stationary(g.w, kIsMaxFractionGemv, count)) return false;
    n_nz = nonzero_rows(g.a, g.w.K, 1, 1, g.w.skip_zeros, nz);
  } else {
    n_nz = nonzero_rows(at, g.w.K, kNarrowCols, kNarrowCols, g.w.skip_zeros, nz);
    if (!choose_input_stationary(g.w, kIsMaxFractionNarrow, n_nz)) return false;
  }
  IsNarrowTask<Val> task{&g, at, nz, n_nz, acc, r0, rows};
  parallel(is_narrow_task<Val>, static_cast<size_t>(g.w.n_col_parts), &task);
  return true;
}

// ---------------------------------------------------------------- row by row (very sparse A)
// When most single inputs are zero but few rows of W are zero across a group or tile (zeros
// scattered), each row of A' runs the scalar input-stationary scatter on its own nonzero inputs:
// the cost is that of its nonzero inputs' weights only, where the batched paths pay for every weight.

template <typename Val>
struct IsRowsTask {
  const CsrJob<Val>* g;
  int64_t* nz;    // [M][K]: row m's nonzero inputs
  int64_t* n_nz;  // [M]
};

template <typename Val>
void is_rows_scan_task(void* data, size_t m) {
  const IsRowsTask<Val>& t = *static_cast<const IsRowsTask<Val>*>(data);
  const CsrJob<Val>& g = *t.g;
  const int64_t K = g.w.K, row = static_cast<int64_t>(m);
  t.n_nz[row] = nonzero_rows(g.a + row * K, K, 1, 1, g.w.skip_zeros, t.nz + row * K);
}

template <typename Val>
void is_rows_task(void* data, size_t part) {
  const IsRowsTask<Val>& t = *static_cast<const IsRowsTask<Val>*>(data);
  const CsrJob<Val>& g = *t.g;
  for (int64_t m = 0; m < g.M; ++m) {
    const int64_t* nz = t.nz + m * g.w.K;
    if (g.w.col_out16) {
      is_row_range(g, g.w.col_out16, static_cast<int64_t>(part), m, nz, t.n_nz[m]);
    } else {
      is_row_range(g, g.w.col_out32, static_cast<int64_t>(part), m, nz, t.n_nz[m]);
    }
  }
}

// The fraction of nonzero inputs among the first rows of A' (up to 8: the sample the cost model
// reads), or -1 where it is not read: rows not contiguous (A transposed), one row, no CSC layout,
// no zero skipped, or a forced path.
template <typename Val>
double sample_density(const CsrJob<Val>& g) {
  const CsrArraysOf<Val>& w = g.w;
  if (w.n_col_parts == 0 || g.trans_a || g.M < 2 || !w.skip_zeros || w.forced_path != KernelPath::kAuto) return -1.0;
  const int64_t count = min64(g.M, kNarrowCols) * w.K;
  return static_cast<double>(count_nonzero(g.a, count)) / static_cast<double>(count);
}

// True when the row-by-row path should run: forced, or (auto) when the sample holds few enough
// nonzero inputs (kIsMaxFractionRows*).
template <typename Val>
bool choose_rows_path(const CsrJob<Val>& g, double density) {
  const CsrArraysOf<Val>& w = g.w;
  if (w.n_col_parts == 0 || (g.trans_a && g.M > 1) || g.M < 2) return false;
  if (w.forced_path != KernelPath::kAuto) return w.forced_path == KernelPath::kInputStationaryRows;
  if (density < 0) return false;
  return density < (g.M <= kNarrowCols ? kIsMaxFractionRowsNarrow : kIsMaxFractionRowsTiled);
}

// Whether the tiled path scans its tiles for zero rows. A tile's fraction of nonzero rows is at
// least its fraction of nonzero inputs, so when the sample's density is above the tiled threshold
// no tile like it could run input-stationary and the scan (about 5% of the instructions of a
// batch-64 call) is skipped. The choice only picks between exact paths.
template <typename Val>
bool may_skip_tile_rows(const CsrJob<Val>& g, double density) {
  const CsrArraysOf<Val>& w = g.w;
  if (w.n_col_parts == 0) return false;
  if (w.forced_path != KernelPath::kAuto) return forces_input_stationary(w.forced_path);
  return density < 0 ? w.skip_zeros : density <= kIsMaxFractionTiled;
}

template <typename Val>
void run_rows(const CsrJob<Val>& g, const ParallelRunner& parallel) {
  Scratch ints(g.scratch, static_cast<size_t>(2 * (g.M * g.w.K + g.M)));  // int64
  int64_t* nz = reinterpret_cast<int64_t*>(ints.p);
  IsRowsTask<Val> task{&g, nz, nz + g.M * g.w.K};
  parallel(is_rows_scan_task<Val>, static_cast<size_t>(g.M), &task);
  parallel(is_rows_task<Val>, static_cast<size_t>(g.w.n_col_parts), &task);
}

// ---------------------------------------------------------------- tiled

// Output range `part` of one tile: sums[n][0..NP*16) = sum of W[k][n] * tile[k] over the tile's
// nonzero rows k. `acc` is the tile's [N][kTileCols] sums; the caller writes them to Y.
template <int NP, typename Val, typename Out>
void is_tile_range(const CsrJob<Val>& g, const Out* out, const float* tile, const int64_t* nz, int64_t n_nz,
                   float* acc, int64_t part) {
  constexpr int NV = NP * kPanel / V::W;
  constexpr int64_t stride = NP * kPanel;
  const CsrArraysOf<Val>& w = g.w;
  const int64_t n0 = w.col_parts[part], n1 = w.col_parts[part + 1];
  const int64_t* ptr = w.col_ptr + part * (w.K + 1);
  for (int64_t n = n0; n < n1; ++n)
    for (int v = 0; v < NV; ++v) V::store(acc + n * kTileCols + v * V::W, V::zero());
  for (int64_t i = 0; i < n_nz; ++i) {
    const int64_t k = nz[i];
    const float* row = tile + tile_row(k) * stride;
    typename V::reg x[NV];
    for (int v = 0; v < NV; ++v) x[v] = V::load(row + v * V::W);
    for (int64_t j = ptr[k]; j < ptr[k + 1]; ++j) {
      float* sum = acc + static_cast<int64_t>(out[j]) * kTileCols;
      const typename V::reg wv = V::set1(static_cast<float>(w.col_values[j]));
      for (int v = 0; v < NV; ++v) V::store(sum + v * V::W, V::fmadd(wv, x[v], V::load(sum + v * V::W)));
    }
  }
}

template <typename Val, typename Out>
void is_tile_range_of_width(const CsrJob<Val>& g, const Out* out, const float* tile, const int64_t* nz, int64_t n_nz,
                            float* acc, int64_t part, int64_t width) {
  if (round_up(width, kPanel) == kPanel) {
    is_tile_range<1>(g, out, tile, nz, n_nz, acc, part);
  } else {
    is_tile_range<2>(g, out, tile, nz, n_nz, acc, part);
  }
}
