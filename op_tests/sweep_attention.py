"""Sweep the attention engine's kernel configs on a GPU, beside FlashInfer (an experiment, not a test).

    python op_tests/sweep_attention.py [--quick]

Cases: cascade's shared level (batch 128 x 32768 shared keys), long-context decode without sharing
(batch 32 x 16384 keys), and a causal batch prefill (8 x 2048). Prints, per case, the floor, the best
configs and FlashInfer's time; each config's output is checked against FlashInfer's (or the
reference) before it is timed.
"""

from __future__ import annotations

import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from attention_utils import indptr_of, random_paged_kv  # noqa: E402

import aiter_ext  # noqa: E402
from aiter_ext.core.bench import copy_bandwidth_gbs, markdown_table, time_us, warm_up_gpu  # noqa: E402
from aiter_ext.core.testing import max_error  # noqa: E402

DTYPE, HQ, HKV, D, PAGE = torch.bfloat16, 32, 8, 128, 16


def _case(name, qo_lens, kv_lens, causal, configs, fi, peak, copy_gbs):
    cache, kv_indptr, kv_indices, last = random_paged_kv(kv_lens, HKV, D, PAGE, DTYPE, spare_pages=0)
    dev = cache.device
    qo_indptr = indptr_of(qo_lens)
    q = torch.randn(int(qo_indptr[-1]), HQ, D, device=dev).to(DTYPE)
    ws = torch.empty(512 << 20, dtype=torch.uint8, device=dev)
    args = (qo_indptr.to(dev), kv_indptr.to(dev), kv_indices.to(dev), last.to(dev), HQ, HKV, D, PAGE)
    expected, fi_us = None, None
    if fi is not None:
        fw = fi.BatchPrefillWithPagedKVCacheWrapper(torch.empty(512 << 20, dtype=torch.uint8, device=dev), "NHD")
        fw.plan(*args, causal=causal, q_data_type=DTYPE, kv_data_type=DTYPE)
        expected = fw.run(q, cache)
        fi_us = time_us(lambda: fw.run(q, cache))
        if set(qo_lens) == {1}:  # decode: FlashInfer's decode wrapper is the one to beat
            fd = fi.BatchDecodeWithPagedKVCacheWrapper(torch.empty(512 << 20, dtype=torch.uint8, device=dev), "NHD",
                                                       use_tensor_cores=True)
            fd.plan(*args[1:], q_data_type=DTYPE, kv_data_type=DTYPE)
            fi_us = min(fi_us, time_us(lambda: fd.run(q, cache)))
    flops = sum(4 * HQ * D * (q_len * kv - (q_len * (q_len - 1) // 2 if causal else 0))
                for q_len, kv in zip(qo_lens, kv_lens))
    nbytes = 2 * sum(kv_lens) * HKV * D * 2 + 2 * q.numel() * 2
    floor_us = max(flops / (peak * 1e6), nbytes / (copy_gbs * 1e3))
    rows = []
    for cfg in configs:
        w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(ws)
        w._config = cfg
        w.plan(*args, causal=causal, q_data_type=DTYPE)
        try:
            out = w.run(q, cache)
            if expected is not None and max_error(out, expected) > 5e-2:
                rows.append({"case": name, "config": str(cfg), "us": None, "note": f"WRONG {max_error(out, expected):.3g}"})
                continue
            us = time_us(lambda: w.run(q, cache))
        except Exception as exc:  # a config that does not compile (too much shared memory, ...)
            rows.append({"case": name, "config": str(cfg), "us": None, "note": type(exc).__name__})
            continue
        rows.append({"case": name, "config": str(cfg), "us": us, "floor_us": floor_us, "%floor": 100 * floor_us / us,
                     "fi_us": fi_us, "vs_fi": fi_us / us if fi_us else None, "work": w._plan.work.num_work,
                     "split": w._plan.work.split})
    good = sorted((r for r in rows if r["us"]), key=lambda r: r["us"])
    print(f"\n## {name}: floor {floor_us:.1f} us, FlashInfer {fi_us} us; {len(good)}/{len(rows)} configs ran")
    print(markdown_table(good[:6]))
    bad = [r for r in rows if not r["us"]]
    if bad:
        print("did not run:", "; ".join(f"{r['config']}: {r['note']}" for r in bad[:8]))
    return good[:1]


def main() -> int:
    quick = "--quick" in sys.argv
    try:
        import flashinfer as fi
    except ImportError:
        fi = None
    warm_up_gpu()
    copy_gbs = copy_bandwidth_gbs()
    peak = 790.0
    grid = lambda **kw: [dict(zip(kw, v)) for v in itertools.product(*kw.values())]  # noqa: E731
    print(f"{torch.cuda.get_device_name()}, copy {copy_gbs:.0f} GB/s, bf16 peak taken as {peak} TFLOP/s")
    best = []
    best += _case("cascade shared level: 128 queries x 32768 keys", [128], [32768], False,
                  grid(BLOCK_M=[64, 128], BLOCK_N=[32, 64, 128], num_warps=[4, 8], num_stages=[2, 3],
                       min_chunk=[512, 2048]), fi, peak, copy_gbs)
    best += _case("decode, no sharing: 32 x 16384 keys", [1] * 32, [16384] * 32, False,
                  grid(BLOCK_M=[16], BLOCK_N=[32, 64, 128], num_warps=[2, 4, 8], num_stages=[2, 3, 4],
                       min_chunk=[256, 1024]), fi, peak, copy_gbs)
    if not quick:
        best += _case("prefill, causal: 8 x 2048", [2048] * 8, [2048] * 8, True,
                      grid(BLOCK_M=[64, 128], BLOCK_N=[32, 64], num_warps=[4, 8], num_stages=[2, 3]), fi, peak,
                      copy_gbs)
    print("\n## best per case")
    print(markdown_table(best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
