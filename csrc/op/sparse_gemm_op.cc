// SparseGemm kernel glue: reads attributes, validates inputs against the op contract
// (docs/sparse_gemm_op.md), packs constant weights once at kernel creation and calls the numeric
// kernels in csrc/kernels. Every failure becomes an OrtStatus naming the node; no exception leaves
// this file. A kernel is immutable after creation, so concurrent Run calls are safe.
#include "sparse_gemm_op.h"

#include <climits>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "../kernels/sparse_gemm_kernels.h"

namespace onnx_prune {
namespace {

enum InputIndex : size_t { kA = 0, kValues = 1, kIndices = 2, kOffsets = 3, kC = 4 };
constexpr size_t kNumInputs = 5;

struct Kernel {
  const OrtApi* api = nullptr;
  std::string node;
  int64_t K = 0;
  int64_t N = 0;
  float alpha = 1.f;
  float beta = 1.f;
  bool trans_a = false;
  bool relu = false;
  int64_t nnz_attr = 0;
  bool has_nnz_attr = false;
  const KernelTable* table = nullptr;
  OrtMemoryInfo* cpu_memory = nullptr;  // selects onnxruntime's CPU allocator for scratch memory
  bool prepacked = false;
  PackedCsr packed;
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

// Element types each input accepts (docs/sparse_gemm_op.md, "Inputs").
bool dtype_allowed(size_t input, ONNXTensorElementDataType t) {
  switch (input) {
    case kValues: return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    case kIndices: return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16 || t == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    case kOffsets: return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 || t == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    default: return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
}

const char* allowed_dtypes(size_t input) {
  switch (input) {
    case kValues: return "float32 or float16";
    case kIndices: return "uint16 or int32";
    case kOffsets: return "int32 or int64";
    default: return "float32";
  }
}

const char* input_name(size_t input) {
  static const char* const names[kNumInputs] = {"A", "values", "indices", "offsets", "C"};
  return input < kNumInputs ? names[input] : "?";
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

bool has_attribute_of_any_type(const OrtApi* api, const OrtKernelInfo* info, const char* name) {
  int64_t i = 0;
  float f = 0.f;
  size_t size = 0;
  return released_ok(api, api->KernelInfoGetAttribute_int64(info, name, &i)) ||
         released_ok(api, api->KernelInfoGetAttribute_float(info, name, &f)) ||
         released_ok(api, api->KernelInfoGetAttribute_string(info, name, nullptr, &size));
}

Attr read_int(const OrtApi* api, const OrtKernelInfo* info, const char* name, int64_t* out) {
  int64_t value = 0;
  if (released_ok(api, api->KernelInfoGetAttribute_int64(info, name, &value))) {
    *out = value;
    return Attr::kRead;
  }
  return has_attribute_of_any_type(api, info, name) ? Attr::kWrongType : Attr::kAbsent;
}

Attr read_float(const OrtApi* api, const OrtKernelInfo* info, const char* name, float* out) {
  float value = 0.f;
  if (released_ok(api, api->KernelInfoGetAttribute_float(info, name, &value))) {
    *out = value;
    return Attr::kRead;
  }
  return has_attribute_of_any_type(api, info, name) ? Attr::kWrongType : Attr::kAbsent;
}

Attr read_string(const OrtApi* api, const OrtKernelInfo* info, const char* name, std::string* out) {
  size_t size = 0;
  if (!released_ok(api, api->KernelInfoGetAttribute_string(info, name, nullptr, &size)))
    return has_attribute_of_any_type(api, info, name) ? Attr::kWrongType : Attr::kAbsent;
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
OrtStatus* attribute_status(const Kernel* k, Attr got, const char* name, const char* type, bool required) {
  if (got == Attr::kWrongType)
    return node_error(k->api, k->node, std::string("attribute '") + name + "' must be of type " + type);
  if (got == Attr::kAbsent && required)
    return node_error(k->api, k->node, std::string("required attribute '") + name + "' is missing (" + type + ")");
  return nullptr;
}

OrtStatus* read_attributes(const OrtKernelInfo* info, Kernel* k) {
  const OrtApi* api = k->api;
  OP_RETURN_IF_ERROR(attribute_status(k, read_int(api, info, "K", &k->K), "K", "int", true));
  OP_RETURN_IF_ERROR(attribute_status(k, read_int(api, info, "N", &k->N), "N", "int", true));
  if (k->K <= 0 || k->K > INT32_MAX)
    return node_error(api, k->node, "attribute K = " + std::to_string(k->K) + " must be in [1, 2^31)");
  if (k->N <= 0 || k->N > INT32_MAX)
    return node_error(api, k->node, "attribute N = " + std::to_string(k->N) + " must be in [1, 2^31)");
  int64_t trans_a = 0;
  OP_RETURN_IF_ERROR(attribute_status(k, read_int(api, info, "transA", &trans_a), "transA", "int", false));
  if (trans_a != 0 && trans_a != 1)
    return node_error(api, k->node, "attribute transA = " + std::to_string(trans_a) + " must be 0 or 1");
  k->trans_a = trans_a == 1;
  OP_RETURN_IF_ERROR(attribute_status(k, read_float(api, info, "alpha", &k->alpha), "alpha", "float", false));
  OP_RETURN_IF_ERROR(attribute_status(k, read_float(api, info, "beta", &k->beta), "beta", "float", false));
  const Attr nnz = read_int(api, info, "nnz", &k->nnz_attr);
  OP_RETURN_IF_ERROR(attribute_status(k, nnz, "nnz", "int", false));
  k->has_nnz_attr = nnz == Attr::kRead;
  if (k->has_nnz_attr && k->nnz_attr < 0)
    return node_error(api, k->node, "attribute nnz = " + std::to_string(k->nnz_attr) + " must be >= 0");
  std::string format = "csr";
  OP_RETURN_IF_ERROR(attribute_status(k, read_string(api, info, "format", &format), "format", "string", false));
  if (format != "csr")
    return node_error(api, k->node, "unknown format '" + format + "' (this library supports: csr)");
  std::string activation;
  OP_RETURN_IF_ERROR(
      attribute_status(k, read_string(api, info, "activation", &activation), "activation", "string", false));
  if (!activation.empty() && activation != "relu")
    return node_error(api, k->node, "unknown activation '" + activation + "' (supported: relu, or none)");
  k->relu = activation == "relu";
  return nullptr;
}

// Checks the declared type (and static shape, where known) of input `i` at kernel creation.
OrtStatus* check_declared_input(const OrtKernelInfo* info, const Kernel* k, size_t i) {
  const OrtApi* api = k->api;
  OrtTypeInfo* type_info = nullptr;
  if (OrtStatus* st = api->KernelInfo_GetInputTypeInfo(info, i, &type_info)) {
    if (i != kC) return st;
    api->ReleaseStatus(st);  // optional C omitted by an empty input name: there is no type to check
    return nullptr;
  }
  const OrtTensorTypeAndShapeInfo* tensor_info = nullptr;
  OrtStatus* st = api->CastTypeInfoToTensorInfo(type_info, &tensor_info);
  TensorMeta meta;
  if (st == nullptr && tensor_info != nullptr) st = read_meta(api, tensor_info, &meta);
  api->ReleaseTypeInfo(type_info);
  if (st != nullptr) return st;
  if (tensor_info == nullptr) return node_error(api, k->node, std::string("input ") + input_name(i) + " must be a tensor");
  if (!dtype_allowed(i, meta.type))
    return node_error(api, k->node, std::string("input ") + input_name(i) + " has type " + dtype_name(meta.type) +
                                        ", expected " + allowed_dtypes(i));
  if (i == kA && !meta.dims.empty()) {  // a known shape: check A against K now
    const int64_t inner = k->trans_a ? meta.dims.front() : meta.dims.back();
    if (k->trans_a && meta.dims.size() != 2)
      return node_error(api, k->node, "transA = 1 needs a 2-D A, got shape " + dims_to_string(meta.dims));
    if (inner > 0 && inner != k->K)
      return node_error(api, k->node, "A has shape " + dims_to_string(meta.dims) + " but attribute K = " +
                                          std::to_string(k->K));
  }
  return nullptr;
}

OrtStatus* csr_view_of(const Kernel* k, const OrtValue* values, const OrtValue* indices, const OrtValue* offsets,
                       CsrView* view) {
  const OrtApi* api = k->api;
  const OrtValue* parts[3] = {values, indices, offsets};
  TensorMeta meta[3];
  void* data[3] = {nullptr, nullptr, nullptr};
  for (int p = 0; p < 3; ++p) {
    OP_RETURN_IF_ERROR(value_meta(api, parts[p], &meta[p]));
    const size_t input = kValues + p;
    if (!dtype_allowed(input, meta[p].type))
      return node_error(api, k->node, std::string("input ") + input_name(input) + " has type " +
                                          dtype_name(meta[p].type) + ", expected " + allowed_dtypes(input));
    if (meta[p].dims.size() != 1)
      return node_error(api, k->node, std::string("input ") + input_name(input) + " must be 1-D, got shape " +
                                          dims_to_string(meta[p].dims));
    OP_RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(parts[p]), &data[p]));
  }
  view->values = data[0];
  view->values_fp16 = meta[0].type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  view->indices = data[1];
  view->indices_u16 = meta[1].type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16;
  view->offsets = data[2];
  view->offsets_i64 = meta[2].type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  view->n_values = meta[0].dims[0];
  view->n_indices = meta[1].dims[0];
  view->n_offsets = meta[2].dims[0];
  return nullptr;
}

OrtStatus* pack_weights(const Kernel* k, const OrtValue* values, const OrtValue* indices, const OrtValue* offsets,
                        PackedCsr* out) {
  CsrView view;
  OP_RETURN_IF_ERROR(csr_view_of(k, values, indices, offsets, &view));
  if (k->has_nnz_attr && k->nnz_attr != view.n_values)
    return node_error(k->api, k->node, "attribute nnz = " + std::to_string(k->nnz_attr) + " but values has " +
                                           std::to_string(view.n_values) + " entries");
  const std::string err = pack_csr(view, k->K, k->N, out);
  return err.empty() ? nullptr : node_error(k->api, k->node, "invalid sparse weight: " + err);
}

// Packs the weights now when all three weight inputs are constant initializers.
OrtStatus* try_prepack(const OrtKernelInfo* info, Kernel* k) {
  const OrtValue* tensors[3] = {nullptr, nullptr, nullptr};
  for (size_t p = 0; p < 3; ++p) {
    int is_constant = 0;
    OrtStatus* st = k->api->KernelInfoGetConstantInput_tensor(info, kValues + p, &is_constant, &tensors[p]);
    if (st != nullptr) {
      k->api->ReleaseStatus(st);
      return nullptr;
    }
    if (!is_constant || tensors[p] == nullptr) return nullptr;
  }
  OP_RETURN_IF_ERROR(pack_weights(k, tensors[0], tensors[1], tensors[2], &k->packed));
  k->prepacked = true;
  return nullptr;
}

OrtStatus* create_kernel(const OrtApi* api, const OrtKernelInfo* info, void** out) {
  auto k = std::make_unique<Kernel>();
  k->api = api;
  k->node = node_name_of(api, info);
  OP_RETURN_IF_ERROR(read_attributes(info, k.get()));
  size_t n_inputs = 0;
  OP_RETURN_IF_ERROR(api->KernelInfo_GetInputCount(info, &n_inputs));
  if (n_inputs < 4 || n_inputs > kNumInputs)
    return node_error(api, k->node, "expects 4 or 5 inputs (A, values, indices, offsets[, C]), got " +
                                        std::to_string(n_inputs));
  for (size_t i = 0; i < n_inputs; ++i) OP_RETURN_IF_ERROR(check_declared_input(info, k.get(), i));
  OP_RETURN_IF_ERROR(try_prepack(info, k.get()));
  k->table = &select_kernel();
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
    if (a.dims[0] != k->K)
      return node_error(k->api, k->node, "A has shape " + dims_to_string(a.dims) + " but K = " + std::to_string(k->K) +
                                             " (transA = 1: A is [K, M])");
    s->M = a.dims[1];
    s->y_dims = {s->M, k->N};
    return nullptr;
  }
  if (a.dims.back() != k->K)
    return node_error(k->api, k->node, "A has shape " + dims_to_string(a.dims) + " but K = " + std::to_string(k->K) +
                                           " (last dimension of A must be K)");
  s->M = element_count(a.dims) / k->K;
  s->y_dims.assign(a.dims.begin(), a.dims.end() - 1);
  s->y_dims.push_back(k->N);
  return nullptr;
}

OrtStatus* check_bias(const Kernel* k, const TensorMeta& c, int64_t M, BiasView* bias) {
  size_t lead = 0;
  while (c.dims.size() - lead > 2 && c.dims[lead] == 1) ++lead;
  const std::vector<int64_t> d(c.dims.begin() + lead, c.dims.end());
  const int64_t rows = d.size() == 2 ? d[0] : 1;
  const int64_t cols = d.empty() ? 1 : d.back();
  const bool ok = d.size() <= 2 && (rows == 1 || rows == M) && (cols == 1 || cols == k->N);
  if (!ok)
    return node_error(k->api, k->node, "C has shape " + dims_to_string(c.dims) + ", which does not broadcast to [M, N] = [" +
                                           std::to_string(M) + ", " + std::to_string(k->N) + "]");
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
  const OrtValue* inputs[kNumInputs] = {nullptr, nullptr, nullptr, nullptr, nullptr};
  for (size_t i = 0; i < n_inputs && i < kNumInputs; ++i)
    OP_RETURN_IF_ERROR(api->KernelContext_GetInput(context, i, &inputs[i]));

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
  if (inputs[kC] != nullptr) {
    TensorMeta c_meta;
    OP_RETURN_IF_ERROR(value_meta(api, inputs[kC], &c_meta));
    OP_RETURN_IF_ERROR(check_bias(k, c_meta, shapes.M, &args.bias));
    void* c_data = nullptr;
    OP_RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(inputs[kC]), &c_data));
    args.bias.data = static_cast<const float*>(c_data);
  }

  PackedCsr per_run;
  if (!k->prepacked) OP_RETURN_IF_ERROR(pack_weights(k, inputs[kValues], inputs[kIndices], inputs[kOffsets], &per_run));
  args.w = arrays_of(k->prepacked ? k->packed : per_run);

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
  k->table->gemm(args, parallel);
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

OrtCustomOp make_op() {
  OrtCustomOp op;
  std::memset(&op, 0, sizeof op);
  op.version = ORT_API_VERSION;
  op.GetName = [](const OrtCustomOp*) { return kOpType; };
  op.GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return nullptr; };
  op.GetInputTypeCount = [](const OrtCustomOp*) -> size_t { return kNumInputs; };
  op.GetInputType = [](const OrtCustomOp*, size_t i) {
    // values / indices / offsets accept several dtypes; the kernel checks them at creation.
    return (i == kA || i == kC) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  };
  op.GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
  op.GetOutputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
  op.GetInputCharacteristic = [](const OrtCustomOp*, size_t i) {
    return i == kC ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  };
  op.GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  op.GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
  op.GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.CreateKernelV2 = [](const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info, void** kernel) {
    *kernel = nullptr;
    struct Args {
      const OrtApi* api;
      const OrtKernelInfo* info;
    } args{api, info};
    return guarded(api, node_name_of(api, info), [](void* a, void* out) {
      auto* p = static_cast<Args*>(a);
      return create_kernel(p->api, p->info, static_cast<void**>(out));
    }, &args, kernel);
  };
  op.KernelComputeV2 = [](void* kernel, OrtKernelContext* context) {
    auto* k = static_cast<Kernel*>(kernel);
    return guarded(k->api, k->node, [](void* a, void* b) {
      return compute(static_cast<Kernel*>(a), static_cast<OrtKernelContext*>(b));
    }, k, context);
  };
  op.KernelDestroy = [](void* kernel) {
    auto* k = static_cast<Kernel*>(kernel);
    if (k->cpu_memory != nullptr) k->api->ReleaseMemoryInfo(k->cpu_memory);
    delete k;
  };
  op.GetStartVersion = [](const OrtCustomOp*) { return kSinceVersion; };
  op.GetEndVersion = [](const OrtCustomOp*) { return INT_MAX; };
  return op;
}

}  // namespace

const OrtCustomOp* sparse_gemm_op() {
  static const OrtCustomOp op = make_op();
  return &op;
}

}  // namespace onnx_prune
