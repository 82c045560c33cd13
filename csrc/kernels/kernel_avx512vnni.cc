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

#define ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#define ONNX_PRUNE_INT8_QUAD_KERNEL
#include "kernel_int8_dynamic_body.h"
#undef ONNX_PRUNE_INT8_QUAD_KERNEL
#undef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE

void int8_dynamic_gemm(const Int8PairArrays& w, const GemmArgs& args, const ParallelRunner& parallel) {
  int8_dynamic_gemm_of(w, args, parallel);
}

void int8_dynamic_quad_gemm(const Int8QuadArrays& w, const GemmArgs& args, const ParallelRunner& parallel) {
  int8_dynamic_quad_gemm_of(w, args, parallel);
}

}  // namespace isa_avx512vnni
}  // namespace onnx_prune
