// AVX-512 VNNI variant of the integer product of format csr_int8_dynamic (compiled with
// -mavx512f -mavx512bw -mavx512vl -mavx512vnni; run only when the CPU has them). vpdpbusd runs the
// four-row layout (Int8QuadArrays, what format csr_int8_dynamic packs for this table); one vpdpwssd
// does the pmaddwd and the add of the AVX-512 unit on the two-row layout (weights whose duplicates
// sum outside int8). The float kernels of this variant are AVX-512's (dispatch.cc copies that
// table and swaps these entries in).
#include <immintrin.h>

#include "sparse_gemm_kernels.h"

namespace onnx_prune {
namespace isa_avx512vnni {

#include "x86_helpers.h"  // spread_words8 (AVX2 is part of this unit's instruction set)

struct IV {
  using reg = __m512i;
  static constexpr int W = 16;
  static reg zero() { return _mm512_setzero_si512(); }
  static reg load(const int32_t* p) { return _mm512_loadu_si512(p); }
  static void store(int32_t* p, reg v) { _mm512_storeu_si512(p, v); }
  static reg add(reg a, reg b) { return _mm512_add_epi32(a, b); }
  static reg madd(reg acc, int32_t word, reg x) { return _mm512_dpwssd_epi32(acc, x, _mm512_set1_epi32(word)); }
  // The quad kernel's: vpdpbusd (u8 activations x s8 weights), loads of the first n <= 16 words.
  static reg set1(int32_t word) { return _mm512_set1_epi32(word); }
  static reg dpbusd(reg acc, reg u8, reg s8) { return _mm512_dpbusd_epi32(acc, u8, s8); }
  static reg gather(const int32_t* base, const int32_t* idx) {
    return _mm512_mask_i32gather_epi32(zero(), static_cast<__mmask16>(0xFFFF), _mm512_loadu_si512(idx), base, 4);
  }
  static __mmask16 first(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static reg load_first(const int32_t* p, int n) { return _mm512_maskz_loadu_epi32(first(n), p); }
  static reg gather_first(const int32_t* base, const int32_t* idx, int n) {
    return _mm512_mask_i32gather_epi32(zero(), first(n), _mm512_maskz_loadu_epi32(first(n), idx), base, 4);
  }
  static int32_t hsum(reg v) {  // (GCC 12's _mm512_reduce_add_epi32 / extracts warn of undefined registers)
    alignas(64) int32_t lanes[W];
    _mm512_store_si512(lanes, v);
    uint32_t sum = 0;  // wrapping, like the lanes
    for (int i = 0; i < W; ++i) sum += static_cast<uint32_t>(lanes[i]);
    return static_cast<int32_t>(sum);
  }
};

// bcsr_int8_dynamic's quad product (block_int8_body.h) on vpdpbusd: activation bytes u8 = q + 128
// (kBias) times the broadcast s8 weight word, four products summed into each int32 lane; `Bits`
// picks the width (ymm for few batch rows: a tile of 32 rows, zmm otherwise: 64).
template <int Bits>
struct VnniQuads;

template <>
struct VnniQuads<512> {
  using reg = __m512i;
  using Prepared = __m512i;
  static constexpr int W = 16;
  static constexpr int kBias = 128;
  static constexpr int kMaxOutputs = 8;  // 8 x 2 accumulators of 32 registers
  static reg zero() { return _mm512_setzero_si512(); }
  static void store(int32_t* p, reg v) { _mm512_storeu_si512(p, v); }
  static Prepared prepare(reg x) { return x; }
  static reg dot4(reg acc, const Prepared& x, int32_t word) {
    return _mm512_dpbusd_epi32(acc, x, _mm512_set1_epi32(word));
  }
  static void interleave(const uint8_t* r0, const uint8_t* r1, const uint8_t* r2, const uint8_t* r3, int half,
                         reg out[2]) {
    const __m512i a = _mm512_loadu_si512(r0), b = _mm512_loadu_si512(r1);
    const __m512i c = _mm512_loadu_si512(r2), d = _mm512_loadu_si512(r3);
    const __m512i ab = half ? _mm512_unpackhi_epi8(a, b) : _mm512_unpacklo_epi8(a, b);
    const __m512i cd = half ? _mm512_unpackhi_epi8(c, d) : _mm512_unpacklo_epi8(c, d);
    out[0] = _mm512_unpacklo_epi16(ab, cd);
    out[1] = _mm512_unpackhi_epi16(ab, cd);
  }
};

template <>
struct VnniQuads<256> {
  using reg = __m256i;
  using Prepared = __m256i;
  static constexpr int W = 8;
  static constexpr int kBias = 128;
  static constexpr int kMaxOutputs = 8;
  static reg zero() { return _mm256_setzero_si256(); }
  static void store(int32_t* p, reg v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static Prepared prepare(reg x) { return x; }
  static reg dot4v(reg acc, const Prepared& x, reg words) { return _mm256_dpbusd_epi32(acc, x, words); }
  static reg dot4(reg acc, const Prepared& x, int32_t word) { return dot4v(acc, x, _mm256_set1_epi32(word)); }
  static reg load(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  template <int R>
  static reg spread(const int32_t* words) { return spread_words8<R>(words); }
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

// Batch rows up to which the 32-row ymm tile runs (one half of it: 16 rows in two vectors).
constexpr int64_t kYmmRows = 16;

#define ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#define ONNX_PRUNE_INT8_QUAD_KERNEL
#include "kernel_int8_dynamic_body.h"
#include "block_int8_body.h"
#undef ONNX_PRUNE_INT8_QUAD_KERNEL
#undef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE

void int8_dynamic_gemm(const Int8PairArrays& w, const GemmArgs& args, const ParallelRunner& parallel) {
  int8_dynamic_gemm_of(w, args, parallel);
}

void int8_dynamic_quad_gemm(const Int8QuadArrays& w, const GemmArgs& args, const ParallelRunner& parallel) {
  int8_dynamic_quad_gemm_of(w, args, parallel);
}

void block_int8_dynamic_gemm(const BlockInt8Arrays& w, const GemmArgs& args, const ParallelRunner& parallel) {
  block_int8_dynamic_gemm_of<VnniQuads<256>, VnniQuads<512>, kYmmRows>(w, args, parallel);
}

}  // namespace isa_avx512vnni
}  // namespace onnx_prune
