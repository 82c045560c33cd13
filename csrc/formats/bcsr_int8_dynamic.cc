// The `bcsr_int8_dynamic` storage format (docs/sparse_gemm_op.md, "Formats"): bcsr's R x 1 blocks
// holding int8 weights with one float32 scale per output, run with csr_int8_dynamic's arithmetic
// (each row of A' quantized to int8 at Run, int32 sums, dequantized by the row's and the output's
// scales). The block structure is validated by bcsr's own rules (its pack, on the values widened to
// float), the int8 rules here; the packed layout (BlockInt8Arrays) takes each block row's blocks in
// groups of four rows, one int32 word of four weights per output and group, for the quad-product
// kernels of kernels/block_int8_body.h.
#include <algorithm>
#include <cstdlib>
#include <limits>
#include <sstream>

#include "formats/format.h"

namespace onnx_prune {
namespace format_bcsr_int8_dynamic {
namespace {

enum Tensor : size_t { kValues = 0, kScales = 1, kIndices = 2, kOffsets = 3 };

constexpr int kQMax = 127;
// Output n's int32 sum is bounded by 127 · Σ |values|; it must fit int32 (csr_int8_dynamic's bound).
constexpr int64_t kMaxAbsWeightSum = std::numeric_limits<int32_t>::max() / kQMax;
constexpr int64_t kGroupsPerPart = 64;  // thread ranges of about this many groups
constexpr int64_t kMaxParts = 48;

struct PackedBlocks : PackedWeight {
  int64_t K = 0;
  int64_t N = 0;
  int64_t R = 0;
  int64_t n_block_rows = 0;
  std::vector<int32_t> rows;         // [n_groups][4]
  std::vector<int32_t> words;        // [n_groups][R]
  std::vector<int64_t> group_ptr;    // [n_block_rows + 1]
  std::vector<int32_t> weight_sums;  // [n_block_rows * R]
  std::vector<float> scales;         // [N]
  std::vector<int64_t> parts;

  BlockInt8Arrays arrays() const {
    BlockInt8Arrays a;
    a.K = K;
    a.N = N;
    a.R = R;
    a.n_block_rows = n_block_rows;
    a.rows = rows.data();
    a.words = words.data();
    a.group_ptr = group_ptr.data();
    a.weight_sums = weight_sums.data();
    a.scales = scales.data();
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

// bcsr's validity rules (R, shapes, offsets, rows increasing within a block row, zero padding,
// the nnz attribute) on the values widened to float.
std::string check_blocks(const std::vector<TensorView>& t, const WeightShape& shape) {
  const auto* values = static_cast<const int8_t*>(t[kValues].data);
  const int64_t count = t[kValues].dims[0] * t[kValues].dims[1];
  std::vector<float> widened(values, values + count);
  TensorView as_float = t[kValues];
  as_float.type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  as_float.data = widened.data();
  std::unique_ptr<PackedWeight> unused;
  return format_bcsr::kFormat.pack({as_float, t[kIndices], t[kOffsets]}, shape, &unused);
}

// Every value in [-127, 127] and every output's Σ |values| within the int32 bound.
std::string check_int8_range(const TensorView& values_tensor) {
  const int64_t n_blocks = values_tensor.dims[0], R = values_tensor.dims[1];
  const auto* values = static_cast<const int8_t*>(values_tensor.data);
  std::ostringstream err;
  for (int64_t i = 0; i < n_blocks * R; ++i) {
    if (values[i] < -kQMax) {
      err << "values[" << i / R << ", " << i % R << "] = " << int{values[i]} << " is outside [-127, 127]";
      return err.str();
    }
  }
  return {};
}

std::string check_sums(const PackedBlocks& w, const int8_t* values, const TensorView& offsets) {
  for (int64_t b = 0; b < w.n_block_rows; ++b) {
    for (int64_t r = 0; r < w.R && b * w.R + r < w.N; ++r) {
      int64_t abs_sum = 0;
      for (int64_t j = integer_at(offsets, b); j < integer_at(offsets, b + 1); ++j) {
        abs_sum += std::abs(int{values[j * w.R + r]});
      }
      if (abs_sum > kMaxAbsWeightSum) {
        std::ostringstream err;
        err << "output " << b * w.R + r << " has sum |values| = " << abs_sum << ", more than (2^31 - 1) / 127 = "
            << kMaxAbsWeightSum << " (its int32 sums could overflow)";
        return err.str();
      }
    }
  }
  return {};
}

// Each block row's blocks in groups of four (the last one padded with zero weights at its first row).
void group_blocks(const std::vector<TensorView>& t, PackedBlocks* w) {
  const auto* values = static_cast<const int8_t*>(t[kValues].data);
  const int64_t R = w->R;
  w->group_ptr.assign(1, 0);
  w->weight_sums.assign(static_cast<size_t>(w->n_block_rows * R), 0);
  for (int64_t b = 0; b < w->n_block_rows; ++b) {
    const int64_t first = integer_at(t[kOffsets], b), last = integer_at(t[kOffsets], b + 1);
    for (int64_t j0 = first; j0 < last; j0 += 4) {
      const size_t group_words = w->words.size();
      w->words.resize(group_words + static_cast<size_t>(R), 0);
      for (int i = 0; i < 4; ++i) {
        const int64_t j = j0 + i < last ? j0 + i : j0;
        w->rows.push_back(static_cast<int32_t>(integer_at(t[kIndices], j)));
        if (j0 + i >= last) continue;
        for (int64_t r = 0; r < R; ++r) {
          const int8_t v = values[j * R + r];
          w->words[group_words + r] = static_cast<int32_t>(static_cast<uint32_t>(w->words[group_words + r]) |
                                                           (static_cast<uint32_t>(static_cast<uint8_t>(v)) << (8 * i)));
          w->weight_sums[b * R + r] += v;
        }
      }
    }
    w->group_ptr.push_back(static_cast<int64_t>(w->rows.size() / 4));
  }
}

void balance_parts(PackedBlocks* w) {
  const int64_t rows = w->n_block_rows, n_groups = w->group_ptr[rows];
  const int64_t n_parts = std::max<int64_t>(1, std::min({kMaxParts, rows, n_groups / kGroupsPerPart + 1}));
  w->parts.assign(1, 0);
  for (int64_t p = 1; p < n_parts; ++p) {
    const int64_t boundary =
        std::lower_bound(w->group_ptr.begin(), w->group_ptr.end(), n_groups * p / n_parts) - w->group_ptr.begin();
    if (boundary > w->parts.back() && boundary < rows) w->parts.push_back(boundary);
  }
  w->parts.push_back(rows);
}

std::string pack(const std::vector<TensorView>& t, const WeightShape& shape, std::unique_ptr<PackedWeight>* out) {
  std::string problem = check_blocks(t, shape);
  if (!problem.empty()) return problem;  // bcsr's messages carry their own prefix
  problem = format_csr_int8::check_scales(t[kScales], shape.N);
  if (problem.empty()) problem = check_int8_range(t[kValues]);
  auto w = std::make_unique<PackedBlocks>();
  w->K = shape.K;
  w->N = shape.N;
  w->R = t[kValues].dims[1];
  w->n_block_rows = (shape.N + w->R - 1) / w->R;
  if (problem.empty()) problem = check_sums(*w, static_cast<const int8_t*>(t[kValues].data), t[kOffsets]);
  if (!problem.empty()) return "invalid sparse weight: " + problem;
  const auto* scales = static_cast<const float*>(t[kScales].data);
  w->scales.assign(scales, scales + shape.N);
  group_blocks(t, w.get());
  balance_parts(w.get());
  *out = std::move(w);
  return {};
}

// A row of A' holding inf or NaN has a NaN scale, so its outputs are NaN without a fix-up pass.
void run(const PackedWeight& packed, const KernelTable& kernels, const GemmArgs& args, const ParallelRunner& parallel) {
  const auto& w = static_cast<const PackedBlocks&>(packed);
  kernels.block_int8_dynamic_gemm(w.arrays(), args, parallel);
}

}  // namespace

const Format kFormat{
    "bcsr_int8_dynamic",
    {{"values", {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8}, 2},
     {"scales", {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT}, 1},
     {"indices", {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32}, 1},
     {"offsets", {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64}, 1}},
    &pack,
    &run,
};

}  // namespace format_bcsr_int8_dynamic
}  // namespace onnx_prune
