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

  template <typename Idx>
  static float sparse_dot(const float* values, const Idx* idx, int64_t count, const float* x) {
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    int64_t j = 0;
    for (; j + 4 <= count; j += 4) {
      s0 += values[j] * x[idx[j]];
      s1 += values[j + 1] * x[idx[j + 1]];
      s2 += values[j + 2] * x[idx[j + 2]];
      s3 += values[j + 3] * x[idx[j + 3]];
    }
    for (; j < count; ++j) s0 += values[j] * x[idx[j]];
    return (s0 + s1) + (s2 + s3);
  }
};

#define ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#include "kernel_body.h"
#undef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE

const KernelTable kTable{"portable", &gemm};

}  // namespace isa_portable
}  // namespace onnx_prune
