"""POD attention (issue 16): FlashInfer 0.7.2's BatchPODWithPagedKVCacheWrapper and PODWithPagedKVCacheWrapper
against the fp32 reference of each side; the fused single launch (one cache) and the two-launch path
(two caches); empty sides; the LSE where asked."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from attention_utils import indptr_of, random_paged_kv  # noqa: E402
from conftest import DEVICE  # noqa: E402

import aiter_ext  # noqa: E402
from aiter_ext.core.testing import assert_close  # noqa: E402
from aiter_ext.ops.attention.reference import batch_attention_ref, gather_paged_kv  # noqa: E402

DTYPE = torch.float16 if DEVICE.type == "cpu" else torch.bfloat16
HQ, HKV, D, PAGE = 4, 2, 64, 4


def _workspace():
    return torch.empty(32 << 20, dtype=torch.uint8, device=DEVICE)


def _side(cache_pages, qo_lens, kv_lens, first_page, gen):
    """Page tables of requests over pages [first_page, ...) of a shared cache, and their q."""
    pages = [-(-n // PAGE) for n in kv_lens]
    kv_indptr = indptr_of(pages)
    ids = torch.randperm(sum(pages), generator=gen).to(torch.int32) + first_page
    last = torch.tensor([n - (p - 1) * PAGE if p else 0 for n, p in zip(kv_lens, pages)], dtype=torch.int32)
    q = torch.randn(sum(qo_lens), HQ, D, generator=gen).to(DTYPE).to(DEVICE)
    return indptr_of(qo_lens), kv_indptr, ids, last, q


def _ref(cache, qo_indptr, kv_indptr, ids, last, q, causal):
    kv = gather_paged_kv(cache[:, 0], cache[:, 1], kv_indptr.to(DEVICE), ids.to(DEVICE), last.to(DEVICE))
    return batch_attention_ref(q, qo_indptr.to(DEVICE), kv, causal)


CASES = {"mixed": ([37, 20], [60, 20], [1] * 5, [9, 33, 1, 70, 12]),
         "decode with empty KV": ([1], [16], [1] * 3, [0, 9, 0]),  # a one-token prefill too
         "empty prefill": ([0], [0], [1] * 3, [5, 17, 40]),
         "empty decode": ([16], [30], [0], [0])}


# "streams" runs the sides on two CUDA streams; on the CPU it is the sequential path
SCHEDULES = ["fused", "sequential"] + (["streams", "auto"] if DEVICE.type == "cuda" else [])


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("same_cache", [True, False])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_batch_pod_matches_each_side(case, causal, same_cache, schedule, monkeypatch):
    qo_p, kv_p, qo_d, kv_d = CASES[case]
    gen = torch.Generator().manual_seed(len(case) + causal)
    total_pages = sum(-(-n // PAGE) for n in kv_p + kv_d) + 3
    cache = torch.randn(total_pages, 2, PAGE, HKV, D, generator=gen).to(DTYPE).to(DEVICE)
    p = _side(cache, qo_p, kv_p, 0, gen)
    d = _side(cache, qo_d, kv_d, sum(-(-n // PAGE) for n in kv_p), gen)
    cache_d = cache if same_cache else cache.clone()
    w = aiter_ext.BatchPODWithPagedKVCacheWrapper(_workspace(), schedule=schedule)
    w.plan(*p[:4], *d[:4], HQ, HKV, D, PAGE, q_data_type=DTYPE)
    if same_cache and schedule == "fused":  # the single launch must serve it
        monkeypatch.setattr(w._prefill, "run", lambda *a, **k: pytest.fail("took two launches"))
    (out_p, out_d), (lse_p, lse_d) = w.run(p[4], cache, d[4], cache_d, causal_p=causal, return_lse=True)
    ref_p, ref_lse_p = _ref(cache, *p, causal)
    ref_d, ref_lse_d = _ref(cache_d, *d, False)
    assert_close(out_p, ref_p, DTYPE, name="prefill side")
    assert_close(out_d, ref_d, DTYPE, name="decode side")
    for got, want in ((lse_p, ref_lse_p), (lse_d, ref_lse_d)):
        finite = torch.isfinite(want)
        assert torch.allclose(got[finite], want[finite], atol=2e-2) and bool(torch.isinf(got[~finite]).all())
    out_p2, out_d2 = w.run(p[4], cache, d[4], cache_d, causal_p=causal)
    assert torch.equal(out_p2, out_p) and torch.equal(out_d2, out_d)


# Serving sizes on the GPU (FlashInfer's POD tests: 32/8 heads, d128, prefills of 127-12k tokens beside decode batches
# of 1-127); a trimmed form on the interpreter. (heads q, heads kv, head dim, page, prefill lens, decode count, max ctx)
REAL = [(32, 8, 128, 16, [127, 1500], 17, 2000), (32, 8, 128, 1, [1], 127, 700), (8, 8, 128, 16, [4096], 1, 12288)] \
    if DEVICE.type == "cuda" else [(8, 2, 64, 16, [23, 40], 5, 90)]


@pytest.mark.parametrize("hq,hkv,d,page,prefill_lens,decodes,max_ctx", REAL)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_batch_pod_serving_sizes(hq, hkv, d, page, prefill_lens, decodes, max_ctx, schedule):
    gen = torch.Generator().manual_seed(sum(prefill_lens) + decodes)
    kv_d = torch.randint(1, max_ctx + 1, (decodes,), generator=gen).tolist()
    pages_p = [-(-n // page) for n in prefill_lens]
    pages_d = [-(-n // page) for n in kv_d]
    cache = torch.randn(sum(pages_p) + sum(pages_d), 2, page, hkv, d, generator=gen).to(DTYPE).to(DEVICE)

    def side(qo_lens, kv_lens, pages, first):
        ids = torch.randperm(sum(pages), generator=gen).to(torch.int32) + first
        last = torch.tensor([n - (p - 1) * page for n, p in zip(kv_lens, pages)], dtype=torch.int32)
        q = torch.randn(sum(qo_lens), hq, d, generator=gen).to(DTYPE).to(DEVICE)
        return indptr_of(qo_lens), indptr_of(pages), ids, last, q

    p = side(prefill_lens, prefill_lens, pages_p, 0)
    dd = side([1] * decodes, kv_d, pages_d, sum(pages_p))
    # FlashInfer's suggested 128 MiB: split-KV partial states of these sizes need more than the small tests' 32 MiB
    w = aiter_ext.BatchPODWithPagedKVCacheWrapper(torch.empty(128 << 20, dtype=torch.uint8, device=DEVICE),
                                                  schedule=schedule)
    w.plan(*p[:4], *dd[:4], hq, hkv, d, page, q_data_type=DTYPE)
    # run() allocates its outputs (FlashInfer's POD takes no out=): poison the memory the allocator hands back
    poison = torch.full((2 * (p[4].numel() + dd[4].numel()),), float("nan"), dtype=DTYPE, device=DEVICE)
    del poison
    out_p, out_d = w.run(p[4], cache, dd[4], cache, causal_p=True)
    for got, side_, causal, name in ((out_p, p, True, "prefill"), (out_d, dd, False, "decode")):
        kv = gather_paged_kv(cache[:, 0], cache[:, 1], side_[1].to(DEVICE), side_[2].to(DEVICE), side_[3].to(DEVICE))
        assert_close(got, batch_attention_ref(side_[4], side_[0].to(DEVICE), kv, causal)[0], DTYPE, name=name)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA streams and graphs: the GPU run")
@pytest.mark.parametrize("schedule", ["streams", "fused", "auto"])
def test_batch_pod_replays_in_a_cuda_graph(schedule):
    """Graph capture: the side stream forks from and joins the capturing stream; replays give the eager result
    for new inputs written in place."""
    gen = torch.Generator().manual_seed(6)
    cache = torch.randn(200, 2, PAGE, HKV, D, generator=gen).to(DTYPE).to(DEVICE)
    p = _side(cache, [40, 25], [90, 60], 0, gen)
    d = _side(cache, [1] * 9, [70, 5, 33, 120, 1, 64, 9, 40, 77], 50, gen)
    w = aiter_ext.BatchPODWithPagedKVCacheWrapper(_workspace(), schedule=schedule)
    w.plan(*p[:4], *d[:4], HQ, HKV, D, PAGE, q_data_type=DTYPE)
    q_p, q_d = p[4].clone(), d[4].clone()
    w.run(q_p, cache, q_d, cache, causal_p=True)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_p, out_d = w.run(q_p, cache, q_d, cache, causal_p=True)
    q_p.copy_(torch.randn(q_p.shape, generator=gen).to(DTYPE))
    q_d.copy_(torch.randn(q_d.shape, generator=gen).to(DTYPE))
    graph.replay()
    torch.cuda.synchronize()
    want_p, want_d = w.run(q_p, cache, q_d, cache, causal_p=True)
    assert torch.equal(out_p, want_p) and torch.equal(out_d, want_d)


@pytest.mark.parametrize("room", [True, False])
def test_batch_pod_sides_take_disjoint_workspace_when_it_fits(room, monkeypatch):
    """Both sides split their KV (a 132-CU device): with room, the decode's partial states follow the
    prefill's (so the two streams never share bytes); in a workspace that holds either side's states but
    not both, they share it and run one after the other. Either way the results are right."""
    import dataclasses

    from aiter_ext.ops.attention import plan as plan_module

    info = plan_module.device_info()
    monkeypatch.setattr(plan_module, "device_info", lambda: dataclasses.replace(info, cu_num=132))
    gen = torch.Generator().manual_seed(12)
    cache = torch.randn(830, 2, PAGE, HKV, D, generator=gen).to(DTYPE).to(DEVICE)
    p = _side(cache, [6], [1200], 0, gen)
    d = _side(cache, [1, 1], [1100, 1000], 300, gen)

    def planned(nbytes):
        w = aiter_ext.BatchPODWithPagedKVCacheWrapper(torch.empty(nbytes, dtype=torch.uint8, device=DEVICE),
                                                      schedule="streams")
        w.plan(*p[:4], *d[:4], HQ, HKV, D, PAGE, q_data_type=DTYPE)
        return w, (w._prefill._require_plan(), w._decode._require_plan())

    w, plans = planned(32 << 20)
    assert all(pl.partial_o is not None for pl in plans), "both sides should split here"
    needs = [(pl.partial_o.numel() + pl.partial_lse.numel()) * 4 for pl in plans]
    if not room:
        w, plans = planned(max(needs) + 256)
    spans = [(pl.partial_o.data_ptr(), pl.partial_lse.data_ptr() + pl.partial_lse.numel() * 4) for pl in plans]
    disjoint = spans[0][1] <= spans[1][0] or spans[1][1] <= spans[0][0]
    assert w._disjoint == disjoint == room
    out_p, out_d = w.run(p[4], cache, d[4], cache, causal_p=True)
    assert_close(out_p, _ref(cache, *p, True)[0], DTYPE, name="prefill side")
    assert_close(out_d, _ref(cache, *d, False)[0], DTYPE, name="decode side")


def test_batch_pod_decode_scales_and_refusals():
    gen = torch.Generator().manual_seed(3)
    cache = torch.randn(40, 2, PAGE, HKV, D, generator=gen).to(DTYPE).to(DEVICE)
    p = _side(cache, [8], [20], 0, gen)
    d = _side(cache, [1, 1], [9, 30], 5, gen)
    w = aiter_ext.BatchPODWithPagedKVCacheWrapper(_workspace())
    with pytest.raises(RuntimeError, match="before plan"):
        w.run(p[4], cache, d[4], cache)
    w.plan(*p[:4], *d[:4], HQ, HKV, D, PAGE, q_data_type=DTYPE)
    base_p, base_d = w.run(p[4], cache, d[4], cache, causal_p=True)
    # FlashInfer scales the decode side only: k_scale and v_scale leave the prefill as it was
    out_p, out_d = w.run(p[4], cache, d[4], cache, causal_p=True, k_scale=0.5, v_scale=2.0)
    assert torch.equal(out_p, base_p)
    ref_d = batch_attention_ref(d[4], d[0].to(DEVICE), gather_paged_kv(cache[:, 0], cache[:, 1], d[1].to(DEVICE),
                                d[2].to(DEVICE), d[3].to(DEVICE)), False, sm_scale=0.5 / D ** 0.5)[0]
    assert_close(out_d, ref_d.float() * 2.0, DTYPE, name="decode side with k_scale/v_scale")
    with pytest.raises(ValueError, match="custom_mask_p"):
        w.run(p[4], cache, d[4], cache, custom_mask_p=torch.ones(160, dtype=torch.bool))
    with pytest.raises(ValueError, match="schedule"):
        aiter_ext.BatchPODWithPagedKVCacheWrapper(_workspace(), schedule="overlap")


@pytest.mark.parametrize("return_lse", [False, True])
def test_pod_single_prefill_and_paged_decode(return_lse):
    gen = torch.Generator().manual_seed(4)
    cache = torch.randn(30, 2, PAGE, HKV, D, generator=gen).to(DTYPE).to(DEVICE)
    d = _side(cache, [1] * 3, [7, 21, 40], 0, gen)
    q_p = torch.randn(19, HQ, D, generator=gen).to(DTYPE).to(DEVICE)
    k_p = torch.randn(25, HKV, D, generator=gen).to(DTYPE).to(DEVICE)
    v_p = torch.randn(25, HKV, D, generator=gen).to(DTYPE).to(DEVICE)
    w = aiter_ext.PODWithPagedKVCacheWrapper(_workspace())
    w.plan(d[1], d[2], d[3], HQ, HKV, D, PAGE, q_data_type=DTYPE)
    res_p, res_d = w.run(q_p, k_p, v_p, d[4], cache, causal_p=True, return_lse_p=return_lse, return_lse_d=return_lse)
    ref_p = batch_attention_ref(q_p, indptr_of([19]).to(DEVICE), [(k_p, v_p)], True)
    ref_d = _ref(cache, *d, False)
    if return_lse:
        assert_close(res_p[0], ref_p[0], DTYPE, name="prefill")
        assert torch.allclose(res_p[1], ref_p[1], atol=2e-2)
        assert_close(res_d[0], ref_d[0], DTYPE, name="decode")
        assert torch.allclose(res_d[1], ref_d[1], atol=2e-2)
    else:
        assert_close(res_p, ref_p[0], DTYPE, name="prefill")
        assert_close(res_d, ref_d[0], DTYPE, name="decode")
    with pytest.raises(ValueError, match="window_left_d"):
        w.run(q_p, k_p, v_p, d[4], cache, window_left_d=8)
