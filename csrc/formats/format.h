// Storage formats of SparseGemm's weight W, chosen once per kernel by the `format` attribute
// (docs/sparse_gemm_op.md, "Formats"). Each format is one translation unit that declares its
// weight tensors, validates and packs them, and runs the ISA-dispatched kernels on the packed
// weight; the op glue (csrc/op/) only talks to this interface and knows no format by name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/sparse_gemm_kernels.h"
#include "onnxruntime_c_api.h"

namespace onnx_prune {

// One weight tensor a format takes (inputs 1.. of the node, after A).
struct TensorSpec {
  const char* name;
  std::vector<ONNXTensorElementDataType> types;  // element types it accepts
  size_t rank;
};

// A weight tensor as it arrives: its type and rank already match its TensorSpec.
struct TensorView {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  const void* data = nullptr;
  std::vector<int64_t> dims;
};

// What the node's attributes say about W.
struct WeightShape {
  int64_t K = 0;
  int64_t N = 0;
  bool has_nnz = false;  // the optional `nnz` attribute: number of stored weights
  int64_t nnz = 0;
};

// A format's packed weight; immutable once packed, so concurrent Runs may share it.
class PackedWeight {
 public:
  virtual ~PackedWeight() = default;
};

struct Format {
  const char* name;  // the value of the `format` attribute
  std::vector<TensorSpec> inputs;
  // Validates the tensors against `shape` and packs them. Returns an empty string on success, else
  // the first inconsistency (the glue prefixes the node name).
  std::string (*pack)(const std::vector<TensorView>& tensors, const WeightShape& shape,
                      std::unique_ptr<PackedWeight>* out);
  // Y = act(alpha * A' W + beta * C) exactly as the dense product with the unstored weights as
  // zeros computes it, non-finite A included.
  void (*run)(const PackedWeight& w, const KernelTable& kernels, const GemmArgs& args,
              const ParallelRunner& parallel);
};

// The format named `name`, or nullptr when this library has none of that name.
const Format* find_format(const std::string& name);

// The names of every format this library has, comma separated ("csr"), for error messages.
std::string format_names();

// The formats (one unit each; registry.cc lists them).
namespace format_csr { extern const Format kFormat; }
namespace format_csr_int8 {
extern const Format kFormat;
// The contract's rule on csr_int8's scales (N entries, each finite, positive, <= FLT_MAX / 128);
// shared by the int8 formats. Empty when they hold, else the first violation.
std::string check_scales(const TensorView& scales, int64_t N);
}
namespace format_bcsr { extern const Format kFormat; }
namespace format_csr_int8_dynamic { extern const Format kFormat; }
namespace format_bcsr_int8_dynamic { extern const Format kFormat; }

}  // namespace onnx_prune
