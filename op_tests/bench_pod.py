"""POD speed (issue 16; GPU only): a mixed serving step as BatchPOD runs it by default ("POD us": schedule
"auto", the two sides on two streams on a GPU) and in one launch ("one launch us"), against our own
prefill-then-decode on one stream, beside FlashInfer's BatchPODWithPagedKVCacheWrapper and BatchAttention in the same run.

    python op_tests/bench_pod.py [--no-flashinfer]

Shapes from the issue: one or four causal prefills of 512-8192 tokens with 32-256 decodes of 1k-16k
context, one paged cache (32/8 heads, d128, page 16, bf16). The issue's targets: faster than our own
prefill-then-decode on every shape, and at least FlashInfer's POD and BatchAttention where they run.
Each fused output is checked against the two-launch one (and FlashInfer's against ours) before it is
timed. CUDA-graph replay medians, and eager medians (``eager`` columns) for the fused calls.
"""

from __future__ import annotations

import sys

import torch

import aiter_ext
from aiter_ext.core.bench import benchmark_setup, markdown_table, print_report, time_us, warm_up_gpu
from aiter_ext.core.testing import max_error

HQ, HKV, D, PAGE, DTYPE = 32, 8, 128, 16, torch.bfloat16
SHAPES = ((1, 2048, 64, 4096), (1, 8192, 32, 16384), (4, 512, 256, 1024), (4, 2048, 128, 4096), (1, 512, 256, 16384),
          (1, 512, 32, 1024))
PEAK_TFLOPS = 989.0  # H100 SXM dense bf16 (H200 the same)


def _tables(kv_lens, first_page, dev):
    pages = [-(-n // PAGE) for n in kv_lens]
    indptr = torch.tensor([0] + pages, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    ids = torch.arange(sum(pages), dtype=torch.int32) + first_page
    last = torch.tensor([n - (p - 1) * PAGE for n, p in zip(kv_lens, pages)], dtype=torch.int32)
    return indptr.to(dev), ids.to(dev), last.to(dev), sum(pages)


def _graph_or_none(run):
    try:  # a FlashInfer call that cannot be captured still has its eager time
        return time_us(run, graph=True)
    except Exception as exc:
        print(f"not capturable: {type(exc).__name__}: {str(exc)[:80]}", flush=True)
        return None


def _flashinfer_pod(fi, dev, plan_args, q_p, cache, q_d, ours):
    """FlashInfer's BatchPOD: (graph us, eager us, note), or Nones with the reason it did not run."""
    try:
        w = fi.BatchPODWithPagedKVCacheWrapper(torch.empty(256 << 20, dtype=torch.uint8, device=dev), "NHD")
        w.plan(*plan_args, HQ, HKV, D, PAGE, q_data_type=DTYPE, kv_data_type=DTYPE)
        out_p, out_d = w.run(q_p, cache, q_d, cache, causal_p=True)
        err = max(max_error(out_p, ours[0]), max_error(out_d, ours[1]))
        if not err <= 2e-2:
            return None, None, f"FI POD differs: {err:.2g}"
        run = lambda: w.run(q_p, cache, q_d, cache, causal_p=True)  # noqa: E731
        return _graph_or_none(run), time_us(run), f"FI POD err {err:.2g}"
    except Exception as exc:  # FlashInfer's POD refuses some shapes; say which and go on
        return None, None, f"FI POD: {type(exc).__name__}: {str(exc)[:80]}"


def _flashinfer_batch_attention(fi, dev, qo, kv_indptr, kv_indices, kv_lens, q, cache, ours):
    """FlashInfer's persistent mixed-batch kernel over the same requests (prefill first, then decode)."""
    try:
        w = fi.BatchAttention("NHD", device="cuda")
        w.plan(qo, kv_indptr, kv_indices, kv_lens, HQ, HKV, D, D, PAGE, causal=True,
               q_data_type=DTYPE, kv_data_type=DTYPE)
        out, _ = w.run(q, cache)
        err = max_error(out, ours)
        if not err <= 2e-2:
            return None, None, f"FI BatchAttention differs: {err:.2g}"
        run = lambda: w.run(q, cache)  # noqa: E731
        return _graph_or_none(run), time_us(run), f"FI BA err {err:.2g}"
    except Exception as exc:
        return None, None, f"FI BatchAttention: {type(exc).__name__}: {str(exc)[:80]}"


def main(argv) -> int:
    ok, fi = benchmark_setup("--no-flashinfer" in argv)
    if not ok:
        return 1
    warm_up_gpu()
    dev = torch.device("cuda")
    ws = torch.empty(512 << 20, dtype=torch.uint8, device=dev)
    rows = []
    for n_p, len_p, n_d, ctx in SHAPES:
        kv_p, ind_p, last_p, pages_p = _tables([len_p] * n_p, 0, dev)
        kv_d, ind_d, last_d, pages_d = _tables([ctx] * n_d, pages_p, dev)
        cache = torch.randn(pages_p + pages_d, 2, PAGE, HKV, D, device=dev).to(DTYPE)
        qo_p = (torch.arange(n_p + 1, dtype=torch.int32) * len_p).to(dev)
        qo_d = torch.arange(n_d + 1, dtype=torch.int32, device=dev)
        q_p = torch.randn(n_p * len_p, HQ, D, device=dev).to(DTYPE)
        q_d = torch.randn(n_d, HQ, D, device=dev).to(DTYPE)
        pod = aiter_ext.BatchPODWithPagedKVCacheWrapper(ws)  # schedule "auto"
        one_launch = aiter_ext.BatchPODWithPagedKVCacheWrapper(ws, schedule="fused")
        plan_args = (qo_p, kv_p, ind_p, last_p, qo_d, kv_d, ind_d, last_d)
        pod.plan(*plan_args, HQ, HKV, D, PAGE, q_data_type=DTYPE)
        one_launch.plan(*plan_args, HQ, HKV, D, PAGE, q_data_type=DTYPE)
        pre = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(ws)
        pre.plan(qo_p, kv_p, ind_p, last_p, HQ, HKV, D, PAGE, causal=True, q_data_type=DTYPE)
        dec = aiter_ext.BatchDecodeWithPagedKVCacheWrapper(torch.empty(256 << 20, dtype=torch.uint8, device=dev))
        dec.plan(kv_d, ind_d, last_d, HQ, HKV, D, PAGE, q_data_type=DTYPE)
        out_p, out_d = pod.run(q_p, cache, q_d, cache, causal_p=True)
        err = max(max_error(out_p, pre.run(q_p, cache)), max_error(out_d, dec.run(q_d, cache)))
        one_p, one_d = one_launch.run(q_p, cache, q_d, cache, causal_p=True)
        err = max(err, max_error(one_p, out_p), max_error(one_d, out_d))
        case = f"{n_p} x {len_p} + {n_d} x {ctx}"
        if not err <= 2e-2:
            rows.append({"case": case, "note": f"WRONG: max error {err:.2g}"})
            continue
        run_pod = lambda: pod.run(q_p, cache, q_d, cache, causal_p=True)  # noqa: E731
        fused = time_us(run_pod, graph=True)
        fused_eager = time_us(run_pod)
        single = time_us(lambda: one_launch.run(q_p, cache, q_d, cache, causal_p=True), graph=True)
        both = time_us(lambda: (pre.run(q_p, cache), dec.run(q_d, cache)), graph=True)
        prefill = time_us(lambda: pre.run(q_p, cache), graph=True)
        decode = time_us(lambda: dec.run(q_d, cache), graph=True)
        notes = [f"err {err:.2g}"]
        fi_pod = fi_pod_eager = fi_ba = fi_ba_eager = None
        if fi is not None:
            fi_pod, fi_pod_eager, note = _flashinfer_pod(fi, dev, plan_args, q_p, cache, q_d, (out_p, out_d))
            notes.append(note)
            qo = torch.cat([qo_p, qo_p[-1] + qo_d[1:]])
            kv_indptr = torch.cat([kv_p, kv_p[-1] + kv_d[1:]])
            kv_lens = torch.tensor([len_p] * n_p + [ctx] * n_d, dtype=torch.int32, device=dev)
            fi_ba, fi_ba_eager, note = _flashinfer_batch_attention(
                fi, dev, qo, kv_indptr, torch.cat([ind_p, ind_d]), kv_lens, torch.cat([q_p, q_d]), cache,
                torch.cat([out_p, out_d]))
            notes.append(note)
        flops = 4.0 * HQ * D * (n_p * len_p * (len_p + 1) / 2 + n_d * ctx)
        rows.append({"case": case, "POD us": fused, "POD eager": fused_eager, "prefill then decode": both,
                     "prefill": prefill, "decode": decode, "vs ours 2-launch": both / fused,
                     "one launch us": single,
                     "TFLOP/s": flops / fused / 1e6, "% peak": 100 * flops / fused / 1e6 / PEAK_TFLOPS,
                     "FI POD us": fi_pod, "FI POD eager": fi_pod_eager, "vs FI POD": fi_pod / fused if fi_pod else None,
                     "FI BA us": fi_ba, "FI BA eager": fi_ba_eager, "vs FI BA": fi_ba / fused if fi_ba else None,
                     "note": "; ".join(notes)})
        print(markdown_table(rows[-1:]), flush=True)
    return print_report(rows, torch.cuda.get_device_name())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
