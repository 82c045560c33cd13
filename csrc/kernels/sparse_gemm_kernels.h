// Numeric kernels of SparseGemm: packed-weight layout, argument block and the ISA-dispatched entry
// points. Nothing here knows about onnxruntime; csrc/op/ is the glue that calls into it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace onnx_prune {

// W (K x N) stored as CSR of W^T: output feature n owns entries [row_ptr[n], row_ptr[n+1]).
// Indices are 16-bit whenever K <= 65536 (half the index traffic), 32-bit otherwise.
struct PackedCsr {
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
  // False when the block pointers would dwarf the weights (a huge K with few entries): the
  // batched path then runs the few-rows strategy on groups of 8 rows instead.
  bool blocked = false;
};

// Rows of W per block of the batched kernel's layout (a tile block of 128 x 32 floats = 16 KiB,
// half of a typical L1; 256 measured no better on the 2-core Zen 3 dev machine).
constexpr int64_t kKBlock = 128;
// In the batched kernel's copy of A, each block of kKBlock rows is followed by one row of zeros;
// padding entries of the pair layout point there (row kKBlock), so they add exactly 0 even when A
// holds inf or NaN.
constexpr int64_t kKBlockRows = kKBlock + 1;
constexpr int64_t kZeroRow = kKBlock;

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

// Bias C viewed as a [c_rows, c_cols] matrix broadcast to [M, N]; c_rows in {1, M}, c_cols in {1, N}.
struct BiasView {
  const float* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};

// Plain-pointer view of a PackedCsr. The ISA translation units see only this (no std:: templates
// there, so no inline function compiled with AVX-512 flags can be merged into code run on older CPUs).
struct CsrArrays {
  int64_t K = 0;
  int64_t N = 0;
  const float* values = nullptr;
  const uint16_t* idx16 = nullptr;  // exactly one of idx16 / idx32 is set
  const int32_t* idx32 = nullptr;
  const int64_t* row_ptr = nullptr;
  const int64_t* parts = nullptr;
  int64_t n_parts = 0;
  const float* block_values = nullptr;
  const uint8_t* block_rows = nullptr;
  const int64_t* block_ptr = nullptr;
  int64_t n_kblocks = 0;
  int64_t n_pairs = 0;
  bool blocked = false;
};

CsrArrays arrays_of(const PackedCsr& w);

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

struct GemmArgs {
  CsrArrays w;
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

// One instruction-set variant of the kernel (each compiled in its own translation unit).
struct KernelTable {
  const char* isa;
  void (*gemm)(const GemmArgs& args, const ParallelRunner& parallel);
};

// The best variant this CPU supports (called once per kernel creation). ONNX_PRUNE_ISA=portable|avx2|avx512
// in the environment forces a (supported) lower variant, for testing every path on one machine.
const KernelTable& select_kernel();

// All variants the running CPU can execute, best last.
std::vector<const KernelTable*> supported_kernels();

namespace isa_portable { extern const KernelTable kTable; }
#if defined(__x86_64__) || defined(_M_X64)
namespace isa_avx2 { extern const KernelTable kTable; }
namespace isa_avx512 { extern const KernelTable kTable; }
#endif

}  // namespace onnx_prune
