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
        w = aiter_ext.SegmentGEMMWrapper(torch.empty(128 << 20, dtype=torch.uint8, device=dev))
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
    rows += _lora_rows(copy, dev)
    rows += _sglang_rows(copy, dev)
    return print_report(rows, f"{torch.cuda.get_device_name()}, copy {copy:.0f} GB/s")


# vLLM's per-layer LoRA calls (lora_shrink into fp32, lora_expand adding into the output), tokens mapped to random
# adapters as vLLM's LoRAKernelMeta sorts them: (tokens, hidden, rank, output slices, adapters)
LORA_CASES = ((64, 4096, 16, (4096, 1024, 1024), 8), (256, 4096, 16, (4096, 1024, 1024), 32),
              (256, 8192, 64, (8192, 1024, 1024), 8), (4096, 4096, 16, (14336, 14336), 8))


def _lora_metadata(tokens, adapters, dev):
    mapping = torch.randint(0, adapters, (tokens,), generator=torch.Generator().manual_seed(tokens))
    order = torch.sort(mapping, stable=True).indices
    per = torch.bincount(mapping, minlength=adapters)
    start = torch.zeros(adapters + 2, dtype=torch.int32)
    start[1:adapters + 1] = per.cumsum(0)
    start[-1] = start[adapters]
    ids = torch.cat([torch.arange(adapters), torch.tensor([-1])]).to(torch.int32)
    meta = [mapping.to(torch.int32), order.to(torch.int32), torch.cat([per, torch.zeros(1, dtype=per.dtype)]).to(torch.int32),
            start, ids]
    return [t.to(dev) for t in meta] + [torch.tensor([False]), torch.tensor([adapters])]


def _lora_rows(copy, dev):
    rows = []
    for tokens, hidden, rank, slices, adapters in LORA_CASES:
        meta = _lora_metadata(tokens, adapters, dev)
        x = torch.randn(tokens, hidden, device=dev).to(torch.bfloat16)
        lora_a = [(torch.randn(adapters, rank, hidden, device=dev) / hidden ** 0.5).to(torch.bfloat16) for _ in slices]
        lora_b = [(torch.randn(adapters, h, rank, device=dev) / rank ** 0.5).to(torch.bfloat16) for h in slices]
        shrunk = torch.empty(len(slices), tokens, rank, device=dev)
        y = torch.randn(tokens, sum(slices), device=dev).to(torch.bfloat16)
        shrink = lambda: aiter_ext.lora_shrink(x, lora_a, shrunk, *meta, 0.5)  # noqa: E731
        expand = lambda: aiter_ext.lora_expand(shrunk, lora_b, y, *meta, offset_start=0, add_inputs=True)  # noqa: E731
        shrink()
        want = torch.stack([0.5 * torch.einsum("th,trh->tr", x.float(), a[meta[0].long()].float()) for a in lora_a])
        err = max_error(shrunk, want)
        used = min(adapters, tokens)
        for name, fn, moved in (
                ("shrink", shrink, 2 * (tokens * hidden + len(slices) * used * rank * hidden) + 4 * len(slices) * tokens * rank),
                ("expand", expand, 4 * len(slices) * tokens * rank + 2 * (used * sum(slices) * rank + 2 * tokens * sum(slices)))):
            rows.append(_timed_row(f"LoRA {name}: {tokens} tokens, hidden {hidden}, rank {rank}, slices {slices}, "
                                   f"{adapters} adapters", fn, moved, copy, f"shrink max error {err:.2g}"))
    return rows


def _timed_row(case: str, fn, moved: int, copy: float, note: str) -> dict:
    """One benchmark row of ours alone: graph replay and eager medians, bandwidth against the copy's; printed."""
    us, eager = time_us(fn, graph=True), time_us(fn)
    row = {"case": case, "us": us, "eager us": eager, "GB/s": moved / us / 1e3,
           "% of copy": 100 * moved / us / 1e3 / copy, "note": note}
    print(markdown_table([row]), flush=True)
    return row


# SGLang's QKV LoRA (ops/segment_gemm/ranked.py, as AiterExtLoRABackend.run_qkv_lora calls it): a pool of 8 slots
# of max rank 16 holding ranks 16, 8, 16, 4, 16, 8, 16 and 0 (no adapter), requests of equal length on random
# slots, tokens gathered through a permutation: (tokens, requests, hidden, QKV widths)
SGLANG_CASES = ((64, 64, 4096, (4096, 1024, 1024)), (4096, 8, 4096, (4096, 1024, 1024)))
SGLANG_RANKS = (16, 8, 16, 4, 16, 8, 16, 0)


def _sglang_rows(copy, dev):
    from aiter_ext.ops.segment_gemm import ranked

    rows = []
    for tokens, requests, hidden, widths in SGLANG_CASES:
        gen = torch.Generator().manual_seed(tokens)
        max_r, slots = 16, len(SGLANG_RANKS)
        x = torch.randn(tokens, hidden, device=dev).to(torch.bfloat16)
        a_pool = (torch.randn(slots, 3 * max_r, hidden, device=dev) / hidden ** 0.5).to(torch.bfloat16)
        b_pool = (torch.randn(slots, sum(widths), max_r, device=dev) / max_r ** 0.5).to(torch.bfloat16)
        seg_indptr = (torch.arange(requests + 1, dtype=torch.int32) * (tokens // requests)).to(dev)
        slot_of = torch.randint(0, slots, (requests,), generator=gen, dtype=torch.int32)
        perm = torch.randperm(tokens, generator=gen).to(torch.int32).to(dev)
        ranks = torch.tensor(SGLANG_RANKS, dtype=torch.int32, device=dev)
        scalings = torch.full((slots,), 0.5, device=dev)
        tables = (seg_indptr, slot_of.to(dev), ranks)
        out = torch.randn(tokens, sum(widths), device=dev).to(torch.bfloat16)
        offsets = [0, widths[0], widths[0] + widths[1], sum(widths)]

        def qkv():
            a = ranked.lora_a(x, a_pool, *tables, requests, perm)
            for j in range(3):
                ranked.lora_b(a, b_pool[:, offsets[j]:offsets[j + 1]], out[:, offsets[j]:offsets[j + 1]], *tables,
                              scalings, requests, perm, j)

        base = out.clone()
        qkv()
        want = base.float()
        per = tokens // requests
        for q in range(requests):  # the fp32 reference, request by request
            slot, r = int(slot_of[q]), SGLANG_RANKS[int(slot_of[q])]
            if r == 0:
                continue
            t = perm[q * per:(q + 1) * per].long()
            h = (x[t].float() @ a_pool[slot].float().t()).to(torch.bfloat16).float()
            for j in range(3):
                want[t, offsets[j]:offsets[j + 1]] += 0.5 * h[:, j * r:(j + 1) * r] @ \
                    b_pool[slot, offsets[j]:offsets[j + 1], :r].float().t()
        err = max_error(out, want)
        used = len(set(slot_of.tolist()))
        moved = 2 * (tokens * hidden + used * 3 * max_r * hidden + 2 * tokens * 3 * max_r + used * sum(widths) * max_r
                     + 2 * tokens * sum(widths))
        rows.append(_timed_row(f"SGLang QKV LoRA (A + 3 B): {tokens} tokens in {requests} requests, hidden {hidden}, "
                               f"max rank 16", qkv, moved, copy, f"max error {err:.2g} (bf16 output)"))
    return rows


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
