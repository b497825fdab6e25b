"""Build FlashInfer's JIT modules that the benchmarks compare with, ahead of them (GPU only).

    python op_tests/flashinfer_warm.py sampling attention

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


def main() -> int:
    import flashinfer as fi

    for family in sys.argv[1:]:
        t0 = time.perf_counter()
        {"sampling": _sampling, "attention": _attention}[family](fi)
        print(f"FlashInfer {family} built in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
