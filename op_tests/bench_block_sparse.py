"""Block-sparse attention speed (issue 16; GPU only): time against the number of computed blocks, beside
the dense kernel and FlashInfer's BlockSparseAttentionWrapper in the same run.

    python op_tests/bench_block_sparse.py [--no-flashinfer]

One sequence of M = N = 8192, 32 query / 8 KV heads, d128, bf16, R = C = 64 (and R = C = 128), random
block patterns at 10%, 50% and 100% density, not causal. The issue's target: per computed block at least
85% of the dense kernel's throughput, i.e. ``dense_us * density / sparse_us >= 0.85``. Each output is
checked against FlashInfer's (or, without it, against the dense run at 100%) before it is timed.
CUDA-graph replay medians, and eager medians beside them.
"""

from __future__ import annotations

import sys

import torch

import aiter_ext
from aiter_ext.core.bench import (
    beside_flashinfer, benchmark_setup, markdown_table, print_report, time_us, warm_up_gpu,
)
from aiter_ext.core.testing import max_error

M = N = 8192
HQ, HKV, D, DTYPE = 32, 8, 128, torch.bfloat16
PEAK_TFLOPS = 989.0  # H100 SXM dense bf16 (H200 the same)


def _bsr(R, C, density, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dense = torch.rand(M // R, N // C, generator=gen) < density
    indptr = torch.zeros(M // R + 1, dtype=torch.int32)
    indptr[1:] = dense.sum(1).cumsum(0)
    return indptr, dense.nonzero()[:, 1].to(torch.int32), int(dense.sum())


def main(argv) -> int:
    ok, fi = benchmark_setup("--no-flashinfer" in argv)
    if not ok:
        return 1
    warm_up_gpu()
    dev = torch.device("cuda")
    q = torch.randn(M, HQ, D, device=dev).to(DTYPE)
    k = torch.randn(N, HKV, D, device=dev).to(DTYPE)
    v = torch.randn(N, HKV, D, device=dev).to(DTYPE)
    ws = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    dense = aiter_ext.BatchPrefillWithRaggedKVCacheWrapper(ws)
    ind = torch.tensor([0, M], dtype=torch.int32)
    dense.plan(ind, torch.tensor([0, N], dtype=torch.int32), HQ, HKV, D, causal=False, q_data_type=DTYPE)
    dense_us = time_us(lambda: dense.run(q, k, v), graph=True)
    rows = []
    for R, C in ((64, 64), (128, 128)):
        for density in (0.1, 0.5, 1.0):
            indptr, indices, nnz = _bsr(R, C, density)
            w = aiter_ext.BlockSparseAttentionWrapper(ws)
            w.plan(indptr.to(dev), indices.to(dev), M, N, R, C, HQ, HKV, D, q_data_type=DTYPE, o_data_type=DTYPE)
            ours = w.run(q, k, v)
            fi_us, fi_eager, note = None, None, ""
            if fi is not None:
                fw = fi.BlockSparseAttentionWrapper(torch.empty(256 << 20, dtype=torch.uint8, device=dev))
                fw.plan(indptr.to(dev), indices.to(dev), M, N, R, C, HQ, HKV, D, q_data_type=DTYPE, o_data_type=DTYPE)
                err = max_error(ours, fw.run(q, k, v))
                note = f"max error vs FlashInfer {err:.2g}"
                if not err <= 2e-2:
                    rows.append({"R x C": f"{R} x {C}", "density": density, "note": "WRONG: " + note})
                    continue
                fi_us = time_us(lambda: fw.run(q, k, v), graph=True)
                fi_eager = time_us(lambda: fw.run(q, k, v))
            elif density == 1.0:
                err = max_error(ours, dense.run(q, k, v))
                note = f"max error vs dense {err:.2g}"
            us = time_us(lambda: w.run(q, k, v), graph=True)
            eager = time_us(lambda: w.run(q, k, v))
            actual = nnz / ((M // R) * (N // C))
            flops = 4.0 * nnz * R * C * HQ * D
            rows.append({"R x C": f"{R} x {C}", "density": round(actual, 3), "blocks": nnz, "us": us, "eager us": eager,
                         "TFLOP/s": flops / us / 1e6, "% of peak": 100 * flops / us / 1e6 / PEAK_TFLOPS,
                         "per-block vs dense": dense_us * actual / us, **beside_flashinfer(us, fi_us),
                         "fi eager us": fi_eager, "note": note})
            print(markdown_table(rows[-1:]), flush=True)
    return print_report(rows, f"{torch.cuda.get_device_name()}; dense (ragged prefill, not causal) {dense_us:.1f} us")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
