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

  static __m512i load_idx(const uint16_t* p) {
    return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static __m512i load_idx(const int32_t* p) { return _mm512_loadu_si512(p); }
  static __m512i load_idx_masked(const uint16_t* p, __mmask16 m) {
    return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  }
  static __m512i load_idx_masked(const int32_t* p, __mmask16 m) { return _mm512_maskz_loadu_epi32(m, p); }

  // sum_j values[j] * x[idx[j]] with 16-wide gathers, two chains in flight, masked tail.
  template <typename Idx>
  static float sparse_dot(const float* values, const Idx* idx, int64_t count, const float* x) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= count; j += 32) {
      const __m512 x0 = _mm512_i32gather_ps(load_idx(idx + j), x, 4);
      const __m512 x1 = _mm512_i32gather_ps(load_idx(idx + j + 16), x, 4);
      acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(values + j), x0, acc0);
      acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(values + j + 16), x1, acc1);
    }
    for (; j + 16 <= count; j += 16) {
      const __m512 x0 = _mm512_i32gather_ps(load_idx(idx + j), x, 4);
      acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(values + j), x0, acc0);
    }
    if (j < count) {
      const __mmask16 m = static_cast<__mmask16>((1u << (count - j)) - 1u);
      const __m512 x0 = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, load_idx_masked(idx + j, m), x, 4);
      acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, values + j), x0, acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  }
};

#define ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#include "kernel_body.h"
#undef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE

const KernelTable kTable{"avx512", &gemm};

}  // namespace isa_avx512
}  // namespace onnx_prune
