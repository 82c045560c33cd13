// AVX2 + FMA variant (compiled with -mavx2 -mfma; run only when the CPU has them).
#include <immintrin.h>

#include "sparse_gemm_kernels.h"

namespace onnx_prune {
namespace isa_avx2 {

#include "x86_helpers.h"

using V = Avx2Vec;
using V8 = Avx2Vec;  // the few-rows strategy works on 8 floats too

using V4 = Sse4Vec;  // the bcsr GEMV's 4-output blocks

#define ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#include "kernel_body.h"
#include "block_kernel_body.h"
#undef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE

const KernelTable kTable{"avx2", &csr_gemm_of<float>, &csr_gemm_of<int8_t>, &has_non_finite,
                          &bcsr_gemm};

}  // namespace isa_avx2
}  // namespace onnx_prune
