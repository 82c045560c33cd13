// The in-memory layout the CSR kernels read (csrc/kernels), shared by every format that stores W
// as rows of Wᵀ (csr, and formats that differ from it only in how values or indices are stored):
// a format validates its own tensors, fills `values`, the row indices and `row_ptr`, then calls
// build_kernel_layout; its run calls the kernel and mark_unstored_non_finite.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "formats/format.h"
#include "formats/non_finite.h"
#include "kernels/sparse_gemm_kernels.h"

namespace onnx_prune {

// W (K x N) stored as CSR of W^T: output feature n owns entries [row_ptr[n], row_ptr[n+1]).
// Indices are 16-bit whenever K <= 65536 (half the index traffic), 32-bit otherwise. `Val` is the
// type the weights are held in (float; int8_t with per-output `scales`).
template <typename Val>
struct PackedCsrOf : PackedWeight {
  int64_t K = 0;
  int64_t N = 0;
  int64_t nnz = 0;
  std::vector<Val> values;
  std::vector<float> scales;    // [N] multiplier of output n's sums; empty: none (float values)
  std::vector<uint16_t> idx16;  // used when use16
  std::vector<int32_t> idx32;   // used otherwise
  std::vector<int64_t> row_ptr; // N + 1
  // Boundaries of contiguous output ranges with about equal nnz, for balanced threading; every
  // boundary but the last (N) is even, so ranges hold whole output pairs.
  std::vector<int64_t> parts;   // parts.size() - 1 ranges
  bool use16 = true;
  // The same weights re-laid for the batched kernel. W's rows are cut into blocks of kKBlock rows
  // (a block of the batch-contiguous copy of A then stays in L1 while every output consumes it;
  // the row index within a block fits one byte). Outputs go in pairs (2p, 2p + 1): per block, a
  // pair's entries are interleaved step by step, the shorter side padded with zero weights, so
  // one loop with two independent accumulator sets serves both (half the loop exits, no tails);
  // padding entries read the zero row kZeroRow. The weights are held as fp32 here whatever Val is:
  // the batched loop is bound by arithmetic, not memory, and widening int8 in that loop measured
  // 8% slower at batch 64 (csr_int8 on the bundled model, 1 thread).
  std::vector<float> block_values;      // [step][2]
  std::vector<uint8_t> block_rows;      // [step][2] row of W within its block
  std::vector<int64_t> block_ptr;       // [n_kblocks][n_pairs + 1], in steps
  int64_t n_kblocks = 0;
  int64_t n_pairs = 0;                  // ceil(N / 2); an odd N gets a phantom all-zero output
  // False when the block tables, sized by K and N, would outgrow the stored weights (a huge K or N
  // with few entries; blocked_layout_fits): the batched path then runs the few-rows strategy on
  // groups of 8 rows instead.
  bool blocked = false;
  // The same weights once more, input-stationary (CSC of W, cut into output ranges), for the paths
  // that visit only the rows of W whose input is nonzero (docs/bench_kernel.md, "Kernel paths").
  // Range r holds outputs [col_parts[r], col_parts[r + 1]); its entries for W's row k are
  // [col_ptr[r * (K + 1) + k], col_ptr[r * (K + 1) + k + 1]), by increasing output. Left empty
  // (col_parts too) when K + 1 row pointers would outgrow the stored weights, as for `blocked`.
  std::vector<Val> col_values;
  std::vector<uint16_t> col_out16;  // output of each entry, when N <= 65536
  std::vector<int32_t> col_out32;   // otherwise
  std::vector<int64_t> col_ptr;     // [n_col_parts][K + 1]
  std::vector<int64_t> col_parts;   // n_col_parts + 1 boundaries
  // False when a stored weight is inf or NaN: 0 * inf is NaN, so no zero input may be skipped.
  bool skip_zeros = true;
  KernelPath forced_path = KernelPath::kAuto;  // the ONNX_PRUNE_PATH test hook (read_forced_path)

  int64_t row_of(int64_t j) const { return use16 ? idx16[j] : idx32[j]; }
};

namespace csr_layout {

// Rows per partition aimed for; partitions are then balanced by nnz.
// Enough ranges to feed 16 threads a few each; each range is large enough that a block of A
// loaded into L1 serves many outputs.
constexpr int64_t kRowsPerPart = 32;
constexpr int64_t kMaxParts = 48;

// The blocked layout's per-(block, pair) tables -- block_ptr and the counts built with it, about
// 3 * nkb * (n_pairs + 1) int64 -- are sized by K and N, not by the stored weights. They are built
// only while nkb * (n_pairs + 1) stays within half the number of stored weights (plus a fixed
// allowance that keeps every small layer blocked), so kernel creation takes a small multiple of
// the weights' own memory for any K and N (a huge K with few entries once took ~25x).
constexpr int64_t kBlockTableAllowance = int64_t{1} << 16;

inline bool blocked_layout_fits(int64_t nkb, int64_t n_pairs, int64_t nnz) {
  return nkb * (n_pairs + 1) <= nnz / 2 + kBlockTableAllowance;
}

// Contiguous ranges of outputs with about equal nnz (by rows when the layer is empty).
template <typename Val>
void balance_parts(PackedCsrOf<Val>* out) {
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

// Fills the blocked, pair-interleaved layout (see PackedCsrOf). Entries may come in any order
// within an output (the contract allows it); duplicates stay separate entries.
template <typename Val>
void build_blocked_layout(PackedCsrOf<Val>* out) {
  const int64_t N = out->N, K = out->K;
  const int64_t nkb = (K + kKBlock - 1) / kKBlock;
  const int64_t n_pairs = (N + 1) / 2;
  if (!blocked_layout_fits(nkb, n_pairs, out->nnz)) return;  // see PackedCsrOf::blocked
  out->blocked = true;
  out->n_kblocks = nkb;
  out->n_pairs = n_pairs;
  auto count_of = [&](const std::vector<int64_t>& counts, int64_t b, int64_t n) -> int64_t {
    return n < N ? counts[b * N + n] : 0;
  };
  std::vector<int64_t> counts(static_cast<size_t>(nkb * N), 0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = out->row_ptr[n]; j < out->row_ptr[n + 1]; ++j) ++counts[(out->row_of(j) / kKBlock) * N + n];

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
      const int64_t k = out->row_of(j), b = k / kKBlock;
      const int64_t step = out->block_ptr[b * (n_pairs + 1) + pair] + fill[b * N + n]++;
      out->block_values[2 * step + side] = static_cast<float>(out->values[j]);
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
// blocked layout), none when even one range's would, so kernel creation stays a small multiple of
// the weights.
template <typename Val>
void balance_col_parts(PackedCsrOf<Val>* out) {
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

// Fills the input-stationary layout (PackedCsrOf::col_*): per output range, W's entries by row k,
// within a row by increasing output (duplicates stay separate entries).
template <typename Val>
void build_column_layout(PackedCsrOf<Val>* out) {
  const int64_t K = out->K;
  auto finite = [](auto v) { return std::isfinite(static_cast<float>(v)); };
  out->skip_zeros = std::all_of(out->values.begin(), out->values.end(), finite) &&
                    std::all_of(out->scales.begin(), out->scales.end(), finite);
  balance_col_parts(out);
  if (out->col_parts.empty()) return;  // the input-stationary paths are then never taken
  const int64_t n_parts = static_cast<int64_t>(out->col_parts.size()) - 1;
  std::vector<int64_t>& ptr = out->col_ptr;
  ptr.assign(static_cast<size_t>(n_parts * (K + 1)), 0);
  for (int64_t p = 0; p < n_parts; ++p)  // counts, shifted by one row
    for (int64_t j = out->row_ptr[out->col_parts[p]]; j < out->row_ptr[out->col_parts[p + 1]]; ++j)
      ++ptr[p * (K + 1) + out->row_of(j) + 1];
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
        const int64_t at = fill[static_cast<size_t>(out->row_of(j))]++;
        out->col_values[at] = out->values[j];
        if (out16) {
          out->col_out16[at] = static_cast<uint16_t>(n);
        } else {
          out->col_out32[at] = static_cast<int32_t>(n);
        }
      }
    }
  }
}

// True when output n's column stores every position in `ks` (sorted). `seen` has ks.size() slots.
template <typename Val, typename Idx>
bool stores_all(const PackedCsrOf<Val>& w, const Idx* idx, int64_t n, const std::vector<int64_t>& ks,
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

}  // namespace csr_layout

// Builds the kernels' layout (threading ranges, blocked tables) of a weight whose K, N, nnz,
// values, scales, indices (use16 with idx16, else idx32) and row_ptr are set and valid.
template <typename Val>
void build_kernel_layout(PackedCsrOf<Val>* w) {
  csr_layout::balance_parts(w);
  csr_layout::build_blocked_layout(w);
  csr_layout::build_column_layout(w);
}

// The ONNX_PRUNE_PATH test hook (docs/bench_kernel.md, "Kernel paths"): which kernel path every
// call of this weight takes; empty or unset means the cost model. Returns an error for other values.
inline std::string read_forced_path(KernelPath* path) {
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

// The kernels' plain-pointer view of `w`.
template <typename Val>
CsrArraysOf<Val> arrays_of(const PackedCsrOf<Val>& w) {
  CsrArraysOf<Val> a;
  a.K = w.K;
  a.N = w.N;
  a.values = w.values.data();
  a.scales = w.scales.empty() ? nullptr : w.scales.data();
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

// The masked dense semantic after the kernel (formats/non_finite.h): every output of a row of A'
// holding non-finite entries whose column misses one of their positions becomes NaN.
template <typename Val>
void mark_unstored_non_finite(const PackedCsrOf<Val>& w, const KernelTable& kernels, const GemmArgs& args) {
  std::vector<int64_t> seen;
  for_each_non_finite_row(kernels, args, w.K, [&](int64_t m, const std::vector<int64_t>& ks) {
    seen.assign(ks.size(), -1);
    float* y = args.y + m * w.N;
    for (int64_t n = 0; n < w.N; ++n) {
      const bool all = w.use16 ? csr_layout::stores_all(w, w.idx16.data(), n, ks, seen)
                               : csr_layout::stores_all(w, w.idx32.data(), n, ks, seen);
      if (!all) y[n] = std::numeric_limits<float>::quiet_NaN();
    }
  });
}

}  // namespace onnx_prune
