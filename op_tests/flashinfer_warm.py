"""Build FlashInfer's JIT modules that the benchmarks compare with, ahead of them (GPU only).

    python op_tests/flashinfer_warm.py sampling attention pod batch_attention segment_gemm sparse launch

FlashInfer compiles each kernel family with nvcc on first use (about a minute each on the lent
machines), and a lent machine starts bare. Run this in the background while the tests run, so the
benchmarks that follow time kernels rather than wait for builds.
"""

from __future__ import annotations

import sys
import time

import torch


def _sampling(fi):
    fi.sampling.sampling_from_probs(torch.softmax(torch.randn(2, 1000, device="cuda"), -1))


def _attention(fi):
    """The bf16 d128 prefill (causal) and tensor-core decode kernels of the attention benchmarks."""
    dev, dtype = "cuda", torch.bfloat16
    pages, page = 8, 16
    cache = torch.randn(pages, 2, page, 8, 128, device=dev).to(dtype)
    kv_indptr = torch.tensor([0, pages], dtype=torch.int32, device=dev)
    kv_indices = torch.arange(pages, dtype=torch.int32, device=dev)
    last = torch.tensor([page], dtype=torch.int32, device=dev)
    ws = torch.empty(128 << 20, dtype=torch.uint8, device=dev)
    prefill = fi.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD")
    prefill.plan(torch.tensor([0, 16], dtype=torch.int32, device=dev), kv_indptr, kv_indices, last, 32, 8, 128, page,
                 causal=True, q_data_type=dtype, kv_data_type=dtype)
    prefill.run(torch.randn(16, 32, 128, device=dev).to(dtype), cache)
    decode = fi.BatchDecodeWithPagedKVCacheWrapper(torch.empty(128 << 20, dtype=torch.uint8, device=dev), "NHD",
                                                   use_tensor_cores=True)
    decode.plan(kv_indptr, kv_indices, last, 32, 8, 128, page, q_data_type=dtype, kv_data_type=dtype)
    decode.run(torch.randn(1, 32, 128, device=dev).to(dtype), cache)


def _paged_tables(dev, pages=8, page=16):
    cache = torch.randn(pages, 2, page, 8, 128, device=dev).to(torch.bfloat16)
    kv_indptr = torch.tensor([0, pages], dtype=torch.int32, device=dev)
    return cache, kv_indptr, torch.arange(pages, dtype=torch.int32, device=dev), \
        torch.tensor([page], dtype=torch.int32, device=dev)


def _pod(fi):
    """BatchPOD (bench_pod.py): one causal prefill and one decode on a bf16 d128 page-16 cache."""
    dev, dtype = "cuda", torch.bfloat16
    cache, kv_indptr, kv_indices, last = _paged_tables(dev)
    w = fi.BatchPODWithPagedKVCacheWrapper(torch.empty(128 << 20, dtype=torch.uint8, device=dev), "NHD")
    w.plan(torch.tensor([0, 16], dtype=torch.int32, device=dev), kv_indptr, kv_indices, last,
           torch.tensor([0, 1], dtype=torch.int32, device=dev), kv_indptr, kv_indices, last, 32, 8, 128, 16,
           q_data_type=dtype, kv_data_type=dtype)
    w.run(torch.randn(16, 32, 128, device=dev).to(dtype), cache, torch.randn(1, 32, 128, device=dev).to(dtype), cache,
          causal_p=True)


def _batch_attention(fi):
    """BatchAttention, the persistent mixed-batch kernel (bench_pod.py)."""
    dev, dtype = "cuda", torch.bfloat16
    cache, kv_indptr, kv_indices, _ = _paged_tables(dev)
    w = fi.BatchAttention("NHD", device=dev)
    w.plan(torch.tensor([0, 16], dtype=torch.int32, device=dev), kv_indptr, kv_indices,
           torch.tensor([128], dtype=torch.int32, device=dev), 32, 8, 128, 128, 16, causal=True,
           q_data_type=dtype, kv_data_type=dtype)
    w.run(torch.randn(16, 32, 128, device=dev).to(dtype), cache)


def _segment_gemm(fi):
    dev = "cuda"
    x = torch.randn(64, 4096, device=dev).to(torch.bfloat16)
    w = torch.randn(2, 4096, 16, device=dev).to(torch.bfloat16)
    fi.SegmentGEMMWrapper(torch.empty(128 << 20, dtype=torch.uint8, device=dev)).run(
        x, w, 2, False, seg_lens=torch.tensor([32, 32], device=dev))


def _sparse(fi):
    """BlockSparseAttentionWrapper (bench_block_sparse.py): bf16 d128, not causal."""
    dev, dtype = "cuda", torch.bfloat16
    w = fi.BlockSparseAttentionWrapper(torch.empty(128 << 20, dtype=torch.uint8, device=dev))
    w.plan(torch.tensor([0, 1, 2], dtype=torch.int32, device=dev), torch.tensor([0, 1], dtype=torch.int32, device=dev),
           128, 128, 64, 64, 32, 8, 128, q_data_type=dtype, o_data_type=dtype)
    w.run(torch.randn(128, 32, 128, device=dev).to(dtype), torch.randn(128, 8, 128, device=dev).to(dtype),
          torch.randn(128, 8, 128, device=dev).to(dtype))


def _launch(fi):
    """The calls of bench_launch.py other than decode (the attention family): norms, RoPE, min-p, merge."""
    dev = "cuda"
    x, w = torch.randn(16, 4096, device=dev).to(torch.bfloat16), torch.randn(4096, device=dev).to(torch.bfloat16)
    fi.rmsnorm(x, w)
    fi.fused_add_rmsnorm(x, x.clone(), w)
    q, k = torch.randn(16, 32, 128, device=dev).to(torch.bfloat16), torch.randn(16, 8, 128, device=dev).to(torch.bfloat16)
    fi.apply_llama31_rope(q, k, torch.tensor([0, 16], dtype=torch.int32, device=dev),
                          torch.zeros(1, dtype=torch.int32, device=dev))
    fi.sampling.min_p_sampling_from_probs(torch.softmax(torch.randn(2, 1000, device=dev), -1), 0.05)
    v, s = torch.randn(4, 32, 128, device=dev).to(torch.bfloat16), torch.randn(4, 32, device=dev)
    fi.merge_state(v, s, v, s)


def main() -> int:
    import flashinfer as fi

    for family in sys.argv[1:]:
        t0 = time.perf_counter()
        {"sampling": _sampling, "attention": _attention, "pod": _pod, "batch_attention": _batch_attention,
         "segment_gemm": _segment_gemm, "sparse": _sparse, "launch": _launch}[family](fi)
        print(f"FlashInfer {family} built in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
