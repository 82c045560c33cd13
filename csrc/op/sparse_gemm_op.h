// onnxruntime glue for SparseGemm: the OrtCustomOp definition (schema + kernel callbacks).
#pragma once

#include "onnxruntime_c_api.h"

namespace onnx_prune {

constexpr const char* kDomain = "ai.onnx_prune";
constexpr const char* kOpType = "SparseGemm";
constexpr int kSinceVersion = 1;
// The newest version of the op's domain this library implements (docs/sparse_gemm_op.md, "Versioning").
constexpr int kEndVersion = 1;

// The op, shared by every session that registers the library (it holds no per-session state).
const OrtCustomOp* sparse_gemm_op();

}  // namespace onnx_prune
