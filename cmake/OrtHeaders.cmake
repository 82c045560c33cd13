# Locates the onnxruntime C API headers (the onnxruntime wheel ships none).
#  1. ORT_INCLUDE_DIR (CMake variable or environment): a folder holding onnxruntime_c_api.h.
#  2. Otherwise the official onnxruntime 1.17.0 headers carried by the pinned PyPI wheel
#     amd-quark==0.13: downloaded with `pip download --no-deps`, sha256-checked, and only the four
#     session headers extracted into the build tree. The wheel is only unpacked, never installed,
#     so its Requires-Python (>=3.11,<3.14) is ignored: the build works on every Python we support.
#     API 17 is the oldest version we support, so building against it keeps the library loadable
#     by every onnxruntime from 1.17 on.
set(ORT_HEADERS_WHEEL_NAME "amd_quark-0.13-py3-none-any.whl")
set(ORT_HEADERS_WHEEL_SPEC "amd-quark==0.13")
set(ORT_HEADERS_WHEEL_SHA256 "3b3e58a4cbbcff20d27815b641aa4de4d698efde3c782306cb4a6a05bcf55c8c")
set(ORT_HEADERS_IN_WHEEL "quark/onnx/operators/custom_ops/include/onnxruntime-1.17.0/onnxruntime/core/session")
set(ORT_HEADER_FILES onnxruntime_c_api.h onnxruntime_cxx_api.h onnxruntime_cxx_inline.h onnxruntime_float16.h)

function(onnx_prune_find_ort_headers out_var)
  if(NOT ORT_INCLUDE_DIR AND DEFINED ENV{ORT_INCLUDE_DIR})
    set(ORT_INCLUDE_DIR "$ENV{ORT_INCLUDE_DIR}")
  endif()
  if(ORT_INCLUDE_DIR)
    if(NOT EXISTS "${ORT_INCLUDE_DIR}/onnxruntime_c_api.h")
      message(FATAL_ERROR "ORT_INCLUDE_DIR=${ORT_INCLUDE_DIR} has no onnxruntime_c_api.h")
    endif()
    message(STATUS "onnxruntime headers: ${ORT_INCLUDE_DIR} (ORT_INCLUDE_DIR)")
    set(${out_var} "${ORT_INCLUDE_DIR}" PARENT_SCOPE)
    return()
  endif()

  set(dest "${CMAKE_BINARY_DIR}/ort-headers")
  if(EXISTS "${dest}/onnxruntime_c_api.h")
    set(${out_var} "${dest}" PARENT_SCOPE)
    return()
  endif()

  set(wheel_dir "${CMAKE_BINARY_DIR}/ort-headers-wheel")
  set(wheel "${wheel_dir}/${ORT_HEADERS_WHEEL_NAME}")
  if(NOT EXISTS "${wheel}")
    find_package(Python3 COMPONENTS Interpreter REQUIRED)
    message(STATUS "Downloading ${ORT_HEADERS_WHEEL_SPEC} for the onnxruntime 1.17.0 headers")
    execute_process(
      COMMAND "${Python3_EXECUTABLE}" -m pip download --no-deps --only-binary=:all: --ignore-requires-python
              "${ORT_HEADERS_WHEEL_SPEC}" -d "${wheel_dir}"
      RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(NOT rc EQUAL 0 OR NOT EXISTS "${wheel}")
      message(FATAL_ERROR "Could not download ${ORT_HEADERS_WHEEL_SPEC} (needed for the onnxruntime "
                          "headers): ${err}\nSet ORT_INCLUDE_DIR to a folder with onnxruntime_c_api.h instead.")
    endif()
  endif()
  file(SHA256 "${wheel}" digest)
  if(NOT digest STREQUAL ORT_HEADERS_WHEEL_SHA256)
    file(REMOVE "${wheel}")
    message(FATAL_ERROR "${ORT_HEADERS_WHEEL_NAME}: sha256 ${digest} != pinned ${ORT_HEADERS_WHEEL_SHA256}")
  endif()

  set(unpack "${CMAKE_BINARY_DIR}/ort-headers-unpack")
  file(REMOVE_RECURSE "${unpack}")
  set(patterns "")
  foreach(h IN LISTS ORT_HEADER_FILES)
    list(APPEND patterns "${ORT_HEADERS_IN_WHEEL}/${h}")
  endforeach()
  file(ARCHIVE_EXTRACT INPUT "${wheel}" DESTINATION "${unpack}" PATTERNS ${patterns})
  file(MAKE_DIRECTORY "${dest}")
  foreach(h IN LISTS ORT_HEADER_FILES)
    if(NOT EXISTS "${unpack}/${ORT_HEADERS_IN_WHEEL}/${h}")
      message(FATAL_ERROR "${h} is missing from ${ORT_HEADERS_WHEEL_NAME}")
    endif()
    file(COPY "${unpack}/${ORT_HEADERS_IN_WHEEL}/${h}" DESTINATION "${dest}")
  endforeach()
  file(REMOVE_RECURSE "${unpack}")
  message(STATUS "onnxruntime headers: ${dest} (from ${ORT_HEADERS_WHEEL_SPEC}, sha256 verified)")
  set(${out_var} "${dest}" PARENT_SCOPE)
endfunction()
