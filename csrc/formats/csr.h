// The `csr` storage format (docs/sparse_gemm_op.md, "Formats"): its packed weight and packer.
// The Format entry itself (tensor declarations, kernels) is csr.cc's kFormat; the kernel layout
// (PackedCsrOf) is formats/csr_layout.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/csr_layout.h"
#include "formats/format.h"

namespace onnx_prune {

// csr's packed weight: float values (float16 ones are widened at packing).
using PackedCsr = PackedCsrOf<float>;

// Raw, unvalidated CSR tensors as they arrive from the graph.
struct CsrView {
  const void* values = nullptr;
  bool values_fp16 = false;
  const void* indices = nullptr;
  bool indices_u16 = false;  // else int32
  const void* offsets = nullptr;
  bool offsets_i64 = false;  // else int32
  int64_t n_values = 0;
  int64_t n_indices = 0;
  int64_t n_offsets = 0;
};

// Validates `view` against K and N and fills `out`. Returns an empty string on success, else
// a description of the first inconsistency (the caller prefixes the node name).
std::string pack_csr(const CsrView& view, int64_t K, int64_t N, PackedCsr* out);

}  // namespace onnx_prune
