"""What the attention kernel's flags cost, and multi-token decode beside FlashInfer (issue 14; GPU only).

    python op_tests/bench_attention_variants.py [--no-flashinfer] [--flags-only] [--prefill-only]

1. Each flag (sinks, custom mask, ALiBi, in-kernel RoPE) against the plain kernel on the same plan
   shape: decode 64 x 4096 and causal prefill 8 x 2048 (32 query / 8 KV heads, d128, page 16, bf16).
   The target is at most 5% over the plain kernel. FlashInfer's plain time is printed beside it
   (its variants are separate JIT builds of up to a minute each, so they are not built here).
2. Multi-token decode (``q_len_per_req`` 2, 4, 8) against FlashInfer's decode wrapper with the same
   plan (tensor cores; on SM90 that is its fa2 prefill kernel).
Times are medians of CUDA-graph replays (the kernel's own cost, which the 5% target is about), with
eager calls beside them. Every timed output is first checked against the plain run (flags that leave the result unchanged:
an all-true causal mask) or against FlashInfer (multi-token decode), so a wrong kernel is not timed.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from attention_utils import indptr_of, random_paged_kv  # noqa: E402

import aiter_ext  # noqa: E402
from aiter_ext.core.bench import benchmark_setup, git_commit, markdown_table, time_us, warm_up_gpu  # noqa: E402
from aiter_ext.core.testing import max_error  # noqa: E402

HQ, HKV, D, PAGE, DTYPE = 32, 8, 128, 16, torch.bfloat16
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the CPU only for a smoke run of the code
FLAG_SHAPES = (("decode 64 x 4096", [1] * 64, [4096] * 64), ("prefill causal 8 x 2048", [2048] * 8, [2048] * 8))
MULTI_TOKEN = ((2, 4, 8), ((32, 4096), (128, 4096), (32, 16384), (128, 16384)))


def _graph_and_eager_us(fn):
    """(graph replay us, eager us) of ``fn``; the graph time is None where capture fails."""
    try:
        graph = time_us(fn, graph=True)
    except Exception as exc:  # noqa: BLE001 - reported, and the eager time still stands
        print(f"  (graph capture failed: {type(exc).__name__}: {str(exc)[:80]})")
        graph = None
    return graph, time_us(fn)


def _paged(kv_lens):
    cache, kv_indptr, kv_indices, last = random_paged_kv(kv_lens, HKV, D, PAGE, DTYPE, spare_pages=0)
    dev = cache.device
    return cache, (kv_indptr.to(dev), kv_indices.to(dev), last.to(dev))


def _causal_mask(qo_lens, kv_lens, dev):
    """FlashInfer's flattened boolean mask of bottom-right causal attention: the same result as causal=True."""
    parts = []
    for n_q, n_kv in zip(qo_lens, kv_lens):
        rows = torch.arange(n_q, device=dev)[:, None] + (n_kv - n_q)
        parts.append((torch.arange(n_kv, device=dev)[None, :] <= rows).reshape(-1))
    return torch.cat(parts)


def flag_rows(fi, shapes=FLAG_SHAPES):
    """(1) above: one row per (shape, flag)."""
    rows = []
    ws = torch.empty(256 << 20, dtype=torch.uint8, device=DEV)
    for shape, qo_lens, kv_lens in shapes:
        cache, (kv_indptr, kv_indices, last) = _paged(kv_lens)
        dev = cache.device
        decode = shape.startswith("decode")
        qo_indptr = indptr_of(qo_lens).to(dev)
        q = torch.randn(int(qo_indptr[-1]), HQ, D, device=dev).to(DTYPE)
        sinks = torch.randn(HQ, device=dev)

        def wrapper(config=None, **plan_kw):
            if decode:
                w = aiter_ext.BatchDecodeWithPagedKVCacheWrapper(ws)
                w._config = config
                w.plan(kv_indptr, kv_indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE, **plan_kw)
            else:
                w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(ws)
                w._config = config
                causal = "custom_mask" not in plan_kw
                w.plan(qo_indptr, kv_indptr, kv_indices, last, HQ, HKV, D, PAGE, causal=causal, q_data_type=DTYPE,
                       **plan_kw)
            return w

        fi_us = None
        if fi is not None:
            fw = (fi.BatchDecodeWithPagedKVCacheWrapper(torch.empty(256 << 20, dtype=torch.uint8, device=dev), "NHD",
                                                        use_tensor_cores=True) if decode else
                  fi.BatchPrefillWithPagedKVCacheWrapper(torch.empty(256 << 20, dtype=torch.uint8, device=dev), "NHD"))
            if decode:
                fw.plan(kv_indptr, kv_indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE, kv_data_type=DTYPE)
            else:
                fw.plan(qo_indptr, kv_indptr, kv_indices, last, HQ, HKV, D, PAGE, causal=True, q_data_type=DTYPE,
                        kv_data_type=DTYPE)
            fi_us, fi_eager_us = _graph_and_eager_us(lambda: fw.run(q, cache))
        plain = wrapper()
        expected = plain.run(q, cache)
        plain_us, _ = _graph_and_eager_us(lambda: plain.run(q, cache))
        variants = [("plain", {}, {}, True), ("sinks", {}, {"sinks": sinks}, False),
                    ("ALIBI", {"pos_encoding_mode": "ALIBI"}, {}, False),
                    ("ROPE_LLAMA", {"pos_encoding_mode": "ROPE_LLAMA"}, {}, False),
                    # both RoPE paths, whichever plan.rotate_keys_ahead picks above
                    ("ROPE_LLAMA, keys turned in the tiles", {"pos_encoding_mode": "ROPE_LLAMA",
                                                              "config": {"rope_keys_ahead": False}}, {}, False),
                    ("ROPE_LLAMA, q and keys rotated ahead", {"pos_encoding_mode": "ROPE_LLAMA",
                                                              "config": {"rope_keys_ahead": True}}, {}, False),
                    ("ROPE_LLAMA, keys ahead, q in the tiles", {"pos_encoding_mode": "ROPE_LLAMA", "config": {
                        "rope_keys_ahead": True, "rope_q_ahead": False}}, {}, False)]
        if not decode:  # FlashInfer's custom masks are a prefill feature
            variants.append(("custom mask (causal, as a mask)", {"custom_mask": _causal_mask(qo_lens, kv_lens, dev)},
                             {}, True))
        rope_out = None  # the RoPE paths must agree with each other
        for name, plan_kw, run_kw, same_result in variants:
            try:
                w = wrapper(**plan_kw)
                out = w.run(q, cache, **run_kw)
                note = ""
                if name.startswith("ROPE"):
                    rope_out = out if rope_out is None else rope_out
                    same_result, against = True, rope_out
                else:
                    against = expected
                if same_result:
                    err = max_error(out, against)
                    note = f"max error vs {'plain' if against is expected else 'ROPE_LLAMA'} {err:.2g}"
                    if not err <= 2e-2:
                        rows.append({"case": shape, "flag": name, "note": "WRONG: " + note})
                        continue
                elif not bool(torch.isfinite(out).all()):
                    rows.append({"case": shape, "flag": name, "note": "WRONG: non-finite output"})
                    continue
                us, eager_us = _graph_and_eager_us(lambda: w.run(q, cache, **run_kw))
            except Exception as exc:
                rows.append({"case": shape, "flag": name, "note": f"{type(exc).__name__}: {str(exc)[:90]}"})
                continue
            rows.append({"case": shape, "flag": name, "graph us": us, "plain graph us": plain_us,
                         "overhead %": 100 * (us / plain_us - 1) if us and plain_us else None,
                         "fi plain graph us": fi_us, "eager us": eager_us,
                         "fi plain eager us": fi_eager_us if fi is not None else None, "note": note})
    return rows


def multi_token_rows(fi, cases=MULTI_TOKEN):
    """(2) above."""
    rows = []
    ws = torch.empty(256 << 20, dtype=torch.uint8, device=DEV)
    for q_len in cases[0]:
        for batch, kv_len in cases[1]:
            cache, (kv_indptr, kv_indices, last) = _paged([kv_len] * batch)
            dev = cache.device
            q = torch.randn(batch * q_len, HQ, D, device=dev).to(DTYPE)
            w = aiter_ext.BatchDecodeWithPagedKVCacheWrapper(ws)
            w.plan(kv_indptr, kv_indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE, q_len_per_req=q_len)
            ours = w.run(q, cache)
            graph_us, eager_us = _graph_and_eager_us(lambda: w.run(q, cache))
            row = {"q_len": q_len, "batch": batch, "kv_len": kv_len, "graph us": graph_us, "eager us": eager_us}
            if fi is not None:
                try:
                    fw = fi.BatchDecodeWithPagedKVCacheWrapper(torch.empty(256 << 20, dtype=torch.uint8, device=dev),
                                                               "NHD", use_tensor_cores=True)
                    fw.plan(kv_indptr, kv_indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE, kv_data_type=DTYPE,
                            q_len_per_req=q_len)
                    theirs = fw.run(q, cache)
                    row["max error vs FlashInfer"] = max_error(ours, theirs)
                    row["fi graph us"], row["fi eager us"] = _graph_and_eager_us(lambda: fw.run(q, cache))
                    if graph_us and row["fi graph us"]:
                        row["fi/ours (graph)"] = row["fi graph us"] / graph_us
                except Exception as exc:
                    row["note"] = f"FlashInfer: {type(exc).__name__}: {str(exc)[:90]}"
            rows.append(row)
    return rows


def main(argv=None) -> int:
    args = argv or sys.argv[1:]
    ok, fi = benchmark_setup("--no-flashinfer" in args)
    if not ok:
        return 2
    warm_up_gpu()
    print(f"device {torch.cuda.get_device_name()}, commit {git_commit()}; 32/8 heads, d128, page 16, bf16; "
          "medians of CUDA-graph replays and of eager calls")
    shapes = [s for s in FLAG_SHAPES if s[0].startswith("prefill")] if "--prefill-only" in args else FLAG_SHAPES
    print(markdown_table(flag_rows(fi, shapes)), flush=True)
    if "--flags-only" not in args:
        print(markdown_table(multi_token_rows(fi)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
