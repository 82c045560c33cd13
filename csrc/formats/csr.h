// The `csr` storage format (docs/sparse_gemm_op.md, "Formats"): its packed weight and packer.
// The Format entry itself (tensor declarations, kernels) is csr.cc's kFormat.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/format.h"

namespace onnx_prune {

// W (K x N) stored as CSR of W^T: output feature n owns entries [row_ptr[n], row_ptr[n+1]).
// Indices are 16-bit whenever K <= 65536 (half the index traffic), 32-bit otherwise.
struct PackedCsr : PackedWeight {
  int64_t K = 0;
  int64_t N = 0;
  int64_t nnz = 0;
  std::vector<float> values;
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
  // padding entries read the zero row kZeroRow.
  std::vector<float> block_values;      // [step][2]
  std::vector<uint8_t> block_rows;      // [step][2] row of W within its block
  std::vector<int64_t> block_ptr;       // [n_kblocks][n_pairs + 1], in steps
  int64_t n_kblocks = 0;
  int64_t n_pairs = 0;                  // ceil(N / 2); an odd N gets a phantom all-zero output
  // False when the block tables, sized by K and N, would outgrow the stored weights (a huge K or N
  // with few entries; csr.cc's blocked_layout_fits): the batched path then runs the few-rows
  // strategy on groups of 8 rows instead.
  bool blocked = false;
  // The same weights once more, input-stationary (CSC of W, cut into output ranges), for the paths
  // that visit only the rows of W whose input is nonzero (docs/bench_kernel.md, "Kernel paths").
  // Range r holds outputs [col_parts[r], col_parts[r + 1]); its entries for W's row k are
  // [col_ptr[r * (K + 1) + k], col_ptr[r * (K + 1) + k + 1]), by increasing output. Left empty
  // (col_parts too) when K + 1 row pointers would outgrow the stored weights, as for `blocked`.
  std::vector<float> col_values;
  std::vector<uint16_t> col_out16;  // output of each entry, when N <= 65536
  std::vector<int32_t> col_out32;   // otherwise
  std::vector<int64_t> col_ptr;     // [n_col_parts][K + 1]
  std::vector<int64_t> col_parts;   // n_col_parts + 1 boundaries
  // False when a stored weight is inf or NaN: 0 * inf is NaN, so no zero input may be skipped.
  bool skip_zeros = true;
  KernelPath forced_path = KernelPath::kAuto;  // the ONNX_PRUNE_PATH test hook
};

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

// The kernels' plain-pointer view of `w`.
CsrArrays arrays_of(const PackedCsr& w);

}  // namespace onnx_prune
