"""The ``aiter`` backend of the attention engine: AITER's CK batch prefill (``mha_batch_prefill_func``),
on ROCm where the ``amd-aiter`` package imports. Chosen only when asked for (``backend="aiter"``) or
by a tuned row; it serves, for example, cascade's shared level.

Contract used (amd-aiter 0.1.7, ``aiter/ops/mha.py``; checked against the installed source by
``op_tests/test_aiter_backend.py`` without importing it):
``mha_batch_prefill_func(q [total_q, Hq, D], k, v [total_tokens, Hkv, D], cu_seqlens_q, kv_indptr,
kv_page_indices, max_seqlen_q, max_seqlen_k, softmax_scale=, logits_soft_cap=, causal=,
window_size=(left, right), return_lse=True, out=)`` with int32 index tensors; its "pages" are single
tokens, and it returns ``(out, lse)`` with a natural-log ``lse [Hq, total_q]``.

So ``plan()`` expands each request's pages into token ids (page * page_size + slot), and ``run()``
converts the LSE to FlashInfer's base 2 ``[total_q, Hq]``. AITER reads K/V as token rows with one
token stride, which a page view allows only when a page's slots are consecutive rows (a separate K
cache, HND excluded); the interleaved 5-D cache of FlashInfer is refused with a clear error.
"""

from __future__ import annotations

import math

import torch

LOG2E = 1.0 / math.log(2.0)


def prepare(*, paged, qo_lens, kv_lens, kv_indptr, kv_indices, page_size, device, custom_mask=None,
            rope=None) -> dict:
    """Token-level page table (host-built once at plan time, so run() reads nothing back). Custom masks
    and RoPE are refused at run (backends._run_aiter)."""
    if paged:
        ptr, ids = kv_indptr.tolist(), kv_indices.tolist()
        tokens = []
        for b, n in enumerate(kv_lens):
            pages = ids[ptr[b]:ptr[b + 1]]
            tokens.extend([p * page_size + s for p in pages for s in range(page_size)][:n])
        token_ids = torch.tensor(tokens, dtype=torch.int32, device=device)
    else:  # ragged: the rows themselves, in order
        token_ids = torch.arange(sum(kv_lens), dtype=torch.int32, device=device)
    token_indptr = torch.tensor([0] + list(_cumsum(kv_lens)), dtype=torch.int32, device=device)
    return {"token_ids": token_ids, "token_indptr": token_indptr, "max_seqlen_q": max(qo_lens, default=0),
            "max_seqlen_k": max(kv_lens, default=0)}


def _cumsum(values):
    total = 0
    for v in values:
        total += v
        yield total


def token_rows(name: str, t: torch.Tensor, paged: bool) -> torch.Tensor:
    """``[pages, page_size, Hkv, D]`` (or ragged ``[tokens, Hkv, D]``) as ``[tokens, Hkv, D]`` rows."""
    if not paged:
        return t
    pages, page_size, heads, dim = t.shape
    if page_size > 1 and t.stride(0) != page_size * t.stride(1):
        raise ValueError(f"backend='aiter' reads the KV cache as token rows with one stride, so each page's "
                         f"slots must be consecutive rows: {name} has strides {tuple(t.stride())}. Pass a "
                         "(k_cache, v_cache) tuple in NHD layout (FlashInfer's interleaved 5-D cache is not "
                         "supported by this backend)")
    return t.as_strided((pages * page_size, heads, dim), (t.stride(1), t.stride(2), t.stride(3)))


def run(plan, q, k, v, kv_strides, out, lse, sm_scale) -> None:
    from aiter.ops.mha import mha_batch_prefill_func  # lazy: importing aiter needs ROCm

    extra = plan.extra
    result = mha_batch_prefill_func(
        q, token_rows("k", k, plan.paged), token_rows("v", v, plan.paged), plan.qo_indptr,
        extra["token_indptr"], extra["token_ids"], extra["max_seqlen_q"], extra["max_seqlen_k"],
        softmax_scale=sm_scale, logits_soft_cap=float(plan.logits_soft_cap or 0.0), causal=plan.causal,
        window_size=(plan.window_left, 0 if plan.causal else -1), return_lse=True, out=out)
    natural_lse = result[1]  # [Hq, total_q], natural log
    lse.copy_(natural_lse.transpose(0, 1) * LOG2E)
