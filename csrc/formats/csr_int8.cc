// The `csr_int8` storage format (docs/sparse_gemm_op.md, "Formats"): W's kept weights as int8 with
// one float32 scale per output, and one-byte row indices within blocks of 256 rows of W:
//   W[256 * b + indices[j], n] = values[j] * scales[n]   for offsets[n * B + b] <= j < offsets[n * B + b + 1]
// (B = ceil(K / 256)). Validation and packing run once per kernel (or per Run when the weights are
// not constant); the packed weight is the CSR layout (formats/csr_layout.h) with int8 values, run
// by the int8 CSR kernels, which widen each weight to fp32 in registers and scale the sums.
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "formats/csr_layout.h"
#include "formats/format.h"

namespace onnx_prune {
namespace format_csr_int8 {
namespace {

constexpr int64_t kBlockRows = 256;  // rows of W per block: a row within a block fits one byte
// The largest scale whose dequantized weights (|values| <= 128) are finite: beyond it the dense
// product with the dequantized W overflows where the kernel's scaled sums need not.
constexpr float kMaxScale = std::numeric_limits<float>::max() / 128.f;

enum Tensor : size_t { kValues = 0, kScales = 1, kIndices = 2, kOffsets = 3 };

using PackedInt8 = PackedCsrOf<int8_t>;

int64_t offset_at(const TensorView& offsets, int64_t i) {
  return offsets.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 ? static_cast<const int64_t*>(offsets.data)[i]
                                                             : static_cast<const int32_t*>(offsets.data)[i];
}

}  // namespace

std::string check_scales(const TensorView& scales, int64_t N) {
  std::ostringstream err;
  if (scales.dims[0] != N) {
    err << "scales has " << scales.dims[0] << " entries, expected N = " << N;
    return err.str();
  }
  const auto* s = static_cast<const float*>(scales.data);
  for (int64_t n = 0; n < N; ++n) {
    if (!(std::isfinite(s[n]) && s[n] > 0.f && s[n] <= kMaxScale)) {
      err << "scales[" << n << "] = " << s[n] << " must be finite, positive and at most FLT_MAX / 128";
      return err.str();
    }
  }
  return {};
}

namespace {

std::string check_offsets(const TensorView& offsets, int64_t rows, int64_t nnz) {
  std::ostringstream err;
  if (offsets.dims[0] != rows + 1) {
    err << "offsets has " << offsets.dims[0] << " entries, expected N * ceil(K / 256) + 1 = " << rows + 1;
    return err.str();
  }
  if (offset_at(offsets, 0) != 0) {
    err << "offsets[0] is " << offset_at(offsets, 0) << ", expected 0";
    return err.str();
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (offset_at(offsets, r + 1) < offset_at(offsets, r)) {
      err << "offsets decrease at position " << r + 1;
      return err.str();
    }
  }
  if (offset_at(offsets, rows) != nnz) {
    err << "offsets[N * ceil(K / 256)] is " << offset_at(offsets, rows) << " but there are " << nnz << " values";
    return err.str();
  }
  return {};
}

// Rows of W from (block, byte index); each must be < K (only the last block can overflow).
std::string unpack_rows(const TensorView& indices, const TensorView& offsets, int64_t K, int64_t B, PackedInt8* w) {
  const auto* idx = static_cast<const uint8_t*>(indices.data);
  w->use16 = K <= 65536;
  if (w->use16) {
    w->idx16.resize(static_cast<size_t>(w->nnz));
  } else {
    w->idx32.resize(static_cast<size_t>(w->nnz));
  }
  for (int64_t r = 0; r < w->N * B; ++r) {
    const int64_t base = (r % B) * kBlockRows;
    for (int64_t j = offset_at(offsets, r); j < offset_at(offsets, r + 1); ++j) {
      const int64_t k = base + idx[j];
      if (k >= K) {
        std::ostringstream err;
        err << "indices[" << j << "] = " << int{idx[j]} << " in block " << r % B << " is row " << k
            << ", outside [0, K = " << K << ")";
        return err.str();
      }
      if (w->use16) {
        w->idx16[j] = static_cast<uint16_t>(k);
      } else {
        w->idx32[j] = static_cast<int32_t>(k);
      }
    }
  }
  return {};
}

std::string pack(const std::vector<TensorView>& t, const WeightShape& shape, std::unique_ptr<PackedWeight>* out) {
  const int64_t nnz = t[kValues].dims[0];
  std::ostringstream err;
  if (shape.has_nnz && shape.nnz != nnz) {
    err << "attribute nnz = " << shape.nnz << " but values has " << nnz << " entries";
    return err.str();
  }
  if (t[kIndices].dims[0] != nnz) {
    err << "invalid sparse weight: values has " << nnz << " entries but indices has " << t[kIndices].dims[0];
    return err.str();
  }
  const int64_t B = (shape.K + kBlockRows - 1) / kBlockRows;
  std::string problem = check_scales(t[kScales], shape.N);
  if (problem.empty()) problem = check_offsets(t[kOffsets], shape.N * B, nnz);
  if (!problem.empty()) return "invalid sparse weight: " + problem;
  auto w = std::make_unique<PackedInt8>();
  problem = read_forced_path(&w->forced_path);
  if (!problem.empty()) return problem;
  w->K = shape.K;
  w->N = shape.N;
  w->nnz = nnz;
  problem = unpack_rows(t[kIndices], t[kOffsets], shape.K, B, w.get());
  if (!problem.empty()) return "invalid sparse weight: " + problem;
  w->values.resize(static_cast<size_t>(nnz));
  if (nnz > 0) std::memcpy(w->values.data(), t[kValues].data, static_cast<size_t>(nnz));
  const auto* scales = static_cast<const float*>(t[kScales].data);
  w->scales.assign(scales, scales + shape.N);
  w->row_ptr.resize(static_cast<size_t>(shape.N + 1));
  for (int64_t n = 0; n <= shape.N; ++n) w->row_ptr[n] = offset_at(t[kOffsets], n * B);
  build_kernel_layout(w.get());
  *out = std::move(w);
  return {};
}

void run(const PackedWeight& packed, const KernelTable& kernels, const GemmArgs& args, const ParallelRunner& parallel) {
  const auto& w = static_cast<const PackedInt8&>(packed);
  kernels.csr_int8_gemm(arrays_of(w), args, parallel);
  mark_unstored_non_finite(w, kernels, args);
}

}  // namespace

const Format kFormat{
    "csr_int8",
    {{"values", {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8}, 1},
     {"scales", {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT}, 1},
     {"indices", {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8}, 1},
     {"offsets", {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64}, 1}},
    &pack,
    &run,
};

}  // namespace format_csr_int8
}  // namespace onnx_prune
