// jit_selftest.cpp: a host-only module that exists so CI machines without a GPU exercise the whole
// compile_ops path (spec, compiler, cache, lock, ctypes binding, error strings).
#include "aiter_ext_host.h"

AITER_EXT_DEFINE_ERROR_STRING()

// y += a * x over n float32 elements.
AITER_EXT_EXPORT int jit_selftest_axpy(float* y, const float* x, float a, int64_t n) {
  if (n < 0) return aiter_ext::fail(AITER_EXT_ERR_INVALID_ARGUMENT, "jit_selftest_axpy: n must be >= 0, got %lld",
                                    static_cast<long long>(n));
  if (n > 0 && (y == nullptr || x == nullptr))
    return aiter_ext::fail(AITER_EXT_ERR_INVALID_ARGUMENT, "jit_selftest_axpy: y and x must not be NULL");
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
  return AITER_EXT_OK;
}
