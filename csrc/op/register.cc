// The library's single exported symbol: RegisterCustomOps, called by onnxruntime's
// SessionOptions.register_custom_ops_library / RegisterCustomOpsLibrary.
#include <mutex>
#include <vector>

#include "onnxruntime_c_api.h"
#include "sparse_gemm_op.h"

namespace {

// Domains must outlive every session that uses them, and onnxruntime may be unloaded before this
// library, so they are kept for the life of the process (one small object per registration).
std::mutex g_domains_mutex;
std::vector<OrtCustomOpDomain*>* g_domains = new std::vector<OrtCustomOpDomain*>();

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  // Ask for the API version these headers describe (the oldest we support), never a newer one:
  // a runtime older than the headers cannot serve it.
  const OrtApi* api = api_base ? api_base->GetApi(ORT_API_VERSION) : nullptr;
  if (api == nullptr) return nullptr;  // runtime older than 1.17: nothing can be reported through it
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* st = api->CreateCustomOpDomain(onnx_prune::kDomain, &domain)) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, onnx_prune::sparse_gemm_op())) {
    api->ReleaseCustomOpDomain(domain);
    return st;
  }
  if (OrtStatus* st = api->AddCustomOpDomain(options, domain)) {
    api->ReleaseCustomOpDomain(domain);
    return st;
  }
  std::lock_guard<std::mutex> lock(g_domains_mutex);
  g_domains->push_back(domain);
  return nullptr;
}
