// Validation and packing of the CSR weight tensors, done once per kernel (or per Run when the
// weights are not constant). Every index and offset is checked here so the hot loops never need to.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <sstream>

#include "sparse_gemm_kernels.h"

namespace onnx_prune {
namespace {

// Rows per partition aimed for; partitions are then balanced by nnz.
constexpr int64_t kRowsPerPart = 16;
constexpr int64_t kMaxParts = 256;

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

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

// Contiguous ranges of outputs with about equal nnz (by rows when the layer is empty).
void balance_parts(PackedCsr* out) {
  const int64_t N = out->N;
  const int64_t n_parts = std::max<int64_t>(1, std::min(kMaxParts, (N + kRowsPerPart - 1) / kRowsPerPart));
  out->parts.assign(1, 0);
  const auto& rp = out->row_ptr;
  for (int64_t p = 1; p < n_parts; ++p) {
    int64_t boundary;
    if (out->nnz > 0) {
      const int64_t target = out->nnz * p / n_parts;
      boundary = std::lower_bound(rp.begin(), rp.end(), target) - rp.begin();
    } else {
      boundary = N * p / n_parts;
    }
    boundary = std::min(boundary, N);
    if (boundary > out->parts.back()) out->parts.push_back(boundary);
  }
  if (out->parts.back() < N || N == 0) out->parts.push_back(N);
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
  balance_parts(out);
  return {};
}

CsrArrays arrays_of(const PackedCsr& w) {
  CsrArrays a;
  a.K = w.K;
  a.N = w.N;
  a.values = w.values.data();
  if (w.use16) {
    a.idx16 = w.idx16.data();
  } else {
    a.idx32 = w.idx32.data();
  }
  a.row_ptr = w.row_ptr.data();
  a.parts = w.parts.data();
  a.n_parts = static_cast<int64_t>(w.parts.size()) - 1;
  return a;
}

float* scratch_alloc(size_t n_floats) {
  const size_t bytes = ((n_floats * sizeof(float) + 63) / 64) * 64;
  void* p = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
  if (p == nullptr) throw std::bad_alloc();
  return static_cast<float*>(p);
}

void scratch_free(float* p) { std::free(p); }

}  // namespace onnx_prune
