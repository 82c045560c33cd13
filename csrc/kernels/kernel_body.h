// The SparseGemm compute loops, written once over a small vector abstraction `V` and included
// inside a per-ISA namespace by kernel_avx512.cc, kernel_avx2.cc and kernel_portable.cc.
// Deliberately free of std:: templates and includes (see CsrArrays in sparse_gemm_kernels.h).
//
// Two strategies:
//  * few rows (M <= kGemvMaxRows): per output n, a gather-based sparse dot product over A's row;
//  * otherwise: A is repacked into column tiles At[k][0..64) (batch contiguous), and for every output
//    n each stored weight w_j multiplies the tile row At[idx_j] into up to 64 batch accumulators held
//    in registers. Outputs are produced 16 at a time into a small buffer and written to Y transposed.
// Threads: both strategies split outputs into nnz-balanced ranges (PackedCsr::parts); the tiled one
// also splits the batch into tiles, giving (tile, range) tasks run on onnxruntime's pool.

#ifndef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#error "include kernel_body.h only from an ISA translation unit, inside its namespace"
#endif

constexpr int64_t kGemvMaxRows = 3;
constexpr int64_t kPanel = 16;       // floats per layout unit of a tile
constexpr int64_t kTileCols = 64;    // batch columns per tile (4 panels)
constexpr int64_t kNBlock = 16;      // outputs per epilogue block
constexpr int64_t kPackKChunk = 256; // rows of At per packing task

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

struct Scratch {
  float* p = nullptr;
  explicit Scratch(size_t n) : p(n ? scratch_alloc(n) : nullptr) {}
  ~Scratch() { if (p) scratch_free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

inline float bias_at(const BiasView& c, int64_t m, int64_t n) {
  return c.data[(c.rows == 1 ? 0 : m) * c.cols + (c.cols == 1 ? 0 : n)];
}

inline float finish(const GemmArgs& g, float acc, int64_t m, int64_t n) {
  return g.bias.data ? g.alpha * acc + g.beta * bias_at(g.bias, m, n) : g.alpha * acc;
}

// ---------------------------------------------------------------- few rows: sparse dot products

struct GemvTask {
  const GemmArgs* g;
  const float* x;     // [M][K] rows of A' (A itself, or A^T copied when trans_a)
};

template <typename Idx>
void gemv_range(const GemvTask& t, const Idx* idx, int64_t n0, int64_t n1) {
  const GemmArgs& g = *t.g;
  const int64_t K = g.w.K, N = g.w.N;
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t b = g.w.row_ptr[n], e = g.w.row_ptr[n + 1];
    for (int64_t m = 0; m < g.M; ++m) {
      const float acc = V::sparse_dot(g.w.values + b, idx + b, e - b, t.x + m * K);
      g.y[m * N + n] = finish(g, acc, m, n);
    }
  }
}

inline void gemv_task(void* data, size_t p) {
  const GemvTask& t = *static_cast<const GemvTask*>(data);
  const CsrArrays& w = t.g->w;
  const int64_t n0 = w.parts[p], n1 = w.parts[p + 1];
  if (w.idx16) {
    gemv_range(t, w.idx16, n0, n1);
  } else {
    gemv_range(t, w.idx32, n0, n1);
  }
}

inline void run_gemv(const GemmArgs& g, const ParallelRunner& parallel) {
  const int64_t K = g.w.K;
  Scratch columns(g.trans_a ? static_cast<size_t>(g.M * K) : 0);
  if (g.trans_a) {  // A is [K, M]: gather each column of A into a contiguous row of A^T
    for (int64_t m = 0; m < g.M; ++m)
      for (int64_t k = 0; k < K; ++k) columns.p[m * K + k] = g.a[k * g.M + m];
  }
  GemvTask task{&g, g.trans_a ? columns.p : g.a};
  parallel(gemv_task, static_cast<size_t>(g.w.n_parts), &task);
}

// ---------------------------------------------------------------- many rows: tiled SpMM

struct TiledTask {
  const GemmArgs* g;
  float* tiles;        // n_tiles blocks of [K][kTileCols] floats (a tile of width wp uses [K][wp])
  int64_t n_tiles;
  int64_t n_kchunks;
};

inline int64_t tile_width(const GemmArgs& g, int64_t tile) {
  return min64(kTileCols, g.M - tile * kTileCols);
}

// Copies columns [m0, m0 + w) of A' into tile rows k in [k0, k1), zero-padding to a multiple of 16.
inline void pack_tile_rows(const GemmArgs& g, float* tile, int64_t m0, int64_t w, int64_t k0, int64_t k1) {
  const int64_t K = g.w.K, wp = round_up(w, kPanel);
  if (g.trans_a) {
    for (int64_t k = k0; k < k1; ++k) {
      const float* src = g.a + k * g.M + m0;
      float* dst = tile + k * wp;
      for (int64_t i = 0; i < w; ++i) dst[i] = src[i];
      for (int64_t i = w; i < wp; ++i) dst[i] = 0.f;
    }
    return;
  }
  constexpr int64_t kb = 16;
  for (int64_t kk = k0; kk < k1; kk += kb) {
    const int64_t ke = min64(kk + kb, k1);
    for (int64_t i = 0; i < w; ++i) {
      const float* src = g.a + (m0 + i) * K;
      for (int64_t k = kk; k < ke; ++k) tile[k * wp + i] = src[k];
    }
    for (int64_t k = kk; k < ke; ++k)
      for (int64_t i = w; i < wp; ++i) tile[k * wp + i] = 0.f;
  }
}

inline void pack_task(void* data, size_t i) {
  const TiledTask& t = *static_cast<const TiledTask*>(data);
  const GemmArgs& g = *t.g;
  const int64_t tile = static_cast<int64_t>(i) / t.n_kchunks;
  const int64_t chunk = static_cast<int64_t>(i) % t.n_kchunks;
  const int64_t k0 = chunk * kPackKChunk, k1 = min64(g.w.K, k0 + kPackKChunk);
  pack_tile_rows(g, t.tiles + tile * g.w.K * kTileCols, tile * kTileCols, tile_width(g, tile), k0, k1);
}

// acc[0..NP*16) = sum_j values[j] * tile[idx[j]][0..NP*16): the inner loop of the kernel.
template <int NP, typename Idx>
inline void spmm_row(const float* values, const Idx* idx, int64_t count, const float* tile, float* out) {
  constexpr int NV = NP * kPanel / V::W;               // vector registers per tile row
  constexpr int U = NV >= 8 ? 1 : (NV >= 4 ? 2 : 4);   // independent chains to hide FMA latency
  constexpr int64_t stride = NP * kPanel;
  typename V::reg acc[U][NV];
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < NV; ++v) acc[u][v] = V::zero();
  int64_t j = 0;
  for (; j + U <= count; j += U) {
    for (int u = 0; u < U; ++u) {
      const typename V::reg wj = V::set1(values[j + u]);
      const float* row = tile + static_cast<int64_t>(idx[j + u]) * stride;
      for (int v = 0; v < NV; ++v) acc[u][v] = V::fmadd(wj, V::load(row + v * V::W), acc[u][v]);
    }
  }
  for (; j < count; ++j) {
    const typename V::reg wj = V::set1(values[j]);
    const float* row = tile + static_cast<int64_t>(idx[j]) * stride;
    for (int v = 0; v < NV; ++v) acc[0][v] = V::fmadd(wj, V::load(row + v * V::W), acc[0][v]);
  }
  for (int u = 1; u < U; ++u)
    for (int v = 0; v < NV; ++v) acc[0][v] = V::add(acc[0][v], acc[u][v]);
  for (int v = 0; v < NV; ++v) V::store(out + v * V::W, acc[0][v]);
}

template <int NP, typename Idx>
void spmm_range(const GemmArgs& g, const Idx* idx, const float* tile, int64_t m0, int64_t w,
                int64_t n0, int64_t n1) {
  alignas(64) float block[kNBlock * kTileCols];
  const int64_t N = g.w.N;
  for (int64_t nb = n0; nb < n1; nb += kNBlock) {
    const int64_t ne = min64(nb + kNBlock, n1);
    for (int64_t n = nb; n < ne; ++n) {
      const int64_t b = g.w.row_ptr[n];
      spmm_row<NP>(g.w.values + b, idx + b, g.w.row_ptr[n + 1] - b, tile, block + (n - nb) * kTileCols);
    }
    for (int64_t i = 0; i < w; ++i) {
      float* yrow = g.y + (m0 + i) * N;
      for (int64_t n = nb; n < ne; ++n) yrow[n] = finish(g, block[(n - nb) * kTileCols + i], m0 + i, n);
    }
  }
}

template <typename Idx>
void spmm_dispatch(const GemmArgs& g, const Idx* idx, const float* tile, int64_t m0, int64_t w,
                   int64_t n0, int64_t n1) {
  switch (round_up(w, kPanel) / kPanel) {
    case 1: spmm_range<1>(g, idx, tile, m0, w, n0, n1); break;
    case 2: spmm_range<2>(g, idx, tile, m0, w, n0, n1); break;
    case 3: spmm_range<3>(g, idx, tile, m0, w, n0, n1); break;
    default: spmm_range<4>(g, idx, tile, m0, w, n0, n1); break;
  }
}

inline void spmm_task(void* data, size_t i) {
  const TiledTask& t = *static_cast<const TiledTask*>(data);
  const GemmArgs& g = *t.g;
  const int64_t parts = g.w.n_parts;
  const int64_t tile = static_cast<int64_t>(i) / parts, p = static_cast<int64_t>(i) % parts;
  const float* tile_data = t.tiles + tile * g.w.K * kTileCols;
  const int64_t m0 = tile * kTileCols, w = tile_width(g, tile);
  const int64_t n0 = g.w.parts[p], n1 = g.w.parts[p + 1];
  if (g.w.idx16) {
    spmm_dispatch(g, g.w.idx16, tile_data, m0, w, n0, n1);
  } else {
    spmm_dispatch(g, g.w.idx32, tile_data, m0, w, n0, n1);
  }
}

inline void run_tiled(const GemmArgs& g, const ParallelRunner& parallel) {
  const int64_t n_tiles = (g.M + kTileCols - 1) / kTileCols;
  const int64_t n_kchunks = (g.w.K + kPackKChunk - 1) / kPackKChunk;
  Scratch tiles(static_cast<size_t>(n_tiles * g.w.K * kTileCols));
  TiledTask task{&g, tiles.p, n_tiles, n_kchunks};
  parallel(pack_task, static_cast<size_t>(n_tiles * n_kchunks), &task);
  parallel(spmm_task, static_cast<size_t>(n_tiles * g.w.n_parts), &task);
}

// ---------------------------------------------------------------- entry point

inline void fill_bias_only(const GemmArgs& g) {
  for (int64_t m = 0; m < g.M; ++m)
    for (int64_t n = 0; n < g.w.N; ++n) g.y[m * g.w.N + n] = finish(g, 0.f, m, n);
}

inline void gemm(const GemmArgs& g, const ParallelRunner& parallel) {
  if (g.M == 0 || g.w.N == 0) return;
  if (g.w.K == 0 || g.w.row_ptr[g.w.N] == 0) {
    fill_bias_only(g);
  } else if (g.M <= kGemvMaxRows) {
    run_gemv(g, parallel);
  } else {
    run_tiled(g, parallel);
  }
}
