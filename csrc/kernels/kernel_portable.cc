// Portable variant: GCC/Clang vector extensions (4 floats), compiled for the baseline ISA of the
// target (SSE2 on x86-64, NEON on aarch64). Always available; the reference the others must match.
#include <cstring>

#include "sparse_gemm_kernels.h"

namespace onnx_prune {
namespace isa_portable {

struct V {
  typedef float reg __attribute__((vector_size(16)));
  static constexpr int W = 4;
  static reg zero() { return reg{0.f, 0.f, 0.f, 0.f}; }
  static reg load(const float* p) {
    reg v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(float* p, reg v) { std::memcpy(p, &v, sizeof v); }
  static reg set1(float x) { return reg{x, x, x, x}; }
  static reg fmadd(reg a, reg b, reg c) { return a * b + c; }
  static reg add(reg a, reg b) { return a + b; }
};

// The few-rows strategy works on 8 floats (lowered to two 4-float operations).
struct V8 {
  typedef float reg __attribute__((vector_size(32)));
  static constexpr int W = 8;
  static reg zero() { return reg{0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f}; }
  static reg load(const float* p) {
    reg v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(float* p, reg v) { std::memcpy(p, &v, sizeof v); }
  static reg set1(float x) { return reg{x, x, x, x, x, x, x, x}; }
  static reg fmadd(reg a, reg b, reg c) { return a * b + c; }
  static reg add(reg a, reg b) { return a + b; }
};

using V4 = V;  // the bcsr GEMV's 4-output blocks

// 8 int32 lanes for the integer product; madd is pmaddwd spelled out on the two int16 halves.
struct IV {
  typedef int32_t reg __attribute__((vector_size(32)));
  typedef int16_t halves __attribute__((vector_size(16)));
  static constexpr int W = 8;
  static reg zero() { return reg{0, 0, 0, 0, 0, 0, 0, 0}; }
  static reg load(const int32_t* p) {
    reg v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(int32_t* p, reg v) { std::memcpy(p, &v, sizeof v); }
  static reg add(reg a, reg b) { return a + b; }
  static reg madd(reg acc, int32_t word, reg x) {
    const reg lo = __builtin_convertvector(__builtin_convertvector(x, halves), reg);  // sign-extended low half
    const reg hi = x >> 16;                                                           // arithmetic shift
    return acc + lo * static_cast<int32_t>(static_cast<int16_t>(word & 0xffff)) + hi * (word >> 16);
  }
};

// bcsr_int8_dynamic's quad product: 8 int32 lanes of four signed activation bytes (kBias 0),
// each lane's four byte products summed exactly in int32.
struct BQ {
  typedef int32_t reg __attribute__((vector_size(32)));
  typedef uint32_t ureg __attribute__((vector_size(32)));
  using Prepared = reg;
  static constexpr int W = 8;
  static constexpr int kBias = 0;
  static constexpr int kMaxOutputs = 4;
  static reg zero() { return reg{0, 0, 0, 0, 0, 0, 0, 0}; }
  static void store(int32_t* p, reg v) { std::memcpy(p, &v, sizeof v); }
  static Prepared prepare(reg x) { return x; }
  // Byte i of every lane, sign-extended (shifts on unsigned lanes, then an arithmetic shift).
  template <int i>
  static reg byte(reg x) {
    return reinterpret_cast<reg>(reinterpret_cast<ureg>(x) << (24 - 8 * i)) >> 24;
  }
  static int32_t weight(int32_t word, int i) { return static_cast<int8_t>(static_cast<uint32_t>(word) >> (8 * i)); }
  static reg dot4(reg acc, const Prepared& x, int32_t word) {
    return acc + byte<0>(x) * weight(word, 0) + byte<1>(x) * weight(word, 1) + byte<2>(x) * weight(word, 2) +
           byte<3>(x) * weight(word, 3);
  }
  static reg dot4v(reg acc, const Prepared& x, reg words) {
    return acc + byte<0>(x) * byte<0>(words) + byte<1>(x) * byte<1>(words) + byte<2>(x) * byte<2>(words) +
           byte<3>(x) * byte<3>(words);
  }
  static reg load(const int32_t* p) {
    reg v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  template <int R>
  static reg spread(const int32_t* words) {  // lane l = words[l / R]
    reg v;
    for (int l = 0; l < W; ++l) v[l] = words[l / R];
    return v;
  }
  // Vectors 2 · half and 2 · half + 1 of the group's rows in VNNI order (block_int8_body.h's positions).
  static void interleave(const uint8_t* r0, const uint8_t* r1, const uint8_t* r2, const uint8_t* r3, int half,
                         reg out[2]) {
    for (int t = 0; t < 2; ++t) {
      for (int j = 0; j < W; ++j) {
        const int p = 16 * (j / 4) + 4 * (2 * half + t) + (j % 4);
        out[t][j] = static_cast<int32_t>(static_cast<uint32_t>(r0[p]) | (static_cast<uint32_t>(r1[p]) << 8) |
                                         (static_cast<uint32_t>(r2[p]) << 16) | (static_cast<uint32_t>(r3[p]) << 24));
      }
    }
  }
};

#define ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE
#include "kernel_body.h"
#include "block_kernel_body.h"
#include "kernel_int8_dynamic_body.h"
#include "block_int8_body.h"
#undef ONNX_PRUNE_KERNEL_BODY_INCLUDED_IN_ISA_NAMESPACE

const KernelTable kTable{"portable", &csr_gemm_of<float>, &csr_gemm_of<int8_t>, &has_non_finite,
                          &bcsr_gemm, &int8_dynamic_gemm_of, nullptr, &block_int8_dynamic_gemm_of<BQ>};

}  // namespace isa_portable
}  // namespace onnx_prune
