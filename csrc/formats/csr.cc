// The `csr` storage format: its weight tensors (values, indices, offsets), their validation and
// packing, done once per kernel (or per Run when the weights are not constant), and the kernels
// that run it. Every index and offset is checked here so the hot loops never need to.
#include "formats/csr.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>

#include "formats/non_finite.h"

namespace onnx_prune {
namespace {

// Rows per partition aimed for; partitions are then balanced by nnz.
// Enough ranges to feed 16 threads a few each; each range is large enough that a block of A
// loaded into L1 serves many outputs.
constexpr int64_t kRowsPerPart = 32;
constexpr int64_t kMaxParts = 48;

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
    boundary = std::min(boundary + boundary % 2, N);  // whole output pairs per range
    if (boundary > out->parts.back() && boundary < N) out->parts.push_back(boundary);
  }
  if (out->parts.back() < N || N == 0) out->parts.push_back(N);
}

// The blocked layout's per-(block, pair) tables -- block_ptr and the counts built with it, about
// 3 * nkb * (n_pairs + 1) int64 -- are sized by K and N, not by the stored weights. They are built
// only while nkb * (n_pairs + 1) stays within half the number of stored weights (plus a fixed
// allowance that keeps every small layer blocked), so kernel creation takes a small multiple of
// the weights' own memory for any K and N (a huge K with few entries once took ~25x).
constexpr int64_t kBlockTableAllowance = int64_t{1} << 16;

bool blocked_layout_fits(int64_t nkb, int64_t n_pairs, int64_t nnz) {
  return nkb * (n_pairs + 1) <= nnz / 2 + kBlockTableAllowance;
}

// Fills PackedCsr's blocked, pair-interleaved layout (see sparse_gemm_kernels.h). Entries may
// come in any order within an output (the contract allows it); duplicates stay separate entries.
void build_blocked_layout(PackedCsr* out) {
  const int64_t N = out->N, K = out->K;
  const int64_t nkb = (K + kKBlock - 1) / kKBlock;
  const int64_t n_pairs = (N + 1) / 2;
  if (!blocked_layout_fits(nkb, n_pairs, out->nnz)) return;  // see PackedCsr::blocked
  out->blocked = true;
  out->n_kblocks = nkb;
  out->n_pairs = n_pairs;
  auto row_of = [&](int64_t j) -> int64_t { return out->use16 ? out->idx16[j] : out->idx32[j]; };
  auto count_of = [&](const std::vector<int64_t>& counts, int64_t b, int64_t n) -> int64_t {
    return n < N ? counts[b * N + n] : 0;
  };
  std::vector<int64_t> counts(static_cast<size_t>(nkb * N), 0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = out->row_ptr[n]; j < out->row_ptr[n + 1]; ++j) ++counts[(row_of(j) / kKBlock) * N + n];

  out->block_ptr.assign(static_cast<size_t>(nkb * (n_pairs + 1)), 0);
  int64_t steps = 0;
  for (int64_t b = 0; b < nkb; ++b) {
    int64_t* ptr = &out->block_ptr[b * (n_pairs + 1)];
    for (int64_t p = 0; p < n_pairs; ++p) {
      ptr[p] = steps;
      steps += std::max(count_of(counts, b, 2 * p), count_of(counts, b, 2 * p + 1));
    }
    ptr[n_pairs] = steps;
  }
  out->block_values.assign(static_cast<size_t>(2 * steps), 0.f);
  out->block_rows.assign(static_cast<size_t>(2 * steps), static_cast<uint8_t>(kZeroRow));
  std::vector<int64_t>& fill = counts;  // the counts are spent: reuse them as fill positions
  std::fill(fill.begin(), fill.end(), 0);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t pair = n / 2, side = n % 2;
    for (int64_t j = out->row_ptr[n]; j < out->row_ptr[n + 1]; ++j) {
      const int64_t k = row_of(j), b = k / kKBlock;
      const int64_t step = out->block_ptr[b * (n_pairs + 1) + pair] + fill[b * N + n]++;
      out->block_values[2 * step + side] = out->values[j];
      out->block_rows[2 * step + side] = static_cast<uint8_t>(k - b * kKBlock);
    }
  }
}

// Ranges of the input-stationary layout: at least kColPartOutputs outputs each (a range's sums for
// a 32-column tile, 128 x 32 floats = 16 KiB, then stay in L1), and few enough that a row's run of
// entries within a range averages kMinColRun or more (each run ends in a mispredicted branch: with
// 128-output ranges, 12 entries a run at 90% sparsity, the batch-1 path measured twice as slow).
constexpr int64_t kColPartOutputs = 128;
constexpr int64_t kMinColRun = 32;
constexpr int64_t kMaxColParts = 64;

// Output ranges of about equal nnz (see kColPartOutputs); fewer while the per-range row pointers,
// (K + 1) int64 per range, would outgrow half the stored weights (plus the same allowance as the
// blocked layout), so kernel creation stays a small multiple of the weights.
void balance_col_parts(PackedCsr* out) {
  const int64_t N = out->N, K = out->K;
  int64_t n_parts = std::min({kMaxColParts, (N + kColPartOutputs - 1) / kColPartOutputs,
                              out->nnz / std::max<int64_t>(1, K * kMinColRun)});
  n_parts = std::max<int64_t>(1, n_parts);
  while (n_parts > 1 && n_parts * (K + 1) > out->nnz / 2 + kBlockTableAllowance) n_parts /= 2;
  out->col_parts.clear();
  if (K + 1 > out->nnz / 2 + kBlockTableAllowance) return;  // a huge K with few entries: no layout
  const auto& rp = out->row_ptr;
  out->col_parts.assign(1, 0);
  for (int64_t p = 1; p < n_parts; ++p) {
    const int64_t boundary = out->nnz > 0
        ? std::lower_bound(rp.begin(), rp.end(), out->nnz * p / n_parts) - rp.begin()
        : N * p / n_parts;
    if (boundary > out->col_parts.back() && boundary < N) out->col_parts.push_back(boundary);
  }
  out->col_parts.push_back(N);
}

// Fills the input-stationary layout (PackedCsr::col_*): per output range, W's entries by row k,
// within a row by increasing output (duplicates stay separate entries).
void build_column_layout(PackedCsr* out) {
  const int64_t K = out->K;
  out->skip_zeros = std::all_of(out->values.begin(), out->values.end(), [](float v) { return std::isfinite(v); });
  balance_col_parts(out);
  if (out->col_parts.empty()) return;  // the input-stationary paths are then never taken
  const int64_t n_parts = static_cast<int64_t>(out->col_parts.size()) - 1;
  auto row_of = [&](int64_t j) -> int64_t { return out->use16 ? out->idx16[j] : out->idx32[j]; };
  std::vector<int64_t>& ptr = out->col_ptr;
  ptr.assign(static_cast<size_t>(n_parts * (K + 1)), 0);
  for (int64_t p = 0; p < n_parts; ++p)  // counts, shifted by one row
    for (int64_t j = out->row_ptr[out->col_parts[p]]; j < out->row_ptr[out->col_parts[p + 1]]; ++j)
      ++ptr[p * (K + 1) + row_of(j) + 1];
  int64_t total = 0;
  for (int64_t p = 0; p < n_parts; ++p) {
    int64_t* row = &ptr[p * (K + 1)];
    row[0] = total;
    for (int64_t k = 1; k <= K; ++k) row[k] = (total += row[k]);
  }
  const bool out16 = out->N <= 65536;
  out->col_values.resize(static_cast<size_t>(out->nnz));
  if (out16) {
    out->col_out16.resize(static_cast<size_t>(out->nnz));
  } else {
    out->col_out32.resize(static_cast<size_t>(out->nnz));
  }
  std::vector<int64_t> fill(static_cast<size_t>(K));
  for (int64_t p = 0; p < n_parts; ++p) {
    std::copy(&ptr[p * (K + 1)], &ptr[p * (K + 1)] + K, fill.begin());
    for (int64_t n = out->col_parts[p]; n < out->col_parts[p + 1]; ++n) {
      for (int64_t j = out->row_ptr[n]; j < out->row_ptr[n + 1]; ++j) {
        const int64_t at = fill[static_cast<size_t>(row_of(j))]++;
        out->col_values[at] = out->values[j];
        if (out16) out->col_out16[at] = static_cast<uint16_t>(n);
        else out->col_out32[at] = static_cast<int32_t>(n);
      }
    }
  }
}

// The ONNX_PRUNE_PATH test hook (docs/bench_kernel.md): empty or unset means the cost model.
std::string read_forced_path(KernelPath* path) {
  const char* env = std::getenv("ONNX_PRUNE_PATH");
  const std::string name = env ? env : "";
  if (name.empty() || name == "auto") *path = KernelPath::kAuto;
  else if (name == "gemv") *path = KernelPath::kGemv;
  else if (name == "input_stationary") *path = KernelPath::kInputStationary;
  else if (name == "tiled") *path = KernelPath::kTiled;
  else if (name == "input_stationary_rows") *path = KernelPath::kInputStationaryRows;
  else return "ONNX_PRUNE_PATH=" + name + " is not one of auto, gemv, input_stationary, tiled, input_stationary_rows";
  return {};
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
  build_blocked_layout(out);
  build_column_layout(out);
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
  a.block_values = w.block_values.data();
  a.block_rows = w.block_rows.data();
  a.block_ptr = w.block_ptr.data();
  a.n_kblocks = w.n_kblocks;
  a.n_pairs = w.n_pairs;
  a.blocked = w.blocked;
  a.col_values = w.col_values.data();
  if (w.N <= 65536) {
    a.col_out16 = w.col_out16.data();
  } else {
    a.col_out32 = w.col_out32.data();
  }
  a.col_ptr = w.col_ptr.data();
  a.col_parts = w.col_parts.data();
  a.n_col_parts = w.col_parts.empty() ? 0 : static_cast<int64_t>(w.col_parts.size()) - 1;
  a.skip_zeros = w.skip_zeros;
  a.forced_path = w.forced_path;
  return a;
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

// True when output n's column stores every position in `ks` (sorted). `seen` has ks.size() slots.
template <typename Idx>
bool stores_all(const PackedCsr& w, const Idx* idx, int64_t n, const std::vector<int64_t>& ks,
                std::vector<int64_t>& seen) {
  const int64_t b = w.row_ptr[n], e = w.row_ptr[n + 1];
  if (e - b < static_cast<int64_t>(ks.size())) return false;
  size_t hits = 0;
  for (int64_t j = b; j < e; ++j) {
    const auto it = std::lower_bound(ks.begin(), ks.end(), static_cast<int64_t>(idx[j]));
    if (it == ks.end() || *it != idx[j]) continue;
    int64_t& last = seen[static_cast<size_t>(it - ks.begin())];
    if (last != n) {  // duplicates of one position count once
      last = n;
      ++hits;
    }
  }
  return hits == ks.size();
}

void run(const PackedWeight& packed, const KernelTable& kernels, const GemmArgs& args, const ParallelRunner& parallel) {
  const auto& w = static_cast<const PackedCsr&>(packed);
  kernels.csr_gemm(arrays_of(w), args, parallel);
  std::vector<int64_t> seen;
  for_each_non_finite_row(kernels, args, w.K, [&](int64_t m, const std::vector<int64_t>& ks) {
    seen.assign(ks.size(), -1);
    float* y = args.y + m * w.N;
    for (int64_t n = 0; n < w.N; ++n) {
      const bool all = w.use16 ? stores_all(w, w.idx16.data(), n, ks, seen) : stores_all(w, w.idx32.data(), n, ks, seen);
      if (!all) y[n] = std::numeric_limits<float>::quiet_NaN();
    }
  });
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
