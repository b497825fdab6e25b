"""FlashInfer 0.7.2's wrapper contract beyond plan/run (issue 14, part 1): the legacy method names,
``lse_base`` / ``lse_layout``, multi-token decode (``q_len_per_req``) and the decode plan's keywords,
each against the fp32 reference (fp16 under the interpreter, which has no bf16 dot)."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from attention_utils import i32, indptr_of, random_paged_kv, split_kv  # noqa: E402,F401
from conftest import DEVICE  # noqa: E402

import aiter_ext  # noqa: E402
from aiter_ext.core.testing import poisoned_like  # noqa: E402
from aiter_ext.ops.attention.reference import batch_attention_ref, gather_paged_kv  # noqa: E402

DTYPE = torch.float16 if DEVICE.type == "cpu" else torch.bfloat16
TOL = 2e-3 if DTYPE == torch.float16 else 2e-2
HQ, HKV, D, PAGE = 4, 2, 64, 4


def _workspace():
    return torch.empty(32 << 20, dtype=torch.uint8, device=DEVICE)


def _paged_case(qo_lens, kv_lens):
    cache, kv_indptr, kv_indices, last = random_paged_kv(kv_lens, HKV, D, PAGE, DTYPE)
    qo_indptr = indptr_of(qo_lens)
    q = torch.randn(int(qo_indptr[-1]), HQ, D, device=DEVICE).to(DTYPE)
    kv = gather_paged_kv(cache[:, 0], cache[:, 1], kv_indptr.to(DEVICE), kv_indices.to(DEVICE), last.to(DEVICE))
    return cache, (qo_indptr, kv_indptr, kv_indices, last), q, kv


def _ref(q, qo_indptr, kv, causal, sm_scale=None):
    out, lse = batch_attention_ref(q, qo_indptr.to(DEVICE), kv, causal, sm_scale=sm_scale)
    return out.float(), lse.float()


def _close(a, b, what):
    err = (a.float() - b.float()).abs().max().item()
    assert err <= TOL, f"{what}: max error {err:.3g}"


def test_legacy_names_forward_overrides_and_return_lse():
    cache, (qo, kvp, kvi, last), q, kv = _paged_case([5, 3], [9, 14])
    w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(_workspace())
    w.begin_forward(qo, kvp, kvi, last, HQ, HKV, D, PAGE, causal=True, q_data_type=DTYPE)
    ref_causal, lse_causal = _ref(q, qo, kv, True)
    _close(w.run(q, cache), ref_causal, "run after begin_forward")
    out, lse = w.run_return_lse(q, cache)
    _close(out, ref_causal, "run_return_lse out")
    _close(lse, lse_causal, "run_return_lse lse")
    # forward's causal replaces the planned one and stays (FlashInfer keeps it on the wrapper)
    ref_full, lse_full = _ref(q, qo, kv, False)
    _close(w.forward(q, cache, causal=False), ref_full, "forward(causal=False)")
    _close(w.run(q, cache), ref_full, "run after forward(causal=False)")
    out, lse = w.forward_return_lse(q, cache, causal=True, sm_scale=0.05)
    ref, ref_lse = _ref(q, qo, kv, True, sm_scale=0.05)
    _close(out, ref, "forward_return_lse(sm_scale=0.05)")
    _close(lse, ref_lse, "forward_return_lse lse")
    with pytest.raises(ValueError, match="pos_encoding_mode"):
        w.forward(q, cache, pos_encoding_mode="XPOS")  # not one of FlashInfer's modes


def test_ragged_legacy_names():
    qo, kvl = i32([0, 4, 6]), i32([0, 7, 12])
    q = torch.randn(6, HQ, D, device=DEVICE).to(DTYPE)
    k, v = torch.randn(12, HKV, D, device=DEVICE).to(DTYPE), torch.randn(12, HKV, D, device=DEVICE).to(DTYPE)
    kv = [(k[0:7], v[0:7]), (k[7:12], v[7:12])]
    w = aiter_ext.BatchPrefillWithRaggedKVCacheWrapper(_workspace())
    w.begin_forward(qo, kvl, HQ, HKV, D, q_data_type=DTYPE)
    _close(w.forward(q, k, v, causal=True), _ref(q, qo, kv, True)[0], "ragged forward(causal=True)")
    out, lse = w.forward_return_lse(q, k, v)
    ref, ref_lse = _ref(q, qo, kv, False)
    _close(out, ref, "ragged forward_return_lse")
    _close(w.run_return_lse(q, k, v)[1], ref_lse, "ragged run_return_lse")


@pytest.mark.parametrize("layout", ["NH", "HN"])
@pytest.mark.parametrize("base", ["log2", "ln"])
def test_lse_base_and_layout(base, layout):
    cache, (qo, kvp, kvi, last), q, kv = _paged_case([3, 2], [6, 11])
    w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(_workspace())
    w.plan(qo, kvp, kvi, last, HQ, HKV, D, PAGE, causal=True, q_data_type=DTYPE)
    _, ref_lse = _ref(q, qo, kv, True)
    expected = ref_lse * (math.log(2) if base == "ln" else 1.0)
    expected = expected.t() if layout == "HN" else expected
    out, lse = w.run(q, cache, return_lse=True, lse_base=base, lse_layout=layout)
    assert lse.shape == expected.shape and lse.is_contiguous()
    _close(lse, expected, f"lse {base} {layout}")
    given = poisoned_like(expected.contiguous())  # the caller's buffer, in the requested layout
    out, lse = w.run(q, cache, return_lse=True, lse=given, lse_base=base, lse_layout=layout)
    assert lse.data_ptr() == given.data_ptr() or layout == "NH" and lse is given
    _close(given, expected, f"caller's lse {base} {layout}")


def test_lse_options_are_checked():
    cache, (qo, kvp, kvi, last), q, kv = _paged_case([2], [5])
    w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(_workspace())
    w.plan(qo, kvp, kvi, last, HQ, HKV, D, PAGE, q_data_type=DTYPE)
    with pytest.raises(ValueError, match="lse_base"):
        w.run(q, cache, return_lse=True, lse_base="e")
    with pytest.raises(ValueError, match="lse_layout"):
        w.run(q, cache, return_lse=True, lse_layout="TN")
    with pytest.raises(ValueError, match='lse_layout="HN"'):
        w.run(q, cache, return_lse=True, lse_layout="HN", lse=torch.empty(2, HQ, device=DEVICE))


@pytest.mark.parametrize("q_len", [1, 2, 4])
def test_decode_q_len_per_req(q_len):
    """n query tokens per request: causal among the new tokens, aligned bottom-right."""
    kv_lens = [q_len + 3, 17, q_len]
    cache, (_, kvp, kvi, last), _, kv = _paged_case([1, 1, 1], kv_lens)
    q = torch.randn(3 * q_len, HQ, D, device=DEVICE).to(DTYPE)
    w = aiter_ext.BatchDecodeWithPagedKVCacheWrapper(_workspace())
    w.plan(kvp, kvi, last, HQ, HKV, D, PAGE, q_data_type=DTYPE, q_len_per_req=q_len)
    out = w.run(q, cache)
    ref, _ = _ref(q, i32([0, q_len, 2 * q_len, 3 * q_len]), kv, q_len > 1)
    _close(out, ref, f"q_len_per_req={q_len}")
    with pytest.raises(ValueError, match=r"q must have shape"):
        w.run(q[:-1], cache)  # rows not matching the plan
    if q_len > 1:
        with pytest.raises(ValueError, match=f"fewer than q_len_per_req={q_len + 1}"):
            w.plan(kvp, kvi, last, HQ, HKV, D, PAGE, q_len_per_req=q_len + 1, q_data_type=DTYPE)


def test_decode_plan_keywords():
    cache, (_, kvp, kvi, last), _, kv = _paged_case([1, 1], [6, 9])
    w = aiter_ext.BatchDecodeWithPagedKVCacheWrapper(_workspace())
    with pytest.raises(TypeError, match="window_lef"):
        w.plan(kvp, kvi, last, HQ, HKV, D, PAGE, window_lef=4)
    with pytest.raises(ValueError, match="window_right"):
        w.plan(kvp, kvi, last, HQ, HKV, D, PAGE, window_right=2)
    with pytest.raises(ValueError, match="is_causal"):
        w.plan(kvp, kvi, last, HQ, HKV, D, PAGE, is_causal=True)
    # FlashInfer's deprecated positional order after page_size: ..., kv_data_type, o_data_type, data_type, ...
    w.plan(kvp, kvi, last, HQ, HKV, D, PAGE, "NONE", -1, None, DTYPE, DTYPE, DTYPE, None, None)
    q = torch.randn(2, HQ, D, device=DEVICE).to(DTYPE)
    _close(w.run(q, cache), _ref(q, i32([0, 1, 2]), kv, False)[0], "decode after a positional plan")
    out, lse = w.forward_return_lse(q, cache, sm_scale=0.1)
    ref, ref_lse = _ref(q, i32([0, 1, 2]), kv, False, sm_scale=0.1)
    _close(out, ref, "decode forward_return_lse(sm_scale=0.1)")
    _close(lse, ref_lse, "decode forward_return_lse lse")


# --------------------------------------------------------------------------------------------------
# In-kernel position encodings: ALiBi (FlashInfer's bias and slopes) and ROPE_LLAMA


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("causal", [True, False])
def test_alibi_prefill_decode_and_single(backend, causal):
    from aiter_ext.ops.attention.reference import alibi_slopes, single_attention_ref

    cache, (qo, kvp, kvi, last), q, kv = _paged_case([5, 2], [40, 7])
    slopes = alibi_slopes(HQ).to(DEVICE)
    w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(_workspace(), backend=backend)
    w.plan(qo, kvp, kvi, last, HQ, HKV, D, PAGE, causal=causal, pos_encoding_mode="ALIBI", q_data_type=DTYPE)
    out, lse = w.run(q, cache, return_lse=True)
    ref, ref_lse = batch_attention_ref(q, qo.to(DEVICE), kv, causal, None, -1, None, None, None, slopes)
    _close(out, ref, "paged prefill with ALiBi")
    _close(lse, ref_lse, "its LSE")
    plain, _ = _ref(q, qo, kv, causal)
    assert (out.float() - plain).abs().max() > 10 * TOL, "ALiBi changed nothing"
    d = aiter_ext.BatchDecodeWithPagedKVCacheWrapper(_workspace(), backend=backend)
    d.plan(kvp, kvi, last, HQ, HKV, D, PAGE, pos_encoding_mode="ALIBI", q_data_type=DTYPE)
    qd = q[:2].contiguous()
    _close(d.run(qd, cache), batch_attention_ref(qd, i32([0, 1, 2]).to(DEVICE), kv, False, None, -1, None, None,
                                                 None, slopes)[0], "decode with ALiBi")
    k, v = kv[0]
    _close(aiter_ext.single_prefill_with_kv_cache(q[:5], k, v, causal=causal, pos_encoding_mode="ALIBI",
                                                  backend=backend),
           single_attention_ref(q[:5], k, v, causal=causal, alibi=slopes)[0], "single prefill with ALiBi")


def test_alibi_limits():
    cache, (qo, kvp, kvi, last), q, kv = _paged_case([2], [9])
    w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(_workspace())
    with pytest.raises(ValueError, match="ALiBi with logits_soft_cap"):
        w.plan(qo, kvp, kvi, last, HQ, HKV, D, PAGE, pos_encoding_mode="ALIBI", logits_soft_cap=30.0)
    with pytest.raises(ValueError, match="pos_encoding_mode must be one of"):
        w.plan(qo, kvp, kvi, last, HQ, HKV, D, PAGE, pos_encoding_mode="ROPE")
    w.plan(qo, kvp, kvi, last, HQ, HKV, D, PAGE, q_data_type=DTYPE)
    from aiter_ext.ops.attention.reference import alibi_slopes

    # forward's pos_encoding_mode turns ALiBi on for this and later runs, as FlashInfer's forward does
    out = w.forward(q, cache, causal=False, pos_encoding_mode="ALIBI")
    ref = batch_attention_ref(q, qo.to(DEVICE), kv, False, None, -1, None, None, None, alibi_slopes(HQ).to(DEVICE))[0]
    _close(out, ref, "forward(pos_encoding_mode='ALIBI')")


def test_alibi_is_refused_by_cascade():
    w = aiter_ext.MultiLevelCascadeAttentionWrapper(2, _workspace())
    with pytest.raises(ValueError, match="ALIBI.*cascade"):
        w.plan([i32([0, 1])] * 2, [i32([0, 1])] * 2, [i32([0]), i32([1])], [i32([1])] * 2, HQ, HKV, D, PAGE,
               pos_encoding_mode="ALIBI")


@pytest.mark.parametrize("backend,keys_ahead", [("triton", False), ("triton", True), ("triton", "q_in_kernel"),
                                                 ("torch", None)])
@pytest.mark.parametrize("causal", [True, False])
def test_rope_llama_in_the_kernel(backend, keys_ahead, causal, split_kv):
    """FlashInfer's ROPE_LLAMA: q (query i at kv_len - qo_len + i) and k (key j at j) rotated inside
    attention; the same as rotating them first with the fp32 reference and attending plainly. Both
    Triton paths: keys turned in each tile, and keys rotated once ahead (plan.rotate_keys_ahead), with q
    rotated ahead too or in the tiles."""
    from aiter_ext.ops.attention.reference import single_attention_ref

    rope = (2.0, 5e5)
    cache, (qo, kvp, kvi, last), q, kv = _paged_case([5, 2], [70, 7])
    w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(_workspace(), backend=backend)
    if keys_ahead is not None:
        w._config = {"rope_keys_ahead": bool(keys_ahead), "rope_q_ahead": keys_ahead != "q_in_kernel"}
    w.plan(qo, kvp, kvi, last, HQ, HKV, D, PAGE, causal=causal, pos_encoding_mode="ROPE_LLAMA", rope_scale=rope[0],
           rope_theta=rope[1], q_data_type=DTYPE)
    out, lse = w.run(q, cache, return_lse=True)
    ref, ref_lse = batch_attention_ref(q, qo.to(DEVICE), kv, causal, None, -1, None, None, None, None, rope)
    _close(out, ref, "paged prefill with ROPE_LLAMA")
    _close(lse, ref_lse, "its LSE")
    plain, _ = _ref(q, qo, kv, causal)
    assert (out.float() - plain).abs().max() > 10 * TOL, "RoPE changed nothing"
    assert ("rope_ahead" in w._plan.extra) == bool(keys_ahead), "the forced path was not taken"
    d = aiter_ext.BatchDecodeWithPagedKVCacheWrapper(_workspace(), backend=backend)
    if keys_ahead is not None:
        d._config = w._config
    d.plan(kvp, kvi, last, HQ, HKV, D, PAGE, pos_encoding_mode="ROPE_LLAMA", q_data_type=DTYPE)  # defaults 1, 1e4
    qd = q[:2].contiguous()
    _close(d.run(qd, cache), batch_attention_ref(qd, i32([0, 1, 2]).to(DEVICE), kv, False, None, -1, None, None,
                                                 None, None, (1.0, 1e4))[0], "decode with ROPE_LLAMA")
    k, v = kv[0]
    _close(aiter_ext.single_prefill_with_kv_cache(q[:5], k, v, causal=causal, pos_encoding_mode="ROPE_LLAMA",
                                                  rope_theta=rope[1], backend=backend),
           single_attention_ref(q[:5], k, v, causal=causal, rope=(1.0, rope[1]))[0], "single prefill ROPE_LLAMA")
    with pytest.raises(ValueError, match="rope_scale / rope_theta apply only"):
        d.plan(kvp, kvi, last, HQ, HKV, D, PAGE, rope_theta=1e6)


@pytest.mark.parametrize("keys_ahead", [False, True, "q_in_kernel"])
def test_rope_llama_ragged(keys_ahead):
    """The ragged wrapper with ROPE_LLAMA, both Triton paths; a forward() that turns RoPE off on a plan
    whose keys were to be rotated ahead gives the plain result (the scratch is not used)."""
    qo, kvl = i32([0, 9, 12]), i32([0, 30, 41])
    q = torch.randn(12, HQ, D, device=DEVICE).to(DTYPE)
    k, v = torch.randn(41, HKV, D, device=DEVICE).to(DTYPE), torch.randn(41, HKV, D, device=DEVICE).to(DTYPE)
    kv = [(k[0:30], v[0:30]), (k[30:41], v[30:41])]
    w = aiter_ext.BatchPrefillWithRaggedKVCacheWrapper(_workspace())
    w._config = {"rope_keys_ahead": bool(keys_ahead), "rope_q_ahead": keys_ahead != "q_in_kernel"}
    w.plan(qo, kvl, HQ, HKV, D, causal=True, pos_encoding_mode="ROPE_LLAMA", rope_theta=1e3, q_data_type=DTYPE)
    out = w.run(q, k, v)
    _close(out, batch_attention_ref(q, qo.to(DEVICE), kv, True, None, -1, None, None, None, None, (1.0, 1e3))[0],
           "ragged prefill with ROPE_LLAMA")
    _close(w.forward(q, k, v, causal=True, pos_encoding_mode="NONE"), _ref(q, qo, kv, True)[0], "forward without RoPE")


def test_rope_keys_ahead_rule():
    """Keys are rotated ahead when tiles read each key at least twice (prefill), not for decode."""
    from aiter_ext.ops.attention.plan import rotate_keys_ahead

    assert not rotate_keys_ahead([1] * 64, [4096] * 64, 4, 16, causal=False)  # decode: one read a key
    assert not rotate_keys_ahead([8] * 32, [4096] * 32, 4, 32, causal=True)  # multi-token decode: one tile
    assert rotate_keys_ahead([2048] * 8, [2048] * 8, 4, 128, causal=True)  # prefill: 64 tiles, ~32 reads
    assert not rotate_keys_ahead([40], [40], 2, 64, causal=True)  # 2 tiles, causal: 1.5 reads a key
    assert rotate_keys_ahead([40], [40], 2, 64, causal=False)  # 2 tiles: 2 reads
    assert not rotate_keys_ahead([], [], 4, 64, causal=True)
    assert rotate_keys_ahead([1], [10], 4, 16, causal=False, config={"rope_keys_ahead": True})


def test_rope_llama_at_long_positions_matches_fp64_angles():
    """Keys up to position 6000 (angles up to 6000 rad at the first frequency), many blocks far from position
    0: a decode plan turns each key in its tile with cos/sin from the plan's table
    (kernels.rope_cis_table, fp64 angles). Checked against q and k rotated with angles computed in
    fp64."""
    from aiter_ext.ops.attention.reference import single_attention_ref

    kv_len = 6000
    cache, (qo, kvp, kvi, last), q, kv = _paged_case([1], [kv_len])
    k, v = kv[0]
    d = aiter_ext.BatchDecodeWithPagedKVCacheWrapper(_workspace())
    d.plan(kvp, kvi, last, HQ, HKV, D, PAGE, pos_encoding_mode="ROPE_LLAMA", q_data_type=DTYPE)  # theta 1e4

    def rotate64(x, positions):
        half = D // 2
        freq = 1e4 ** (-torch.arange(half, dtype=torch.float64, device=x.device) * 2 / D)
        angle = positions.to(torch.float64)[:, None] * freq[None, :]
        cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]
        lo, hi = x.double()[..., :half], x.double()[..., half:]
        return torch.cat([lo * cos - hi * sin, hi * cos + lo * sin], -1)

    positions = torch.arange(kv_len, device=q.device)
    ref = single_attention_ref(rotate64(q, positions[-1:]).float(), rotate64(k, positions).float(), v.float())[0]
    _close(d.run(q, cache), ref, "decode with ROPE_LLAMA at 6000 keys")
