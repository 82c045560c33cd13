// The `bcsr` storage format (docs/sparse_gemm_op.md, "Formats"): block CSR of W^T with R x 1
// blocks (R consecutive outputs x one row of W; R = 4 or 8, the second dimension of `values`).
// Its tensors (values [n_blocks, R] float32 or float16, indices [n_blocks], offsets
// [ceil(N / R) + 1]) are validated and packed here once per kernel (or per Run when the weights are
// not constant); the kernels are csrc/kernels/block_kernel_body.h. Every index and offset is
// checked here so the hot loops never need to.
#include <algorithm>
#include <cstring>
#include <limits>
#include <sstream>

#include "formats/format.h"
#include "formats/half.h"
#include "formats/non_finite.h"

namespace onnx_prune {
namespace format_bcsr {
namespace {

// Block rows per thread range aimed for, and the most ranges (as csr's 32 outputs and 48 ranges).
constexpr int64_t kBlockRowsPerPart = 8;
constexpr int64_t kMaxParts = 48;

enum Tensor : size_t { kValues = 0, kIndices = 1, kOffsets = 2 };

struct PackedBcsr : PackedWeight {
  int64_t K = 0;
  int64_t N = 0;
  int64_t R = 0;
  int64_t n_block_rows = 0;
  std::vector<float> values;     // [n_blocks][R]
  std::vector<int32_t> idx;      // [n_blocks], increasing within a block row
  std::vector<int64_t> block_ptr;  // [n_block_rows + 1]
  std::vector<int64_t> parts;    // block-row ranges with about equal blocks

  BcsrArrays arrays() const {
    BcsrArrays a;
    a.K = K;
    a.N = N;
    a.R = R;
    a.n_block_rows = n_block_rows;
    a.values = values.data();
    a.idx = idx.data();
    a.block_ptr = block_ptr.data();
    a.parts = parts.data();
    a.n_parts = static_cast<int64_t>(parts.size()) - 1;
    return a;
  }
};

int64_t integer_at(const TensorView& t, int64_t i) {
  switch (t.type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: return static_cast<const uint16_t*>(t.data)[i];
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return static_cast<const int32_t*>(t.data)[i];
    default: return static_cast<const int64_t*>(t.data)[i];
  }
}

std::string check_shapes(const std::vector<TensorView>& t, const WeightShape& shape, int64_t* n_block_rows) {
  std::ostringstream err;
  const int64_t R = t[kValues].dims[1], n_blocks = t[kValues].dims[0];
  if (R != 4 && R != 8) {
    err << "values has shape [" << n_blocks << ", " << R << "]: the block size R (its second dimension) must be 4 or 8";
    return err.str();
  }
  if (t[kIndices].dims[0] != n_blocks) {
    err << "indices has " << t[kIndices].dims[0] << " entries but values has " << n_blocks << " blocks";
    return err.str();
  }
  *n_block_rows = (shape.N + R - 1) / R;
  if (t[kOffsets].dims[0] != *n_block_rows + 1) {
    err << "offsets has " << t[kOffsets].dims[0] << " entries, expected ceil(N / R) + 1 = " << *n_block_rows + 1;
    return err.str();
  }
  return {};
}

std::string check_offsets(const TensorView& offsets, int64_t n_block_rows, int64_t n_blocks) {
  std::ostringstream err;
  if (integer_at(offsets, 0) != 0) {
    err << "offsets[0] is " << integer_at(offsets, 0) << ", expected 0";
    return err.str();
  }
  for (int64_t b = 0; b < n_block_rows; ++b) {
    if (integer_at(offsets, b + 1) < integer_at(offsets, b)) {
      err << "offsets decrease at position " << b + 1;
      return err.str();
    }
  }
  if (integer_at(offsets, n_block_rows) != n_blocks) {
    err << "offsets[" << n_block_rows << "] is " << integer_at(offsets, n_block_rows) << " but there are "
        << n_blocks << " blocks";
    return err.str();
  }
  return {};
}

// Rows strictly increase within a block row (one block per (block row, k)) and lie in [0, K).
std::string check_indices(const TensorView& indices, const std::vector<int64_t>& block_ptr, int64_t K) {
  for (size_t b = 0; b + 1 < block_ptr.size(); ++b) {
    for (int64_t j = block_ptr[b]; j < block_ptr[b + 1]; ++j) {
      const int64_t k = integer_at(indices, j);
      std::ostringstream err;
      if (k < 0 || k >= K) {
        err << "indices[" << j << "] = " << k << " is outside [0, K = " << K << ")";
        return err.str();
      }
      if (j > block_ptr[b] && k <= integer_at(indices, j - 1)) {
        err << "indices[" << j << "] = " << k << " does not increase within block row " << b;
        return err.str();
      }
    }
  }
  return {};
}

// The outputs past N in a partial last block row are stored zeros (the contract's padding).
std::string check_padding(const PackedBcsr& w) {
  const int64_t real = w.N - (w.n_block_rows - 1) * w.R;
  const int64_t last = w.n_block_rows - 1;
  for (int64_t j = w.block_ptr[last]; j < w.block_ptr[last + 1]; ++j) {
    for (int64_t r = real; r < w.R; ++r) {
      if (w.values[j * w.R + r] != 0.f) {
        std::ostringstream err;
        err << "values[" << j << ", " << r << "] pads output " << last * w.R + r << " >= N = " << w.N
            << " and must be 0";
        return err.str();
      }
    }
  }
  return {};
}

// Stored weights of outputs < N: what the optional nnz attribute counts.
int64_t stored_weights(const PackedBcsr& w) {
  const int64_t n_blocks = w.block_ptr[w.n_block_rows];
  const int64_t last_blocks = n_blocks - w.block_ptr[w.n_block_rows - 1];
  return n_blocks * w.R - last_blocks * (w.n_block_rows * w.R - w.N);
}

void balance_parts(PackedBcsr* w) {
  const int64_t rows = w->n_block_rows, n_blocks = w->block_ptr[rows];
  const int64_t n_parts = std::max<int64_t>(1, std::min(kMaxParts, (rows + kBlockRowsPerPart - 1) / kBlockRowsPerPart));
  w->parts.assign(1, 0);
  for (int64_t p = 1; p < n_parts; ++p) {
    const int64_t boundary =
        n_blocks > 0 ? std::lower_bound(w->block_ptr.begin(), w->block_ptr.end(), n_blocks * p / n_parts) -
                           w->block_ptr.begin()
                     : rows * p / n_parts;
    if (boundary > w->parts.back() && boundary < rows) w->parts.push_back(boundary);
  }
  w->parts.push_back(rows);
}

// float16 values are widened once here; the kernels see float32 only.
void copy_values(const TensorView& values, int64_t count, std::vector<float>* out) {
  out->resize(static_cast<size_t>(count));
  if (values.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
    const auto* h = static_cast<const uint16_t*>(values.data);
    for (int64_t j = 0; j < count; ++j) (*out)[j] = half_to_float(h[j]);
  } else if (count > 0) {
    std::memcpy(out->data(), values.data, sizeof(float) * static_cast<size_t>(count));
  }
}

std::string pack(const std::vector<TensorView>& t, const WeightShape& shape, std::unique_ptr<PackedWeight>* out) {
  int64_t n_block_rows = 0;
  std::string err = check_shapes(t, shape, &n_block_rows);
  const int64_t n_blocks = t[kValues].dims[0];
  if (err.empty()) err = check_offsets(t[kOffsets], n_block_rows, n_blocks);
  if (!err.empty()) return "invalid sparse weight: " + err;
  auto w = std::make_unique<PackedBcsr>();
  w->K = shape.K;
  w->N = shape.N;
  w->R = t[kValues].dims[1];
  w->n_block_rows = n_block_rows;
  w->block_ptr.resize(static_cast<size_t>(n_block_rows + 1));
  for (int64_t b = 0; b <= n_block_rows; ++b) w->block_ptr[b] = integer_at(t[kOffsets], b);
  err = check_indices(t[kIndices], w->block_ptr, shape.K);
  if (!err.empty()) return "invalid sparse weight: " + err;
  w->idx.resize(static_cast<size_t>(n_blocks));
  for (int64_t j = 0; j < n_blocks; ++j) w->idx[j] = static_cast<int32_t>(integer_at(t[kIndices], j));
  copy_values(t[kValues], n_blocks * w->R, &w->values);
  err = check_padding(*w);
  if (!err.empty()) return "invalid sparse weight: " + err;
  if (shape.has_nnz && shape.nnz != stored_weights(*w)) {
    std::ostringstream msg;
    msg << "attribute nnz = " << shape.nnz << " but the blocks store " << stored_weights(*w) << " weights of outputs < N";
    return msg.str();
  }
  balance_parts(w.get());
  *out = std::move(w);
  return {};
}

// True when block row b stores a block at every row in `ks` (sorted).
bool stores_all(const PackedBcsr& w, int64_t b, const std::vector<int64_t>& ks) {
  const int32_t* first = w.idx.data() + w.block_ptr[b];
  const int32_t* last = w.idx.data() + w.block_ptr[b + 1];
  if (last - first < static_cast<int64_t>(ks.size())) return false;
  for (int64_t k : ks) {
    first = std::lower_bound(first, last, static_cast<int32_t>(k));
    if (first == last || *first != k) return false;
  }
  return true;
}

void run(const PackedWeight& packed, const KernelTable& kernels, const GemmArgs& args, const ParallelRunner& parallel) {
  const auto& w = static_cast<const PackedBcsr&>(packed);
  kernels.bcsr_gemm(w.arrays(), args, parallel);
  // A stored block multiplies its zeros too; outputs whose block row lacks a block at such a k
  // become NaN here (formats/non_finite.h).
  for_each_non_finite_row(kernels, args, w.K, [&](int64_t m, const std::vector<int64_t>& ks) {
    float* y = args.y + m * w.N;
    for (int64_t b = 0; b < w.n_block_rows; ++b) {
      if (stores_all(w, b, ks)) continue;
      for (int64_t n = b * w.R; n < std::min(w.N, (b + 1) * w.R); ++n) y[n] = std::numeric_limits<float>::quiet_NaN();
    }
  });
}

}  // namespace

const Format kFormat{
    "bcsr",
    {{"values", {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16}, 2},
     {"indices", {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32}, 1},
     {"offsets", {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64}, 1}},
    &pack,
    &run,
};

}  // namespace format_bcsr
}  // namespace onnx_prune
