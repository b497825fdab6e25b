// aiter_ext_host.h: what every compile_ops module shares, host-only (no GPU runtime needed).
//
// The ctypes ABI: every exported function returns int, 0 on success. A failure returns a non-zero
// code and records a message for this thread; Python then calls aiter_ext_error_string(code) (which
// AITER_EXT_DEFINE_ERROR_STRING() defines, once per module) and raises RuntimeError with it.
// Negative codes are ours; positive codes are the GPU runtime's own (cudaError_t / hipError_t).
#pragma once

#include <cstdarg>
#include <cstdint>
#include <cstdio>

// Exported entry points keep default visibility even if a module is built with -fvisibility=hidden.
#define AITER_EXT_EXPORT extern "C" __attribute__((visibility("default")))

enum AiterExtStatus : int {
  AITER_EXT_OK = 0,
  AITER_EXT_ERR_INVALID_ARGUMENT = -1,  // null pointer, negative size, misaligned buffer
  AITER_EXT_ERR_UNSUPPORTED = -2,       // a shape or dtype this kernel was not written for
};

namespace aiter_ext {

struct ErrorRecord {
  int code;
  char message[512];
};

// One record per thread: the Python wrapper asks for the message on the thread that made the call.
// A function-local static in an inline function gives exactly one instance per shared library.
inline ErrorRecord& last_error() {
  static thread_local ErrorRecord record{0, {0}};
  return record;
}

// Record a printf-style message for `code` and return `code`: `return aiter_ext::fail(...);`.
__attribute__((format(printf, 2, 3))) inline int fail(int code, const char* fmt, ...) {
  ErrorRecord& rec = last_error();
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(rec.message, sizeof(rec.message), fmt, args);
  va_end(args);
  rec.code = code;
  return code;
}

inline const char* error_string(int code) {
  const ErrorRecord& rec = last_error();
  if (code == AITER_EXT_OK) return "success";
  if (rec.code == code && rec.message[0] != '\0') return rec.message;
  switch (code) {
    case AITER_EXT_ERR_INVALID_ARGUMENT: return "invalid argument";
    case AITER_EXT_ERR_UNSUPPORTED: return "unsupported shape or dtype";
    default: return "error without a recorded message";
  }
}

}  // namespace aiter_ext

// Put this in exactly one source file of each module: compile_ops refuses a library without it.
#define AITER_EXT_DEFINE_ERROR_STRING() \
  AITER_EXT_EXPORT const char* aiter_ext_error_string(int code) { return ::aiter_ext::error_string(code); }
