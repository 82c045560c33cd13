// Scratch memory for the ISA units, compiled for the baseline ISA (sparse_gemm_kernels.h).
#include <cstdlib>
#include <new>

#include "sparse_gemm_kernels.h"

namespace onnx_prune {

float* scratch_alloc(const ScratchAllocator& allocator, size_t n_floats) {
  const size_t bytes = ((n_floats * sizeof(float) + 63) / 64) * 64;
  void* p = allocator.alloc ? allocator.alloc(allocator.ctx, bytes == 0 ? 64 : bytes)
                            : std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
  if (p == nullptr) throw std::bad_alloc();
  return static_cast<float*>(p);
}

void scratch_free(const ScratchAllocator& allocator, float* p) {
  if (allocator.free) {
    allocator.free(allocator.ctx, p);
  } else {
    std::free(p);
  }
}

}  // namespace onnx_prune
