// SparseGemm kernel glue: reads attributes, validates A, C and the shapes against the op contract
// (docs/sparse_gemm_op.md), asks the format table (csrc/formats) for the `format` attribute's
// format, packs constant weights through it once at kernel creation and runs its kernels. It knows
// no format by name. Every failure becomes an OrtStatus naming the node; no exception leaves this
// file. A kernel is immutable after creation, so concurrent Run calls are safe.
#include "sparse_gemm_op.h"

#include <climits>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "formats/format.h"
#include "kernels/sparse_gemm_kernels.h"

namespace onnx_prune {
namespace {

// Inputs: A, then the format's weight tensors, then the optional bias C. The schema declares room
// for formats of up to four tensors (kMaxInputs); a format with fewer tensors moves C forward.
constexpr size_t kA = 0;
constexpr size_t kFirstWeight = 1;
constexpr size_t kMaxInputs = 6;

struct Kernel {
  const OrtApi* api = nullptr;
  std::string node;
  WeightShape shape;  // K, N and the optional nnz attribute
  float alpha = 1.f;
  float beta = 1.f;
  bool trans_a = false;
  bool relu = false;
  const Format* format = nullptr;
  const KernelTable* kernels = nullptr;
  OrtMemoryInfo* cpu_memory = nullptr;  // selects onnxruntime's CPU allocator for scratch memory
  std::unique_ptr<PackedWeight> prepacked;  // null: the weights are packed at every Run

  size_t n_weights() const { return format->inputs.size(); }
  size_t c_index() const { return kFirstWeight + n_weights(); }
};

// ------------------------------------------------------------------ small status helpers

OrtStatus* node_error(const OrtApi* api, const std::string& node, const std::string& what) {
  const std::string msg = "SparseGemm node '" + node + "': " + what;
  return api->CreateStatus(ORT_INVALID_ARGUMENT, msg.c_str());
}

#define OP_RETURN_IF_ERROR(expr)          \
  do {                                    \
    if (OrtStatus* _st = (expr)) return _st; \
  } while (0)

std::string dims_to_string(const std::vector<int64_t>& dims) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < dims.size(); ++i) s << (i ? ", " : "") << dims[i];
  s << ']';
  return s.str();
}

const char* dtype_name(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: return "uint16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: return "int16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32: return "uint32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    default: return "an unsupported type";
  }
}

// The spec of input i: A and C are float32 tensors of any rank, the rest the format declares.
TensorSpec input_spec(const Kernel* k, size_t i) {
  if (i == kA) return {"A", {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT}, 0};
  if (i == k->c_index()) return {"C", {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT}, 0};
  return k->format->inputs[i - kFirstWeight];
}

bool dtype_allowed(const TensorSpec& spec, ONNXTensorElementDataType t) {
  for (ONNXTensorElementDataType allowed : spec.types)
    if (t == allowed) return true;
  return false;
}

std::string allowed_dtypes(const TensorSpec& spec) {
  std::string text;
  for (size_t i = 0; i < spec.types.size(); ++i) text += (i ? " or " : "") + std::string(dtype_name(spec.types[i]));
  return text;
}

// Shape and element type of a tensor type/shape info (released by the caller's guard).
struct TensorMeta {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> dims;
};

OrtStatus* read_meta(const OrtApi* api, const OrtTensorTypeAndShapeInfo* info, TensorMeta* out) {
  OP_RETURN_IF_ERROR(api->GetTensorElementType(info, &out->type));
  size_t rank = 0;
  OP_RETURN_IF_ERROR(api->GetDimensionsCount(info, &rank));
  out->dims.assign(rank, 0);
  if (rank) OP_RETURN_IF_ERROR(api->GetDimensions(info, out->dims.data(), rank));
  return nullptr;
}

OrtStatus* value_meta(const OrtApi* api, const OrtValue* value, TensorMeta* out) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  OP_RETURN_IF_ERROR(api->GetTensorTypeAndShape(value, &info));
  OrtStatus* st = read_meta(api, info, out);
  api->ReleaseTensorTypeAndShapeInfo(info);
  return st;
}

int64_t element_count(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

// ------------------------------------------------------------------ kernel creation

// Attribute reading that tells "absent" (the default applies) from "present with another type"
// (an error: running with the default would silently compute something else).
enum class Attr { kAbsent, kRead, kWrongType };

bool released_ok(const OrtApi* api, OrtStatus* st) {
  if (st == nullptr) return true;
  api->ReleaseStatus(st);
  return false;
}

// The message onnxruntime gives for an attribute the node does not have, learnt from a name no
// node uses (with that name in it replaced by `name`): this API can read ints, floats, strings,
// their lists of numbers and tensors, but not lists of strings or graphs, which only differ from
// "absent" by the message.
bool reported_absent(const OrtApi* api, const OrtKernelInfo* info, const char* name, OrtStatus* st) {
  static const std::string kProbe = "onnx_prune_attribute_that_no_node_has";
  const std::string message = api->GetErrorMessage(st);
  api->ReleaseStatus(st);
  int64_t unused = 0;
  OrtStatus* probe = api->KernelInfoGetAttribute_int64(info, kProbe.c_str(), &unused);
  if (probe == nullptr) return false;
  std::string absent = api->GetErrorMessage(probe);
  api->ReleaseStatus(probe);
  const size_t at = absent.find(kProbe);
  if (at != std::string::npos) absent.replace(at, kProbe.size(), name);
  return message == absent;
}

// What the node gives for attribute `name`, in words ("a list of floats"), or "" when it has none.
// The list readers accept a list of any type (an empty list of theirs), so only a non-empty answer counts.
std::string attribute_kind(const OrtApi* api, const OrtKernelInfo* info, const char* name) {
  int64_t i = 0;
  float f = 0.f;
  size_t size = 0;
  if (released_ok(api, api->KernelInfoGetAttribute_int64(info, name, &i))) return "an int";
  if (released_ok(api, api->KernelInfoGetAttribute_float(info, name, &f))) return "a float";
  if (released_ok(api, api->KernelInfoGetAttribute_string(info, name, nullptr, &size))) return "a string";
  size = 0;
  if (released_ok(api, api->KernelInfoGetAttributeArray_float(info, name, nullptr, &size)) && size > 0)
    return "a list of floats";
  size = 0;
  if (released_ok(api, api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &size)) && size > 0)
    return "a list of ints";
  OrtAllocator* allocator = nullptr;
  if (released_ok(api, api->GetAllocatorWithDefaultOptions(&allocator))) {
    OrtValue* tensor = nullptr;
    if (released_ok(api, api->KernelInfoGetAttribute_tensor(info, name, allocator, &tensor))) {
      api->ReleaseValue(tensor);
      return "a tensor";
    }
  }
  OrtStatus* st = api->KernelInfoGetAttribute_int64(info, name, &i);
  if (st == nullptr || reported_absent(api, info, name, st)) return "";
  return "a list of strings, an empty list or another type";
}

Attr read_int(const OrtApi* api, const OrtKernelInfo* info, const char* name, int64_t* out) {
  int64_t value = 0;
  if (released_ok(api, api->KernelInfoGetAttribute_int64(info, name, &value))) {
    *out = value;
    return Attr::kRead;
  }
  return attribute_kind(api, info, name).empty() ? Attr::kAbsent : Attr::kWrongType;
}

Attr read_float(const OrtApi* api, const OrtKernelInfo* info, const char* name, float* out) {
  float value = 0.f;
  if (released_ok(api, api->KernelInfoGetAttribute_float(info, name, &value))) {
    *out = value;
    return Attr::kRead;
  }
  return attribute_kind(api, info, name).empty() ? Attr::kAbsent : Attr::kWrongType;
}

Attr read_string(const OrtApi* api, const OrtKernelInfo* info, const char* name, std::string* out) {
  size_t size = 0;
  if (!released_ok(api, api->KernelInfoGetAttribute_string(info, name, nullptr, &size)))
    return attribute_kind(api, info, name).empty() ? Attr::kAbsent : Attr::kWrongType;
  std::string value(size, '\0');
  if (!released_ok(api, api->KernelInfoGetAttribute_string(info, name, &value[0], &size))) return Attr::kWrongType;
  value.resize(size > 0 ? size - 1 : 0);  // drop the terminating NUL
  *out = value;
  return Attr::kRead;
}

std::string node_name_of(const OrtApi* api, const OrtKernelInfo* info) {
  size_t size = 0;
  OrtStatus* st = api->KernelInfo_GetNodeName(info, nullptr, &size);
  if (st != nullptr) {
    api->ReleaseStatus(st);
    return "<unnamed>";
  }
  std::string name(size, '\0');
  st = api->KernelInfo_GetNodeName(info, &name[0], &size);
  if (st != nullptr) {
    api->ReleaseStatus(st);
    return "<unnamed>";
  }
  name.resize(size > 0 ? size - 1 : 0);
  return name.empty() ? "<unnamed>" : name;
}

// One attribute's outcome as a status: wrong type and (for required ones) absence are errors.
OrtStatus* attribute_status(const Kernel* k, const OrtKernelInfo* info, Attr got, const char* name, const char* type,
                            bool required) {
  if (got == Attr::kWrongType)
    return node_error(k->api, k->node, std::string("attribute '") + name + "' must be of type " + type + ", got " +
                                           attribute_kind(k->api, info, name));
  if (got == Attr::kAbsent && required)
    return node_error(k->api, k->node, std::string("required attribute '") + name + "' is missing (" + type + ")");
  return nullptr;
}

OrtStatus* read_attributes(const OrtKernelInfo* info, Kernel* k) {
  const OrtApi* api = k->api;
  WeightShape& w = k->shape;
  OP_RETURN_IF_ERROR(attribute_status(k, info, read_int(api, info, "K", &w.K), "K", "int", true));
  OP_RETURN_IF_ERROR(attribute_status(k, info, read_int(api, info, "N", &w.N), "N", "int", true));
  if (w.K <= 0 || w.K > INT32_MAX)
    return node_error(api, k->node, "attribute K = " + std::to_string(w.K) + " must be in [1, 2^31)");
  if (w.N <= 0 || w.N > INT32_MAX)
    return node_error(api, k->node, "attribute N = " + std::to_string(w.N) + " must be in [1, 2^31)");
  int64_t trans_a = 0;
  OP_RETURN_IF_ERROR(attribute_status(k, info, read_int(api, info, "transA", &trans_a), "transA", "int", false));
  if (trans_a != 0 && trans_a != 1)
    return node_error(api, k->node, "attribute transA = " + std::to_string(trans_a) + " must be 0 or 1");
  k->trans_a = trans_a == 1;
  OP_RETURN_IF_ERROR(attribute_status(k, info, read_float(api, info, "alpha", &k->alpha), "alpha", "float", false));
  OP_RETURN_IF_ERROR(attribute_status(k, info, read_float(api, info, "beta", &k->beta), "beta", "float", false));
  const Attr nnz = read_int(api, info, "nnz", &w.nnz);
  OP_RETURN_IF_ERROR(attribute_status(k, info, nnz, "nnz", "int", false));
  w.has_nnz = nnz == Attr::kRead;
  if (w.has_nnz && w.nnz < 0)
    return node_error(api, k->node, "attribute nnz = " + std::to_string(w.nnz) + " must be >= 0");
  std::string format = "csr";
  OP_RETURN_IF_ERROR(attribute_status(k, info, read_string(api, info, "format", &format), "format", "string", false));
  k->format = find_format(format);
  if (k->format == nullptr)
    return node_error(api, k->node, "unknown format '" + format + "' (this library supports: " + format_names() + ")");
  std::string activation;
  OP_RETURN_IF_ERROR(
      attribute_status(k, info, read_string(api, info, "activation", &activation), "activation", "string", false));
  if (!activation.empty() && activation != "relu")
    return node_error(api, k->node, "unknown activation '" + activation + "' (supported: relu, or none)");
  k->relu = activation == "relu";
  return nullptr;
}

OrtStatus* dtype_status(const Kernel* k, const TensorSpec& spec, ONNXTensorElementDataType t) {
  if (dtype_allowed(spec, t)) return nullptr;
  return node_error(k->api, k->node, std::string("input ") + spec.name + " has type " + dtype_name(t) + ", expected " +
                                         allowed_dtypes(spec));
}

// C broadcasts to [M, N] as Gemm's C does (unidirectionally): rank 3 or more is never valid, not even
// [1, 1, N].
OrtStatus* bias_rank_status(const Kernel* k, const TensorMeta& c) {
  if (c.dims.size() <= 2) return nullptr;
  return node_error(k->api, k->node, "C has shape " + dims_to_string(c.dims) + ": rank " +
                                         std::to_string(c.dims.size()) + ", but C must have rank <= 2 (it broadcasts "
                                         "to [M, N] as Gemm's C)");
}

// Checks the declared type (and static shape, where known) of input `i` at kernel creation.
OrtStatus* check_declared_input(const OrtKernelInfo* info, const Kernel* k, size_t i) {
  const OrtApi* api = k->api;
  OrtTypeInfo* type_info = nullptr;
  if (OrtStatus* st = api->KernelInfo_GetInputTypeInfo(info, i, &type_info)) {
    api->ReleaseStatus(st);  // an input omitted by an empty name: only C may be
    if (i == k->c_index()) return nullptr;
    return node_error(api, k->node, std::string("input ") + input_spec(k, i).name + " is missing (an empty input name)");
  }
  const OrtTensorTypeAndShapeInfo* tensor_info = nullptr;
  OrtStatus* st = api->CastTypeInfoToTensorInfo(type_info, &tensor_info);
  TensorMeta meta;
  if (st == nullptr && tensor_info != nullptr) st = read_meta(api, tensor_info, &meta);
  api->ReleaseTypeInfo(type_info);
  if (st != nullptr) return st;
  const TensorSpec spec = input_spec(k, i);
  if (tensor_info == nullptr) return node_error(api, k->node, std::string("input ") + spec.name + " must be a tensor");
  OP_RETURN_IF_ERROR(dtype_status(k, spec, meta.type));
  if (i == k->c_index()) return bias_rank_status(k, meta);  // a known rank: check it now
  if (i == kA && !meta.dims.empty()) {  // a known shape: check A against K now
    const int64_t inner = k->trans_a ? meta.dims.front() : meta.dims.back();
    if (k->trans_a && meta.dims.size() != 2)
      return node_error(api, k->node, "transA = 1 needs a 2-D A, got shape " + dims_to_string(meta.dims));
    if (inner > 0 && inner != k->shape.K)
      return node_error(api, k->node, "A has shape " + dims_to_string(meta.dims) + " but attribute K = " +
                                          std::to_string(k->shape.K));
  }
  return nullptr;
}

// Checks the weight tensors' types and ranks against the format's declarations and packs them.
OrtStatus* pack_weights(const Kernel* k, const OrtValue* const* tensors, std::unique_ptr<PackedWeight>* out) {
  const OrtApi* api = k->api;
  std::vector<TensorView> views(k->n_weights());
  for (size_t t = 0; t < views.size(); ++t) {
    const TensorSpec& spec = k->format->inputs[t];
    TensorMeta meta;
    OP_RETURN_IF_ERROR(value_meta(api, tensors[t], &meta));
    OP_RETURN_IF_ERROR(dtype_status(k, spec, meta.type));
    if (meta.dims.size() != spec.rank)
      return node_error(api, k->node, std::string("input ") + spec.name + " must be " + std::to_string(spec.rank) +
                                          "-D, got shape " + dims_to_string(meta.dims));
    void* data = nullptr;
    OP_RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(tensors[t]), &data));
    views[t].type = meta.type;
    views[t].data = data;
    views[t].dims = std::move(meta.dims);
  }
  const std::string err = k->format->pack(views, k->shape, out);
  return err.empty() ? nullptr : node_error(api, k->node, err);
}

// Packs the weights now when all of the format's weight inputs are constant initializers.
OrtStatus* try_prepack(const OrtKernelInfo* info, Kernel* k) {
  std::vector<const OrtValue*> tensors(k->n_weights(), nullptr);
  for (size_t t = 0; t < tensors.size(); ++t) {
    int is_constant = 0;
    OrtStatus* st = k->api->KernelInfoGetConstantInput_tensor(info, kFirstWeight + t, &is_constant, &tensors[t]);
    if (st != nullptr) {
      k->api->ReleaseStatus(st);
      return nullptr;
    }
    if (!is_constant || tensors[t] == nullptr) return nullptr;
  }
  return pack_weights(k, tensors.data(), &k->prepacked);
}

std::string input_list(const Kernel* k) {
  std::string names = "A";
  for (const TensorSpec& spec : k->format->inputs) names += std::string(", ") + spec.name;
  return names + "[, C]";
}

OrtStatus* create_kernel(const OrtApi* api, const OrtKernelInfo* info, void** out) {
  auto k = std::make_unique<Kernel>();
  k->api = api;
  k->node = node_name_of(api, info);
  OP_RETURN_IF_ERROR(read_attributes(info, k.get()));
  size_t n_inputs = 0;
  OP_RETURN_IF_ERROR(api->KernelInfo_GetInputCount(info, &n_inputs));
  const size_t required = k->c_index();
  if (n_inputs < required || n_inputs > required + 1)
    return node_error(api, k->node, "expects " + std::to_string(required) + " or " + std::to_string(required + 1) +
                                        " inputs (" + input_list(k.get()) + "), got " + std::to_string(n_inputs));
  for (size_t i = 0; i < n_inputs; ++i) OP_RETURN_IF_ERROR(check_declared_input(info, k.get(), i));
  OP_RETURN_IF_ERROR(try_prepack(info, k.get()));
  k->kernels = &select_kernel();
  OP_RETURN_IF_ERROR(api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &k->cpu_memory));
  *out = k.release();
  return nullptr;
}

// ------------------------------------------------------------------ Run

struct RunShapes {
  int64_t M = 0;
  std::vector<int64_t> y_dims;
};

OrtStatus* check_a(const Kernel* k, const TensorMeta& a, RunShapes* s) {
  if (a.dims.empty()) return node_error(k->api, k->node, "A must have rank >= 1, got a scalar");
  if (k->trans_a) {
    if (a.dims.size() != 2)
      return node_error(k->api, k->node, "transA = 1 needs a 2-D A, got shape " + dims_to_string(a.dims));
    if (a.dims[0] != k->shape.K)
      return node_error(k->api, k->node, "A has shape " + dims_to_string(a.dims) + " but K = " +
                                             std::to_string(k->shape.K) + " (transA = 1: A is [K, M])");
    s->M = a.dims[1];
    s->y_dims = {s->M, k->shape.N};
    return nullptr;
  }
  if (a.dims.back() != k->shape.K)
    return node_error(k->api, k->node, "A has shape " + dims_to_string(a.dims) + " but K = " +
                                           std::to_string(k->shape.K) + " (last dimension of A must be K)");
  s->M = element_count(a.dims) / k->shape.K;
  s->y_dims.assign(a.dims.begin(), a.dims.end() - 1);
  s->y_dims.push_back(k->shape.N);
  return nullptr;
}

OrtStatus* check_bias(const Kernel* k, const TensorMeta& c, int64_t M, BiasView* bias) {
  OP_RETURN_IF_ERROR(bias_rank_status(k, c));
  const std::vector<int64_t>& d = c.dims;
  const int64_t rows = d.size() == 2 ? d[0] : 1;
  const int64_t cols = d.empty() ? 1 : d.back();
  const int64_t N = k->shape.N;
  const bool ok = d.size() <= 2 && (rows == 1 || rows == M) && (cols == 1 || cols == N);
  if (!ok)
    return node_error(k->api, k->node, "C has shape " + dims_to_string(c.dims) + ", which does not broadcast to [M, N] = [" +
                                           std::to_string(M) + ", " + std::to_string(N) + "]");
  bias->rows = rows;
  bias->cols = cols;
  return nullptr;
}

struct PoolContext {
  const OrtApi* api;
  OrtKernelContext* context;
};

void run_on_ort_pool(void* ctx, void (*fn)(void*, size_t), size_t total, void* fn_data) {
  const auto* pool = static_cast<const PoolContext*>(ctx);
  if (total > 1) {
    OrtStatus* st = pool->api->KernelContext_ParallelFor(pool->context, fn, total, 0, fn_data);
    if (st == nullptr) return;
    pool->api->ReleaseStatus(st);  // no pool available: run inline below
  }
  for (size_t i = 0; i < total; ++i) fn(fn_data, i);
}

// Scratch memory from onnxruntime's allocator for this Run, obtained on first use (the few-rows
// strategy needs little or none) and released when the Run ends.
class RunScratch {
 public:
  RunScratch(const Kernel* k, OrtKernelContext* context) : kernel_(k), context_(context) {}
  ~RunScratch() {
    if (allocator_ != nullptr) kernel_->api->ReleaseAllocator(allocator_);
  }
  RunScratch(const RunScratch&) = delete;
  RunScratch& operator=(const RunScratch&) = delete;

  ScratchAllocator view() {
    ScratchAllocator s;
#ifdef ONNX_PRUNE_SANITIZE
    return s;  // plain aligned_alloc blocks, so AddressSanitizer sees every scratch overrun
#endif
    s.ctx = this;
    s.alloc = [](void* self, size_t bytes) -> void* {
      OrtAllocator* a = static_cast<RunScratch*>(self)->allocator();
      return a ? a->Alloc(a, bytes) : std::aligned_alloc(64, bytes);
    };
    s.free = [](void* self, void* p) {
      OrtAllocator* a = static_cast<RunScratch*>(self)->allocator_;
      if (a) {
        a->Free(a, p);
      } else {
        std::free(p);
      }
    };
    return s;
  }

 private:
  OrtAllocator* allocator() {
    if (allocator_ == nullptr && !unavailable_) {
      OrtStatus* st = kernel_->api->KernelContext_GetAllocator(context_, kernel_->cpu_memory, &allocator_);
      if (st != nullptr) {  // fall back to aligned_alloc
        kernel_->api->ReleaseStatus(st);
        allocator_ = nullptr;
        unavailable_ = true;
      }
    }
    return allocator_;
  }

  const Kernel* kernel_;
  OrtKernelContext* context_;
  OrtAllocator* allocator_ = nullptr;
  bool unavailable_ = false;
};

OrtStatus* compute(Kernel* k, OrtKernelContext* context) {
  const OrtApi* api = k->api;
  size_t n_inputs = 0;
  OP_RETURN_IF_ERROR(api->KernelContext_GetInputCount(context, &n_inputs));
  const OrtValue* inputs[kMaxInputs] = {};
  for (size_t i = 0; i < n_inputs && i < kMaxInputs; ++i)
    OP_RETURN_IF_ERROR(api->KernelContext_GetInput(context, i, &inputs[i]));
  const OrtValue* c_input = k->c_index() < kMaxInputs ? inputs[k->c_index()] : nullptr;

  TensorMeta a_meta;
  OP_RETURN_IF_ERROR(value_meta(api, inputs[kA], &a_meta));
  RunShapes shapes;
  OP_RETURN_IF_ERROR(check_a(k, a_meta, &shapes));

  GemmArgs args;
  args.M = shapes.M;
  args.trans_a = k->trans_a;
  args.alpha = k->alpha;
  args.beta = k->beta;
  args.relu = k->relu;
  if (c_input != nullptr) {
    TensorMeta c_meta;
    OP_RETURN_IF_ERROR(value_meta(api, c_input, &c_meta));
    OP_RETURN_IF_ERROR(check_bias(k, c_meta, shapes.M, &args.bias));
    void* c_data = nullptr;
    OP_RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(c_input), &c_data));
    args.bias.data = static_cast<const float*>(c_data);
  }

  std::unique_ptr<PackedWeight> per_run;
  if (!k->prepacked) OP_RETURN_IF_ERROR(pack_weights(k, inputs + kFirstWeight, &per_run));

  void* a_data = nullptr;
  OP_RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(inputs[kA]), &a_data));
  args.a = static_cast<const float*>(a_data);
  OrtValue* y = nullptr;
  OP_RETURN_IF_ERROR(api->KernelContext_GetOutput(context, 0, shapes.y_dims.data(), shapes.y_dims.size(), &y));
  void* y_data = nullptr;
  OP_RETURN_IF_ERROR(api->GetTensorMutableData(y, &y_data));
  args.y = static_cast<float*>(y_data);

  RunScratch scratch(k, context);
  args.scratch = scratch.view();
  PoolContext pool{api, context};
  ParallelRunner parallel;
  parallel.run = &run_on_ort_pool;
  parallel.ctx = &pool;
  k->format->run(k->prepacked ? *k->prepacked : *per_run, *k->kernels, args, parallel);
  return nullptr;
}

// ------------------------------------------------------------------ OrtCustomOp callbacks

OrtStatus* guarded(const OrtApi* api, const std::string& node, OrtStatus* (*body)(void*, void*), void* a, void* b) {
  try {
    return body(a, b);
  } catch (const std::bad_alloc&) {
    return api->CreateStatus(ORT_FAIL, ("SparseGemm node '" + node + "': out of memory").c_str());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, ("SparseGemm node '" + node + "': " + e.what()).c_str());
  } catch (...) {
    return api->CreateStatus(ORT_FAIL, ("SparseGemm node '" + node + "': unknown error").c_str());
  }
}

OrtStatus* ORT_API_CALL create_sparse_gemm(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info,
                                           void** kernel) {
  *kernel = nullptr;
  struct Args {
    const OrtApi* api;
    const OrtKernelInfo* info;
  } args{api, info};
  return guarded(api, node_name_of(api, info), [](void* a, void* out) {
    auto* p = static_cast<Args*>(a);
    return create_kernel(p->api, p->info, static_cast<void**>(out));
  }, &args, kernel);
}

OrtCustomOp make_op(OrtStatus*(ORT_API_CALL* create)(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*, void**)) {
  OrtCustomOp op;
  std::memset(&op, 0, sizeof op);
  op.version = ORT_API_VERSION;
  op.GetName = [](const OrtCustomOp*) { return kOpType; };
  op.GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return nullptr; };
  op.GetInputTypeCount = [](const OrtCustomOp*) -> size_t { return kMaxInputs; };
  op.GetInputType = [](const OrtCustomOp*, size_t i) {
    // The weight tensors' types depend on the format; the kernel checks them at creation.
    return i == kA ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  };
  op.GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
  op.GetOutputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
  op.GetInputCharacteristic = [](const OrtCustomOp*, size_t i) {
    return i == kA ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;  // the format fixes how many follow A
  };
  op.GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  op.GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
  op.GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.CreateKernelV2 = create;
  op.KernelComputeV2 = [](void* kernel, OrtKernelContext* context) {
    auto* k = static_cast<Kernel*>(kernel);
    return guarded(k->api, k->node, [](void* a, void* b) {
      return compute(static_cast<Kernel*>(a), static_cast<OrtKernelContext*>(b));
    }, k, context);
  };
  op.KernelDestroy = [](void* kernel) {
    auto* k = static_cast<Kernel*>(kernel);
    if (k == nullptr) return;
    if (k->cpu_memory != nullptr) k->api->ReleaseMemoryInfo(k->cpu_memory);
    delete k;
  };
  return op;
}

}  // namespace

const OrtCustomOp* sparse_gemm_op() {
  static const OrtCustomOp op = [] {
    OrtCustomOp o = make_op(&create_sparse_gemm);
    // onnxruntime (measured with 1.32) matches a kernel to the schema's since_version, not to the
    // version the model imports, so this end does not stop a model importing version 2 from running
    // this kernel; the contract says so ("Versioning"). It still states what the library implements.
    o.GetStartVersion = [](const OrtCustomOp*) { return kSinceVersion; };
    o.GetEndVersion = [](const OrtCustomOp*) { return kEndVersion; };
    return o;
  }();
  return &op;
}

}  // namespace onnx_prune
