// The integer kernel of format csr_int8_dynamic (docs/sparse_gemm_op.md), written once over a
// small integer-vector abstraction `IV` and included inside a per-ISA namespace (kernel_portable.cc,
// kernel_avx2.cc, kernel_avx512.cc, kernel_avx512vnni.cc). Free of std:: templates and includes,
// like kernel_body.h.
//
// IV provides: reg (IV::W int32 lanes), zero, load / store of W int32 words, add, and
// madd(acc, word, x) = acc + Σ_{half} int16(word.half) · int16(x.half) per lane -- pmaddwd (or
// vpdpwssd) with the weight pair broadcast. Products of |w|, |q| <= 127 never saturate.
//
// Two passes per Run:
//  1. quantize: the batch is cut into tiles of TW = R · IV::W rows of A'. Each row is quantized by
//     the contract's rule (scale = max|a| / 127, q = clip(round_half_even(a / scale), ±127); NaN
//     scale for a row with inf / NaN, q = 0 for a zero scale) and written into its tile as int32
//     words, one per pair of A' columns: Qt[p][c] = q[c][2p] | q[c][2p + 1] << 16 (batch contiguous).
//  2. product: per (tile, output range), output n sums madd(words[e], Qt[pairs[e]]) over its
//     entries in int32 (exact: pack() bounds Σ|w| so no sum can overflow), then dequantizes
//     y = act(alpha · ((float(acc) · scale_m) · scale_n) + beta · C) in that order.

#ifndef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#error "include kernel_int8_dynamic_body.h only from an ISA translation unit, inside its namespace"
#endif

namespace int8_dynamic {

constexpr int64_t kMaxTileRows = 32;  // rows of A' per tile (R = 32 / IV::W registers per output)
constexpr float kQMax = 127.f;
constexpr float kRoundMagic = 12582912.f;  // 1.5 · 2^23: (x + m) - m rounds |x| < 2^22 half to even

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// Keeps the compiler from fusing the multiply that produced x into a following add (the contract
// rounds each product; -ffp-contract could otherwise emit an FMA on some ISAs and not others).
inline float rounded(float x) {
  __asm__ volatile("" : "+m"(x));
  return x;
}

struct Job : GemmArgs {
  Int8PairArrays w;
  int64_t n_pairs = 0;    // ceil(K / 2): int32 words per row of A'
  int64_t tile_rows = 0;  // TW
  int64_t n_tiles = 0;
  int32_t* tiles = nullptr;     // n_tiles blocks of [n_pairs][TW] words
  float* row_scales = nullptr;  // [M]
  float* rows = nullptr;        // n_tiles blocks of K floats (a column of A when trans_a) + n_pairs
                                // words (the row's int16 q)
};

// The contract's scale of one row (NaN when it holds inf / NaN): max |x| / 127.
// The maximum runs on |x|'s bits as unsigned integers (for finite floats the same order as the
// values): an integer max reduction vectorises without fast-math, a float one stays a scalar
// dependency chain (measured: a third of a batch-64 call's time before).
inline float row_scale(const float* x, int64_t K) {
  uint32_t carry = 0, peak_bits = 0;
  for (int64_t k = 0; k < K; ++k) {
    uint32_t bits;
    __builtin_memcpy(&bits, x + k, sizeof bits);
    carry |= (bits & 0x7f800000u) + 0x00800000u;  // sets bit 31 for an inf or NaN (kernel_body.h)
    const uint32_t magnitude = bits & 0x7fffffffu;
    peak_bits = magnitude > peak_bits ? magnitude : peak_bits;
  }
  if ((carry >> 31) != 0) return __builtin_nanf("");
  float peak;
  __builtin_memcpy(&peak, &peak_bits, sizeof peak);
  return peak / kQMax;
}

// q[0..padded) from x[0..K) with scale s (finite, > 0); q[K..padded) = 0.
// The contract's q of one value: round-half-even(x / s) clamped to ±127.
inline int32_t quantized(float x, float s) {
  float v = x / s;
  v = (v + kRoundMagic) - kRoundMagic;
  v = v > kQMax ? kQMax : v;
  v = v < -kQMax ? -kQMax : v;
  return static_cast<int32_t>(v);
}

inline void quantize_row(const float* x, int64_t K, float s, int16_t* q, int64_t padded) {
  for (int64_t k = 0; k < K; ++k) q[k] = static_cast<int16_t>(quantized(x[k], s));
  for (int64_t k = K; k < padded; ++k) q[k] = 0;
}

inline int32_t pair_word(int16_t lo, int16_t hi) {
  return static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint16_t>(lo)) |
                              (static_cast<uint32_t>(static_cast<uint16_t>(hi)) << 16));
}

// Pass 1 for one tile: every row's scale, and its words in column c of the tile (zeros past M).
inline void quantize_task(void* data, size_t tile) {
  const Job& g = *static_cast<const Job*>(data);
  const int64_t K = g.w.K, TW = g.tile_rows, P = g.n_pairs;
  float* col = g.rows + static_cast<int64_t>(tile) * (K + P);
  int16_t* q = reinterpret_cast<int16_t*>(col + K);
  int32_t* words = g.tiles + static_cast<int64_t>(tile) * P * TW;
  for (int64_t c = 0; c < TW; ++c) {
    const int64_t m = static_cast<int64_t>(tile) * TW + c;
    if (m >= g.M) {
      for (int64_t p = 0; p < P; ++p) words[p * TW + c] = 0;
      continue;
    }
    const float* x = g.a + m * K;
    if (g.trans_a) {
      for (int64_t k = 0; k < K; ++k) col[k] = g.a[k * g.M + m];
      x = col;
    }
    const float s = row_scale(x, K);
    g.row_scales[m] = s;
    if (s > 0.f) {  // false for a zero scale and for NaN: q = 0
      quantize_row(x, K, s, q, 2 * P);
      for (int64_t p = 0; p < P; ++p) words[p * TW + c] = pair_word(q[2 * p], q[2 * p + 1]);
    } else {
      for (int64_t p = 0; p < P; ++p) words[p * TW + c] = 0;
    }
  }
}

// out[0..R · W) = Σ_e madd(words[e], tile[pairs[e]]) in U independent accumulator sets.
template <int R>
inline void dot_pairs(const int32_t* words, const int32_t* pairs, int64_t count, const int32_t* tile,
                      int32_t* out) {
  constexpr int U = R >= 4 ? 1 : 4 / R;
  constexpr int64_t TW = static_cast<int64_t>(R) * IV::W;
  typename IV::reg acc[U][R];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < R; ++r) acc[u][r] = IV::zero();
  int64_t e = 0;
  for (; e + U <= count; e += U) {
    for (int u = 0; u < U; ++u) {
      const int32_t* row = tile + static_cast<int64_t>(pairs[e + u]) * TW;
      const int32_t word = words[e + u];
      for (int r = 0; r < R; ++r) acc[u][r] = IV::madd(acc[u][r], word, IV::load(row + r * IV::W));
    }
  }
  for (; e < count; ++e) {
    const int32_t* row = tile + static_cast<int64_t>(pairs[e]) * TW;
    for (int r = 0; r < R; ++r) acc[0][r] = IV::madd(acc[0][r], words[e], IV::load(row + r * IV::W));
  }
  for (int u = 1; u < U; ++u)
    for (int r = 0; r < R; ++r) acc[0][r] = IV::add(acc[0][r], acc[u][r]);
  for (int r = 0; r < R; ++r) IV::store(out + r * IV::W, acc[0][r]);
}

inline float bias_of(const BiasView& c, int64_t m, int64_t n) {
  return c.data[(c.rows == 1 ? 0 : m) * c.cols + (c.cols == 1 ? 0 : n)];
}

// The contract's dequantization and epilogue of output (m, n) (every int8 dynamic format's).
inline float dequantized(const GemmArgs& g, int32_t acc, float row_scale, float out_scale, int64_t m, int64_t n) {
  const float d = rounded(static_cast<float>(acc) * row_scale) * out_scale;
  float y = rounded(g.alpha * d);
  if (g.bias.data) y = y + rounded(g.beta * bias_of(g.bias, m, n));
  return g.relu && y < 0.f ? 0.f : y;  // NaN passes through
}

inline float dequantize(const Job& g, int32_t acc, int64_t m, int64_t n) {
  return dequantized(g, acc, g.row_scales[m], g.w.scales[n], m, n);
}

// Pass 2 for one (tile, output range).
template <int R>
void product_task(void* data, size_t i) {
  const Job& g = *static_cast<const Job*>(data);
  const int64_t tile = static_cast<int64_t>(i) / g.w.n_parts, part = static_cast<int64_t>(i) % g.w.n_parts;
  constexpr int64_t TW = static_cast<int64_t>(R) * IV::W;
  const int32_t* words = g.tiles + tile * g.n_pairs * TW;
  const int64_t m0 = tile * TW, rows = min_i64(TW, g.M - m0), N = g.w.N;
  alignas(64) int32_t acc[TW];
  for (int64_t n = g.w.parts[part]; n < g.w.parts[part + 1]; ++n) {
    const int64_t b = g.w.ptr[n], e = g.w.ptr[n + 1];
    dot_pairs<R>(g.w.words + b, g.w.pairs + b, e - b, words, acc);
    for (int64_t c = 0; c < rows; ++c) g.y[(m0 + c) * N + n] = dequantize(g, acc[c], m0 + c, n);
  }
}

struct Buffer {
  const ScratchAllocator& allocator;
  float* p = nullptr;
  Buffer(const ScratchAllocator& a, size_t n) : allocator(a), p(n ? scratch_alloc(a, n) : nullptr) {}
  ~Buffer() { if (p) scratch_free(allocator, p); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

template <int R>
void run(Job& g, const ParallelRunner& parallel) {
  g.tile_rows = static_cast<int64_t>(R) * IV::W;
  g.n_tiles = (g.M + g.tile_rows - 1) / g.tile_rows;
  const int64_t K = g.w.K, P = g.n_pairs;
  Buffer tiles(g.scratch, static_cast<size_t>(g.n_tiles * P * g.tile_rows));
  Buffer scales(g.scratch, static_cast<size_t>(g.M));
  Buffer rows(g.scratch, static_cast<size_t>(g.n_tiles * (K + P)));
  g.tiles = reinterpret_cast<int32_t*>(tiles.p);
  g.row_scales = scales.p;
  g.rows = rows.p;
  parallel(quantize_task, static_cast<size_t>(g.n_tiles), &g);
  parallel(product_task<R>, static_cast<size_t>(g.n_tiles * g.w.n_parts), &g);
}

}  // namespace int8_dynamic

// The KernelTable entry: Y for every row of A' (the row-wise NaN rule needs no fix-up pass).
inline void int8_dynamic_gemm_of(const Int8PairArrays& w, const GemmArgs& args, const ParallelRunner& parallel) {
  if (args.M == 0 || w.N == 0) return;
  int8_dynamic::Job job;
  static_cast<GemmArgs&>(job) = args;
  job.w = w;
  job.n_pairs = (w.K + 1) / 2;
  constexpr int kMaxR = static_cast<int>(int8_dynamic::kMaxTileRows / IV::W);
  const int64_t needed = (args.M + IV::W - 1) / IV::W;  // registers a tile of all rows would take
  if (needed <= 1 || kMaxR == 1) {
    int8_dynamic::run<1>(job, parallel);
  } else if (needed <= 2 || kMaxR == 2) {
    int8_dynamic::run<(kMaxR >= 2 ? 2 : 1)>(job, parallel);
  } else {
    int8_dynamic::run<(kMaxR >= 4 ? 4 : 1)>(job, parallel);
  }
}

#ifdef ONNX_PRUNE_INT8_QUAD_KERNEL
// The VNNI product of the same contract on the quad layout (Int8QuadArrays): each row's q is
// shifted to u8 = q + 128 and packed four rows of A' per int32 word, so one vpdpbusd lane adds four
// u8 x s8 products (no saturation: vpdpbusd sums into int32); the shift is removed with the
// per-output weight sum. IV adds to the pair kernel's: dpbusd(acc, u8 words, s8 words), set1,
// load_first / gather_first (the first `count` <= W words, the rest zero) and hsum.
//  - a few rows (M <= kGemvRows): per output, its entries' words against the row's quad words
//    gathered at quads[e], W entries per instruction (no lanes spent on missing batch rows);
//  - more rows: tiles of TW rows as the pair kernel, one broadcast entry per vpdpbusd.
namespace int8_quad {

using int8_dynamic::Buffer;
using int8_dynamic::min_i64;
using int8_dynamic::row_scale;

constexpr int64_t kGemvRows = 2;
constexpr int32_t kZeroQuad = static_cast<int32_t>(0x80808080u);  // four q = 0

struct Job : GemmArgs {
  Int8QuadArrays w;
  int64_t n_quads = 0;    // ceil(K / 4): int32 words per row of A'
  int64_t tile_rows = 0;  // TW (1 on the gemv path: one row per tile, words contiguous)
  int64_t n_tiles = 0;
  int32_t* tiles = nullptr;     // n_tiles blocks of [n_quads][TW] words
  float* row_scales = nullptr;  // [M]
  float* rows = nullptr;        // n_tiles blocks of K floats + 2 · n_quads words (the row's int16 q)
};

// Four activation bytes u = q + 128 as one word, the first in the lowest byte.
inline int32_t quad_word(const uint8_t* u) {
  return static_cast<int32_t>(static_cast<uint32_t>(u[0]) | (static_cast<uint32_t>(u[1]) << 8) |
                              (static_cast<uint32_t>(u[2]) << 16) | (static_cast<uint32_t>(u[3]) << 24));
}

// u[0..padded) = q + 128 for x[0..K) with scale s (finite, > 0);
// u[K..padded) = 128 (q = 0). Bytes, so that a quad word is one 4-byte read.
inline void quantize_row_u8(const float* x, int64_t K, float s, uint8_t* u, int64_t padded) {
  for (int64_t k = 0; k < K; ++k) u[k] = static_cast<uint8_t>(int8_dynamic::quantized(x[k], s) + 128);
  for (int64_t k = K; k < padded; ++k) u[k] = 128;
}

// Pass 1 for one tile: every row's scale, and its quad words in column c of the tile.
inline void quantize_task(void* data, size_t tile) {
  const Job& g = *static_cast<const Job*>(data);
  const int64_t K = g.w.K, TW = g.tile_rows, Q = g.n_quads;
  float* col = g.rows + static_cast<int64_t>(tile) * (K + 2 * Q);
  uint8_t* u = reinterpret_cast<uint8_t*>(col + K);  // 4 · Q bytes (the area holds 8 · Q)
  int32_t* words = g.tiles + static_cast<int64_t>(tile) * Q * TW;
  for (int64_t c = 0; c < TW; ++c) {
    const int64_t m = static_cast<int64_t>(tile) * TW + c;
    if (m >= g.M) {
      for (int64_t p = 0; p < Q; ++p) words[p * TW + c] = kZeroQuad;
      continue;
    }
    const float* x = g.a + m * K;
    if (g.trans_a) {
      for (int64_t k = 0; k < K; ++k) col[k] = g.a[k * g.M + m];
      x = col;
    }
    const float s = row_scale(x, K);
    g.row_scales[m] = s;
    if (s > 0.f) {  // false for a zero scale and for NaN: q = 0
      quantize_row_u8(x, K, s, u, 4 * Q);
      for (int64_t p = 0; p < Q; ++p) words[p * TW + c] = quad_word(u + 4 * p);
    } else {
      for (int64_t p = 0; p < Q; ++p) words[p * TW + c] = kZeroQuad;
    }
  }
}

// acc - 128 · weight_sum in wrapping int32 (the true value fits int32: pack's bound).
inline int32_t unshift(int32_t acc, int32_t weight_sum) {
  return static_cast<int32_t>(static_cast<uint32_t>(acc) - (static_cast<uint32_t>(weight_sum) << 7));
}

inline float dequantize(const Job& g, int32_t acc, int64_t m, int64_t n) {
  return int8_dynamic::dequantized(g, acc, g.row_scales[m], g.w.scales[n], m, n);
}

// Σ_e dpbusd(row[quads[e]], words[e]) for one row's quad words, W entries per step.
inline int32_t gemv_dot(const int32_t* words, const int32_t* quads, int64_t count, const int32_t* row) {
  typename IV::reg a0 = IV::zero(), a1 = IV::zero();
  int64_t e = 0;
  for (; e + 2 * IV::W <= count; e += 2 * IV::W) {
    a0 = IV::dpbusd(a0, IV::gather(row, quads + e), IV::load(words + e));
    a1 = IV::dpbusd(a1, IV::gather(row, quads + e + IV::W), IV::load(words + e + IV::W));
  }
  for (; e < count; e += IV::W) {
    const int n = static_cast<int>(min_i64(IV::W, count - e));
    a0 = IV::dpbusd(a0, IV::gather_first(row, quads + e, n), IV::load_first(words + e, n));
  }
  return IV::hsum(IV::add(a0, a1));
}

inline void gemv_task(void* data, size_t part) {
  const Job& g = *static_cast<const Job*>(data);
  const int64_t N = g.w.N;
  for (int64_t n = g.w.parts[part]; n < g.w.parts[part + 1]; ++n) {
    const int64_t b = g.w.ptr[n], e = g.w.ptr[n + 1];
    for (int64_t m = 0; m < g.M; ++m) {
      const int32_t acc = gemv_dot(g.w.words + b, g.w.quads + b, e - b, g.tiles + m * g.n_quads);
      g.y[m * N + n] = dequantize(g, unshift(acc, g.w.weight_sums[n]), m, n);
    }
  }
}

// out[0..R · W) = Σ_e dpbusd(tile[quads[e]], broadcast words[e]).
template <int R>
inline void dot_quads(const int32_t* words, const int32_t* quads, int64_t count, const int32_t* tile,
                      int32_t* out) {
  constexpr int U = R >= 4 ? 1 : 4 / R;
  constexpr int64_t TW = static_cast<int64_t>(R) * IV::W;
  typename IV::reg acc[U][R];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < R; ++r) acc[u][r] = IV::zero();
  int64_t e = 0;
  for (; e + U <= count; e += U) {
    for (int u = 0; u < U; ++u) {
      const int32_t* row = tile + static_cast<int64_t>(quads[e + u]) * TW;
      const typename IV::reg word = IV::set1(words[e + u]);
      for (int r = 0; r < R; ++r) acc[u][r] = IV::dpbusd(acc[u][r], IV::load(row + r * IV::W), word);
    }
  }
  for (; e < count; ++e) {
    const int32_t* row = tile + static_cast<int64_t>(quads[e]) * TW;
    const typename IV::reg word = IV::set1(words[e]);
    for (int r = 0; r < R; ++r) acc[0][r] = IV::dpbusd(acc[0][r], IV::load(row + r * IV::W), word);
  }
  for (int u = 1; u < U; ++u)
    for (int r = 0; r < R; ++r) acc[0][r] = IV::add(acc[0][r], acc[u][r]);
  for (int r = 0; r < R; ++r) IV::store(out + r * IV::W, acc[0][r]);
}

template <int R>
void product_task(void* data, size_t i) {
  const Job& g = *static_cast<const Job*>(data);
  const int64_t tile = static_cast<int64_t>(i) / g.w.n_parts, part = static_cast<int64_t>(i) % g.w.n_parts;
  constexpr int64_t TW = static_cast<int64_t>(R) * IV::W;
  const int32_t* words = g.tiles + tile * g.n_quads * TW;
  const int64_t m0 = tile * TW, rows = min_i64(TW, g.M - m0), N = g.w.N;
  alignas(64) int32_t acc[TW];
  for (int64_t n = g.w.parts[part]; n < g.w.parts[part + 1]; ++n) {
    const int64_t b = g.w.ptr[n], e = g.w.ptr[n + 1];
    dot_quads<R>(g.w.words + b, g.w.quads + b, e - b, words, acc);
    const int32_t sum = g.w.weight_sums[n];
    for (int64_t c = 0; c < rows; ++c) g.y[(m0 + c) * N + n] = dequantize(g, unshift(acc[c], sum), m0 + c, n);
  }
}

// tile_rows == 1 runs the gemv path.
template <int R>
void run(Job& g, const ParallelRunner& parallel, int64_t tile_rows) {
  g.tile_rows = tile_rows;
  g.n_tiles = (g.M + g.tile_rows - 1) / g.tile_rows;
  const int64_t K = g.w.K, Q = g.n_quads;
  Buffer tiles(g.scratch, static_cast<size_t>(g.n_tiles * Q * g.tile_rows));
  Buffer scales(g.scratch, static_cast<size_t>(g.M));
  Buffer rows(g.scratch, static_cast<size_t>(g.n_tiles * (K + 2 * Q)));
  g.tiles = reinterpret_cast<int32_t*>(tiles.p);
  g.row_scales = scales.p;
  g.rows = rows.p;
  parallel(quantize_task, static_cast<size_t>(g.n_tiles), &g);
  if (tile_rows == 1) {
    parallel(gemv_task, static_cast<size_t>(g.w.n_parts), &g);
  } else {
    parallel(product_task<R>, static_cast<size_t>(g.n_tiles * g.w.n_parts), &g);
  }
}

}  // namespace int8_quad

inline void int8_dynamic_quad_gemm_of(const Int8QuadArrays& w, const GemmArgs& args, const ParallelRunner& parallel) {
  if (args.M == 0 || w.N == 0) return;
  int8_quad::Job job;
  static_cast<GemmArgs&>(job) = args;
  job.w = w;
  job.n_quads = (w.K + 3) / 4;
  constexpr int kMaxR = static_cast<int>(int8_dynamic::kMaxTileRows / IV::W);
  const int64_t needed = (args.M + IV::W - 1) / IV::W;
  if (args.M <= int8_quad::kGemvRows) {
    int8_quad::run<1>(job, parallel, 1);
  } else if (needed <= 1 || kMaxR == 1) {
    int8_quad::run<1>(job, parallel, IV::W);
  } else if (needed <= 2 || kMaxR == 2) {
    int8_quad::run<(kMaxR >= 2 ? 2 : 1)>(job, parallel, (kMaxR >= 2 ? 2 : 1) * IV::W);
  } else {
    int8_quad::run<(kMaxR >= 4 ? 4 : 1)>(job, parallel, (kMaxR >= 4 ? 4 : 1) * IV::W);
  }
}
#endif  // ONNX_PRUNE_INT8_QUAD_KERNEL
