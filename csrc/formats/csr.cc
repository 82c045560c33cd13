// The `csr` storage format: its weight tensors (values, indices, offsets), their validation and
// packing, done once per kernel (or per Run when the weights are not constant), and the kernels
// that run it. Every index and offset is checked here so the hot loops never need to.
#include "formats/csr.h"
#include "formats/half.h"

#include <cstring>
#include <sstream>

namespace onnx_prune {
namespace {

int64_t offset_at(const CsrView& v, int64_t i) {
  return v.offsets_i64 ? static_cast<const int64_t*>(v.offsets)[i]
                       : static_cast<const int32_t*>(v.offsets)[i];
}

int64_t index_at(const CsrView& v, int64_t i) {
  return v.indices_u16 ? static_cast<const uint16_t*>(v.indices)[i]
                       : static_cast<const int32_t*>(v.indices)[i];
}

std::string check_offsets(const CsrView& v, int64_t N) {
  std::ostringstream err;
  if (v.n_offsets != N + 1) {
    err << "offsets has " << v.n_offsets << " entries, expected N + 1 = " << N + 1;
    return err.str();
  }
  if (v.n_values != v.n_indices) {
    err << "values has " << v.n_values << " entries but indices has " << v.n_indices;
    return err.str();
  }
  if (offset_at(v, 0) != 0) {
    err << "offsets[0] is " << offset_at(v, 0) << ", expected 0";
    return err.str();
  }
  for (int64_t n = 0; n < N; ++n) {
    if (offset_at(v, n + 1) < offset_at(v, n)) {
      err << "offsets decrease at position " << n + 1;
      return err.str();
    }
  }
  if (offset_at(v, N) != v.n_values) {
    err << "offsets[N] is " << offset_at(v, N) << " but there are " << v.n_values << " values";
    return err.str();
  }
  return {};
}

std::string check_indices(const CsrView& v, int64_t K) {
  for (int64_t j = 0; j < v.n_indices; ++j) {
    const int64_t k = index_at(v, j);
    if (k < 0 || k >= K) {
      std::ostringstream err;
      err << "indices[" << j << "] = " << k << " is outside [0, K = " << K << ")";
      return err.str();
    }
  }
  return {};
}

void copy_values(const CsrView& v, PackedCsr* out) {
  out->values.resize(static_cast<size_t>(v.n_values));
  if (v.values_fp16) {
    const auto* h = static_cast<const uint16_t*>(v.values);
    for (int64_t j = 0; j < v.n_values; ++j) out->values[j] = half_to_float(h[j]);
  } else if (v.n_values > 0) {
    std::memcpy(out->values.data(), v.values, sizeof(float) * static_cast<size_t>(v.n_values));
  }
}

void copy_indices(const CsrView& v, PackedCsr* out) {
  out->use16 = out->K <= 65536;
  if (out->use16) {
    out->idx16.resize(static_cast<size_t>(v.n_indices));
    for (int64_t j = 0; j < v.n_indices; ++j) out->idx16[j] = static_cast<uint16_t>(index_at(v, j));
  } else {
    out->idx32.resize(static_cast<size_t>(v.n_indices));
    for (int64_t j = 0; j < v.n_indices; ++j) out->idx32[j] = static_cast<int32_t>(index_at(v, j));
  }
}

}  // namespace

std::string pack_csr(const CsrView& view, int64_t K, int64_t N, PackedCsr* out) {
  if (view.n_values < 0 || view.n_indices < 0) return "negative tensor size";
  std::string err = check_offsets(view, N);
  if (err.empty()) err = check_indices(view, K);
  if (!err.empty()) return err;
  out->K = K;
  out->N = N;
  out->nnz = view.n_values;
  out->row_ptr.resize(static_cast<size_t>(N + 1));
  for (int64_t n = 0; n <= N; ++n) out->row_ptr[n] = offset_at(view, n);
  copy_values(view, out);
  copy_indices(view, out);
  build_kernel_layout(out);
  return {};
}

// ---------------------------------------------------------------- the Format entry

namespace format_csr {
namespace {

enum Tensor : size_t { kValues = 0, kIndices = 1, kOffsets = 2 };

std::string pack(const std::vector<TensorView>& t, const WeightShape& shape, std::unique_ptr<PackedWeight>* out) {
  CsrView view;
  view.values = t[kValues].data;
  view.values_fp16 = t[kValues].type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  view.indices = t[kIndices].data;
  view.indices_u16 = t[kIndices].type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16;
  view.offsets = t[kOffsets].data;
  view.offsets_i64 = t[kOffsets].type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  view.n_values = t[kValues].dims[0];
  view.n_indices = t[kIndices].dims[0];
  view.n_offsets = t[kOffsets].dims[0];
  if (shape.has_nnz && shape.nnz != view.n_values) {
    std::ostringstream err;
    err << "attribute nnz = " << shape.nnz << " but values has " << view.n_values << " entries";
    return err.str();
  }
  auto packed = std::make_unique<PackedCsr>();
  std::string err = read_forced_path(&packed->forced_path);
  if (!err.empty()) return err;
  err = pack_csr(view, shape.K, shape.N, packed.get());
  if (!err.empty()) return "invalid sparse weight: " + err;
  *out = std::move(packed);
  return {};
}

void run(const PackedWeight& packed, const KernelTable& kernels, const GemmArgs& args, const ParallelRunner& parallel) {
  const auto& w = static_cast<const PackedCsr&>(packed);
  kernels.csr_gemm(arrays_of(w), args, parallel);
  mark_unstored_non_finite(w, kernels, args);
}

}  // namespace

const Format kFormat{
    "csr",
    {{"values", {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16}, 1},
     {"indices", {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32}, 1},
     {"offsets", {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64}, 1}},
    &pack,
    &run,
};

}  // namespace format_csr
}  // namespace onnx_prune
