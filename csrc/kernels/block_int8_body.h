// The integer kernel of format bcsr_int8_dynamic (docs/sparse_gemm_op.md): R x 1 blocks of int8
// weights, each row of A' quantized to int8 at Run exactly as csr_int8_dynamic does. Written once
// over a quad-product type `Q` and included inside a per-ISA namespace after
// kernel_int8_dynamic_body.h (whose quantization and dequantization it shares).
//
// Why blocks help int8: a block row's kept rows of W come in groups of four (formats pack them so,
// BlockInt8Arrays); the four activation rows of a group are interleaved into VNNI order (four
// bytes of one batch row per int32 lane) once, and that vector feeds every one of the block row's
// R outputs -- R four-product instructions per interleave, and one activation load per 4 · R
// multiply-adds per lane.
//
// Q provides: reg (Q::W int32 lanes), kBias (the activation byte is q + kBias: 128 for vpdpbusd's
// unsigned operand, 0 for a signed one), kMaxOutputs (accumulator rows the register file holds),
// zero / add / store, interleave(r0, r1, r2, r3, half, out[2]) and prepare / dot4 (below).
//
// Two passes per Run:
//  1. quantize: tiles of TW = 4 · Q::W rows of A'; the tile is [K][TW] bytes (row k of W, then
//     batch), column c at byte position `position(c)` so that interleave's unpack order yields
//     batch rows in natural order in the lanes.
//  2. product: per (tile, block-row range), per block row and chunk of outputs, per half of the tile
//     (two vectors of W batch rows), Σ over groups of dot4(interleaved activations, weight word).
// A batch of kRowPathMaxRows rows or fewer runs the row path instead (below: lanes across outputs).

#ifndef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#error "include block_int8_body.h only from an ISA translation unit, inside its namespace"
#endif

namespace block_int8 {

using int8_dynamic::Buffer;
using int8_dynamic::min_i64;

// Byte position in a tile row of batch lane j of vector t (t = 0..3; four vectors of W lanes):
// the 128-bit unpack order of interleave (lane j of a 128-bit group L = j / 4 reads bytes 16 L + 4 t + j % 4).
inline int64_t position_of(int64_t t, int64_t j) { return 16 * (j / 4) + 4 * t + (j % 4); }

template <class Q>
struct Job : GemmArgs {
  BlockInt8Arrays w;
  int64_t tile_rows = 0;  // TW = 4 · Q::W
  int64_t n_tiles = 0;
  uint8_t* tiles = nullptr;     // n_tiles blocks of [K][TW] bytes
  float* row_scales = nullptr;  // [M]
  float* columns = nullptr;     // n_tiles blocks of K floats (a column of A when trans_a) + [TW][K] bytes
};

// Row m of A' quantized: its scale into row_scales[m], its bytes q + kBias (q = 0 for a zero or NaN
// scale) into `row` (K bytes). `col`: K floats for the column of A when trans_a.
template <class Q>
inline void quantize_row(const Job<Q>& g, int64_t m, float* col, uint8_t* row) {
  const int64_t K = g.w.K;
  const float* x = g.a + m * K;
  if (g.trans_a) {
    for (int64_t k = 0; k < K; ++k) col[k] = g.a[k * g.M + m];
    x = col;
  }
  const float scale = int8_dynamic::row_scale(x, K);
  g.row_scales[m] = scale;
  if (scale > 0.f) {  // false for a zero scale and for NaN: q = 0
    for (int64_t k = 0; k < K; ++k) row[k] = static_cast<uint8_t>(int8_dynamic::quantized(x[k], scale) + Q::kBias);
  } else {
    for (int64_t k = 0; k < K; ++k) row[k] = static_cast<uint8_t>(Q::kBias);
  }
}

// Pass 1 for one tile: every row's scale and its bytes q + kBias (kBias for lanes past M, q = 0),
// first row by row into `rows` (contiguous: the division vectorises), then transposed into the
// tile 16 rows of W at a time (the 16 tile rows written stay in L1).
template <class Q>
void quantize_task(void* data, size_t tile) {
  const Job<Q>& g = *static_cast<const Job<Q>*>(data);
  const int64_t K = g.w.K, TW = g.tile_rows;
  uint8_t* bytes = g.tiles + static_cast<int64_t>(tile) * K * TW;
  float* col = g.columns + static_cast<int64_t>(tile) * (K + (K * TW + 3) / 4);
  uint8_t* rows = reinterpret_cast<uint8_t*>(col + K);  // [TW][K]
  const int64_t m0 = static_cast<int64_t>(tile) * TW, real = min_i64(TW, g.M - m0);
  if (real < TW) {  // lanes past M compute nothing that is written out; q = 0 there
    for (int64_t i = 0; i < K * TW; ++i) bytes[i] = static_cast<uint8_t>(Q::kBias);
  }
  for (int64_t c = 0; c < real; ++c) quantize_row(g, m0 + c, col, rows + c * K);
  constexpr int64_t kStep = 16;
  for (int64_t k0 = 0; k0 < K; k0 += kStep) {
    const int64_t k1 = min_i64(K, k0 + kStep);
    for (int64_t c = 0; c < real; ++c) {
      const uint8_t* src = rows + c * K;
      uint8_t* dst = bytes + position_of(c / Q::W, c % Q::W);
      for (int64_t k = k0; k < k1; ++k) dst[k * TW] = src[k];
    }
  }
}

// acc - kBias · weight_sum in wrapping int32 (the true sum fits int32: pack bounds Σ|w|).
template <class Q>
inline int32_t unbiased(int32_t acc, int32_t weight_sum) {
  return static_cast<int32_t>(static_cast<uint32_t>(acc) -
                              static_cast<uint32_t>(Q::kBias) * static_cast<uint32_t>(weight_sum));
}

// out[r][0 .. 2W) = Σ over block row b's groups of dot4(half h of the tile, words[r0 + r]), r < RC.
template <class Q, int RC>
inline void dot_groups(const Job<Q>& g, const uint8_t* tile, int64_t b, int64_t r0, int h, int32_t* out) {
  const int64_t TW = g.tile_rows, R = g.w.R;
  typename Q::reg acc[RC][2];
  for (int r = 0; r < RC; ++r) acc[r][0] = acc[r][1] = Q::zero();
  for (int64_t grp = g.w.group_ptr[b]; grp < g.w.group_ptr[b + 1]; ++grp) {
    const int32_t* k = g.w.rows + 4 * grp;
    typename Q::reg x[2];
    Q::interleave(tile + k[0] * TW, tile + k[1] * TW, tile + k[2] * TW, tile + k[3] * TW, h, x);
    const typename Q::Prepared p0 = Q::prepare(x[0]), p1 = Q::prepare(x[1]);
    const int32_t* words = g.w.words + grp * R + r0;
    for (int r = 0; r < RC; ++r) {
      acc[r][0] = Q::dot4(acc[r][0], p0, words[r]);
      acc[r][1] = Q::dot4(acc[r][1], p1, words[r]);
    }
  }
  for (int r = 0; r < RC; ++r) {
    Q::store(out + r * TW + 2 * h * Q::W, acc[r][0]);
    Q::store(out + r * TW + (2 * h + 1) * Q::W, acc[r][1]);
  }
}

// The contract's dequantization of a chunk of outputs n0 .. n0 + count of every row of the tile,
// vectorisable: products only (d = alpha · ((float(acc) · s_m) · s_n)), then a compiler barrier, so
// no multiply can be fused with the bias add that follows; written out row by row, count floats each.
template <class Q, int RC>
inline void write_outputs(const Job<Q>& g, const int32_t* acc, int64_t n0, int64_t count, int64_t m0, int64_t rows) {
  const int64_t TW = g.tile_rows, N = g.w.N;
  alignas(64) float d[RC * 4 * Q::W];
  const float alpha = g.alpha;
  const float* row_scales = g.row_scales + m0;
  for (int64_t r = 0; r < count; ++r) {
    const int32_t sum = g.w.weight_sums[n0 + r];
    const float out_scale = g.w.scales[n0 + r];
    const int32_t* a = acc + r * TW;
    float* out = d + r * TW;
    for (int64_t c = 0; c < rows; ++c) {
      out[c] = alpha * ((static_cast<float>(unbiased<Q>(a[c], sum)) * row_scales[c]) * out_scale);
    }
  }
  __asm__ volatile("" ::: "memory");
  if (g.bias.data == nullptr) {
    for (int64_t c = 0; c < rows; ++c) {
      float* y = g.y + (m0 + c) * N + n0;
      for (int64_t r = 0; r < count; ++r) y[r] = d[r * TW + c];
    }
  } else if (g.bias.rows == 1) {  // one bias per output: beta · C once per chunk
    float beta_c[RC];
    for (int64_t r = 0; r < count; ++r) beta_c[r] = int8_dynamic::rounded(g.beta * int8_dynamic::bias_of(g.bias, 0, n0 + r));
    for (int64_t c = 0; c < rows; ++c) {
      float* y = g.y + (m0 + c) * N + n0;
      for (int64_t r = 0; r < count; ++r) y[r] = d[r * TW + c] + beta_c[r];
    }
  } else {
    for (int64_t c = 0; c < rows; ++c) {
      float* y = g.y + (m0 + c) * N + n0;
      for (int64_t r = 0; r < count; ++r)
        y[r] = d[r * TW + c] + int8_dynamic::rounded(g.beta * int8_dynamic::bias_of(g.bias, m0 + c, n0 + r));
    }
  }
  if (g.relu) {
    for (int64_t c = 0; c < rows; ++c) {
      float* y = g.y + (m0 + c) * N + n0;
      for (int64_t r = 0; r < count; ++r) y[r] = y[r] < 0.f ? 0.f : y[r];  // NaN passes through
    }
  }
}

// Pass 2 for one (tile, block-row range).
template <class Q, int RC>
void product_task(void* data, size_t i) {
  const Job<Q>& g = *static_cast<const Job<Q>*>(data);
  const int64_t tile = static_cast<int64_t>(i) / g.w.n_parts, part = static_cast<int64_t>(i) % g.w.n_parts;
  const int64_t TW = g.tile_rows, R = g.w.R, N = g.w.N;
  const uint8_t* bytes = g.tiles + tile * g.w.K * TW;
  const int64_t m0 = tile * TW, rows = min_i64(TW, g.M - m0);
  const int halves = rows > 2 * Q::W ? 2 : 1;
  alignas(64) int32_t acc[RC * 4 * Q::W];
  for (int64_t b = g.w.parts[part]; b < g.w.parts[part + 1]; ++b) {
    for (int64_t r0 = 0; r0 < R; r0 += RC) {
      for (int h = 0; h < halves; ++h) dot_groups<Q, RC>(g, bytes, b, r0, h, acc);
      const int64_t n0 = b * R + r0;
      if (n0 < N) write_outputs<Q, RC>(g, acc, n0, min_i64(RC, N - n0), m0, rows);
    }
  }
}

// ---------------------------------------------------------------- one row: lanes across outputs
// With one batch row the tile fills one lane of its vectors and leaves the others idle. The row
// path turns the lanes the other way: a vector holds Q::W / R groups' R weight words (the packed
// layout already stores them so: `words` is [group][R]) and the activation vector each group's
// four bytes of the row, spread over its R lanes: one four-product instruction per Q::W / R
// groups. Q adds: load (Q::W weight words), spread<R> (lane l = word l / R) and dot4v (dot4
// against a vector of weight words). It gathers four activation bytes per group per row where the
// tile loads them once for all its rows, so it pays only for the batch sizes kRowPathMaxRows allows.

// The four bytes of a group's rows of A' in one word (byte i: row rows[i]), the VNNI order.
inline int32_t activation_word(const uint8_t* q, const int32_t* rows) {
  return static_cast<int32_t>(static_cast<uint32_t>(q[rows[0]]) | (static_cast<uint32_t>(q[rows[1]]) << 8) |
                              (static_cast<uint32_t>(q[rows[2]]) << 16) | (static_cast<uint32_t>(q[rows[3]]) << 24));
}

// out[r] = Σ over block row b's groups of the four products of row q with output b · R + r's
// weights (wrapping int32, kBias not yet taken out). Lanes of groups past the block row's last get
// the activation word 0: zero products whatever the weights, for signed and biased bytes alike.
template <class Q, int R>
inline void dot_row(const Job<Q>& g, const uint8_t* q, int64_t b, int32_t* out) {
  constexpr int G = Q::W / R;  // groups per vector
  static_assert(G >= 1 && G * R == Q::W, "R must divide the lane count");
  const int64_t last = g.w.group_ptr[b + 1];
  typename Q::reg acc = Q::zero();
  alignas(64) int32_t acts[G];
  int64_t grp = g.w.group_ptr[b];
  for (; grp + G <= last; grp += G) {
    for (int s = 0; s < G; ++s) acts[s] = activation_word(q, g.w.rows + 4 * (grp + s));
    acc = Q::dot4v(acc, Q::prepare(Q::template spread<R>(acts)), Q::load(g.w.words + grp * R));
  }
  if (grp < last) {  // the words past `last` belong to the next block row (or lie past the array)
    alignas(64) int32_t words[Q::W] = {};
    for (int s = 0; s < G; ++s) acts[s] = grp + s < last ? activation_word(q, g.w.rows + 4 * (grp + s)) : 0;
    for (int64_t i = 0; i < (last - grp) * R; ++i) words[i] = g.w.words[grp * R + i];
    acc = Q::dot4v(acc, Q::prepare(Q::template spread<R>(acts)), Q::load(words));
  }
  alignas(64) int32_t lanes[Q::W];
  Q::store(lanes, acc);
  for (int r = 0; r < R; ++r) {
    uint32_t sum = 0;
    for (int s = 0; s < G; ++s) sum += static_cast<uint32_t>(lanes[s * R + r]);
    out[r] = static_cast<int32_t>(sum);
  }
}

// Pass 2 of the row path for one block-row range, kRowChunk outputs at a time: every row of the
// batch per chunk (its weights stay in L1), one epilogue call per chunk and row.
constexpr int kRowChunk = 64;

template <class Q, int R>
void rows_product_task(void* data, size_t part) {
  const Job<Q>& g = *static_cast<const Job<Q>*>(data);
  const int64_t K = g.w.K, N = g.w.N, last = g.w.parts[part + 1];
  alignas(64) int32_t sums[kRowChunk];
  for (int64_t b0 = g.w.parts[part]; b0 < last; b0 += kRowChunk / R) {
    const int64_t b1 = min_i64(last, b0 + kRowChunk / R), n0 = b0 * R;
    for (int64_t m = 0; m < g.M; ++m) {
      for (int64_t b = b0; b < b1; ++b) dot_row<Q, R>(g, g.tiles + m * K, b, sums + (b - b0) * R);
      write_outputs<Q, kRowChunk>(g, sums, n0, min_i64(b1 * R, N) - n0, m, 1);
    }
  }
}

// Both passes for one call: the tile, or with kByRow the row path (a tile of one row: the tiles are
// then the rows of A' quantized, [M][K]).
template <class Q, bool kByRow>
void run(const BlockInt8Arrays& w, const GemmArgs& args, const ParallelRunner& parallel) {
  Job<Q> g;
  static_cast<GemmArgs&>(g) = args;
  g.w = w;
  g.tile_rows = kByRow ? 1 : 4 * Q::W;
  g.n_tiles = (g.M + g.tile_rows - 1) / g.tile_rows;
  const int64_t tile_bytes = w.K * g.tile_rows;
  Buffer tiles(g.scratch, static_cast<size_t>((g.n_tiles * tile_bytes + 3) / 4));
  Buffer scales(g.scratch, static_cast<size_t>(g.M));
  Buffer columns(g.scratch, static_cast<size_t>(g.n_tiles * (w.K + (w.K * g.tile_rows + 3) / 4)));
  g.tiles = reinterpret_cast<uint8_t*>(tiles.p);
  g.row_scales = scales.p;
  g.columns = columns.p;
  parallel(quantize_task<Q>, static_cast<size_t>(g.n_tiles), &g);
  if constexpr (kByRow) {
    parallel(w.R == 8 ? rows_product_task<Q, 8> : rows_product_task<Q, 4>, static_cast<size_t>(w.n_parts), &g);
  } else {
    const size_t tasks = static_cast<size_t>(g.n_tiles * w.n_parts);
    if (w.R % 8 == 0 && Q::kMaxOutputs >= 8) {
      parallel(product_task<Q, (Q::kMaxOutputs >= 8 ? 8 : 4)>, tasks, &g);
    } else {
      parallel(product_task<Q, 4>, tasks, &g);
    }
  }
}

// Batch rows up to which the row path runs instead of the tile (measured: docs/bench_kernel.md).
constexpr int64_t kRowPathMaxRows = 1;

}  // namespace block_int8

// The KernelTable entry, the one place that picks a path by batch size: `Few` (its row path up to
// kRowPathMaxRows rows, its tile up to kFewRows) and `Many` above, for units whose widest quad
// product wastes lanes on few rows (the AVX-512 units); one type for every batch size by default.
template <class Few, class Many = Few, int64_t kFewRows = 0>
void block_int8_dynamic_gemm_of(const BlockInt8Arrays& w, const GemmArgs& args, const ParallelRunner& parallel) {
  if (args.M == 0 || w.N == 0) return;
  if (args.M <= block_int8::kRowPathMaxRows) {
    block_int8::run<Few, true>(w, args, parallel);
  } else if (args.M <= kFewRows) {
    block_int8::run<Few, false>(w, args, parallel);
  } else {
    block_int8::run<Many, false>(w, args, parallel);
  }
}
