// aiter_ext_compat.h: one device source for nvcc (CUDA) and hipcc (HIP).
//
// Device modules include this header and use only the names it maps (gpuStream_t, gpuGetLastError,
// aiter_ext::half_t / bfloat16_t and their float conversions) plus what CUDA and HIP spell alike:
// __global__, __shared__, __syncthreads, __launch_bounds__, <<<>>> launches, uint4/float2, exp2f,
// log2f, fmaxf. Host-only modules include aiter_ext_host.h instead.
#pragma once

#include "aiter_ext_host.h"

#if defined(__HIPCC__)
#include <hip/hip_bf16.h>
#include <hip/hip_fp16.h>
#include <hip/hip_runtime.h>

using gpuStream_t = hipStream_t;
using gpuError_t = hipError_t;
#define gpuSuccess hipSuccess
#define gpuGetLastError hipGetLastError
#define gpuGetErrorString hipGetErrorString

namespace aiter_ext {
using half_t = __half;
using bfloat16_t = __hip_bfloat16;
}  // namespace aiter_ext

#elif defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

using gpuStream_t = cudaStream_t;
using gpuError_t = cudaError_t;
#define gpuSuccess cudaSuccess
#define gpuGetLastError cudaGetLastError
#define gpuGetErrorString cudaGetErrorString

namespace aiter_ext {
using half_t = __half;
using bfloat16_t = __nv_bfloat16;
}  // namespace aiter_ext

#else
#error "aiter_ext_compat.h is for device modules built by nvcc or hipcc; host modules include aiter_ext_host.h"
#endif

namespace aiter_ext {

// Kernels compute in fp32 and round once on the way out (round to nearest even).
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(half_t x) { return __half2float(x); }
__device__ __forceinline__ float to_float(bfloat16_t x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ half_t from_float<half_t>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ bfloat16_t from_float<bfloat16_t>(float x) { return __float2bfloat16(x); }

// A kernel launch fails asynchronously only for faults; configuration errors show up here at once.
inline int check_launch(const char* what) {
  gpuError_t err = gpuGetLastError();
  if (err != gpuSuccess) return fail(static_cast<int>(err), "%s: launch failed: %s", what, gpuGetErrorString(err));
  return AITER_EXT_OK;
}

}  // namespace aiter_ext
