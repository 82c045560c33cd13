// AVX-512 variant (compiled with -mavx512f -mavx512bw -mavx512vl -mfma; run only when the CPU has them).
#include <immintrin.h>

#include "sparse_gemm_kernels.h"

namespace onnx_prune {
namespace isa_avx512 {

struct V {
  using reg = __m512;
  static constexpr int W = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static reg set1(float x) { return _mm512_set1_ps(x); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
};

#include "x86_helpers.h"

// The few-rows strategy works on 8 floats: AVX2 registers (this unit is built with -mavx2 -mfma too).
using V8 = Avx2Vec;

using V4 = Sse4Vec;  // the bcsr GEMV's 4-output blocks

// The integer product on vpmaddwd + vpaddd (16 int32 lanes).
struct IV {
  using reg = __m512i;
  static constexpr int W = 16;
  static reg zero() { return _mm512_setzero_si512(); }
  static reg load(const int32_t* p) { return _mm512_loadu_si512(p); }
  static void store(int32_t* p, reg v) { _mm512_storeu_si512(p, v); }
  static reg add(reg a, reg b) { return _mm512_add_epi32(a, b); }
  static reg madd(reg acc, int32_t word, reg x) {
    return _mm512_add_epi32(acc, _mm512_madd_epi16(x, _mm512_set1_epi32(word)));
  }
};

// bcsr_int8_dynamic's quad product on 16 lanes: Avx2QuadProduct's sign transfer (|q| as
// vpmaddubsw's unsigned operand, so no pair saturates) with the weight negated under the mask of
// negative q (AVX-512 has no vpsignb); for few batch rows the 8-lane AVX2 form (kYmmRows).
struct Avx512QuadProduct {
  using reg = __m512i;
  struct Prepared {
    __mmask64 negative;
    __m512i magnitude;
  };
  static constexpr int W = 16;
  static constexpr int kBias = 0;
  static constexpr int kMaxOutputs = 8;
  static reg zero() { return _mm512_setzero_si512(); }
  static void store(int32_t* p, reg v) { _mm512_storeu_si512(p, v); }
  static Prepared prepare(reg q) { return {_mm512_movepi8_mask(q), _mm512_abs_epi8(q)}; }
  static reg dot4(reg acc, const Prepared& x, int32_t word) {
    const __m512i w = _mm512_set1_epi32(word);
    const __m512i signed_w = _mm512_mask_sub_epi8(w, x.negative, _mm512_setzero_si512(), w);
    const __m512i pairs = _mm512_maddubs_epi16(x.magnitude, signed_w);
    return _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, _mm512_set1_epi16(1)));
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

constexpr int64_t kYmmRows = 16;  // batch rows up to which the 8-lane form runs

#define ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#include "kernel_body.h"
#include "block_kernel_body.h"
#include "kernel_int8_dynamic_body.h"
#include "block_int8_body.h"
#undef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE

const KernelTable kTable{"avx512", &csr_gemm_of<float>, &csr_gemm_of<int8_t>, &has_non_finite,
                          &bcsr_gemm, &int8_dynamic_gemm_of, nullptr,
                          &block_int8_dynamic_gemm_of<Avx2QuadProduct, Avx512QuadProduct, kYmmRows>};

}  // namespace isa_avx512
}  // namespace onnx_prune
