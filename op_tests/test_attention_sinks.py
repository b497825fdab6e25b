"""Attention sinks (issue 14, part 2): one learned logit per query head in the softmax denominator,
not scaled by sm_scale (gpt-oss), on every wrapper and path: paged prefill and decode, ragged,
single-request, split KV, cascade levels, sliding windows; the LSE includes the sink term. Compared
with the fp32 reference on both backends (fp16 under the interpreter, which has no bf16 dot)."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from attention_utils import i32, indptr_of, random_paged_kv, split_kv  # noqa: E402,F401
from conftest import DEVICE, backend_params  # noqa: E402

import aiter_ext  # noqa: E402
from aiter_ext.ops.attention.backends import ATTENTION  # noqa: E402
from aiter_ext.ops.attention.reference import batch_attention_ref, gather_paged_kv, single_attention_ref  # noqa: E402

DTYPE = torch.float16 if DEVICE.type == "cpu" else torch.bfloat16
TOL = 2e-3 if DTYPE == torch.float16 else 2e-2
HQ, HKV, D, PAGE = 4, 2, 64, 4
BACKENDS = backend_params(ATTENTION, ("triton", "torch"))


def _ws():
    return torch.empty(32 << 20, dtype=torch.uint8, device=DEVICE)


def _sinks():
    return (torch.randn(HQ, device=DEVICE) * 2).float()


def _close(a, b, what):
    err = (a.float() - b.float()).abs().max().item()
    assert err <= TOL, f"{what}: max error {err:.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal, window", [(True, -1), (False, -1), (True, 7)], ids=["causal", "full", "window7"])
def test_paged_prefill_and_decode_with_sinks(backend, causal, window, split_kv):
    qo_lens, kv_lens = [5, 1, 3], [70, 9, 3]
    cache, kv_indptr, kv_indices, last = random_paged_kv(kv_lens, HKV, D, PAGE, DTYPE)
    qo_indptr = indptr_of(qo_lens)
    q = torch.randn(int(qo_indptr[-1]), HQ, D, device=DEVICE).to(DTYPE)
    sinks = _sinks()
    kv = gather_paged_kv(cache[:, 0], cache[:, 1], kv_indptr.to(DEVICE), kv_indices.to(DEVICE), last.to(DEVICE))
    ref, ref_lse = batch_attention_ref(q, qo_indptr.to(DEVICE), kv, causal, None, window, None, sinks)
    w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(_ws(), backend=backend)
    w.plan(qo_indptr, kv_indptr, kv_indices, last, HQ, HKV, D, PAGE, causal=causal, window_left=window,
           q_data_type=DTYPE)
    assert w.attention_plan.work.split == split_kv or backend == "torch"
    out, lse = w.run(q, cache, sinks=sinks, return_lse=True)
    _close(out, ref, "paged prefill with sinks")
    _close(lse, ref_lse, "its LSE (sink term included)")
    plain = w.run(q, cache)
    assert (plain.float() - out.float()).abs().max() > 10 * TOL, "the sinks changed nothing"
    decode = aiter_ext.BatchDecodeWithPagedKVCacheWrapper(_ws(), backend=backend)
    decode.plan(kv_indptr, kv_indices, last, HQ, HKV, D, PAGE, window_left=window, q_data_type=DTYPE)
    qd = torch.randn(3, HQ, D, device=DEVICE).to(DTYPE)
    ref_d, _ = batch_attention_ref(qd, i32([0, 1, 2, 3]).to(DEVICE), kv, False, None, window, None, sinks)
    _close(decode.run(qd, cache, sinks=sinks), ref_d, "decode with sinks")


def test_a_row_that_sees_nothing_gets_the_sink_alone():
    """An empty request's rows: output 0 and LSE = the sink (base 2), not -inf."""
    w = aiter_ext.BatchPrefillWithRaggedKVCacheWrapper(_ws())
    w.plan(i32([0, 2, 4]), i32([0, 0, 6]), HQ, HKV, D, q_data_type=DTYPE)
    q = torch.randn(4, HQ, D, device=DEVICE).to(DTYPE)
    k, v = torch.randn(6, HKV, D, device=DEVICE).to(DTYPE), torch.randn(6, HKV, D, device=DEVICE).to(DTYPE)
    sinks = _sinks()
    out, lse = w.run(q, k, v, sinks=sinks, return_lse=True)
    assert (out[:2] == 0).all()
    _close(lse[:2], (sinks / math.log(2))[None].expand(2, HQ), "LSE of rows with no key")
    ref, ref_lse = single_attention_ref(q[2:], k, v, sinks=sinks)
    _close(out[2:], ref, "the other request")
    _close(lse[2:], ref_lse, "its LSE")


def test_sink_wrapper_takes_sink_and_scale_positionally():
    """FlashInfer's BatchAttentionWithAttentionSinkWrapper: run(q, cache, sink, sm_scale), and the
    run-time scale is the one used; fp16 and a head dim other than 128 are served too."""
    qo_lens, kv_lens = [3, 2], [11, 20]
    cache, kv_indptr, kv_indices, last = random_paged_kv(kv_lens, HKV, D, PAGE, DTYPE)
    qo_indptr = indptr_of(qo_lens)
    q = torch.randn(5, HQ, D, device=DEVICE).to(DTYPE)
    w = aiter_ext.BatchAttentionWithAttentionSinkWrapper(_ws(), q_data_type=DTYPE, kv_data_type=DTYPE,
                                                         head_dim_qk=D, head_dim_vo=D, window_left=-1)
    w.plan(qo_indptr, kv_indptr, kv_indices, last, HQ, HKV, D, PAGE, causal=True)
    sinks, scale = _sinks(), 0.3
    kv = gather_paged_kv(cache[:, 0], cache[:, 1], kv_indptr.to(DEVICE), kv_indices.to(DEVICE), last.to(DEVICE))
    ref, _ = batch_attention_ref(q, qo_indptr.to(DEVICE), kv, True, scale, -1, None, sinks)
    _close(w.run(q, cache, sinks, scale), ref, "run(q, cache, sink, sm_scale)")
    with pytest.raises(TypeError, match="sink logits"):
        w.run(q, cache)
    with pytest.raises(ValueError, match="sinks must have shape"):
        w.run(q, cache, sinks[:2], scale)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cascade_counts_the_sink_once(backend, split_kv):
    """Two levels (a shared prefix and each request's pages): the sink enters the merged softmax once."""
    cache, _, _, _ = random_paged_kv([64], HKV, D, PAGE, DTYPE, spare_pages=0)  # 16 pages of 4
    shared_pages, unique = i32(range(0, 8)), [i32(range(8, 11)), i32(range(11, 16))]
    q = torch.randn(2, HQ, D, device=DEVICE).to(DTYPE)
    w = aiter_ext.MultiLevelCascadeAttentionWrapper(2, _ws(), backend=backend)
    w.plan([i32([0, 2]), i32([0, 1, 2])], [i32([0, 8]), i32([0, 3, 8])], [shared_pages, torch.cat(unique)],
           [i32([4]), i32([4, 4])], HQ, HKV, D, PAGE, q_data_type=DTYPE)
    sinks = _sinks()
    out, lse = w.run(q, cache, return_lse=True, sinks=sinks)
    k_all, v_all = cache[:, 0], cache[:, 1]
    for b in range(2):
        pages = torch.cat([shared_pages, unique[b]]).long()
        k, v = k_all[pages].reshape(-1, HKV, D), v_all[pages].reshape(-1, HKV, D)
        ref, ref_lse = single_attention_ref(q[b:b + 1], k, v, sinks=sinks)
        _close(out[b:b + 1], ref, f"cascade request {b}")
        _close(lse[b:b + 1], ref_lse, f"cascade request {b} LSE")


def test_single_functions_take_sinks():
    q, k, v = (torch.randn(n, h, D, device=DEVICE).to(DTYPE) for n, h in ((4, HQ), (9, HKV), (9, HKV)))
    sinks = _sinks()
    _close(aiter_ext.single_prefill_with_kv_cache(q, k, v, causal=True, sinks=sinks),
           single_attention_ref(q, k, v, causal=True, sinks=sinks)[0], "single prefill")
    _close(aiter_ext.single_decode_with_kv_cache(q[0], k, v, sinks=sinks),
           single_attention_ref(q[:1], k, v, sinks=sinks)[0][0], "single decode")
    with pytest.raises(TypeError, match="sinks"):
        aiter_ext.single_prefill_with_kv_cache(q, k, v, sinks=sinks.to(torch.int32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sinks_with_fp8_kv_and_poisoned_outputs(backend):
    """fp8 KV with k_scale/v_scale and sinks together: the sink is not scaled (by sm_scale or
    k_scale), v_scale scales the output; caller outputs are poisoned first, so every element shows."""
    from aiter_ext.core.testing import poison_

    kv_lens, qo_lens = [40, 17], [3, 1]
    cache, kv_indptr, kv_indices, last = random_paged_kv(kv_lens, HKV, D, PAGE, torch.float32)
    cache8 = (cache / 2).to(torch.float8_e4m3fn)
    qo_indptr = indptr_of(qo_lens)
    q = torch.randn(4, HQ, D, device=DEVICE).to(DTYPE)
    w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(_ws(), backend=backend)
    w.plan(qo_indptr, kv_indptr, kv_indices, last, HQ, HKV, D, PAGE, causal=True, q_data_type=DTYPE,
           kv_data_type=torch.float8_e4m3fn)
    out = poison_(torch.empty_like(q))
    lse = poison_(torch.empty(4, HQ, device=DEVICE))
    sinks = _sinks()
    w.run(q, cache8, k_scale=2.0, v_scale=2.0, out=out, lse=lse, return_lse=True, sinks=sinks)
    kv = [(a.float() * 2, b.float() * 2) for a, b in
          gather_paged_kv(cache8[:, 0], cache8[:, 1], kv_indptr.to(DEVICE), kv_indices.to(DEVICE), last.to(DEVICE))]
    ref, ref_lse = batch_attention_ref(q.float(), qo_indptr.to(DEVICE), kv, True, None, -1, None, sinks)
    assert not out.isnan().any() and not lse.isnan().any()
    _close(out, ref, "fp8 KV with sinks")
    _close(lse, ref_lse, "its LSE")
