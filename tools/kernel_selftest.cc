// Stand-alone check of the numeric kernels (no onnxruntime): every kernel variant the CPU runs,
// against a float64 reference, over shapes that cross the few-rows / tiled strategies and their
// remainders, the bcsr block kernel, and the bcsr_int8_dynamic integer kernel (bit-exact with the contract). Used where onnxruntime is not available, e.g. the portable
// variant cross-built for aarch64 and run under qemu (tools/check_aarch64.sh). Exit status 0 when every case matches.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "formats/csr.h"
#include "formats/format.h"
#include "kernels/sparse_gemm_kernels.h"

namespace {

using onnx_prune::CsrView;
using onnx_prune::GemmArgs;
using onnx_prune::KernelTable;
using onnx_prune::PackedCsr;
using onnx_prune::ParallelRunner;

struct Case {
  int64_t K, N, M;
  double density;
  bool trans_a;
};

bool run_case(const KernelTable& table, const Case& c, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f), coin(0.f, 1.f);
  std::vector<float> values;
  std::vector<int32_t> indices, offsets{0};
  for (int64_t n = 0; n < c.N; ++n) {
    for (int64_t k = 0; k < c.K; ++k) {
      if (coin(rng) < c.density) {
        values.push_back(u(rng));
        indices.push_back(static_cast<int32_t>(k));
      }
    }
    offsets.push_back(static_cast<int32_t>(values.size()));
  }
  CsrView view;
  view.values = values.data();
  view.indices = indices.data();
  view.offsets = offsets.data();
  view.n_values = view.n_indices = static_cast<int64_t>(values.size());
  view.n_offsets = static_cast<int64_t>(offsets.size());
  PackedCsr packed;
  const std::string err = onnx_prune::pack_csr(view, c.K, c.N, &packed);
  if (!err.empty()) {
    std::printf("pack failed: %s\n", err.c_str());
    return false;
  }
  std::vector<float> a(static_cast<size_t>(c.M * c.K)), y(static_cast<size_t>(c.M * c.N), -7.f);
  for (float& v : a) v = u(rng);
  GemmArgs args;
  args.a = a.data();
  args.trans_a = c.trans_a;
  args.M = c.M;
  args.y = y.data();
  ParallelRunner inline_runner;
  inline_runner.run = [](void*, void (*fn)(void*, size_t), size_t total, void* data) {
    for (size_t i = 0; i < total; ++i) fn(data, i);
  };
  table.csr_gemm(onnx_prune::arrays_of(packed), args, inline_runner);
  double worst = 0.0, scale = 1e-12;
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t n = 0; n < c.N; ++n) {
      double ref = 0.0;
      for (int32_t j = offsets[n]; j < offsets[n + 1]; ++j) {
        const float x = c.trans_a ? a[indices[j] * c.M + m] : a[m * c.K + indices[j]];
        ref += static_cast<double>(values[j]) * x;
      }
      worst = std::fmax(worst, std::fabs(ref - y[m * c.N + n]));
      scale = std::fmax(scale, std::fabs(ref));
    }
  }
  const bool ok = worst <= 1e-5 * scale + 1e-6;
  std::printf("%-8s K=%-5lld N=%-4lld M=%-4lld density=%.2f transA=%d  max error %.2e  %s\n", table.isa,
              static_cast<long long>(c.K), static_cast<long long>(c.N), static_cast<long long>(c.M), c.density,
              c.trans_a ? 1 : 0, worst, ok ? "ok" : "MISMATCH");
  return ok;
}

struct BlockCase {
  int64_t K, N, M, R;
  double density;  // of blocks
  bool trans_a, bias_relu;
};

// The bcsr kernel (R x 1 blocks of W^T; a partial last block row when R does not divide N) with
// two thread ranges, against a float64 reference; bias_relu adds a per-output bias and relu.
bool run_bcsr_case(const KernelTable& table, const BlockCase& c, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f), coin(0.f, 1.f);
  const int64_t rows = (c.N + c.R - 1) / c.R;
  std::vector<float> values;
  std::vector<int32_t> idx;
  std::vector<int64_t> block_ptr{0};
  for (int64_t b = 0; b < rows; ++b) {
    for (int64_t k = 0; k < c.K; ++k) {
      if (coin(rng) >= c.density) continue;
      for (int64_t r = 0; r < c.R; ++r) values.push_back(b * c.R + r < c.N ? u(rng) : 0.f);
      idx.push_back(static_cast<int32_t>(k));
    }
    block_ptr.push_back(static_cast<int64_t>(idx.size()));
  }
  const std::vector<int64_t> parts{0, rows / 2, rows};
  onnx_prune::BcsrArrays w;
  w.K = c.K;
  w.N = c.N;
  w.R = c.R;
  w.n_block_rows = rows;
  w.values = values.data();
  w.idx = idx.data();
  w.block_ptr = block_ptr.data();
  w.parts = parts.data();
  w.n_parts = rows / 2 > 0 ? 2 : 1;
  const std::vector<int64_t> one_part{0, rows};
  if (w.n_parts == 1) w.parts = one_part.data();
  std::vector<float> a(static_cast<size_t>(c.M * c.K)), y(static_cast<size_t>(c.M * c.N), -7.f), bias(c.N);
  for (float& v : a) v = u(rng);
  for (float& v : bias) v = u(rng);
  GemmArgs args;
  args.a = a.data();
  args.trans_a = c.trans_a;
  args.M = c.M;
  args.y = y.data();
  args.relu = c.bias_relu;
  if (c.bias_relu) {
    args.bias.data = bias.data();
    args.bias.rows = 1;
    args.bias.cols = c.N;
  }
  ParallelRunner inline_runner;
  inline_runner.run = [](void*, void (*fn)(void*, size_t), size_t total, void* data) {
    for (size_t i = 0; i < total; ++i) fn(data, i);
  };
  table.bcsr_gemm(w, args, inline_runner);
  double worst = 0.0, scale = 1e-12;
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t n = 0; n < c.N; ++n) {
      const int64_t b = n / c.R;
      double ref = c.bias_relu ? bias[n] : 0.0;
      for (int64_t j = block_ptr[b]; j < block_ptr[b + 1]; ++j) {
        const float x = c.trans_a ? a[idx[j] * c.M + m] : a[m * c.K + idx[j]];
        ref += static_cast<double>(values[j * c.R + n % c.R]) * x;
      }
      if (c.bias_relu && ref < 0.0) ref = 0.0;
      worst = std::fmax(worst, std::fabs(ref - y[m * c.N + n]));
      scale = std::fmax(scale, std::fabs(ref));
    }
  }
  const bool ok = worst <= 1e-5 * scale + 1e-6;
  std::printf("%-8s bcsr R=%lld K=%-5lld N=%-4lld M=%-4lld density=%.2f transA=%d bias+relu=%d  max error %.2e  %s\n",
              table.isa, static_cast<long long>(c.R), static_cast<long long>(c.K), static_cast<long long>(c.N),
              static_cast<long long>(c.M), c.density, c.trans_a ? 1 : 0, c.bias_relu ? 1 : 0, worst,
              ok ? "ok" : "MISMATCH");
  return ok;
}

// Format bcsr_int8_dynamic through its format unit (pack + run) against the contract's arithmetic
// written out here: per row s = max|a| / 127, q = round-half-even(a / s) clipped to ±127, the exact
// integer sum, d = (float(acc) · s) · scale_n, y = d + bias, relu. Compared bit for bit.
bool run_block_int8_case(const KernelTable& table, const BlockCase& c, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f), coin(0.f, 1.f);
  std::uniform_int_distribution<int> weight(-127, 127);
  const int64_t rows = (c.N + c.R - 1) / c.R;
  std::vector<int8_t> values;
  std::vector<int32_t> idx, offsets{0};
  for (int64_t b = 0; b < rows; ++b) {
    for (int64_t k = 0; k < c.K; ++k) {
      if (coin(rng) >= c.density) continue;
      for (int64_t r = 0; r < c.R; ++r) values.push_back(static_cast<int8_t>(b * c.R + r < c.N ? weight(rng) : 0));
      idx.push_back(static_cast<int32_t>(k));
    }
    offsets.push_back(static_cast<int32_t>(idx.size()));
  }
  std::vector<float> scales(static_cast<size_t>(c.N));
  for (float& s : scales) s = 0.001f + coin(rng);
  const int64_t n_blocks = static_cast<int64_t>(idx.size());
  using onnx_prune::TensorView;
  std::vector<TensorView> views(4);
  views[0] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, values.data(), {n_blocks, c.R}};
  views[1] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, scales.data(), {c.N}};
  views[2] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, idx.data(), {n_blocks}};
  views[3] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, offsets.data(), {rows + 1}};
  onnx_prune::WeightShape shape;
  shape.K = c.K;
  shape.N = c.N;
  const onnx_prune::Format* format = onnx_prune::find_format("bcsr_int8_dynamic");
  std::unique_ptr<onnx_prune::PackedWeight> packed;
  const std::string err = format->pack(views, shape, &packed);
  if (!err.empty()) {
    std::printf("pack failed: %s\n", err.c_str());
    return false;
  }
  std::vector<float> a(static_cast<size_t>(c.M * c.K)), y(static_cast<size_t>(c.M * c.N), -7.f), bias(c.N);
  for (float& v : a) v = u(rng) * 10.f;
  for (float& v : bias) v = u(rng);
  GemmArgs args;
  args.a = a.data();
  args.trans_a = c.trans_a;
  args.M = c.M;
  args.y = y.data();
  args.relu = c.bias_relu;
  if (c.bias_relu) {
    args.bias.data = bias.data();
    args.bias.rows = 1;
    args.bias.cols = c.N;
  }
  ParallelRunner inline_runner;
  inline_runner.run = [](void*, void (*fn)(void*, size_t), size_t total, void* data) {
    for (size_t i = 0; i < total; ++i) fn(data, i);
  };
  format->run(*packed, table, args, inline_runner);
  int64_t mismatches = 0;
  for (int64_t m = 0; m < c.M; ++m) {
    auto at = [&](int64_t k) { return c.trans_a ? a[k * c.M + m] : a[m * c.K + k]; };
    float peak = 0.f;
    for (int64_t k = 0; k < c.K; ++k) peak = std::fmax(peak, std::fabs(at(k)));
    const float s = peak / 127.f;
    std::vector<int64_t> q(static_cast<size_t>(c.K), 0);
    for (int64_t k = 0; k < c.K && s > 0.f; ++k) q[k] = static_cast<int64_t>(std::fmin(127.f, std::fmax(-127.f, std::nearbyint(at(k) / s))));
    for (int64_t n = 0; n < c.N; ++n) {
      const int64_t b = n / c.R;
      int64_t acc = 0;
      for (int32_t j = offsets[b]; j < offsets[b + 1]; ++j) acc += q[idx[j]] * values[j * c.R + n % c.R];
      volatile float d = static_cast<float>(acc) * s;
      d = d * scales[n];
      float expected = d;
      if (c.bias_relu) {
        expected = expected + bias[n];
        expected = expected < 0.f ? 0.f : expected;
      }
      mismatches += expected != y[m * c.N + n];
    }
  }
  std::printf("%-8s bcsr_int8_dynamic R=%lld K=%-5lld N=%-4lld M=%-4lld density=%.2f transA=%d bias+relu=%d  %lld mismatches  %s\n",
              table.isa, static_cast<long long>(c.R), static_cast<long long>(c.K), static_cast<long long>(c.N),
              static_cast<long long>(c.M), c.density, c.trans_a ? 1 : 0, c.bias_relu ? 1 : 0,
              static_cast<long long>(mismatches), mismatches == 0 ? "ok" : "MISMATCH");
  return mismatches == 0;
}

}  // namespace

int main() {
  const Case cases[] = {
      {1, 1, 1, 1.0, false},    {37, 5, 70, 0.5, false},  {300, 129, 1, 0.1, false}, {300, 129, 2, 0.1, true},
      {300, 129, 8, 0.1, false}, {300, 129, 9, 0.1, false}, {300, 129, 33, 0.1, true}, {1000, 64, 65, 0.05, false},
      {129, 7, 100, 0.9, false}, {64, 16, 17, 0.0, false},
  };
  std::mt19937 rng(7);
  bool all_ok = true;
  for (const KernelTable* table : onnx_prune::supported_kernels())
    for (const Case& c : cases) all_ok = run_case(*table, c, rng) && all_ok;
  const BlockCase block_cases[] = {
      {300, 10, 1, 4, 0.3, false, true},   {300, 10, 64, 4, 0.3, false, true}, {1000, 130, 70, 4, 0.2, false, true},
      {129, 37, 33, 8, 0.5, true, false},  {129, 37, 1, 8, 0.5, false, false}, {784, 64, 256, 8, 0.2, false, true},
      {64, 16, 17, 4, 0.0, false, true},
  };
  for (const KernelTable* table : onnx_prune::supported_kernels())
    for (const BlockCase& c : block_cases) all_ok = run_bcsr_case(*table, c, rng) && all_ok;
  for (const KernelTable* table : onnx_prune::supported_kernels())
    for (const BlockCase& c : block_cases) all_ok = run_block_int8_case(*table, c, rng) && all_ok;
  std::printf(all_ok ? "all cases match\n" : "SOME CASES FAILED\n");
  return all_ok ? 0 : 1;
}
