// The `csr_int8_dynamic` storage format (docs/sparse_gemm_op.md, "Formats"): csr_int8's four tensors
// (int8 values, per-output scales, one-byte row indices in 256-row blocks, block offsets) run with
// int8 arithmetic: each row of A' is quantized to int8 at Run (symmetric, per row), the products
// are summed in int32 and dequantized with the row's and the output's scale. The tensors are
// validated by csr_int8's own rules (its pack), then re-laid as quads of rows for the VNNI
// vpdpbusd kernel (Int8QuadArrays) when the CPU's table has it, else as pairs of rows for the
// pmaddwd / vpdpwssd kernels (Int8PairArrays; both in kernels/sparse_gemm_kernels.h).
#include <algorithm>
#include <cstdlib>
#include <cstdint>
#include <limits>
#include <sstream>

#include "formats/csr_layout.h"
#include "formats/format.h"

namespace onnx_prune {
namespace format_csr_int8_dynamic {
namespace {

constexpr int kQMax = 127;  // |values| and |q| are at most 127
// Output n's sum is bounded by 127 · Σ_j |values[j]|; it must fit int32.
constexpr int64_t kMaxAbsWeightSum = std::numeric_limits<int32_t>::max() / kQMax;

struct PackedPairs : PackedWeight {
  int64_t K = 0;
  int64_t N = 0;
  std::vector<int32_t> words;
  std::vector<int32_t> pairs;
  std::vector<int64_t> ptr;
  std::vector<float> scales;
  std::vector<int64_t> parts;
  // The quad layout (Int8QuadArrays), instead of words / pairs, when the CPU's kernel table has
  // the VNNI quad product and every (row, output) weight fits int8.
  bool quads = false;
  std::vector<int32_t> weight_sums;
};

constexpr int64_t kEntriesPerPart = 4096;  // ranges small enough to feed a few threads each
constexpr int64_t kMaxParts = 48;

// Contiguous output ranges with about equal entries (by outputs when there are none).
void balance_parts(PackedPairs* w) {
  const int64_t total = w->ptr[w->N];
  const int64_t n_parts = std::max<int64_t>(1, std::min({kMaxParts, w->N, total / kEntriesPerPart + 1}));
  w->parts.assign(1, 0);
  for (int64_t p = 1; p < n_parts; ++p) {
    const int64_t boundary =
        total > 0 ? std::lower_bound(w->ptr.begin(), w->ptr.end(), total * p / n_parts) - w->ptr.begin()
                  : w->N * p / n_parts;
    if (boundary > w->parts.back() && boundary < w->N) w->parts.push_back(boundary);
  }
  w->parts.push_back(w->N);
}

// The int8 range and the int32 bound, then W's entries of each output merged by pair of rows
// (duplicates summed), pairs in increasing order.
std::string pair_up(const PackedCsrOf<int8_t>& csr, PackedPairs* w) {
  std::vector<int32_t> dense(static_cast<size_t>(csr.K + 1), 0);  // this output's summed weights
  std::vector<int32_t> touched;
  w->ptr.assign(1, 0);
  for (int64_t n = 0; n < csr.N; ++n) {
    int64_t abs_sum = 0;
    touched.clear();
    for (int64_t j = csr.row_ptr[n]; j < csr.row_ptr[n + 1]; ++j) {
      const int v = csr.values[j];
      if (v < -kQMax) {
        std::ostringstream err;
        err << "values[" << j << "] = " << v << " is outside [-127, 127]";
        return err.str();
      }
      abs_sum += v < 0 ? -v : v;
      const int64_t k = csr.row_of(j);
      touched.push_back(static_cast<int32_t>(k / 2));
      dense[k] += v;
    }
    if (abs_sum > kMaxAbsWeightSum) {
      std::ostringstream err;
      err << "output " << n << " has sum |values| = " << abs_sum << ", more than (2^31 - 1) / 127 = "
          << kMaxAbsWeightSum << " (its int32 sums could overflow)";
      return err.str();
    }
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (const int32_t p : touched) {
      const int32_t lo = dense[2 * p], hi = dense[2 * p + 1];
      dense[2 * p] = dense[2 * p + 1] = 0;
      if (lo == 0 && hi == 0) continue;
      if (std::max(std::abs(lo), std::abs(hi)) > std::numeric_limits<int16_t>::max()) {
        std::ostringstream err;
        err << "output " << n << " stores duplicates at rows " << 2 * p << " / " << 2 * p + 1
            << " summing to " << (std::abs(lo) > std::abs(hi) ? lo : hi) << ", outside int16";
        return err.str();
      }
      w->pairs.push_back(p);
      w->words.push_back(static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint16_t>(lo)) |
                                              (static_cast<uint32_t>(static_cast<uint16_t>(hi)) << 16)));
    }
    w->ptr.push_back(static_cast<int64_t>(w->words.size()));
  }
  return {};
}

// W's entries of each output merged by quad of rows into words[e] / pairs[e] (pairs then hold quad
// indices), with each output's weight sum. False (w untouched) when duplicates of one (row,
// output) sum outside int8.
bool quad_up(const PackedCsrOf<int8_t>& csr, PackedPairs* w) {
  std::vector<int32_t> dense(static_cast<size_t>(csr.K + 3), 0);
  std::vector<int32_t> touched, words, quads, sums;
  std::vector<int64_t> ptr(1, 0);
  for (int64_t n = 0; n < csr.N; ++n) {
    touched.clear();
    int32_t sum = 0;
    for (int64_t j = csr.row_ptr[n]; j < csr.row_ptr[n + 1]; ++j) {
      const int64_t k = csr.row_of(j);
      touched.push_back(static_cast<int32_t>(k / 4));
      dense[k] += csr.values[j];
      sum += csr.values[j];  // |sum| <= kMaxAbsWeightSum: pair_up checked
    }
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    bool fits = true;
    for (const int32_t g : touched) {
      uint32_t word = 0;
      for (int i = 0; i < 4; ++i) {
        const int32_t v = dense[4 * g + i];
        dense[4 * g + i] = 0;
        fits = fits && v >= -128 && v <= 127;
        word |= static_cast<uint32_t>(static_cast<uint8_t>(v)) << (8 * i);
      }
      if (word == 0) continue;
      quads.push_back(g);
      words.push_back(static_cast<int32_t>(word));
    }
    if (!fits) return false;
    sums.push_back(sum);
    ptr.push_back(static_cast<int64_t>(words.size()));
  }
  w->words = std::move(words);
  w->pairs = std::move(quads);
  w->ptr = std::move(ptr);
  w->weight_sums = std::move(sums);
  w->quads = true;
  return true;
}

std::string pack(const std::vector<TensorView>& t, const WeightShape& shape, std::unique_ptr<PackedWeight>* out) {
  std::unique_ptr<PackedWeight> csr;
  std::string problem = format_csr_int8::kFormat.pack(t, shape, &csr);
  if (!problem.empty()) return problem;
  auto w = std::make_unique<PackedPairs>();
  const auto& int8 = static_cast<const PackedCsrOf<int8_t>&>(*csr);
  w->K = int8.K;
  w->N = int8.N;
  w->scales = int8.scales;
  problem = pair_up(int8, w.get());
  if (!problem.empty()) return "invalid sparse weight: " + problem;
  if (select_kernel().int8_dynamic_quad_gemm != nullptr) {
    PackedPairs quads;
    if (quad_up(int8, &quads)) {
      w->words = std::move(quads.words);
      w->pairs = std::move(quads.pairs);
      w->ptr = std::move(quads.ptr);
      w->weight_sums = std::move(quads.weight_sums);
      w->quads = true;
    }
  }
  balance_parts(w.get());
  *out = std::move(w);
  return {};
}

void run(const PackedWeight& packed, const KernelTable& kernels, const GemmArgs& args, const ParallelRunner& parallel) {
  const auto& w = static_cast<const PackedPairs&>(packed);
  if (w.quads) {
    Int8QuadArrays a;
    a.K = w.K;
    a.N = w.N;
    a.words = w.words.data();
    a.quads = w.pairs.data();
    a.ptr = w.ptr.data();
    a.weight_sums = w.weight_sums.data();
    a.scales = w.scales.data();
    a.parts = w.parts.data();
    a.n_parts = static_cast<int64_t>(w.parts.size()) - 1;
    // pack chose quads from select_kernel(), which has the entry (kernels is that same table)
    const KernelTable& table = kernels.int8_dynamic_quad_gemm ? kernels : select_kernel();
    table.int8_dynamic_quad_gemm(a, args, parallel);
    return;
  }
  Int8PairArrays a;
  a.K = w.K;
  a.N = w.N;
  a.words = w.words.data();
  a.pairs = w.pairs.data();
  a.ptr = w.ptr.data();
  a.scales = w.scales.data();
  a.parts = w.parts.data();
  a.n_parts = static_cast<int64_t>(w.parts.size()) - 1;
  kernels.int8_dynamic_gemm(a, args, parallel);
}

}  // namespace

const Format kFormat{
    "csr_int8_dynamic",
    // csr_int8's tensors (spelled out: another unit's table is not initialised yet here)
    {{"values", {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8}, 1},
     {"scales", {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT}, 1},
     {"indices", {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8}, 1},
     {"offsets", {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64}, 1}},
    &pack,
    &run,
};

}  // namespace format_csr_int8_dynamic
}  // namespace onnx_prune
