// merge_state.cu: merge two attention states (FlashInfer's merge_state semantics, base-2 LSE).
//
// A state is v [rows, D] with its log2-sum-exp s [rows] (fp32), rows = num_tokens * num_heads.
//   m = max(sa, sb), wa = 2^(sa - m), wb = 2^(sb - m)
//   v = (wa * va + wb * vb) / (wa + wb),   s = m + log2(wa + wb)
// Two empty states (sa = sb = -inf) give v = 0, s = -inf; one empty state gives a copy of the other.
//
// The op is memory bound, so the kernel is built around moving bytes:
// - every access to v is a 16-byte vector (8 fp16/bf16 or 4 fp32 elements);
// - a block owns a tile of whole, consecutive rows; since rows are contiguous the tile is one
//   contiguous span of memory, and chunk k of the tile sits at element k * VEC (no per-row address math);
// - each thread moves kChunksPerThread chunks per operand (16 KiB per operand per block), all loads
//   issued before the per-row weights are needed, so their latency overlaps the LSE loads.
// The per-row weights are computed once per row, by one thread, into shared memory. That thread is
// also the only one to read s_a[row] and write s_out[row], and each v chunk is read and written by
// the same thread, so v_out == v_a and s_out == s_a (in-place merging) are safe.
#include "aiter_ext_compat.h"

namespace {

// Tile shape; the macros exist so a benchmark can sweep them (-DMERGE_STATE_BLOCK=...).
#ifndef MERGE_STATE_BLOCK
#define MERGE_STATE_BLOCK 256
#endif
#ifndef MERGE_STATE_CHUNKS_PER_THREAD
#define MERGE_STATE_CHUNKS_PER_THREAD 4
#endif
constexpr int kBlock = MERGE_STATE_BLOCK;                         // threads per block
constexpr int kChunksPerThread = MERGE_STATE_CHUNKS_PER_THREAD;  // 16-byte chunks per thread per operand
constexpr int kTileChunks = kBlock * kChunksPerThread;
constexpr int kMaxHeadDim = 512;

// Marks a row that the mask leaves untouched (real weights are never negative).
constexpr float kSkipRow = -1.0f;

template <typename T>
__global__ void __launch_bounds__(kBlock)
    merge_state_pair_kernel(const T* v_a, const float* s_a, const T* v_b, const float* s_b, T* v_out,
                            float* s_out, const uint8_t* mask, int64_t num_rows, int64_t num_heads,
                            int rows_per_tile, int chunks_per_row) {
  constexpr int kVec = 16 / sizeof(T);
  __shared__ float2 weights[kBlock];  // rows_per_tile <= kBlock

  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * rows_per_tile;
  const int64_t rows_left = num_rows - row0;
  const int rows = rows_left < rows_per_tile ? static_cast<int>(rows_left) : rows_per_tile;
  const int chunks = rows * chunks_per_row;
  const int64_t elem0 = row0 * chunks_per_row * kVec;

  // 1. Loads of v: independent of the weights, issued first.
  uint4 a[kChunksPerThread], b[kChunksPerThread];
  const uint4* va4 = reinterpret_cast<const uint4*>(v_a + elem0);
  const uint4* vb4 = reinterpret_cast<const uint4*>(v_b + elem0);
#pragma unroll
  for (int u = 0; u < kChunksPerThread; ++u) {
    const int k = threadIdx.x + u * kBlock;
    if (k < chunks) {
      a[u] = va4[k];
      b[u] = vb4[k];
    }
  }

  // 2. Per-row weights, normalized so that v = wa * va + wb * vb.
  if (static_cast<int>(threadIdx.x) < rows) {
    const int64_t row = row0 + threadIdx.x;
    float2 w = make_float2(kSkipRow, 0.0f);
    if (mask == nullptr || mask[row / num_heads] != 0) {
      const float sa = s_a[row];
      const float sb = s_b[row];
      const float m = fmaxf(sa, sb);
      float s = -INFINITY;
      w = make_float2(0.0f, 0.0f);
      if (m != -INFINITY) {  // both empty: v = 0 and s = -inf, where the formula would give NaN
        const float ea = exp2f(sa - m);
        const float eb = exp2f(sb - m);
        const float sum = ea + eb;  // in [1, 2]
        const float inv = 1.0f / sum;
        w = make_float2(ea * inv, eb * inv);
        s = m + log2f(sum);
      }
      s_out[row] = s;
    }
    weights[threadIdx.x] = w;
  }
  __syncthreads();

  // 3. Combine and store. A zero weight drops its operand entirely (not 0 * v), so an empty state's
  // v may hold anything, NaN included, and the other state is copied bit for bit.
  uint4* out4 = reinterpret_cast<uint4*>(v_out + elem0);
#pragma unroll
  for (int u = 0; u < kChunksPerThread; ++u) {
    const int k = threadIdx.x + u * kBlock;
    if (k >= chunks) continue;
    const float2 w = weights[k / chunks_per_row];
    if (w.x == kSkipRow) continue;
    T ea[kVec], eb[kVec], eo[kVec];
    __builtin_memcpy(ea, &a[u], sizeof(uint4));
    __builtin_memcpy(eb, &b[u], sizeof(uint4));
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      float o = 0.0f;
      if (w.x != 0.0f) o = w.x * aiter_ext::to_float(ea[i]);
      if (w.y != 0.0f) o = fmaf(w.y, aiter_ext::to_float(eb[i]), o);
      eo[i] = aiter_ext::from_float<T>(o);
    }
    uint4 packed;
    __builtin_memcpy(&packed, eo, sizeof(uint4));
    out4[k] = packed;
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename T>
int launch(void* v_a, void* s_a, void* v_b, void* s_b, void* v_out, void* s_out, void* mask, int64_t num_tokens,
           int64_t num_heads, int64_t head_dim, gpuStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  if (head_dim <= 0 || head_dim > kMaxHeadDim || head_dim % kVec != 0)
    return aiter_ext::fail(AITER_EXT_ERR_UNSUPPORTED,
                           "merge_state_pair: head_dim must be a positive multiple of %d up to %d for this dtype, "
                           "got %lld",
                           kVec, kMaxHeadDim, static_cast<long long>(head_dim));
  const int64_t num_rows = num_tokens * num_heads;
  if (num_rows == 0) return AITER_EXT_OK;  // nothing to do, and a grid of 0 blocks is a launch error
  if (!v_a || !s_a || !v_b || !s_b || !v_out || !s_out)
    return aiter_ext::fail(AITER_EXT_ERR_INVALID_ARGUMENT, "merge_state_pair: NULL tensor pointer");
  if (!aligned16(v_a) || !aligned16(v_b) || !aligned16(v_out))
    return aiter_ext::fail(AITER_EXT_ERR_INVALID_ARGUMENT,
                           "merge_state_pair: v_a, v_b and v_out must be 16-byte aligned (16-byte vector accesses)");

  const int chunks_per_row = static_cast<int>(head_dim / kVec);  // 1..128
  const int rows_per_tile = kTileChunks / chunks_per_row < kBlock ? kTileChunks / chunks_per_row : kBlock;
  const int64_t tiles = (num_rows + rows_per_tile - 1) / rows_per_tile;
  if (tiles > 0x7fffffff)
    return aiter_ext::fail(AITER_EXT_ERR_UNSUPPORTED, "merge_state_pair: %lld rows exceed the grid limit",
                           static_cast<long long>(num_rows));

  merge_state_pair_kernel<T><<<static_cast<unsigned>(tiles), kBlock, 0, stream>>>(
      static_cast<const T*>(v_a), static_cast<const float*>(s_a), static_cast<const T*>(v_b),
      static_cast<const float*>(s_b), static_cast<T*>(v_out), static_cast<float*>(s_out),
      static_cast<const uint8_t*>(mask), num_rows, num_heads, rows_per_tile, chunks_per_row);
  return aiter_ext::check_launch("merge_state_pair");
}

}  // namespace

AITER_EXT_DEFINE_ERROR_STRING()

// v: [num_tokens, num_heads, head_dim] contiguous, s: [num_tokens, num_heads] fp32 contiguous.
// v_out/s_out may alias v_a/s_a. mask: one byte per token (bool/uint8) or NULL; rows of a token whose
// byte is 0 are not written. dtype_code: 0 fp16, 1 bf16, 2 fp32 (of v; s is always fp32).
AITER_EXT_EXPORT int merge_state_pair(void* v_a, void* s_a, void* v_b, void* s_b, void* v_out, void* s_out,
                                      void* mask, int64_t num_tokens, int64_t num_heads, int64_t head_dim,
                                      int64_t dtype_code, gpuStream_t stream) {
  if (num_tokens < 0 || num_heads < 0)
    return aiter_ext::fail(AITER_EXT_ERR_INVALID_ARGUMENT, "merge_state_pair: negative num_tokens or num_heads");
  switch (dtype_code) {
    case 0:
      return launch<aiter_ext::half_t>(v_a, s_a, v_b, s_b, v_out, s_out, mask, num_tokens, num_heads, head_dim, stream);
    case 1:
      return launch<aiter_ext::bfloat16_t>(v_a, s_a, v_b, s_b, v_out, s_out, mask, num_tokens, num_heads, head_dim,
                                           stream);
    case 2:
      return launch<float>(v_a, s_a, v_b, s_b, v_out, s_out, mask, num_tokens, num_heads, head_dim, stream);
    default:
      return aiter_ext::fail(AITER_EXT_ERR_UNSUPPORTED,
                             "merge_state_pair: dtype_code must be 0 (fp16), 1 (bf16) or 2 (fp32), got %lld",
                             static_cast<long long>(dtype_code));
  }
}
