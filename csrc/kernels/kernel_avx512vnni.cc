// AVX-512 VNNI variant of the integer product of format csr_int8_dynamic (compiled with
// -mavx512f -mavx512bw -mavx512vl -mavx512vnni; run only when the CPU has them). One vpdpwssd does
// the pmaddwd and the add of the AVX-512 unit. The float kernels of this variant are AVX-512's
// (dispatch.cc copies that table and swaps this entry in).
#include <immintrin.h>

#include "sparse_gemm_kernels.h"

namespace onnx_prune {
namespace isa_avx512vnni {

struct IV {
  using reg = __m512i;
  static constexpr int W = 16;
  static reg zero() { return _mm512_setzero_si512(); }
  static reg load(const int32_t* p) { return _mm512_loadu_si512(p); }
  static void store(int32_t* p, reg v) { _mm512_storeu_si512(p, v); }
  static reg add(reg a, reg b) { return _mm512_add_epi32(a, b); }
  static reg madd(reg acc, int32_t word, reg x) { return _mm512_dpwssd_epi32(acc, x, _mm512_set1_epi32(word)); }
};

#define ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#include "kernel_int8_dynamic_body.h"
#undef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE

void int8_dynamic_gemm(const Int8PairArrays& w, const GemmArgs& args, const ParallelRunner& parallel) {
  int8_dynamic_gemm_of(w, args, parallel);
}

}  // namespace isa_avx512vnni
}  // namespace onnx_prune
