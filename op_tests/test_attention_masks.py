"""Custom attention masks (issue 14, part 3): packbits / segment_packbits with FlashInfer's (numpy's)
bit order, and custom_mask / packed_custom_mask in single prefill and the batch prefill wrappers,
against the fp32 reference on both backends (fp16 under the interpreter)."""

from __future__ import annotations

import os
import sys

import numpy as np
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


def _close(a, b, what):
    err = (a.float() - b.float()).abs().max().item()
    assert err <= TOL, f"{what}: max error {err:.3g}"


@pytest.mark.parametrize("bitorder", ["big", "little"])
@pytest.mark.parametrize("n", [1, 8, 13, 1000])
def test_packbits_matches_numpy(bitorder, n):
    x = torch.rand(n) > 0.5
    assert aiter_ext.packbits(x, bitorder).tolist() == np.packbits(x.numpy(), bitorder=bitorder).tolist()
    bounds = sorted(set([0, n] + torch.randint(0, n + 1, (3,)).tolist()))
    packed, new_indptr = aiter_ext.segment_packbits(x, torch.tensor(bounds), bitorder)
    expected, offsets = [], [0]
    for a, b in zip(bounds[:-1], bounds[1:]):
        seg = np.packbits(x[a:b].numpy(), bitorder=bitorder).tolist()
        expected += seg
        offsets.append(offsets[-1] + len(seg))
    assert packed.tolist() == expected and new_indptr.tolist() == offsets
    with pytest.raises(ValueError, match="bitorder"):
        aiter_ext.packbits(x, "middle")


def _masks(qo_lens, kv_lens):
    """Random masks, with every row seeing at least one key (and one row in the first request none)."""
    masks = [torch.rand(q, k) > 0.4 for q, k in zip(qo_lens, kv_lens)]
    for m in masks:
        if m.numel():
            m[torch.arange(m.shape[0]), torch.randint(0, m.shape[1], (m.shape[0],))] = True
    if masks[0].numel():
        masks[0][0] = False
    return masks


def _check_paged(out, lse, q, qo_indptr, cache, kv_indptr, kv_indices, last, window, masks, what):
    """A paged prefill's output and LSE against the fp32 reference with ``masks``; the gathered K/V."""
    kv = gather_paged_kv(cache[:, 0], cache[:, 1], kv_indptr.to(DEVICE), kv_indices.to(DEVICE), last.to(DEVICE))
    ref, ref_lse = batch_attention_ref(q, qo_indptr.to(DEVICE), kv, False, None, window, None, None, masks)
    _close(out, ref, what)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite), "rows that see nothing must have LSE -inf"
    _close(lse[finite], ref_lse[finite], f"{what}: LSE")
    return kv


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("packed", [False, True], ids=["custom_mask", "packed_custom_mask"])
@pytest.mark.parametrize("window", [-1, 9])
def test_paged_prefill_with_custom_masks(backend, packed, window, split_kv):
    qo_lens, kv_lens = [5, 3, 1, 4], [70, 3, 9, 4]
    cache, kv_indptr, kv_indices, last = random_paged_kv(kv_lens, HKV, D, PAGE, DTYPE)
    qo_indptr = indptr_of(qo_lens)
    q = torch.randn(int(qo_indptr[-1]), HQ, D, device=DEVICE).to(DTYPE)
    masks = _masks(qo_lens, kv_lens)
    flat = torch.cat([m.reshape(-1) for m in masks]).to(DEVICE)
    kwargs = {"custom_mask": flat}
    if packed:
        qk_indptr = torch.tensor([0] + [q * k for q, k in zip(qo_lens, kv_lens)]).cumsum(0)
        kwargs = {"packed_custom_mask": aiter_ext.segment_packbits(flat, qk_indptr, bitorder="little")[0]}
    w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(torch.empty(32 << 20, dtype=torch.uint8, device=DEVICE),
                                                      backend=backend)
    w.plan(qo_indptr, kv_indptr, kv_indices, last, HQ, HKV, D, PAGE, causal=True, window_left=window,
           q_data_type=DTYPE, **kwargs)  # causal is ignored with a mask (FlashInfer's rule)
    out, lse = w.run(q, cache, return_lse=True)
    kv = _check_paged(out, lse, q, qo_indptr, cache, kv_indptr, kv_indices, last, window, masks,
                      "paged prefill with a custom mask")
    causal_ref, _ = batch_attention_ref(q, qo_indptr.to(DEVICE), kv, True, None, window)
    assert (out.float() - causal_ref.float()).abs().max() > 10 * TOL, "the mask changed nothing"


def _structured_masks():
    """(qo_lens, kv_lens, masks) whose key blocks of the kernel's tiles (32 or 64 keys) are, for every
    row of a request, all visible, all hidden or mixed (masks.CLASS_*), so that a plan skips blocks and
    reads no bit in others: request 0 sees keys [0, 64) whole, none of [64, 128), random ones after;
    request 1 is causal (bottom-right), and its first row sees nothing; request 2 sees every key;
    request 3 is causal over 300 keys (its leading blocks unmasked, as in the plain causal kernel)."""
    qo_lens, kv_lens = [6, 5, 3, 4], [200, 70, 40, 300]
    first = torch.zeros(6, 200, dtype=torch.bool)
    first[:, :64] = True
    first[:, 128:] = torch.rand(6, 72) > 0.5
    causal = torch.ones(5, 70, dtype=torch.bool).tril(70 - 5)
    causal[0] = False
    return qo_lens, kv_lens, [first, causal, torch.ones(3, 40, dtype=torch.bool),
                              torch.ones(4, 300, dtype=torch.bool).tril(300 - 4)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("window", [-1, 50])
def test_custom_masks_with_whole_blocks_visible_or_hidden(backend, window, split_kv):
    """Blocks no row sees are skipped and blocks every row sees whole read no mask bit (the plan's
    visibility classes): the output is still the reference's, with and without a window."""
    qo_lens, kv_lens, masks = _structured_masks()
    cache, kv_indptr, kv_indices, last = random_paged_kv(kv_lens, HKV, D, PAGE, DTYPE)
    qo_indptr = indptr_of(qo_lens)
    q = torch.randn(int(qo_indptr[-1]), HQ, D, device=DEVICE).to(DTYPE)
    w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(torch.empty(32 << 20, dtype=torch.uint8, device=DEVICE),
                                                      backend=backend)
    w.plan(qo_indptr, kv_indptr, kv_indices, last, HQ, HKV, D, PAGE, window_left=window, q_data_type=DTYPE,
           custom_mask=torch.cat([m.reshape(-1) for m in masks]).to(DEVICE))
    out = torch.full_like(q, float("nan"))  # poisoned: every row must be written
    lse = torch.full(q.shape[:2], float("nan"), device=DEVICE)
    w.run(q, cache, out=out, lse=lse)
    _check_paged(out, lse, q, qo_indptr, cache, kv_indptr, kv_indices, last, window, masks,
                 "paged prefill, structured mask")


def test_mask_classes_match_the_reference():
    """The plan's visibility classes (kernels.mask_with_classes) against masks.reference_classes, for
    key counts that end inside a group, and the mask's bytes kept in front of them."""
    pytest.importorskip("triton")
    from aiter_ext.ops.attention.kernels import mask_with_classes
    from aiter_ext.ops.attention.masks import class_offsets, reference_classes

    qo_lens, kv_lens, masks = _structured_masks()
    qo_lens, kv_lens = qo_lens + [2, 0, 3], kv_lens + [17, 5, 1100]
    masks = masks + [torch.rand(2, 17) > 0.5, torch.zeros(0, 5, dtype=torch.bool), torch.rand(3, 1100) > 0.01]
    masks[-1][:, 16:48] = True
    qk_indptr = torch.tensor([0] + [q * k for q, k in zip(qo_lens, kv_lens)]).cumsum(0)
    packed, mask_indptr = aiter_ext.segment_packbits(torch.cat([m.reshape(-1) for m in masks]), qk_indptr, "little")
    offsets = class_offsets(qo_lens, kv_lens, base=packed.numel())
    buffer = mask_with_classes(packed.to(DEVICE), mask_indptr.tolist(), offsets, qo_lens, kv_lens).cpu()
    assert torch.equal(buffer[:packed.numel()], packed)
    for b, m in enumerate(masks):
        got = buffer[offsets[b]:offsets[b + 1]].view(m.shape[0], -(-m.shape[1] // 16))
        assert torch.equal(got, reference_classes(m)), f"request {b}"
    assert set(torch.cat([reference_classes(m).flatten() for m in masks]).tolist()) == {0, 1, 2}


@pytest.mark.parametrize("backend", BACKENDS)
def test_ragged_and_single_prefill_with_custom_masks(backend):
    qo_lens, kv_lens = [3, 6], [8, 6]
    qo_indptr, kv_indptr = indptr_of(qo_lens), indptr_of(kv_lens)
    q = torch.randn(9, HQ, D, device=DEVICE).to(DTYPE)
    k, v = torch.randn(14, HKV, D, device=DEVICE).to(DTYPE), torch.randn(14, HKV, D, device=DEVICE).to(DTYPE)
    masks = _masks(qo_lens, kv_lens)
    w = aiter_ext.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(32 << 20, dtype=torch.uint8, device=DEVICE),
                                                       backend=backend)
    w.plan(qo_indptr, kv_indptr, HQ, HKV, D, q_data_type=DTYPE,
           custom_mask=torch.cat([m.reshape(-1) for m in masks]).to(DEVICE))
    kv = [(k[:8], v[:8]), (k[8:], v[8:])]
    ref, _ = batch_attention_ref(q, qo_indptr.to(DEVICE), kv, False, None, -1, None, None, masks)
    _close(w.run(q, k, v), ref, "ragged prefill with a custom mask")
    mask = masks[1].to(DEVICE)
    out = aiter_ext.single_prefill_with_kv_cache(q[3:], k[8:], v[8:], custom_mask=mask, causal=True, backend=backend)
    _close(out, single_attention_ref(q[3:], k[8:], v[8:], custom_mask=mask)[0], "single prefill custom_mask")
    packed = aiter_ext.packbits(mask.reshape(-1), bitorder="little")
    out = aiter_ext.single_prefill_with_kv_cache(q[3:], k[8:], v[8:], packed_custom_mask=packed, backend=backend)
    _close(out, single_attention_ref(q[3:], k[8:], v[8:], custom_mask=mask)[0], "single prefill packed_custom_mask")


def test_mask_sizes_are_checked_at_plan():
    """A mask of the wrong size would be read past its end: refused before any launch."""
    w = aiter_ext.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1 << 20, dtype=torch.uint8, device=DEVICE))
    with pytest.raises(ValueError, match=r"custom_mask must hold sum\(qo_len \* kv_len\) = 24"):
        w.plan(i32([0, 3]), i32([0, 8]), HQ, HKV, D, custom_mask=torch.ones(23, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"packed_custom_mask must hold .* = 3 bytes"):
        w.plan(i32([0, 3]), i32([0, 8]), HQ, HKV, D, packed_custom_mask=torch.ones(2, dtype=torch.uint8))
    q, k = torch.randn(3, HQ, D).half(), torch.randn(8, HKV, D).half()
    with pytest.raises(ValueError, match=r"custom_mask must be \[qo_len, kv_len\] = \[3, 8\]"):
        aiter_ext.single_prefill_with_kv_cache(q, k, k, custom_mask=torch.ones(3, 7, dtype=torch.bool))
