// AVX2 + FMA variant (compiled with -mavx2 -mfma; run only when the CPU has them).
#include <immintrin.h>

#include "sparse_gemm_kernels.h"

namespace onnx_prune {
namespace isa_avx2 {

#include "x86_helpers.h"

using V = Avx2Vec;
using V8 = Avx2Vec;  // the few-rows strategy works on 8 floats too

using V4 = Sse4Vec;  // the bcsr GEMV's 4-output blocks

// The integer product on vpmaddwd + vpaddd (8 int32 lanes).
struct IV {
  using reg = __m256i;
  static constexpr int W = 8;
  static reg zero() { return _mm256_setzero_si256(); }
  static reg load(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static void store(int32_t* p, reg v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static reg add(reg a, reg b) { return _mm256_add_epi32(a, b); }
  static reg madd(reg acc, int32_t word, reg x) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(x, _mm256_set1_epi32(word)));
  }
};

using BQ = Avx2QuadProduct;  // bcsr_int8_dynamic

#define ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#include "kernel_body.h"
#include "block_kernel_body.h"
#include "kernel_int8_dynamic_body.h"
#include "block_int8_body.h"
#undef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE

const KernelTable kTable{"avx2", &csr_gemm_of<float>, &csr_gemm_of<int8_t>, &has_non_finite,
                          &bcsr_gemm, &int8_dynamic_gemm_of, nullptr, &block_int8_dynamic_gemm_of<BQ>};

}  // namespace isa_avx2
}  // namespace onnx_prune
