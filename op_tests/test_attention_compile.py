"""Every public attention call under torch.compile: default, fullgraph=True and mode="reduce-overhead"
(CUDA graphs; GPU only), each against the same call made eagerly (issue 14).

The wrappers' run is one custom op (aiter_ext::attention_run) that finds its plan by the wrapper's slot,
so a re-plan between compiled calls is seen; the single-request functions are one custom op each
(aiter_ext::single_attention) whose plans are cached outside any graph's memory pool.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from attention_utils import i32, indptr_of, random_paged_kv  # noqa: E402
from conftest import DEVICE  # noqa: E402

import aiter_ext  # noqa: E402

HQ, HKV, D, PAGE = 4, 2, 64, 16
DTYPE = torch.float16
MODES = [pytest.param({}, id="default"), pytest.param({"fullgraph": True}, id="fullgraph"),
         pytest.param({"mode": "reduce-overhead"}, id="reduce-overhead",
                      marks=pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs need a GPU"))]


def _qkv(qo_len, kv_len):
    """Makers of fresh q [qo_len, Hq, D], k and v [kv_len, Hkv, D] for _check."""
    return (lambda: torch.randn(qo_len, HQ, D, device=DEVICE).to(DTYPE),
            lambda: torch.randn(kv_len, HKV, D, device=DEVICE).to(DTYPE),
            lambda: torch.randn(kv_len, HKV, D, device=DEVICE).to(DTYPE))


def _compiled(fn, mode_kw):
    torch._dynamo.reset()
    return torch.compile(fn, **mode_kw)


def _check(compiled, eager, *make_args, calls=3):
    """Several calls with fresh inputs (a graph replayed on stale inputs, or a compiled call that kept
    its first inputs, shows as a mismatch), each against the eager call on the same inputs."""
    for _ in range(calls):
        args = [m() for m in make_args]
        got, want = compiled(*args), eager(*args)
        for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            torch.testing.assert_close(g.clone(), w, atol=0, rtol=0)


@pytest.mark.parametrize("mode_kw", MODES)
def test_paged_prefill_and_decode_wrappers(mode_kw):
    cache, kv_indptr, kv_indices, last = random_paged_kv([40, 33, 70], HKV, D, PAGE, DTYPE)
    kv_indptr, kv_indices, last = kv_indptr.to(DEVICE), kv_indices.to(DEVICE), last.to(DEVICE)
    ws = torch.empty(8 << 20, dtype=torch.int8, device=DEVICE)  # FlashInfer's int8 form
    prefill = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(ws)
    qo_indptr = indptr_of([5, 1, 9]).to(DEVICE)
    prefill.plan(qo_indptr, kv_indptr, kv_indices, last, HQ, HKV, D, PAGE, causal=True, q_data_type=DTYPE)
    decode = aiter_ext.BatchDecodeWithPagedKVCacheWrapper(torch.empty(8 << 20, dtype=torch.uint8, device=DEVICE))
    decode.plan(kv_indptr, kv_indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE)

    def both(qp, qd):
        out, lse = prefill.run(qp, cache, return_lse=True)
        return out, lse, decode.run(qd, cache)

    _check(_compiled(both, mode_kw), both, lambda: torch.randn(15, HQ, D, device=DEVICE).to(DTYPE),
           lambda: torch.randn(3, HQ, D, device=DEVICE).to(DTYPE))


@pytest.mark.parametrize("mode_kw", MODES[:2])
def test_a_replan_between_compiled_calls_is_seen(mode_kw):
    """The compiled graph holds the wrapper's slot, not its plan: after plan() with new lengths (same
    shapes of q), the compiled run attends over the new KV, as FlashInfer's eager run would."""
    cache, kv_indptr, kv_indices, last = random_paged_kv([40, 33], HKV, D, PAGE, DTYPE)
    decode = aiter_ext.BatchDecodeWithPagedKVCacheWrapper(torch.empty(8 << 20, dtype=torch.uint8, device=DEVICE))
    decode.plan(kv_indptr.to(DEVICE), kv_indices.to(DEVICE), last.to(DEVICE), HQ, HKV, D, PAGE, q_data_type=DTYPE)
    run = _compiled(lambda q: decode.run(q, cache), mode_kw)
    q = torch.randn(2, HQ, D, device=DEVICE).to(DTYPE)
    first = run(q).clone()
    shorter = last.clone()
    shorter[0] = 1  # request 0 loses most of its last page
    decode.plan(kv_indptr.to(DEVICE), kv_indices.to(DEVICE), shorter.to(DEVICE), HQ, HKV, D, PAGE, q_data_type=DTYPE)
    second = run(q)
    torch.testing.assert_close(second, decode.run(q, cache), atol=0, rtol=0)
    assert not torch.equal(second[0], first[0]), "the compiled run kept the first plan"
    torch.testing.assert_close(second[1], first[1], atol=0, rtol=0)


@pytest.mark.parametrize("mode_kw", MODES)
def test_ragged_wrapper_with_sinks(mode_kw):
    w = aiter_ext.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(8 << 20, dtype=torch.uint8, device=DEVICE))
    w.plan(i32([0, 3, 7]).to(DEVICE), i32([0, 20, 50]).to(DEVICE), HQ, HKV, D, causal=True, q_data_type=DTYPE)
    sinks = torch.randn(HQ, device=DEVICE)

    def call(q, k, v):
        return w.run(q, k, v, sinks=sinks)

    _check(_compiled(call, mode_kw), call, *_qkv(7, 50))


@pytest.mark.parametrize("mode_kw", MODES)
def test_single_prefill_and_decode(mode_kw):
    def call(q, k, v):
        out, lse = aiter_ext.single_prefill_with_kv_cache(q, k, v, causal=True, return_lse=True)
        return out, lse, aiter_ext.single_decode_with_kv_cache(q[0], k, v, window_left=16)

    _check(_compiled(call, mode_kw), call, *_qkv(6, 300))


@pytest.mark.parametrize("mode_kw", MODES[:2])
def test_single_prefill_with_a_custom_mask(mode_kw):
    """A custom mask's plan is built per call (its contents are part of it), so it compiles in the
    default and fullgraph modes; a CUDA graph cannot hold a per-call plan."""
    mask = torch.rand(6, 40, device=DEVICE) < 0.7
    mask[:, 0] = True

    def call(q, k, v):
        return aiter_ext.single_prefill_with_kv_cache(q, k, v, custom_mask=mask)

    _check(_compiled(call, mode_kw), call, *_qkv(6, 40))


@pytest.mark.parametrize("mode_kw", MODES)
def test_multi_level_cascade(mode_kw):
    """Two levels (a shared prefix of 3 pages, then each request's pages), merged in one launch: the
    merged run is one custom op (aiter_ext::attention_run_levels) that finds the levels by slot."""
    cache, kv_indptr, kv_indices, last = random_paged_kv([48, 20, 37], HKV, D, PAGE, DTYPE)
    qo_lens = [3, 1, 4]
    shared = [i32([0, sum(qo_lens)]), i32([0, 3]), kv_indices[:3].clone(), i32([PAGE])]
    unique = [indptr_of(qo_lens), kv_indptr, kv_indices, last]
    w = aiter_ext.MultiLevelCascadeAttentionWrapper(2, torch.empty(8 << 20, dtype=torch.uint8, device=DEVICE))
    w.plan(*[[a.to(DEVICE), b.to(DEVICE)] for a, b in zip(shared, unique)], HQ, HKV, D, PAGE, causal=True,
           q_data_type=DTYPE)

    def call(q):
        return w.run(q, cache, return_lse=True)

    _check(_compiled(call, mode_kw), call, lambda: torch.randn(sum(qo_lens), HQ, D, device=DEVICE).to(DTYPE))


def test_single_plan_cache_follows_the_backend_environment(monkeypatch):
    """Cached one-request plans are keyed on AITER_EXT_BACKEND too: after it changes, an automatic call
    runs the backend it now names, not the one cached before."""
    from aiter_ext.ops.attention import api

    q, k, v = (m() for m in _qkv(1, 30))
    expected = aiter_ext.single_decode_with_kv_cache(q[0], k, v)
    monkeypatch.setenv("AITER_EXT_BACKEND", "torch")
    got = aiter_ext.single_decode_with_kv_cache(q[0], k, v)
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=1e-2)
    backends = {w.attention_plan.backend for key, w in api._SINGLE_PLANS.items() if key[2] == k.shape}
    assert "torch" in backends and len(backends) == 2, backends
