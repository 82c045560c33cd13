// The table of storage formats: adding a format is one unit plus one line here.
#include <string>

#include "formats/format.h"

namespace onnx_prune {
namespace {

const Format* const kFormats[] = {&format_csr::kFormat, &format_csr_int8::kFormat, &format_bcsr::kFormat,
                                  &format_csr_int8_dynamic::kFormat, &format_bcsr_int8_dynamic::kFormat};

}  // namespace

const Format* find_format(const std::string& name) {
  for (const Format* format : kFormats) {
    if (name == format->name) return format;
  }
  return nullptr;
}

std::string format_names() {
  std::string names;
  for (const Format* format : kFormats) names += (names.empty() ? "" : ", ") + std::string(format->name);
  return names;
}

}  // namespace onnx_prune
