// AVX2 helpers shared by the x86 units (the AVX2 and AVX-512 builds both have AVX2 + FMA), included
// inside their ISA namespace before kernel_body.h, which uses them in place of its scalar versions.
#define ONNX_PRUNE_HAVE_X86_HELPERS 1

// 8 floats in an AVX2 register: the AVX2 unit's vector type, and both units' few-rows type (V8).
struct Avx2Vec {
  using reg = __m256;
  static constexpr int W = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static reg set1(float x) { return _mm256_set1_ps(x); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
};

// 4 floats in an SSE register with FMA: both units' V4 (the bcsr GEMV's 4-output blocks).
struct Sse4Vec {
  using reg = __m128;
  static constexpr int W = 4;
  static reg zero() { return _mm_setzero_ps(); }
  static reg load(const float* p) { return _mm_loadu_ps(p); }
  static void store(float* p, reg v) { _mm_storeu_ps(p, v); }
  static reg set1(float x) { return _mm_set1_ps(x); }
  static reg fmadd(reg a, reg b, reg c) { return _mm_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm_add_ps(a, b); }
};

// dst[c * dst_stride + r] = src[r * src_stride + c] for an 8 x 8 block.
inline void transpose8x8(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  __m256 r[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(dst + 0 * dst_stride, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(dst + 1 * dst_stride, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(dst + 2 * dst_stride, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(dst + 3 * dst_stride, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(dst + 4 * dst_stride, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(dst + 5 * dst_stride, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(dst + 6 * dst_stride, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(dst + 7 * dst_stride, _mm256_permute2f128_ps(u3, u7, 0x31));
}

// dst[c * dst_stride + r] = src[r * src_stride + c] for a 4 x 8 block (bcsr's 4-output rows).
inline void transpose4x8(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  const __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + src_stride);
  const __m256 r2 = _mm256_loadu_ps(src + 2 * src_stride), r3 = _mm256_loadu_ps(src + 3 * src_stride);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 u[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xEE),
                       _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xEE)};
  for (int c = 0; c < 4; ++c) {
    _mm_storeu_ps(dst + c * dst_stride, _mm256_castps256_ps128(u[c]));
    _mm_storeu_ps(dst + (c + 4) * dst_stride, _mm256_extractf128_ps(u[c], 1));
  }
}

// Sparse dot product, eight products per vector FMA: the values load as one vector, the x entries
// are loaded one by one and inserted (on the Zen 3 dev machine about 20% faster than eight scalar
// chains, and faster than the vgatherdps instruction).

template <typename Idx>
inline __m256 gather8(const float* x, const Idx* idx) {
  __m128 lo = _mm_load_ss(x + idx[0]);
  lo = _mm_insert_ps(lo, _mm_load_ss(x + idx[1]), 0x10);
  lo = _mm_insert_ps(lo, _mm_load_ss(x + idx[2]), 0x20);
  lo = _mm_insert_ps(lo, _mm_load_ss(x + idx[3]), 0x30);
  __m128 hi = _mm_load_ss(x + idx[4]);
  hi = _mm_insert_ps(hi, _mm_load_ss(x + idx[5]), 0x10);
  hi = _mm_insert_ps(hi, _mm_load_ss(x + idx[6]), 0x20);
  hi = _mm_insert_ps(hi, _mm_load_ss(x + idx[7]), 0x30);
  return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}

inline float hsum8(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}

// Eight stored weights as floats.
inline __m256 load_values8(const float* values) { return _mm256_loadu_ps(values); }
inline __m256 load_values8(const int8_t* values) {
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(values));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
}

template <typename Val, typename Idx>
inline float vector_row_dot(const Val* values, const Idx* idx, int64_t count, const float* x) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= count; j += 16) {
    a0 = _mm256_fmadd_ps(load_values8(values + j), gather8(x, idx + j), a0);
    a1 = _mm256_fmadd_ps(load_values8(values + j + 8), gather8(x, idx + j + 8), a1);
  }
  if (j + 8 <= count) {
    a0 = _mm256_fmadd_ps(load_values8(values + j), gather8(x, idx + j), a0);
    j += 8;
  }
  float tail = 0.f;
  for (; j < count; ++j) tail += static_cast<float>(values[j]) * x[idx[j]];
  return hsum8(_mm256_add_ps(a0, a1)) + tail;
}

// 8 int32 lanes, lane l = words[l / R] (R = 4 or 8): the activation vector of bcsr_int8_dynamic's
// row path (block_int8_body.h) for the 8-lane quad products, AVX2's and the ymm VNNI one.
template <int R>
inline __m256i spread_words8(const int32_t* words) {
  static_assert(R == 4 || R == 8, "blocks of 4 or 8 outputs");
  if (R == 8) return _mm256_set1_epi32(words[0]);
  return _mm256_set_m128i(_mm_set1_epi32(words[1]), _mm_set1_epi32(words[0]));
}

// bcsr_int8_dynamic's quad product without VNNI (block_int8_body.h): 8 int32 lanes of four signed
// activation bytes q. vpmaddubsw multiplies u8 x s8 into int16 pair sums that saturate above 32767;
// here its unsigned operand is |q| <= 127 and its signed one w · sign(q) (vpsignb), so a pair sums
// to at most 2 · 127 · 127 = 32258 and never saturates; vpmaddwd with ones adds the pairs into int32.
// Exact like the int16-pair layout (two vpmaddwd per quad) at the same multiplier count, and the
// activation tile stays one byte per value.
struct Avx2QuadProduct {
  using reg = __m256i;
  struct Prepared {
    __m256i q, magnitude;
  };
  static constexpr int W = 8;
  static constexpr int kBias = 0;
  static constexpr int kMaxOutputs = 4;  // 4 x 2 accumulators + operands in 16 registers
  static reg zero() { return _mm256_setzero_si256(); }
  static void store(int32_t* p, reg v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static Prepared prepare(reg q) { return {q, _mm256_abs_epi8(q)}; }
  static reg dot4v(reg acc, const Prepared& x, reg words) {
    const __m256i signed_w = _mm256_sign_epi8(words, x.q);
    const __m256i pairs = _mm256_maddubs_epi16(x.magnitude, signed_w);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
  }
  static reg dot4(reg acc, const Prepared& x, int32_t word) { return dot4v(acc, x, _mm256_set1_epi32(word)); }
  static reg load(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  template <int R>
  static reg spread(const int32_t* words) { return spread_words8<R>(words); }
  // Vectors 2 · half and 2 · half + 1 of the group's rows in VNNI order: byte unpacks pair rows
  // 0 / 1 and 2 / 3, word unpacks make the quads (within 128-bit lanes: block_int8_body.h's positions).
  static void interleave(const uint8_t* r0, const uint8_t* r1, const uint8_t* r2, const uint8_t* r3, int half,
                         reg out[2]) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r1));
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r2));
    const __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r3));
    const __m256i ab = half ? _mm256_unpackhi_epi8(a, b) : _mm256_unpacklo_epi8(a, b);
    const __m256i cd = half ? _mm256_unpackhi_epi8(c, d) : _mm256_unpacklo_epi8(c, d);
    out[0] = _mm256_unpacklo_epi16(ab, cd);
    out[1] = _mm256_unpackhi_epi16(ab, cd);
  }
};
