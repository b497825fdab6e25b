"""Segment GEMM speed (issue 17; GPU only), beside FlashInfer's SegmentGEMMWrapper in the same run.

    python op_tests/bench_segment_gemm.py [--no-flashinfer]

The issue's anchor: a rank-16 LoRA shrink of x [4096, 4096] bf16 in 8 segments of 512 (FlashInfer 0.7.2 took
60.8 us on an H200; target at most 15 us there). Then Llama-3.1-8B and 70B shrink and expand shapes with
1-64 adapters. The op is memory-bound: the bandwidth column counts x, the used weights and y once, against
the copy bandwidth measured in the same run. CUDA-graph replay medians (eager medians beside them); outputs checked against
FlashInfer's (or the fp32 reference) first.
"""

from __future__ import annotations

import sys

import torch

import aiter_ext
from aiter_ext.core.bench import (
    beside_flashinfer, benchmark_setup, copy_bandwidth_gbs, markdown_table, print_report, time_us, warm_up_gpu,
)
from aiter_ext.core.testing import max_error
from aiter_ext.ops.segment_gemm.reference import segment_gemm_ref

# (tokens, d_in, d_out, adapters): shrink (d_out = rank) and expand (d_in = rank)
CASES = ((4096, 4096, 16, 8), (4096, 4096, 64, 8), (4096, 8192, 16, 64), (256, 4096, 16, 64), (4096, 16, 4096, 8),
         (4096, 64, 14336, 8), (256, 16, 8192, 64), (4096, 8192, 128, 1))


def main(argv) -> int:
    ok, fi = benchmark_setup("--no-flashinfer" in argv)
    if not ok:
        return 1
    warm_up_gpu()
    copy = copy_bandwidth_gbs()
    dev = torch.device("cuda")
    rows = []
    for tokens, d_in, d_out, adapters in CASES:
        x = torch.randn(tokens, d_in, device=dev).to(torch.bfloat16)
        weights = (torch.randn(adapters, d_in, d_out, device=dev) / d_in ** 0.5).to(torch.bfloat16)
        seg_lens = torch.full((adapters,), tokens // adapters, dtype=torch.int64, device=dev)
        w = aiter_ext.SegmentGEMMWrapper(torch.empty(1 << 20, dtype=torch.uint8, device=dev))
        ours = w.run(x, weights, adapters, False, seg_lens=seg_lens)
        fi_us = fi_eager = None
        if fi is not None:
            fw = fi.SegmentGEMMWrapper(torch.empty(128 << 20, dtype=torch.uint8, device=dev))
            err = max_error(ours, fw.run(x, weights, adapters, False, seg_lens=seg_lens))
            fi_eager = time_us(lambda: fw.run(x, weights, adapters, False, seg_lens=seg_lens))
            try:  # its plan step may not be capturable; the eager time then stands alone
                fi_us = time_us(lambda: fw.run(x, weights, adapters, False, seg_lens=seg_lens), graph=True)
            except Exception as exc:
                print(f"FlashInfer's segment GEMM in a CUDA graph: {type(exc).__name__}: {exc}", flush=True)
        else:
            bounds = [0] + seg_lens.cumsum(0).tolist()
            err = max_error(ours, segment_gemm_ref(x, weights, bounds, None, False))
        note = f"max error {err:.2g}"
        if not err <= 5e-2:
            rows.append({"case": f"{tokens} x {d_in} -> {d_out}, {adapters} adapters", "note": "WRONG: " + note})
            continue
        us = time_us(lambda: w.run(x, weights, adapters, False, seg_lens=seg_lens), graph=True)
        eager = time_us(lambda: w.run(x, weights, adapters, False, seg_lens=seg_lens))
        moved = 2 * (tokens * d_in + adapters * d_in * d_out + tokens * d_out)
        rows.append({"case": f"{tokens} x {d_in} -> {d_out}, {adapters} adapters", "us": us, "eager us": eager,
                     "GB/s": moved / us / 1e3, "% of copy": 100 * moved / us / 1e3 / copy, **beside_flashinfer(us, fi_us),
                     "fi eager us": fi_eager, "note": note})
        print(markdown_table(rows[-1:]), flush=True)
    return print_report(rows, f"{torch.cuda.get_device_name()}, copy {copy:.0f} GB/s")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
