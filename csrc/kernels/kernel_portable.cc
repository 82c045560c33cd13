// Portable variant: GCC/Clang vector extensions (4 floats), compiled for the baseline ISA of the
// target (SSE2 on x86-64, NEON on aarch64). Always available; the reference the others must match.
#include <cstring>

#include "sparse_gemm_kernels.h"

namespace onnx_prune {
namespace isa_portable {

struct V {
  typedef float reg __attribute__((vector_size(16)));
  static constexpr int W = 4;
  static reg zero() { return reg{0.f, 0.f, 0.f, 0.f}; }
  static reg load(const float* p) {
    reg v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(float* p, reg v) { std::memcpy(p, &v, sizeof v); }
  static reg set1(float x) { return reg{x, x, x, x}; }
  static reg fmadd(reg a, reg b, reg c) { return a * b + c; }
  static reg add(reg a, reg b) { return a + b; }
};

// The few-rows strategy works on 8 floats (lowered to two 4-float operations).
struct V8 {
  typedef float reg __attribute__((vector_size(32)));
  static constexpr int W = 8;
  static reg zero() { return reg{0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f}; }
  static reg load(const float* p) {
    reg v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(float* p, reg v) { std::memcpy(p, &v, sizeof v); }
  static reg set1(float x) { return reg{x, x, x, x, x, x, x, x}; }
  static reg fmadd(reg a, reg b, reg c) { return a * b + c; }
  static reg add(reg a, reg b) { return a + b; }
};

using V4 = V;  // the bcsr GEMV's 4-output blocks

#define ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#include "kernel_body.h"
#include "block_kernel_body.h"
#undef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE

const KernelTable kTable{"portable", &csr_gemm_of<float>, &csr_gemm_of<int8_t>, &has_non_finite,
                          &bcsr_gemm};

}  // namespace isa_portable
}  // namespace onnx_prune
