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
};

using V8 = V;  // the few-rows strategy works on 8 floats

#include "x86_helpers.h"
#define ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#include "kernel_body.h"
#undef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE

const KernelTable kTable{"avx2", &gemm};

}  // namespace isa_avx2
}  // namespace onnx_prune
