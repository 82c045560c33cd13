// Numeric kernels of SparseGemm: the weight layouts they read, the argument block and the
// ISA-dispatched entry points. Nothing here knows about onnxruntime or about how weights arrive:
// csrc/formats/ packs the weight tensors into these layouts, csrc/op/ is the glue that calls both.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace onnx_prune {

// Rows of W per block of the batched kernel's layout (a tile block of 128 x 32 floats = 16 KiB,
// half of a typical L1; 256 measured no better on the 2-core Zen 3 dev machine).
constexpr int64_t kKBlock = 128;
// In the batched kernel's copy of A, each block of kKBlock rows is followed by one row of zeros;
// padding entries of the pair layout point there (row kKBlock), so they add exactly 0 even when A
// holds inf or NaN.
constexpr int64_t kKBlockRows = kKBlock + 1;
constexpr int64_t kZeroRow = kKBlock;

// Which strategy computes a call. kAuto picks per call from the inputs' zeros (the cost model in
// docs/bench_kernel.md); the others are forced by the ONNX_PRUNE_PATH test hook
// (gemv | input_stationary | tiled | input_stationary_rows) so that tests reach every path at every
// batch size.
enum class KernelPath : int32_t { kAuto = 0, kGemv = 1, kInputStationary = 2, kTiled = 3, kInputStationaryRows = 4 };

// Bias C viewed as a [c_rows, c_cols] matrix broadcast to [M, N]; c_rows in {1, M}, c_cols in {1, N}.
struct BiasView {
  const float* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};

// W (K x N) as CSR of W^T, in plain pointers (formats/csr_layout.h owns the storage, PackedCsrOf,
// and documents the layout). The ISA translation units see only this (no std:: templates there, so
// no inline function compiled with AVX-512 flags can be merged into code run on older CPUs). `Val`
// is the type the weights are held in; with `scales`, output n's sums are multiplied by scales[n]
// (weights stored as integers times a per-output scale).
template <typename Val>
struct CsrArraysOf {
  int64_t K = 0;
  int64_t N = 0;
  const Val* values = nullptr;
  const float* scales = nullptr;    // [N], or nullptr: none
  const uint16_t* idx16 = nullptr;  // exactly one of idx16 / idx32 is set
  const int32_t* idx32 = nullptr;
  const int64_t* row_ptr = nullptr;
  const int64_t* parts = nullptr;
  int64_t n_parts = 0;
  const float* block_values = nullptr;  // fp32 whatever Val is (csr_layout.h)
  const uint8_t* block_rows = nullptr;
  const int64_t* block_ptr = nullptr;
  int64_t n_kblocks = 0;
  int64_t n_pairs = 0;
  bool blocked = false;
  // Input-stationary layout (PackedCsrOf::col_*): CSC of W cut into output ranges.
  const Val* col_values = nullptr;
  const uint16_t* col_out16 = nullptr;  // exactly one of col_out16 / col_out32 is set
  const int32_t* col_out32 = nullptr;
  const int64_t* col_ptr = nullptr;
  const int64_t* col_parts = nullptr;
  int64_t n_col_parts = 0;  // 0: no such layout (a huge K with few weights), no input-stationary path
  bool skip_zeros = true;  // false: a stored weight is non-finite, so every row must be visited
  KernelPath forced_path = KernelPath::kAuto;
};

using CsrArrays = CsrArraysOf<float>;
using CsrInt8Arrays = CsrArraysOf<int8_t>;  // int8 weights, scales set (format csr_int8)
// W (K x N) as block CSR of W^T with R x 1 blocks (formats/bcsr.h owns the storage, PackedBcsr):
// block row b holds outputs [b * R, b * R + R); its blocks are values[j * R .. j * R + R) at row
// idx[j] of W, for j in [block_ptr[b], block_ptr[b + 1]), rows increasing. Outputs >= N of a
// partial last block row are stored zeros that are never written out.
struct BcsrArrays {
  int64_t K = 0;
  int64_t N = 0;
  int64_t R = 0;                     // 4 or 8
  int64_t n_block_rows = 0;          // ceil(N / R)
  const float* values = nullptr;     // [n_blocks][R]
  const int32_t* idx = nullptr;      // [n_blocks]
  const int64_t* block_ptr = nullptr;  // [n_block_rows + 1]
  const int64_t* parts = nullptr;    // block-row boundaries of ranges with about equal blocks
  int64_t n_parts = 0;
};

// W (K x N) for the integer product of format csr_int8_dynamic: W's rows taken in pairs
// (2p, 2p + 1). Output n owns entries [ptr[n], ptr[n + 1]); entry e holds the int8 weights of rows
// 2 pairs[e] (low 16 bits of words[e]) and 2 pairs[e] + 1 (high 16 bits), each as int16 (zero when
// not stored), so one pmaddwd / vpdpwssd lane multiplies a pair of weights by a pair of int16
// activations into int32 with no saturation possible (|w|, |q| <= 127). scales[n] dequantizes
// output n; parts are nnz-balanced output ranges for threading.
struct Int8PairArrays {
  int64_t K = 0;
  int64_t N = 0;
  const int32_t* words = nullptr;
  const int32_t* pairs = nullptr;
  const int64_t* ptr = nullptr;   // [N + 1]
  const float* scales = nullptr;  // [N]
  const int64_t* parts = nullptr;
  int64_t n_parts = 0;
};

// The same W for the VNNI kernels (vpdpbusd: four u8 x s8 products summed into an int32 lane): W's
// rows taken in quads (4g .. 4g + 3). Output n owns entries [ptr[n], ptr[n + 1]); entry e holds
// the int8 weights of rows 4 quads[e] + i in byte i of words[e] (zero when not stored). The
// activations enter as u8 = q + 128, so the kernel subtracts 128 · weight_sums[n] (Σ of output n's
// weights) from each sum, in wrapping int32 arithmetic: exact, since the true sum fits int32.
struct Int8QuadArrays {
  int64_t K = 0;
  int64_t N = 0;
  const int32_t* words = nullptr;
  const int32_t* quads = nullptr;
  const int64_t* ptr = nullptr;          // [N + 1]
  const int32_t* weight_sums = nullptr;  // [N]
  const float* scales = nullptr;         // [N]
  const int64_t* parts = nullptr;
  int64_t n_parts = 0;
};

// W (K x N) for the integer product of format bcsr_int8_dynamic: R x 1 blocks of int8 weights
// (block row b holds outputs [b * R, b * R + R)), each block row's blocks taken in groups of four
// (any four rows of W, in increasing order). Group g of block row b (group_ptr[b] <= g <
// group_ptr[b + 1]) has the rows rows[4 g + i] and, per output r, the int32 word words[g * R + r]
// whose byte i is the weight W[rows[4 g + i], b * R + r] (a group of fewer than four blocks is
// padded with zero bytes at a repeated row). weight_sums[b * R + r] is the sum of output b * R + r's
// weights (for the u8 shift of vpdpbusd); scales[n] dequantizes output n < N.
struct BlockInt8Arrays {
  int64_t K = 0;
  int64_t N = 0;
  int64_t R = 0;                         // 4 or 8
  int64_t n_block_rows = 0;              // ceil(N / R)
  const int32_t* rows = nullptr;         // [n_groups][4]
  const int32_t* words = nullptr;        // [n_groups][R]
  const int64_t* group_ptr = nullptr;    // [n_block_rows + 1]
  const int32_t* weight_sums = nullptr;  // [n_block_rows * R]
  const float* scales = nullptr;         // [N]
  const int64_t* parts = nullptr;        // block-row ranges with about equal groups
  int64_t n_parts = 0;
};

// Per-Run scratch memory. The op glue backs it with onnxruntime's allocator (an arena that reuses
// memory, where fresh pages would cost a page fault each call); without one, aligned_alloc.
struct ScratchAllocator {
  void* (*alloc)(void* ctx, size_t bytes) = nullptr;
  void (*free)(void* ctx, void* p) = nullptr;
  void* ctx = nullptr;
};

// Compiled without ISA flags; used by the ISA units. scratch_alloc throws std::bad_alloc on failure.
float* scratch_alloc(const ScratchAllocator& allocator, size_t n_floats);
void scratch_free(const ScratchAllocator& allocator, float* p);

// Everything but the weight: Y = act(alpha * A' W + beta * C) for some W of shape [K, N].
struct GemmArgs {
  const float* a = nullptr;  // [M, K] row-major, or [K, M] when trans_a
  bool trans_a = false;
  int64_t M = 0;
  float alpha = 1.f;
  float beta = 1.f;
  bool relu = false;      // activation "relu": max(0, .) after the bias
  BiasView bias;          // data == nullptr: no bias
  float* y = nullptr;     // [M, N] row-major
  ScratchAllocator scratch;
};

// Runs `fn(i)` for i in [0, total); the op glue implements it with onnxruntime's intra-op pool.
struct ParallelRunner {
  void (*run)(void* ctx, void (*fn)(void*, size_t), size_t total, void* fn_data) = nullptr;
  void* ctx = nullptr;
  void operator()(void (*fn)(void*, size_t), size_t total, void* fn_data) const {
    run(ctx, fn, total, fn_data);
  }
};

// One instruction-set variant of the kernels (each compiled in its own translation unit).
struct KernelTable {
  const char* isa;
  // Y = act(alpha * A' W + beta * C) over the stored entries of W only (see formats/non_finite.h
  // for the rows where that differs from the dense product).
  void (*csr_gemm)(const CsrArrays& w, const GemmArgs& args, const ParallelRunner& parallel);
  // The same for int8 weights: each product widens the weight to fp32 in registers, and output n's
  // sum is multiplied by scales[n] before alpha.
  void (*csr_int8_gemm)(const CsrInt8Arrays& w, const GemmArgs& args, const ParallelRunner& parallel);
  // True when x[0..count) holds an inf or a NaN (a vectorised scan, cheap next to any product).
  bool (*has_non_finite)(const float* x, int64_t count);
  // The same over the stored R x 1 blocks of the bcsr format (block_kernel_body.h).
  void (*bcsr_gemm)(const BcsrArrays& w, const GemmArgs& args, const ParallelRunner& parallel);
  // Format csr_int8_dynamic (docs/sparse_gemm_op.md): each row of A' quantized to int8 at Run,
  // the integer product in int32, then dequantized with the row's and the output's scales.
  void (*int8_dynamic_gemm)(const Int8PairArrays& w, const GemmArgs& args, const ParallelRunner& parallel);
  // The same product on the quad layout, for CPUs with VNNI (nullptr in tables without it; format
  // csr_int8_dynamic packs quads only for a table that has this entry).
  void (*int8_dynamic_quad_gemm)(const Int8QuadArrays& w, const GemmArgs& args,
                                 const ParallelRunner& parallel) = nullptr;
  // Format bcsr_int8_dynamic: csr_int8_dynamic's arithmetic on R x 1 blocks (block_int8_body.h).
  void (*block_int8_dynamic_gemm)(const BlockInt8Arrays& w, const GemmArgs& args,
                                  const ParallelRunner& parallel) = nullptr;
};

// The best variant this CPU supports (called once per kernel creation). ONNX_PRUNE_ISA=portable|avx2|avx512|avx512vnni
// in the environment forces a (supported) lower variant, for testing every path on one machine.
const KernelTable& select_kernel();

// All variants the running CPU can execute, best last.
std::vector<const KernelTable*> supported_kernels();

namespace isa_portable { extern const KernelTable kTable; }
#if defined(__x86_64__) || defined(_M_X64)
namespace isa_avx2 { extern const KernelTable kTable; }
namespace isa_avx512 { extern const KernelTable kTable; }
// AVX-512 VNNI: the AVX-512 table with the integer product on vpdpwssd (dispatch.cc builds it).
namespace isa_avx512vnni {
void int8_dynamic_gemm(const Int8PairArrays& w, const GemmArgs& args, const ParallelRunner& parallel);
void int8_dynamic_quad_gemm(const Int8QuadArrays& w, const GemmArgs& args, const ParallelRunner& parallel);
void block_int8_dynamic_gemm(const BlockInt8Arrays& w, const GemmArgs& args, const ParallelRunner& parallel);
}
#endif

}  // namespace onnx_prune
