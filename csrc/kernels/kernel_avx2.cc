// AVX2 + FMA variant (compiled with -mavx2 -mfma; run only when the CPU has them).
#include <immintrin.h>

#include "sparse_gemm_kernels.h"

namespace onnx_prune {
namespace isa_avx2 {

struct V {
  using reg = __m256;
  static constexpr int W = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static reg set1(float x) { return _mm256_set1_ps(x); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }

  static __m256i load_idx(const uint16_t* p) {
    return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static __m256i load_idx(const int32_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }

  static float hsum(__m256 v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
  }

  // sum_j values[j] * x[idx[j]] with 8-wide gathers and a scalar tail.
  template <typename Idx>
  static float sparse_dot(const float* values, const Idx* idx, int64_t count, const float* x) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= count; j += 16) {
      const __m256 x0 = _mm256_i32gather_ps(x, load_idx(idx + j), 4);
      const __m256 x1 = _mm256_i32gather_ps(x, load_idx(idx + j + 8), 4);
      acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j), x0, acc0);
      acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j + 8), x1, acc1);
    }
    for (; j + 8 <= count; j += 8) {
      acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j), _mm256_i32gather_ps(x, load_idx(idx + j), 4), acc0);
    }
    float tail = 0.f;
    for (; j < count; ++j) tail += values[j] * x[idx[j]];
    return hsum(_mm256_add_ps(acc0, acc1)) + tail;
  }
};

#define ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#include "kernel_body.h"
#undef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE

const KernelTable kTable{"avx2", &gemm};

}  // namespace isa_avx2
}  // namespace onnx_prune
