// The SparseGemm compute loops, written once over a small vector abstraction `V` and included
// inside a per-ISA namespace by kernel_avx512.cc, kernel_avx2.cc and kernel_portable.cc.
// Deliberately free of std:: templates and includes (see CsrArrays in sparse_gemm_kernels.h).
//
// Two strategies:
//  * few rows (M <= 8): A' copied to 8-float rows At[k]; per output n, sum_j w_j * At[k_j];
//  * otherwise: A is repacked into column tiles At[k][0..32) (batch contiguous). W is walked block by
//    block of kKBlock rows (PackedCsr's blocked layout); while a block of the tile sits in L1, every
//    pair of outputs adds w_j * At[k_j] for its entries in the block to 2 x 32 batch sums held in
//    registers.
//    The sums, (A' W)^T per tile, are finally written to Y transposed, with alpha, beta and C.
// Threads: both strategies split outputs into nnz-balanced ranges (PackedCsr::parts); the tiled one
// also splits the batch into tiles, giving (tile, range) tasks run on onnxruntime's pool.

#ifndef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#error "include kernel_body.h only from an ISA translation unit, inside its namespace"
#endif

constexpr int64_t kNarrowCols = 8;  // batch rows handled by the few-rows strategy
constexpr int64_t kPanel = 16;       // floats per layout unit of a tile
constexpr int64_t kTileCols = 32;    // batch columns per tile (2 panels)
constexpr int64_t kPackKChunk = 256; // rows of At per packing task

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

struct Scratch {
  const ScratchAllocator& allocator;
  float* p = nullptr;
  Scratch(const ScratchAllocator& a, size_t n) : allocator(a), p(n ? scratch_alloc(a, n) : nullptr) {}
  ~Scratch() { if (p) scratch_free(allocator, p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// The CSR kernels' arguments: the generic ones plus the weight (values held as `Val`).
template <typename Val>
struct CsrJob : GemmArgs {
  CsrArraysOf<Val> w;
};

inline float bias_at(const BiasView& c, int64_t m, int64_t n) {
  return c.data[(c.rows == 1 ? 0 : m) * c.cols + (c.cols == 1 ? 0 : n)];
}

// alpha * scale_n * acc + beta * C, then the activation: the epilogue of output (m, n).
template <typename Val>
inline float finish(const CsrJob<Val>& g, float acc, int64_t m, int64_t n) {
  if (g.w.scales) acc *= g.w.scales[n];
  const float y = g.bias.data ? g.alpha * acc + g.beta * bias_at(g.bias, m, n) : g.alpha * acc;
  return g.relu && y < 0.f ? 0.f : y;  // NaN passes through, as in onnxruntime's Relu
}

// dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols (an 8 x 8 block at most).
inline void transpose_block(const float* src, int64_t src_stride, float* dst, int64_t dst_stride,
                            int64_t rows, int64_t cols) {
#ifdef ONNX_PRUNE_HAVE_X86_HELPERS
  if (rows == 8 && cols == 8) {
    transpose8x8(src, src_stride, dst, dst_stride);
    return;
  }
#endif
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * dst_stride + r] = src[r * src_stride + c];
}

// ---------------------------------------------------------------- few rows: 8-wide rows of A'

// A' (M <= 8 rows) is copied into At[K][8], zero-padded: 32 bytes per row of W, so K up to about a
// thousand stays in L1. Every output n then sums w_j * At[k_j] over its CSR entries in one vector
// register per chain (four chains, to hide the FMA latency): one short load per stored weight.
// A single row (M = 1, a GEMV) uses a sparse dot product on A directly, which measured faster still.

// sum_j values[j] * x[idx[j]] in eight independent scalar chains (hardware gathers measured slower:
// each product needs three loads either way).
template <typename Val, typename Idx>
inline float sparse_dot(const Val* values, const Idx* idx, int64_t count, const float* x) {
  float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t j = 0;
  for (; j + 8 <= count; j += 8)
    for (int u = 0; u < 8; ++u) s[u] += static_cast<float>(values[j + u]) * x[idx[j + u]];
  for (; j < count; ++j) s[0] += static_cast<float>(values[j]) * x[idx[j]];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

template <typename Val, typename Idx>
inline float row_dot(const Val* values, const Idx* idx, int64_t count, const float* x) {
#ifdef ONNX_PRUNE_HAVE_X86_HELPERS
  return vector_row_dot(values, idx, count, x);
#else
  return sparse_dot(values, idx, count, x);
#endif
}

template <typename Val>
struct NarrowTask {
  const CsrJob<Val>* g;
  const float* at;  // [K][kNarrowCols]: rows [r0, r0 + rows) of A'
  int64_t r0;
  int64_t rows;
};

template <typename Val, typename Idx>
inline typename V8::reg narrow_dot(const Val* values, const Idx* idx, int64_t count, const float* at) {
  typename V8::reg s0 = V8::zero(), s1 = V8::zero(), s2 = V8::zero(), s3 = V8::zero();
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    s0 = V8::fmadd(V8::set1(values[j]), V8::load(at + static_cast<int64_t>(idx[j]) * kNarrowCols), s0);
    s1 = V8::fmadd(V8::set1(values[j + 1]), V8::load(at + static_cast<int64_t>(idx[j + 1]) * kNarrowCols), s1);
    s2 = V8::fmadd(V8::set1(values[j + 2]), V8::load(at + static_cast<int64_t>(idx[j + 2]) * kNarrowCols), s2);
    s3 = V8::fmadd(V8::set1(values[j + 3]), V8::load(at + static_cast<int64_t>(idx[j + 3]) * kNarrowCols), s3);
  }
  for (; j < count; ++j)
    s0 = V8::fmadd(V8::set1(values[j]), V8::load(at + static_cast<int64_t>(idx[j]) * kNarrowCols), s0);
  return V8::add(V8::add(s0, s1), V8::add(s2, s3));
}

template <typename Val, typename Idx>
void narrow_range(const NarrowTask<Val>& t, const Idx* idx, int64_t n0, int64_t n1) {
  const CsrJob<Val>& g = *t.g;
  const int64_t N = g.w.N;
  alignas(32) float out[kNarrowCols];
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t b = g.w.row_ptr[n], e = g.w.row_ptr[n + 1];
    if (g.M == 1) {  // A is one contiguous row whether transposed or not
      g.y[n] = finish(g, row_dot(g.w.values + b, idx + b, e - b, g.a), 0, n);
      continue;
    }
    V8::store(out, narrow_dot(g.w.values + b, idx + b, e - b, t.at));
    for (int64_t r = 0; r < t.rows; ++r) g.y[(t.r0 + r) * N + n] = finish(g, out[r], t.r0 + r, n);
  }
}

template <typename Val>
void narrow_task(void* data, size_t p) {
  const NarrowTask<Val>& t = *static_cast<const NarrowTask<Val>*>(data);
  const CsrArraysOf<Val>& w = t.g->w;
  const int64_t n0 = w.parts[p], n1 = w.parts[p + 1];
  if (w.idx16) {
    narrow_range(t, w.idx16, n0, n1);
  } else {
    narrow_range(t, w.idx32, n0, n1);
  }
}

// ---------------------------------------------------------------- many rows: tiled SpMM

template <typename Val>
struct TiledTask {
  const CsrJob<Val>* g;
  float* tiles;        // n_tiles blocks of [K][kTileCols] floats (a tile of width wp uses [K][wp])
  float* acc;          // n_tiles blocks of [acc_rows][kTileCols] sums (A' W)^T
  int64_t acc_rows;    // >= N (2 * n_pairs for the pair layout)
  int64_t n_tiles;
  int64_t n_kchunks;
  int64_t* nz;         // n_tiles blocks of K: per row 0 / 1 (zero across the tile or not), then
                       // compacted to the tile's nonzero rows
  int64_t* n_nz;       // per tile: its number of nonzero rows
  int64_t* order;      // tile numbers: the n_os output-stationary tiles first, then the others
  int64_t n_os;
  bool scan;           // look for zero rows (else every tile runs output-stationary)
};

template <typename Val>
inline int64_t tile_width(const CsrJob<Val>& g, int64_t tile) {
  return min64(kTileCols, g.M - tile * kTileCols);
}

// Tile row of W's row k: blocks of kKBlock rows, each followed by a zero row (kKBlockRows apart).
inline int64_t tile_row(int64_t k) { return (k / kKBlock) * kKBlockRows + k % kKBlock; }

// Rows the tile of a K-row weight takes, zero rows included.
inline int64_t tile_rows(int64_t K) { return ((K + kKBlock - 1) / kKBlock) * kKBlockRows; }

#include "input_stationary_body.h"

// Rows of A' in groups of 8 (one group, or none to copy for M = 1, in the common case); each group
// runs input-stationary when its inputs are zero enough (input_stationary_body.h), else per output.
template <typename Val>
void run_narrow(const CsrJob<Val>& g, const ParallelRunner& parallel) {
  const int64_t K = g.w.K, M = g.M;
  // Scratch for the input-stationary path only where it may run (at M = 1 its cheap count decides).
  const bool columns = g.w.n_col_parts > 0 && (M > 1 || gemv_may_skip_zeros(g));
  Scratch at(g.scratch, M > 1 ? static_cast<size_t>(K * kNarrowCols) : 0);
  Scratch nz(g.scratch, columns ? static_cast<size_t>(K * 2) : 0);  // K int64
  Scratch acc(g.scratch, columns && M > 1 ? static_cast<size_t>(g.w.N * kNarrowCols) : 0);
  for (int64_t r0 = 0; r0 < M; r0 += kNarrowCols) {
    const int64_t rows = min64(kNarrowCols, M - r0);
    for (int64_t k = 0; k < K && M > 1; ++k) {
      float* row = at.p + k * kNarrowCols;
      for (int64_t r = 0; r < kNarrowCols; ++r)
        row[r] = r < rows ? (g.trans_a ? g.a[k * M + r0 + r] : g.a[(r0 + r) * K + k]) : 0.f;
    }
    if (columns && try_input_stationary_group(g, at.p, r0, rows, reinterpret_cast<int64_t*>(nz.p), acc.p, parallel))
      continue;
    NarrowTask<Val> task{&g, at.p, r0, rows};
    parallel(narrow_task<Val>, static_cast<size_t>(g.w.n_parts), &task);
  }
}

// Copies columns [m0, m0 + w) of A' into the tile rows of W's rows [k0, k1) (k0 a multiple of
// kKBlock), zero-padding to a multiple of 16 columns and writing the zero row after each block.
template <typename Val>
void pack_tile_rows(const CsrJob<Val>& g, float* tile, int64_t m0, int64_t w, int64_t k0, int64_t k1) {
  const int64_t K = g.w.K, wp = round_up(w, kPanel);
  if (g.trans_a) {
    for (int64_t k = k0; k < k1; ++k) {
      const float* src = g.a + k * g.M + m0;
      float* dst = tile + tile_row(k) * wp;
      for (int64_t i = 0; i < w; ++i) dst[i] = src[i];
      for (int64_t i = w; i < wp; ++i) dst[i] = 0.f;
    }
  } else {
    for (int64_t kk = k0; kk < k1; kk += 8) {  // 8-row groups never straddle a block
      const int64_t kn = min64(8, k1 - kk);
      float* dst = tile + tile_row(kk) * wp;
      for (int64_t i = 0; i < w; i += 8)
        transpose_block(g.a + (m0 + i) * K + kk, K, dst + i, wp, min64(8, w - i), kn);
      for (int64_t k = 0; k < kn; ++k)
        for (int64_t i = w; i < wp; ++i) dst[k * wp + i] = 0.f;
    }
  }
  for (int64_t b = k0 / kKBlock; b * kKBlock < k1; ++b) {
    float* zero = tile + (b * kKBlockRows + kZeroRow) * wp;
    for (int64_t i = 0; i < wp; ++i) zero[i] = 0.f;
  }
}

template <typename Val>
void pack_task(void* data, size_t i) {
  const TiledTask<Val>& t = *static_cast<const TiledTask<Val>*>(data);
  const CsrJob<Val>& g = *t.g;
  const int64_t tile = static_cast<int64_t>(i) / t.n_kchunks;
  const int64_t chunk = static_cast<int64_t>(i) % t.n_kchunks;
  const int64_t k0 = chunk * kPackKChunk, k1 = min64(g.w.K, k0 + kPackKChunk);
  float* tile_data = t.tiles + tile * tile_rows(g.w.K) * kTileCols;
  const int64_t w = tile_width(g, tile), wp = round_up(w, kPanel);
  pack_tile_rows(g, tile_data, tile * kTileCols, w, k0, k1);
  if (!t.scan) return;
  int64_t* flags = t.nz + tile * g.w.K;
  for (int64_t k = k0; k < k1; ++k) {
    uint32_t any = g.w.skip_zeros ? 0u : 1u;
    const float* row = tile_data + tile_row(k) * wp;
    for (int64_t i = 0; i < wp; ++i) any |= magnitude_bits(row[i]);
    flags[k] = any != 0u;
  }
}

// The inner loop of the kernel, for one pair of outputs and one block of W's rows:
// acc_s[0..NP*16) += sum_t values[2t+s] * block[rows[2t+s]][0..NP*16) for sides s = 0, 1.
// `block` is one kKBlock-row block of the tile, small enough to stay in L1.
template <int NP, bool kFirstBlock>
inline void spmm_pair(const float* values, const uint8_t* rows, int64_t steps, const float* block,
                      float* acc0, float* acc1) {
  constexpr int NV = NP * kPanel / V::W;  // vector registers per tile row and output
  constexpr int U = NV >= 4 ? 1 : 2;      // step sets in flight: at least 8 independent chains
  constexpr int64_t stride = NP * kPanel;
  typename V::reg sum0[U][NV], sum1[U][NV];
  for (int v = 0; v < NV; ++v) {
    sum0[0][v] = kFirstBlock ? V::zero() : V::load(acc0 + v * V::W);
    sum1[0][v] = kFirstBlock ? V::zero() : V::load(acc1 + v * V::W);
    for (int u = 1; u < U; ++u) sum0[u][v] = sum1[u][v] = V::zero();
  }
  int64_t t = 0;
#pragma GCC unroll 2
  for (; t + U <= steps; t += U) {
    for (int u = 0; u < U; ++u) {
      const typename V::reg w0 = V::set1(values[2 * (t + u)]);
      const typename V::reg w1 = V::set1(values[2 * (t + u) + 1]);
      const float* row0 = block + static_cast<int64_t>(rows[2 * (t + u)]) * stride;
      const float* row1 = block + static_cast<int64_t>(rows[2 * (t + u) + 1]) * stride;
      for (int v = 0; v < NV; ++v) {
        sum0[u][v] = V::fmadd(w0, V::load(row0 + v * V::W), sum0[u][v]);
        sum1[u][v] = V::fmadd(w1, V::load(row1 + v * V::W), sum1[u][v]);
      }
    }
  }
  for (; t < steps; ++t) {
    const typename V::reg w0 = V::set1(values[2 * t]);
    const typename V::reg w1 = V::set1(values[2 * t + 1]);
    const float* row0 = block + static_cast<int64_t>(rows[2 * t]) * stride;
    const float* row1 = block + static_cast<int64_t>(rows[2 * t + 1]) * stride;
    for (int v = 0; v < NV; ++v) {
      sum0[0][v] = V::fmadd(w0, V::load(row0 + v * V::W), sum0[0][v]);
      sum1[0][v] = V::fmadd(w1, V::load(row1 + v * V::W), sum1[0][v]);
    }
  }
  for (int u = 1; u < U; ++u) {
    for (int v = 0; v < NV; ++v) {
      sum0[0][v] = V::add(sum0[0][v], sum0[u][v]);
      sum1[0][v] = V::add(sum1[0][v], sum1[u][v]);
    }
  }
  for (int v = 0; v < NV; ++v) {
    V::store(acc0 + v * V::W, sum0[0][v]);
    V::store(acc1 + v * V::W, sum1[0][v]);
  }
}

// Output pairs [p0, p1) of one tile: block by block of W's rows, every pair takes its share.
template <int NP, typename Val>
void spmm_range(const CsrArraysOf<Val>& w, const float* tile, float* acc, int64_t p0, int64_t p1) {
  constexpr int64_t stride = NP * kPanel;
  for (int64_t b = 0; b < w.n_kblocks; ++b) {
    const float* block = tile + b * kKBlockRows * stride;
    const int64_t* ptr = w.block_ptr + b * (w.n_pairs + 1);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t s = ptr[p], e = ptr[p + 1];
      float* acc0 = acc + 2 * p * kTileCols;
      float* acc1 = acc0 + kTileCols;
      if (b == 0) {  // the first block initialises the sums
        spmm_pair<NP, true>(w.block_values + 2 * s, w.block_rows + 2 * s, e - s, block, acc0, acc1);
      } else if (s != e) {
        spmm_pair<NP, false>(w.block_values + 2 * s, w.block_rows + 2 * s, e - s, block, acc0, acc1);
      }
    }
  }
}

// Y[m0 + i][n] = alpha * acc[n][i] + beta * C: transposed 8 x 8 blocks at a time, then the
// epilogue runs along contiguous Y rows.
template <typename Val>
void write_outputs(const CsrJob<Val>& g, const float* acc, int64_t m0, int64_t w, int64_t n0, int64_t n1) {
  const int64_t N = g.w.N;
  for (int64_t n = n0; n < n1; n += 8)
    for (int64_t i = 0; i < w; i += 8)
      transpose_block(acc + n * kTileCols + i, kTileCols, g.y + (m0 + i) * N + n, N, min64(8, n1 - n), min64(8, w - i));
  if (g.bias.data == nullptr && g.alpha == 1.f && !g.relu && g.w.scales == nullptr) return;
  for (int64_t i = 0; i < w; ++i) {
    float* yrow = g.y + (m0 + i) * N;
    for (int64_t n = n0; n < n1; ++n) yrow[n] = finish(g, yrow[n], m0 + i, n);
  }
}

template <typename Val>
void spmm_task(void* data, size_t i) {
  const TiledTask<Val>& t = *static_cast<const TiledTask<Val>*>(data);
  const CsrJob<Val>& g = *t.g;
  const int64_t parts = g.w.n_parts;
  const int64_t slot = static_cast<int64_t>(i) / parts, p = static_cast<int64_t>(i) % parts;
  const int64_t tile = t.scan ? t.order[slot] : slot;  // without a scan every tile is output-stationary
  const float* tile_data = t.tiles + tile * tile_rows(g.w.K) * kTileCols;
  float* acc = t.acc + tile * t.acc_rows * kTileCols;
  const int64_t m0 = tile * kTileCols, w = tile_width(g, tile);
  const int64_t n0 = g.w.parts[p], n1 = g.w.parts[p + 1];
  const int64_t p0 = n0 / 2, p1 = (n1 + 1) / 2;
  if (round_up(w, kPanel) == kPanel) {
    spmm_range<1>(g.w, tile_data, acc, p0, p1);
  } else {
    spmm_range<2>(g.w, tile_data, acc, p0, p1);
  }
  write_outputs(g, acc, m0, w, n0, n1);
}

// One (input-stationary tile, output range) task.
template <typename Val>
void is_tile_task(void* data, size_t i) {
  const TiledTask<Val>& t = *static_cast<const TiledTask<Val>*>(data);
  const CsrJob<Val>& g = *t.g;
  const int64_t parts = g.w.n_col_parts;
  const int64_t tile = t.order[t.n_os + static_cast<int64_t>(i) / parts], p = static_cast<int64_t>(i) % parts;
  const float* tile_data = t.tiles + tile * tile_rows(g.w.K) * kTileCols;
  float* acc = t.acc + tile * t.acc_rows * kTileCols;
  const int64_t m0 = tile * kTileCols, w = tile_width(g, tile);
  const int64_t* nz = t.nz + tile * g.w.K;
  if (g.w.col_out16) {
    is_tile_range_of_width(g, g.w.col_out16, tile_data, nz, t.n_nz[tile], acc, p, w);
  } else {
    is_tile_range_of_width(g, g.w.col_out32, tile_data, nz, t.n_nz[tile], acc, p, w);
  }
  write_outputs(g, acc, m0, w, g.w.col_parts[p], g.w.col_parts[p + 1]);
}

// Compacts each tile's row flags to its list of nonzero rows and orders the tiles by the path the
// cost model (or ONNX_PRUNE_PATH) picks for them.
template <typename Val>
void choose_tile_paths(TiledTask<Val>& t) {
  const CsrArraysOf<Val>& w = t.g->w;
  int64_t n_os = 0, n_is = 0;
  if (!t.scan) {
    t.n_os = t.n_tiles;
    return;
  }
  for (int64_t tile = 0; tile < t.n_tiles; ++tile) {
    int64_t* rows = t.nz + tile * w.K;
    int64_t count = 0;
    for (int64_t k = 0; k < w.K; ++k) {
      const int64_t flag = rows[k];
      rows[count] = k;  // count <= k: compaction in place
      count += flag;
    }
    t.n_nz[tile] = count;
    const bool is = w.n_col_parts > 0 && (!w.blocked || choose_input_stationary(w, kIsMaxFractionTiled, count));
    if (!is) t.order[n_os++] = tile;
    else t.order[t.n_tiles - 1 - n_is++] = tile;
  }
  t.n_os = n_os;
}

// `scan`: whether any tile may run input-stationary, so its rows are scanned for zeros.
template <typename Val>
void run_tiled(const CsrJob<Val>& g, const ParallelRunner& parallel, bool scan) {
  const int64_t n_tiles = (g.M + kTileCols - 1) / kTileCols;
  const int64_t n_kchunks = (g.w.K + kPackKChunk - 1) / kPackKChunk;
  const int64_t acc_rows = 2 * g.w.n_pairs > g.w.N ? 2 * g.w.n_pairs : g.w.N;
  Scratch tiles(g.scratch, static_cast<size_t>(n_tiles * tile_rows(g.w.K) * kTileCols));
  Scratch acc(g.scratch, static_cast<size_t>(n_tiles * acc_rows * kTileCols));
  Scratch ints(g.scratch, scan ? static_cast<size_t>(2 * (n_tiles * g.w.K + 2 * n_tiles)) : 0);  // int64
  int64_t* nz = reinterpret_cast<int64_t*>(ints.p);  // null without a scan
  TiledTask<Val> task{&g, tiles.p, acc.p, acc_rows, n_tiles, n_kchunks, nz, scan ? nz + n_tiles * g.w.K : nullptr,
                      scan ? nz + n_tiles * g.w.K + n_tiles : nullptr, 0, scan};
  parallel(pack_task<Val>, static_cast<size_t>(n_tiles * n_kchunks), &task);
  choose_tile_paths(task);
  parallel(spmm_task<Val>, static_cast<size_t>(task.n_os * g.w.n_parts), &task);
  parallel(is_tile_task<Val>, static_cast<size_t>((n_tiles - task.n_os) * g.w.n_col_parts), &task);
}

// ---------------------------------------------------------------- entry point

template <typename Val>
void fill_bias_only(const CsrJob<Val>& g) {
  for (int64_t m = 0; m < g.M; ++m)
    for (int64_t n = 0; n < g.w.N; ++n) g.y[m * g.w.N + n] = finish(g, 0.f, m, n);
}

template <typename Val>
void csr_gemm_job(const CsrJob<Val>& g, const ParallelRunner& parallel) {
  if (g.M == 0 || g.w.N == 0) return;
  if (g.w.K == 0 || g.w.row_ptr[g.w.N] == 0) {
    fill_bias_only(g);
    return;
  }
  const double density = sample_density(g);
  if (choose_rows_path(g, density)) {
    run_rows(g, parallel);
    return;
  }
  const KernelPath path = g.w.forced_path;
  const bool tiled = path == KernelPath::kTiled ? g.w.blocked
                     : forces_input_stationary(path) ? g.M > kNarrowCols && g.w.n_col_parts > 0
                     : path == KernelPath::kGemv ? false
                     : g.M > kNarrowCols && g.w.blocked;
  if (tiled) {
    run_tiled(g, parallel, may_skip_tile_rows(g, density));
  } else {
    run_narrow(g, parallel);
  }
}

template <typename Val>
void csr_gemm_of(const CsrArraysOf<Val>& w, const GemmArgs& args, const ParallelRunner& parallel) {
  CsrJob<Val> job;
  static_cast<GemmArgs&>(job) = args;
  job.w = w;
  csr_gemm_job(job, parallel);
}

// An IEEE float is inf or NaN exactly when its exponent bits are all ones; adding one to that
// field then carries into bit 31. Integer OR-reduction, so the compiler vectorises it without
// -ffast-math (a float compare loop would need it) and the scan costs a fraction of the product.
inline bool has_non_finite(const float* x, int64_t count) {
  uint32_t carry = 0;
  for (int64_t i = 0; i < count; ++i) {
    uint32_t bits;
    __builtin_memcpy(&bits, x + i, sizeof bits);
    carry |= (bits & 0x7f800000u) + 0x00800000u;
  }
  return (carry >> 31) != 0;
}
