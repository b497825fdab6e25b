"""The attention engine through FlashInfer's wrappers: batch prefill over paged and ragged KV, batch
decode, against the fp32 reference on fresh random inputs, outputs poisoned first.

On the CPU the Triton kernels run through the interpreter, which cannot do bf16 dots (DESIGN.md), so
CI covers fp16; bf16 runs on the lent GPU, with the larger grids.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from attention_utils import i32, indptr_of, kv_of, random_paged_kv  # noqa: E402
from conftest import DEVICE, backend_params, grid  # noqa: E402

import aiter_ext  # noqa: E402
from aiter_ext.core.testing import assert_close, poison_  # noqa: E402
from aiter_ext.ops.attention.backends import ATTENTION  # noqa: E402
from aiter_ext.ops.attention.reference import batch_attention_ref, gather_paged_kv  # noqa: E402

DTYPES = grid([torch.float16], [torch.float16, torch.bfloat16])
BACKENDS = backend_params(ATTENTION, ("triton", "torch"))
ATOL = {torch.float16: 2e-3, torch.bfloat16: 2e-2}  # one rounding of the output plus fp32 reductions


def _workspace():
    return torch.empty(64 << 20, dtype=torch.uint8, device=DEVICE)


def _poisoned(q):
    out = poison_(torch.empty_like(q))
    lse = poison_(torch.empty(q.shape[:2], dtype=torch.float32, device=DEVICE))
    return out, lse


def _check(out, lse, ref_out, ref_lse, dtype):
    assert_close(out, ref_out, dtype, name="out", atol=ATOL[dtype], rtol=1e-2)
    assert_close(lse, ref_lse, torch.float32, name="lse", atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page_size", [1, 16, 5])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)], ids=["mha", "gqa4"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", grid([64], [64, 128, 256]))
def test_batch_prefill_paged(backend, dtype, layout, page_size, heads, causal, head_dim):
    num_qo_heads, num_kv_heads = heads
    # kv lengths on and around page boundaries, an empty request, qo <= kv (append) and qo > kv
    kv_lens = grid([16, 17, 5, 0], [16, 17, 15, 0, 300, 1000, 77])
    qo_lens = grid([3, 17, 2, 1], [3, 17, 15, 1, 100, 40, 90])
    cache, kv_indptr, kv_indices, last = random_paged_kv(kv_lens, num_kv_heads, head_dim, page_size, dtype, layout)
    qo_indptr = indptr_of(qo_lens)
    q = torch.randn(int(qo_indptr[-1]), num_qo_heads, head_dim, device=DEVICE).to(dtype)

    w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(_workspace(), layout, backend=backend)
    w.plan(qo_indptr, kv_indptr, kv_indices, last, num_qo_heads, num_kv_heads, head_dim, page_size, causal=causal,
           q_data_type=dtype)
    out, lse = _poisoned(q)
    w.run(q, cache, out=out, lse=lse, return_lse=True)

    k, v = kv_of(cache)
    kv = gather_paged_kv(k, v, kv_indptr, kv_indices, last, layout)
    ref_out, ref_lse = batch_attention_ref(q, qo_indptr, kv, causal)
    _check(out, lse, ref_out, ref_lse, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_batch_decode_paged(backend, dtype, page_size, group):
    num_kv_heads, head_dim = 2, grid(64, 128)
    kv_lens = grid([1, 15, 16, 17, 300, 0], [1, 15, 16, 17, 4096, 0, 33000, 511])
    cache, kv_indptr, kv_indices, last = random_paged_kv(kv_lens, num_kv_heads, head_dim, page_size, dtype)
    q = torch.randn(len(kv_lens), num_kv_heads * group, head_dim, device=DEVICE).to(dtype)

    w = aiter_ext.BatchDecodeWithPagedKVCacheWrapper(_workspace(), backend=backend)
    w.plan(kv_indptr, kv_indices, last, num_kv_heads * group, num_kv_heads, head_dim, page_size, q_data_type=dtype)
    out, lse = _poisoned(q)
    w.run(q, cache, out=out, lse=lse, return_lse=True)

    k, v = kv_of(cache)
    ref_out, ref_lse = batch_attention_ref(q, i32(range(len(kv_lens) + 1)),
                                           gather_paged_kv(k, v, kv_indptr, kv_indices, last))
    _check(out, lse, ref_out, ref_lse, dtype)
    assert torch.all(out[-1 if kv_lens[-1] == 0 else 5] == 0) or kv_lens[5] != 0  # empty KV: output 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["causal", "window", "softcap", "sm_scale", "causal-window-gqa8"])
def test_ragged_prefill_variants(backend, dtype, variant):
    num_qo_heads, num_kv_heads, head_dim = (8, 1, 64) if variant.endswith("gqa8") else (4, 2, 64)
    qo_lens, kv_lens = grid(([5, 1, 12], [9, 40, 12]), ([5, 1, 120, 7], [9, 400, 120, 2000]))
    opts = {"causal": variant.startswith("causal"), "window_left": 6 if "window" in variant else -1,
            "logits_soft_cap": 5.0 if variant == "softcap" else None, "sm_scale": 0.3 if variant == "sm_scale" else None}
    qo_indptr, kv_indptr = indptr_of(qo_lens), indptr_of(kv_lens)
    q = torch.randn(int(qo_indptr[-1]), num_qo_heads, head_dim, device=DEVICE).to(dtype) * 2
    k = torch.randn(int(kv_indptr[-1]), num_kv_heads, head_dim, device=DEVICE).to(dtype) * 2
    v = torch.randn_like(k)
    w = aiter_ext.BatchPrefillWithRaggedKVCacheWrapper(_workspace(), backend=backend)
    w.plan(qo_indptr, kv_indptr, num_qo_heads, num_kv_heads, head_dim, q_data_type=dtype, **opts)
    out, lse = _poisoned(q)
    w.run(q, k, v, out=out, lse=lse, return_lse=True)
    b = kv_indptr.tolist()
    ref_out, ref_lse = batch_attention_ref(q, qo_indptr, [(k[b[i]:b[i + 1]], v[b[i]:b[i + 1]]) for i in range(len(kv_lens))],
                                           opts["causal"], opts["sm_scale"], opts["window_left"], opts["logits_soft_cap"])
    _check(out, lse, ref_out, ref_lse, dtype)


# --------------------------------------------------------------------------------------------------
# Bad input: clear errors from plan() (or, for what plan cannot see, from run() before any launch).


def _plan_args():
    cache, kv_indptr, kv_indices, last = random_paged_kv([20, 7], 2, 64, 16, torch.float16)
    return cache, [indptr_of([3, 2]), kv_indptr, kv_indices, last, 4, 2, 64, 16]


@pytest.mark.parametrize("case,match", [
    ("decreasing indptr", "nondecreasing"),
    ("last_page_len 0", "kv_last_page_len\\[0\\] = 0"),
    ("last_page_len > page_size", "kv_last_page_len\\[1\\] = 17"),
    ("heads", "positive multiple of num_kv_heads"),
    ("unknown encoding", "pos_encoding_mode must be one of"),
    ("custom mask", "custom_mask"),
])
def test_plan_rejects_bad_input(case, match):
    _, args = _plan_args()
    kwargs = {}
    if case == "decreasing indptr":
        args[1] = i32([0, 2, 1])
        args[2] = args[2][:1]
    elif case == "last_page_len 0":
        args[3] = i32([0, 7])
    elif case == "last_page_len > page_size":
        args[3] = i32([4, 17])
    elif case == "heads":
        args[4] = 3
    elif case == "unknown encoding":
        kwargs["pos_encoding_mode"] = "XPOS"
    elif case == "custom mask":
        kwargs["custom_mask"] = torch.ones(10, dtype=torch.bool)
    w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(_workspace())
    with pytest.raises(ValueError, match=match):
        w.plan(*args, **kwargs)


@pytest.mark.parametrize("case,exc,match", [
    ("page out of range", ValueError, "uses page .* but paged_kv_cache has"),
    ("q shape", ValueError, "q must have shape"),
    ("q dtype", TypeError, "q must be fp16"),
    ("sinks shape", ValueError, "sinks must have shape"),
    ("before plan", RuntimeError, "before plan"),
])
def test_run_rejects_bad_input_before_launch(case, exc, match):
    cache, args = _plan_args()
    q = torch.randn(5, 4, 64, device=DEVICE).half()
    w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(_workspace())
    kwargs = {}
    if case != "before plan":
        w.plan(*args)
    if case == "page out of range":
        cache = cache[:int(args[2].max())]
    elif case == "q shape":
        q = q[:4]
    elif case == "q dtype":
        q = q.float()
    elif case == "sinks shape":
        kwargs["sinks"] = torch.zeros(3, device=DEVICE)  # one per query head (4) is the contract
    with pytest.raises(exc, match=match):
        w.run(q, cache, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="graph capture needs a GPU (covered on the lent GPU)")
def test_decode_run_is_graph_capturable():
    kv_lens = [7, 3000, 129]
    cache, kv_indptr, kv_indices, last = random_paged_kv(kv_lens, 2, 128, 16, torch.bfloat16)
    q = torch.randn(3, 16, 128, device=DEVICE).bfloat16()
    w = aiter_ext.BatchDecodeWithPagedKVCacheWrapper(_workspace())
    w.plan(kv_indptr, kv_indices, last, 16, 2, 128, 16, q_data_type=torch.bfloat16)
    out = torch.empty_like(q)
    w.run(q, cache, out=out)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        w.run(q, cache, out=out)
    poison_(out)
    graph.replay()
    torch.cuda.synchronize()
    k, v = kv_of(cache)
    ref, _ = batch_attention_ref(q, i32(range(4)), gather_paged_kv(k, v, kv_indptr, kv_indices, last))
    assert_close(out, ref, torch.bfloat16, name="out", atol=ATOL[torch.bfloat16], rtol=1e-2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_single_prefill_and_decode(backend, dtype, layout):
    from aiter_ext.ops.attention.reference import single_attention_ref

    qo_len, kv_len, heads, kv_heads, dim = 7, grid(300, 5000), 8, 2, 64
    q = torch.randn(qo_len, heads, dim, device=DEVICE).to(dtype)
    k, v = (torch.randn(kv_len, kv_heads, dim, device=DEVICE).to(dtype) for _ in range(2))
    as_layout = (lambda t: t.transpose(0, 1).contiguous()) if layout == "HND" else (lambda t: t)
    out, lse = aiter_ext.single_prefill_with_kv_cache(q, as_layout(k), as_layout(v), causal=True, kv_layout=layout,
                                                      return_lse=True, backend=backend)
    ref_out, ref_lse = single_attention_ref(q, k, v, causal=True)
    _check(out, lse, ref_out, ref_lse, dtype)
    out1, lse1 = aiter_ext.single_decode_with_kv_cache(q[0], as_layout(k), as_layout(v), kv_layout=layout,
                                                       return_lse=True, backend=backend)
    ref1, ref_lse1 = single_attention_ref(q[:1], k, v)
    _check(out1[None], lse1[None], ref1, ref_lse1, dtype)


FP8_DTYPES = [pytest.param(torch.float8_e4m3fn, id="e4m3fn"), pytest.param(torch.float8_e4m3fnuz, id="e4m3fnuz")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fp8", FP8_DTYPES)
@pytest.mark.parametrize("decode", [True, False], ids=["decode", "prefill"])
def test_fp8_kv_with_scales(backend, fp8, decode):
    """fp8 KV (FlashInfer: k_scale multiplies the logits' scale, v_scale the output). e4m3fnuz is gfx942's
    format; elsewhere a plan for it is refused (checked below), except by the CPU interpreter."""
    q_dtype = grid(torch.float16, torch.bfloat16)
    kv_lens, heads, kv_heads, dim, page = [40, 300, 17], 8, 2, 64, 16
    cache, kv_indptr, kv_indices, last = random_paged_kv(kv_lens, kv_heads, dim, page, torch.float32)
    cache8 = (cache / 2).to(fp8)
    qo_lens = [1, 1, 1] if decode else [3, 20, 17]
    qo_indptr = indptr_of(qo_lens)
    q = torch.randn(int(qo_indptr[-1]), heads, dim, device=DEVICE).to(q_dtype)
    w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(_workspace(), backend=backend)
    usable, reason = ATTENTION.usable(backend, {"num_qo_heads": heads, "num_kv_heads": kv_heads, "head_dim": dim,
                                                "dtype": "fp16", "device": DEVICE.type, "kv_dtype": str(fp8)[6:]})
    if not usable:
        with pytest.raises(Exception, match="gfx942"):
            w.plan(qo_indptr, kv_indptr, kv_indices, last, heads, kv_heads, dim, page, causal=not decode,
                   q_data_type=q_dtype, kv_data_type=fp8)
        return
    w.plan(qo_indptr, kv_indptr, kv_indices, last, heads, kv_heads, dim, page, causal=not decode,
           q_data_type=q_dtype, kv_data_type=fp8)
    out, lse = _poisoned(q)
    w.run(q, cache8, k_scale=2.0, v_scale=2.0, out=out, lse=lse, return_lse=True)
    k, v = kv_of(cache8)
    kv = [(a.float() * 2, b.float() * 2) for a, b in gather_paged_kv(k, v, kv_indptr, kv_indices, last)]
    ref_out, ref_lse = batch_attention_ref(q.float(), qo_indptr, kv, not decode)
    _check(out, lse, ref_out.to(q_dtype), ref_lse, q_dtype)
    with pytest.raises(TypeError, match="plan\\(\\) was given kv_data_type"):
        w.run(q, cache8.to(torch.float16))
    # v_scale may be a one-element tensor (it multiplies the output: no sync); a tensor k_scale would need
    # one (the kernel takes a scalar), and a v_scale of several elements is no scale: refused by name first
    out, _ = _poisoned(q)
    w.run(q, cache8, k_scale=2.0, v_scale=torch.tensor([2.0], device=DEVICE), out=out)
    _check(out, lse, ref_out.to(q_dtype), ref_lse, q_dtype)
    for kw, name in (({"k_scale": torch.tensor(2.0, device=DEVICE)}, "k_scale"),
                     ({"v_scale": torch.full((2,), 2.0, device=DEVICE)}, "v_scale")):
        out, lse = _poisoned(q)
        with pytest.raises(TypeError, match=f"{name} must be a real number"):
            w.run(q, cache8, **{"k_scale": 2.0, "v_scale": 2.0, **kw}, out=out, lse=lse)
        assert out.isnan().all() and lse.isnan().all()


# --------------------------------------------------------------------------------------------------
# Benchmark CLI: python op_tests/test_attention.py  (GPU; beside FlashInfer when it is installed)

BENCH_CASES = (  # (name, query lengths, KV lengths, causal); 32 query / 8 KV heads, d128, page 16, bf16
    ("decode 32 x 16384", [1] * 32, [16384] * 32, False),
    ("decode 128 x 2048", [1] * 128, [2048] * 128, False),
    ("prefill causal 8 x 2048", [2048] * 8, [2048] * 8, True),
    ("prefill 4 x 4096 (not causal)", [4096] * 4, [4096] * 4, False),
)


def bench_main(argv=None) -> int:
    from attention_utils import attention_bench_setup, bench_paged_case

    from aiter_ext.core.bench import git_commit, markdown_table

    code, ctx = attention_bench_setup("batch decode/prefill benchmark beside FlashInfer",
                                      [(4, 4, False), (64, 4, True), (64, 4, False)], argv)
    if ctx is None:
        return code
    args, fi, copy_gbs = ctx
    print(f"device {torch.cuda.get_device_name()}, commit {git_commit()}, copy {copy_gbs:.0f} GB/s, peak bf16 "
          f"{args.peak_tflops} TFLOP/s; 32/8 heads, head_dim 128, page 16, bf16, shuffled pages")
    rows = [row for name, qo, kv, causal in BENCH_CASES
            for row in bench_paged_case(name, qo, kv, causal, [None], fi, args.peak_tflops, copy_gbs)]
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(bench_main())


@pytest.mark.parametrize("cu_num", [None, 132, 304])  # this machine's, an H100's, an MI300X's
@pytest.mark.parametrize("allow_split", [True, False])
def test_work_plan_covers_every_tile_and_key_once(allow_split, cu_num, monkeypatch):
    """plan.make_plan on random batches (empty queries and KV included): each request's query tiles x its
    KV are covered by the work items exactly once, chunks on BLOCK_N boundaries and none empty (an H100's
    132 CUs once split 4096 keys into 33 chunks of 128, the last empty), longest first; each query
    token's workspace rows follow its request's splits. Also a batch of empty queries over a KV long enough
    to ask for more splits than programs (it divided by zero once)."""
    import dataclasses
    import random

    from aiter_ext.ops.attention import plan as plan_module
    from aiter_ext.ops.attention.plan import make_plan

    if cu_num is not None:
        info = plan_module.device_info()
        monkeypatch.setattr(plan_module, "device_info", lambda: dataclasses.replace(info, cu_num=cu_num))
    rng = random.Random(3)
    for _ in range(200):
        qo = [rng.choice([0, 1, 2, 17, 300]) for _ in range(rng.randint(1, 12))]
        kv = [rng.choice([0, 1, 15, 257, 4096, 70000]) for _ in qo]
        group = rng.choice([1, 4, 8])
        plan = make_plan(qo, kv, group, 8, 128, torch.device("cpu"), allow_split)
        req, row0, lo, hi, split = plan.work.tolist() if plan.num_work else ([],) * 5
        covered = {}
        for b, r, a, z, s in zip(req, row0, lo, hi, split):
            assert a % plan.block_n == 0 and a < z <= kv[b] or a == z == kv[b] == 0, (b, a, z)
            covered.setdefault((b, r), []).append((a, z))
        for b, q in enumerate(qo):
            tiles = [covered.get((b, r)) for r in range(0, q * group, plan.block_m)]
            assert all(sorted(t) == sorted(tiles[0]) for t in tiles), b  # every tile the same chunks
            if tiles:
                spans = sorted(tiles[0])
                assert spans[0][0] == 0 and spans[-1][1] == kv[b] and all(
                    x[1] == y[0] for x, y in zip(spans, spans[1:])), (b, spans)
        lengths = [z - a for a, z in zip(lo, hi)]
        assert lengths == sorted(lengths, reverse=True)
        rows = plan.merge_indptr.tolist()
        assert len(rows) == sum(qo) + 1 and rows[-1] == plan.num_partial_rows
        assert allow_split or not plan.split
    plan = make_plan([0, 0], [100_000, 70_000], 4, 8, 128, torch.device("cpu"), allow_split)
    assert plan.num_work == 0
