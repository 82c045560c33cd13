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

using BQ = Avx2QuadProduct;  // bcsr_int8_dynamic (AVX-512 has no vpsignb; the AVX2 form)

#define ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#include "kernel_body.h"
#include "block_kernel_body.h"
#include "kernel_int8_dynamic_body.h"
#include "block_int8_body.h"
#undef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE

const KernelTable kTable{"avx512", &csr_gemm_of<float>, &csr_gemm_of<int8_t>, &has_non_finite,
                          &bcsr_gemm, &int8_dynamic_gemm_of, nullptr, &block_int8_dynamic_gemm_of};

}  // namespace isa_avx512
}  // namespace onnx_prune
