"""Eager cost per call (issue 18): the thin launch path against Triton's launcher and FlashInfer.

    python op_tests/bench_launch.py [--no-flashinfer]

Per op of the issue's table, in one run on one GPU: the eager median (``do_bench``: launches with an L2
flush between), the host time per call issued back to back (``host_time_us``: what a call costs the CPU
when the GPU keeps up), and the CUDA-graph replay, for our calls three ways (``plan``: a call plan replayed,
the default; ``thin``: the thin launch path with plans off; ``triton``: Triton's own launcher), and for
FlashInfer's call. The issue's targets: host time at most FlashInfer's + 3 us (norms,
RoPE, merge_state, sampling); decode and cascade ``run()`` eager within 1.2x of their replays at batch 64.
"""

from __future__ import annotations

import sys

import torch

import aiter_ext
from aiter_ext.core import plans, thin
from aiter_ext.core.bench import benchmark_setup, git_commit, host_time_us, markdown_table, time_us


def _cases(fi):
    """(name, ours, FlashInfer's or None) as zero-argument calls on fresh random inputs; for the wrappers, ours and
    FlashInfer's are made by ``_wrappers`` when the case is chosen (their plans build FlashInfer modules)."""
    dev, bf16 = "cuda", torch.bfloat16
    r = lambda *s, dtype=bf16: torch.randn(*s, device=dev).to(dtype)  # noqa: E731
    x16, x256, w, res = r(16, 4096), r(256, 4096), r(4096), r(256, 4096)
    q, k = r(8192, 32, 128), r(8192, 8, 128)
    indptr = torch.tensor([0, 8192], dtype=torch.int32, device=dev)
    offsets = torch.zeros(1, dtype=torch.int32, device=dev)
    probs = torch.softmax(r(1, 128256, dtype=torch.float32), -1)
    va, vb = r(64, 32, 128), r(64, 32, 128)
    sa, sb = r(64, 32, dtype=torch.float32), r(64, 32, dtype=torch.float32)
    return [
        ("rmsnorm [16, 4096] bf16", lambda: aiter_ext.rmsnorm(x16, w), fi and (lambda: fi.rmsnorm(x16, w))),
        ("rmsnorm [256, 4096] bf16", lambda: aiter_ext.rmsnorm(x256, w), fi and (lambda: fi.rmsnorm(x256, w))),
        ("fused_add_rmsnorm [256, 4096]", lambda: aiter_ext.fused_add_rmsnorm(x256, res, w),
         fi and (lambda: fi.fused_add_rmsnorm(x256, res, w))),
        ("apply_llama31_rope 8192 tokens, 32+8 heads", lambda: aiter_ext.apply_llama31_rope(q, k, indptr, offsets),
         fi and (lambda: fi.apply_llama31_rope(q, k, indptr, offsets))),
        ("rmsnorm_fp4quant [8192, 4096]", _fp4(r), None),
        ("min_p_sampling_from_probs 1 x 128256", lambda: aiter_ext.min_p_sampling_from_probs(probs, 0.05),
         fi and (lambda: fi.sampling.min_p_sampling_from_probs(probs, 0.05))),
        ("merge_state 64 x 32 x 128", lambda: aiter_ext.merge_state(va, sa, vb, sb),
         fi and (lambda: fi.merge_state(va, sa, vb, sb))),
        ("decode run(), batch 64, kv 1024, 32/8 heads", lambda: _decode(fi, r), _WRAPPER),
        ("cascade run(), 2 levels, batch 64, shared 4096 + 256", lambda: _cascade(fi), _WRAPPER),
    ]


#: the third field of a wrapper's case: its second field makes (ours, FlashInfer's) when the case is chosen
_WRAPPER = object()


def _fp4(r):
    x, w = r(8192, 4096), r(4096)
    return lambda: aiter_ext.rmsnorm_fp4quant(x, w)


def _decode(fi, r):
    dev, page, pages_per, batch = "cuda", 16, 64, 64
    cache = r(batch * pages_per, 2, page, 8, 128)
    indptr = torch.arange(0, batch * pages_per + 1, pages_per, dtype=torch.int32, device=dev)
    indices = torch.randperm(batch * pages_per, device=dev).int()
    last = torch.full((batch,), page, dtype=torch.int32, device=dev)
    qd = r(batch, 32, 128)
    plan = (indptr, indices, last, 32, 8, 128, page)
    kw = {"q_data_type": torch.bfloat16, "kv_data_type": torch.bfloat16}
    ours = aiter_ext.BatchDecodeWithPagedKVCacheWrapper(torch.empty(128 << 20, dtype=torch.uint8, device=dev), "NHD")
    ours.plan(*plan, **kw)
    theirs = None
    if fi is not None:
        theirs = fi.BatchDecodeWithPagedKVCacheWrapper(torch.empty(128 << 20, dtype=torch.uint8, device=dev), "NHD",
                                                       use_tensor_cores=True)
        theirs.plan(*plan, **kw)
    return (lambda: ours.run(qd, cache)), (theirs and (lambda: theirs.run(qd, cache)))


def _cascade(fi):
    """The issue's cascade row: two levels, 64 decode requests sharing 4096 tokens, 256 of their own each."""
    import os

    sys.path.insert(0, os.path.dirname(__file__))
    from test_cascade import Batch

    batch, heads, kv_heads, dim, page = 64, 32, 8, 128, 16
    data = Batch(batch, 4096, [256] * batch, kv_heads, dim, page, torch.bfloat16)
    tables = [[t.to("cuda") for t in arr] for arr in data.tables([1] * batch)]
    q = torch.randn(batch, heads, dim, device="cuda").to(torch.bfloat16)
    ours = aiter_ext.MultiLevelCascadeAttentionWrapper(2, torch.empty(128 << 20, dtype=torch.uint8, device="cuda"))
    ours.plan(*tables, heads, kv_heads, dim, page, q_data_type=torch.bfloat16)
    theirs = None
    if fi is not None:
        theirs = fi.MultiLevelCascadeAttentionWrapper(2, torch.empty(256 << 20, dtype=torch.uint8, device="cuda"),
                                                      "NHD")
        theirs.plan(*tables, heads, kv_heads, dim, page, q_data_type=torch.bfloat16)
    return (lambda: ours.run(q, data.cache)), (theirs and (lambda: theirs.run(q, data.cache)))


def _measure(fn) -> dict:
    fn()
    torch.cuda.synchronize()
    return {"eager": time_us(fn), "host": host_time_us(fn), "graph": time_us(fn, graph=True)}


def main() -> int:
    ok, fi = benchmark_setup("--no-flashinfer" in sys.argv)
    if not ok:
        return 1
    print(f"{torch.cuda.get_device_name()}, commit {git_commit()}, launch mode at start: {thin.mode()}")
    rows = []
    # --only=a,b: the cases whose names hold one of these words (a short device call measures what changed)
    only = [w for a in sys.argv if a.startswith("--only=") for w in a.split("=", 1)[1].split(",")]
    for name, ours, theirs in _cases(fi):
        if only and not any(w in name for w in only):
            continue
        if theirs is _WRAPPER:
            ours, theirs = ours()
        row = {"op": name}
        for path, mode, with_plans in (("plan", "thin", True), ("thin", "thin", False), ("triton", "triton", False)):
            thin.set_mode(mode)
            plans.set_enabled(with_plans)
            m = _measure(ours)
            row.update({f"{path} eager us": m["eager"], f"{path} host us": m["host"]})
            if path == "plan":
                row["graph us"] = m["graph"]
        thin.set_mode("thin")
        plans.set_enabled(True)
        if theirs is not None:
            m = _measure(theirs)
            row.update({"fi eager us": m["eager"], "fi host us": m["host"], "fi graph us": m["graph"],
                        "host - fi": row["plan host us"] - m["host"]})
        print(markdown_table([row]).splitlines()[-1], flush=True)
        rows.append(row)
    print()
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
