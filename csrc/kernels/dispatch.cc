// Run-time choice of the instruction-set variant: a library built on a new x86 machine must still
// run on an older one, so only this file (compiled for the baseline ISA) decides what may execute.
#include <cstdlib>
#include <cstring>

#include "sparse_gemm_kernels.h"

namespace onnx_prune {
namespace {

#if defined(__x86_64__) || defined(_M_X64)
bool cpu_has_avx2_fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

bool cpu_has_avx512() {
  __builtin_cpu_init();
  return cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}

bool cpu_has_avx512vnni() {
  __builtin_cpu_init();
  return cpu_has_avx512() && __builtin_cpu_supports("avx512vnni");
}

// The AVX-512 table whose integer products use vpdpwssd / vpdpbusd (every other entry is AVX-512's).
const KernelTable* avx512vnni_table() {
  static const KernelTable table = [] {
    KernelTable t = isa_avx512::kTable;
    t.isa = "avx512vnni";
    t.int8_dynamic_gemm = &isa_avx512vnni::int8_dynamic_gemm;
    t.int8_dynamic_quad_gemm = &isa_avx512vnni::int8_dynamic_quad_gemm;
    t.block_int8_dynamic_gemm = &isa_avx512vnni::block_int8_dynamic_gemm;
    return t;
  }();
  return &table;
}
#endif

const KernelTable* choose() {
  const auto supported = supported_kernels();
  const char* forced = std::getenv("ONNX_PRUNE_ISA");
  if (forced != nullptr && *forced != '\0') {
    for (const KernelTable* table : supported) {
      if (std::strcmp(table->isa, forced) == 0) return table;
    }
  }
  return supported.back();
}

}  // namespace

std::vector<const KernelTable*> supported_kernels() {
  std::vector<const KernelTable*> tables{&isa_portable::kTable};
#if defined(__x86_64__) || defined(_M_X64)
  if (cpu_has_avx2_fma()) tables.push_back(&isa_avx2::kTable);
  if (cpu_has_avx512()) tables.push_back(&isa_avx512::kTable);
  if (cpu_has_avx512vnni()) tables.push_back(avx512vnni_table());
#endif
  return tables;
}

const KernelTable& select_kernel() { return *choose(); }

}  // namespace onnx_prune
