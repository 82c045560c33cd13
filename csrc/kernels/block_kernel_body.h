// The bcsr (R x 1 block) compute loops, written once over the vector abstractions V (the unit's
// widest), V4 and V8 (4 and 8 floats) and included after kernel_body.h inside each ISA namespace.
// Deliberately free of std:: templates and includes (see CsrArrays in sparse_gemm_kernels.h).
//
// A block is R consecutive outputs x one row k of W, so one load of A'[., k] feeds R FMAs:
//  * one row (M = 1, a GEMV): per block row, acc[0..R) += a[k_j] * values[j][0..R) with R-float
//    vectors, four blocks in flight;
//  * otherwise A' is repacked into column tiles At[k][0..T) (batch contiguous, T = NV vectors);
//    per block row, R x NV vector sums stay in registers while every stored block loads its row
//    At[k_j] once (NV loads) and multiplies it by R broadcast weights. Tiles are kBlockSums / R
//    vectors wide (16 sums where there are 32 vector registers, else 8: fewer loads per FMA); a
//    narrower tile (the batch's tail, a small batch) alternates U sets of sums between
//    consecutive blocks, so at least 8 independent sums always cover the FMA latency.
// Threads: tasks are (tile, range of block rows with about equal blocks) pairs, as csr's.

#ifndef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#error "include block_kernel_body.h only from an ISA translation unit, inside its namespace"
#endif

constexpr int64_t kBlockPackKChunk = 256;  // rows of At per packing task

// Vector sums per block row in a full tile, R outputs x NV vectors (AVX-512 has 32 registers).
constexpr int kBlockSums = V::W >= 16 ? 16 : 8;
constexpr int kMinChains = 8;  // independent sums that hide the FMA latency

template <int R>
constexpr int block_tile_vectors() { return R >= kBlockSums ? 1 : kBlockSums / R; }

// The R-float vector type of the GEMV.
template <int R> struct BlockLanes;
template <> struct BlockLanes<4> { using type = V4; };
template <> struct BlockLanes<8> { using type = V8; };

struct BcsrJob : GemmArgs {
  BcsrArrays w;
};

inline float block_finish(const BcsrJob& g, float acc, int64_t m, int64_t n) {
  const float y = g.bias.data ? g.alpha * acc + g.beta * bias_at(g.bias, m, n) : g.alpha * acc;
  return g.relu && y < 0.f ? 0.f : y;  // NaN passes through, as in onnxruntime's Relu
}

// dst[c * dst_stride + r] = src[r * src_stride + c] for r < R, c < cols (cols <= 8).
template <int R>
inline void block_transpose(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int64_t cols) {
#ifdef ONNX_PRUNE_HAVE_X86_HELPERS
  if (cols == 8) {
    if (R == 8) return transpose8x8(src, src_stride, dst, dst_stride);
    if (R == 4) return transpose4x8(src, src_stride, dst, dst_stride);
  }
#endif
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * dst_stride + r] = src[r * src_stride + c];
}

// True when the epilogue is the same for every batch row of an output (no bias, or a bias per
// output or one scalar): then it runs on the sums, contiguous per output, before the transpose.
inline bool epilogue_per_output(const BcsrJob& g) { return g.bias.data == nullptr || g.bias.rows == 1; }

// sums[r * stride + i] = act(alpha * sums + beta * bias[n0 + r]) for r < outputs, i < rows: one
// vectorisable pass over the sums while they are in L1, none over Y's strided rows.
inline void finish_sums_per_output(const BcsrJob& g, float* sums, int64_t stride, int64_t n0, int64_t outputs,
                                   int64_t rows) {
  if (g.bias.data == nullptr && g.alpha == 1.f && !g.relu) return;
  for (int64_t r = 0; r < outputs; ++r) {
    const float add = g.bias.data ? g.beta * bias_at(g.bias, 0, n0 + r) : 0.f;
    float* s = sums + r * stride;
    for (int64_t i = 0; i < rows; ++i) s[i] = g.alpha * s[i] + add;
    if (g.relu)
      for (int64_t i = 0; i < rows; ++i) s[i] = s[i] < 0.f ? 0.f : s[i];  // NaN passes through, as in Relu
  }
}

// Y[m0 + i][b * R + r] = finish(sums[r * sums_stride + i]) for the outputs of block row b that
// exist (a partial last block row has fewer): the epilogue (alpha, bias, relu) on the sums when it
// is the same for every row, then transposed 8 batch rows at a time (a bias per batch row is added
// along Y's rows afterwards).
template <int R>
inline void write_block_row(const BcsrJob& g, float* sums, int64_t sums_stride, int64_t b, int64_t m0,
                            int64_t rows) {
  const int64_t N = g.w.N, n0 = b * R, outputs = min64(R, N - n0);
  const bool per_output = epilogue_per_output(g);
  if (per_output) finish_sums_per_output(g, sums, sums_stride, n0, outputs, rows);
  float* y = g.y + m0 * N + n0;
  if (outputs == R) {
    for (int64_t i = 0; i < rows; i += 8) block_transpose<R>(sums + i, sums_stride, y + i * N, N, min64(8, rows - i));
  } else {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t r = 0; r < outputs; ++r) y[i * N + r] = sums[r * sums_stride + i];
  }
  if (per_output) return;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t r = 0; r < outputs; ++r) y[i * N + r] = block_finish(g, y[i * N + r], m0 + i, n0 + r);
}

// ---------------------------------------------------------------- one row: GEMV

template <int R>
void block_gemv_rows(const BcsrJob& g, int64_t b0, int64_t b1) {
  using L = typename BlockLanes<R>::type;
  const BcsrArrays& w = g.w;
  const float* a = g.a;  // M = 1: one contiguous row whether transposed or not
  alignas(32) float sums[R];
  for (int64_t b = b0; b < b1; ++b) {
    typename L::reg s0 = L::zero(), s1 = L::zero(), s2 = L::zero(), s3 = L::zero();
    int64_t j = w.block_ptr[b];
    const int64_t e = w.block_ptr[b + 1];
    for (; j + 4 <= e; j += 4) {
      s0 = L::fmadd(L::set1(a[w.idx[j]]), L::load(w.values + j * R), s0);
      s1 = L::fmadd(L::set1(a[w.idx[j + 1]]), L::load(w.values + (j + 1) * R), s1);
      s2 = L::fmadd(L::set1(a[w.idx[j + 2]]), L::load(w.values + (j + 2) * R), s2);
      s3 = L::fmadd(L::set1(a[w.idx[j + 3]]), L::load(w.values + (j + 3) * R), s3);
    }
    for (; j < e; ++j) s0 = L::fmadd(L::set1(a[w.idx[j]]), L::load(w.values + j * R), s0);
    L::store(sums, L::add(L::add(s0, s1), L::add(s2, s3)));
    write_block_row<R>(g, sums, 1, b, 0, 1);
  }
}

template <int R>
void block_gemv_task(void* data, size_t p) {
  const BcsrJob& g = *static_cast<const BcsrJob*>(data);
  block_gemv_rows<R>(g, g.w.parts[p], g.w.parts[p + 1]);
}

// ---------------------------------------------------------------- many rows: tiled

struct BlockTiles {
  const BcsrJob* g;
  float* tiles;  // n_tiles blocks of [K][T] floats (a narrower tile uses [K][its vectors * V::W])
  int64_t T;     // batch columns per full tile
  int64_t n_tiles;
  int64_t n_kchunks;
};

inline int64_t block_tile_width(const BlockTiles& t, int64_t tile) { return min64(t.T, t.g->M - tile * t.T); }

// Vectors a tile of `width` columns is computed with: 1, 2, 4, ... up to a full tile's.
inline int64_t block_tile_vectors_for(int64_t width, int64_t full) {
  int64_t nv = 1;
  while (nv * V::W < width && nv < full) nv *= 2;
  return nv;
}

// Copies columns [m0, m0 + w) of A' into At[k][0..T) for k in [k0, k1), zero-padding to T columns.
inline void pack_block_tile(const BcsrJob& g, float* tile, int64_t T, int64_t m0, int64_t w, int64_t k0, int64_t k1) {
  const int64_t K = g.w.K;
  if (g.trans_a) {
    for (int64_t k = k0; k < k1; ++k)
      for (int64_t i = 0; i < T; ++i) tile[k * T + i] = i < w ? g.a[k * g.M + m0 + i] : 0.f;
    return;
  }
  for (int64_t k = k0; k < k1; k += 8) {
    const int64_t kn = min64(8, k1 - k);
    for (int64_t i = 0; i < w; i += 8)
      transpose_block(g.a + (m0 + i) * K + k, K, tile + k * T + i, T, min64(8, w - i), kn);
    for (int64_t kk = k; kk < k + kn; ++kk)
      for (int64_t i = w; i < T; ++i) tile[kk * T + i] = 0.f;
  }
}

inline void block_pack_task(void* data, size_t i) {
  const BlockTiles& t = *static_cast<const BlockTiles*>(data);
  const int64_t tile = static_cast<int64_t>(i) / t.n_kchunks, chunk = static_cast<int64_t>(i) % t.n_kchunks;
  const int64_t k0 = chunk * kBlockPackKChunk, k1 = min64(t.g->w.K, k0 + kBlockPackKChunk);
  const int64_t width = block_tile_width(t, tile), stride = block_tile_vectors_for(width, t.T / V::W) * V::W;
  pack_block_tile(*t.g, t.tiles + tile * t.g->w.K * t.T, stride, tile * t.T, width, k0, k1);
}

// sums[u] += weights[0..R) x row[0..NV * W) for one block (u: the set of sums it adds to).
template <int R, int NV>
inline void block_fma(const float* weights, const float* row, typename V::reg (&acc)[R][NV]) {
  typename V::reg x[NV];
  for (int v = 0; v < NV; ++v) x[v] = V::load(row + v * V::W);
  for (int r = 0; r < R; ++r) {
    const typename V::reg wr = V::set1(weights[r]);
    for (int v = 0; v < NV; ++v) acc[r][v] = V::fmadd(wr, x[v], acc[r][v]);
  }
}

// Block rows [b0, b1) of one tile of NV vectors: R x NV sums (U sets) per block row, one row of
// the tile loaded per block.
template <int R, int NV>
void block_tile_rows(const BcsrJob& g, const float* tile, int64_t m0, int64_t width, int64_t b0, int64_t b1) {
  constexpr int U = R * NV >= kMinChains ? 1 : kMinChains / (R * NV);
  constexpr int64_t T = NV * V::W;
  const BcsrArrays& w = g.w;
  alignas(64) float sums[R * T];
  for (int64_t b = b0; b < b1; ++b) {
    typename V::reg acc[U][R][NV];
    for (int u = 0; u < U; ++u)
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) acc[u][r][v] = V::zero();
    int64_t j = w.block_ptr[b];
    const int64_t e = w.block_ptr[b + 1];
    for (; j + U <= e; j += U)
      for (int u = 0; u < U; ++u)
        block_fma<R, NV>(w.values + (j + u) * R, tile + static_cast<int64_t>(w.idx[j + u]) * T, acc[u]);
    for (; j < e; ++j) block_fma<R, NV>(w.values + j * R, tile + static_cast<int64_t>(w.idx[j]) * T, acc[0]);
    for (int u = 1; u < U; ++u)
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) acc[0][r][v] = V::add(acc[0][r][v], acc[u][r][v]);
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) V::store(sums + r * T + v * V::W, acc[0][r][v]);
    write_block_row<R>(g, sums, T, b, m0, width);
  }
}

template <int R>
void block_tile_task(void* data, size_t i) {
  constexpr int kFull = block_tile_vectors<R>();
  const BlockTiles& t = *static_cast<const BlockTiles*>(data);
  const BcsrJob& g = *t.g;
  const int64_t tile = static_cast<int64_t>(i) / g.w.n_parts, p = static_cast<int64_t>(i) % g.w.n_parts;
  const float* data_of_tile = t.tiles + tile * g.w.K * t.T;
  const int64_t m0 = tile * t.T, width = block_tile_width(t, tile), b0 = g.w.parts[p], b1 = g.w.parts[p + 1];
  switch (block_tile_vectors_for(width, kFull)) {
    case 1: block_tile_rows<R, 1>(g, data_of_tile, m0, width, b0, b1); break;
    case 2: block_tile_rows<R, kFull >= 2 ? 2 : 1>(g, data_of_tile, m0, width, b0, b1); break;
    default: block_tile_rows<R, kFull>(g, data_of_tile, m0, width, b0, b1); break;
  }
}

template <int R>
void run_block_tiled(const BcsrJob& g, const ParallelRunner& parallel) {
  const int64_t T = block_tile_vectors<R>() * V::W;
  const int64_t n_tiles = (g.M + T - 1) / T;
  const int64_t n_kchunks = (g.w.K + kBlockPackKChunk - 1) / kBlockPackKChunk;
  Scratch tiles(g.scratch, static_cast<size_t>(n_tiles * g.w.K * T));
  BlockTiles task{&g, tiles.p, T, n_tiles, n_kchunks};
  parallel(block_pack_task, static_cast<size_t>(n_tiles * n_kchunks), &task);
  parallel(block_tile_task<R>, static_cast<size_t>(n_tiles * g.w.n_parts), &task);
}

// ---------------------------------------------------------------- entry point

template <int R>
void bcsr_gemm_r(const BcsrJob& g, const ParallelRunner& parallel) {
  if (g.M == 1) {
    parallel(block_gemv_task<R>, static_cast<size_t>(g.w.n_parts), const_cast<BcsrJob*>(&g));
  } else {
    run_block_tiled<R>(g, parallel);
  }
}

inline void bcsr_gemm(const BcsrArrays& w, const GemmArgs& args, const ParallelRunner& parallel) {
  BcsrJob job;
  static_cast<GemmArgs&>(job) = args;
  job.w = w;
  if (job.M == 0 || w.N == 0) return;
  if (w.R == 4) {
    bcsr_gemm_r<4>(job, parallel);
  } else if (w.R == 8) {
    bcsr_gemm_r<8>(job, parallel);
  }
}
