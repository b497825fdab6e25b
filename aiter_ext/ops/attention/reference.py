"""fp32 PyTorch references for attention (FlashInfer semantics), one request at a time.

The rules every attention feature shares:
- logits ``x_ij = sm_scale * q_i . k_j`` (``sm_scale`` defaults to ``1/sqrt(head_dim)``); with a soft
  cap ``c``, ``x_ij = c * tanh(x_ij / c)``;
- causal masking is aligned bottom-right: query ``i`` of a request sees key ``j`` iff
  ``j <= i + kv_len - qo_len``; a sliding window (``window_left >= 0``) also needs
  ``j >= i + kv_len - qo_len - window_left``;
- GQA: query head ``h`` reads KV head ``h // (num_qo_heads // num_kv_heads)``;
- the returned LSE is the base-2 log-sum-exp of the (capped) logits, fp32 ``[qo_len, num_qo_heads]``;
  a query that sees no key gets output 0 and LSE ``-inf``.

The score matrix is materialised: readable, not fast. These are the tests' oracle and the ``torch``
backend.
"""

from __future__ import annotations

import math

import torch


def attention_mask(qo_len: int, kv_len: int, causal: bool, window_left: int, device=None) -> torch.Tensor:
    """Bool ``[qo_len, kv_len]``: which keys each query of one request may see."""
    i = torch.arange(qo_len, device=device)[:, None]
    j = torch.arange(kv_len, device=device)[None, :]
    diag = i + (kv_len - qo_len)  # bottom-right alignment
    visible = torch.ones(qo_len, kv_len, dtype=torch.bool, device=device)
    if causal:
        visible &= j <= diag
    if window_left >= 0:
        visible &= j >= diag - window_left
    return visible


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi's head slopes (Press et al., 2022): for n heads, a power of two, head h (from 0) gets
    2^(-8 (h + 1) / n). For other counts, the slopes of the largest power of two p below come first,
    then the odd-numbered slopes of 2p heads (2^(-4 (2m + 1) / p), m = 0, 1, ...) until there are n."""
    p = 1 << (num_heads.bit_length() - 1)
    slopes = [2.0 ** (-8.0 * (h + 1) / p) for h in range(p)]
    slopes += [2.0 ** (-4.0 * (2 * m + 1) / p) for m in range(num_heads - p)]
    return torch.tensor(slopes, dtype=torch.float32)


def llama_rope_ref(x: torch.Tensor, positions: torch.Tensor, rope_scale: float, rope_theta: float) -> torch.Tensor:
    """Rotate-half (NeoX) RoPE of ``x [n, heads, D]`` (fp32 out) at ``positions [n]``, through the RoPE
    op's own references: the pair (c, c + D/2) turns by ``position / rope_scale * rope_theta^(-2c / D)``."""
    from aiter_ext.ops.rope.reference import cis_ref, rope_frequencies_ref, rotate_ref

    dim = x.shape[-1]
    cis = cis_ref(positions, rope_frequencies_ref(dim, rope_scale, rope_theta, device=x.device))
    return rotate_ref(x.float(), cis, dim, interleave=False)


def single_attention_ref(q, k, v, causal: bool = False, sm_scale: float | None = None, window_left: int = -1,
                         logits_soft_cap: float | None = None, sinks=None, custom_mask=None, alibi=None, rope=None):
    """One request: ``q [qo_len, Hq, D]``, ``k [kv_len, Hkv, D]``, ``v [kv_len, Hkv, Dv]``.

    ``sinks`` (``[Hq]``, natural-log units, not scaled by ``sm_scale``): one more logit per head in
    the softmax denominator, a key of value 0 that every query sees (gpt-oss's attention sinks).
    ``custom_mask`` (bool ``[qo_len, kv_len]``, True = visible) replaces the causal mask (FlashInfer's
    rule) and combines with the window. ``alibi`` (``[Hq]`` slopes) adds ``slope * (j - i)`` to the
    scaled score of query ``i`` (its index in the request, as FlashInfer counts it) and key ``j``.
    ``rope`` (``(rope_scale, rope_theta)``): Llama's RoPE applied to q (query i at position
    kv_len - qo_len + i) and k (key j at j) first, as FlashInfer's ``ROPE_LLAMA``.
    Returns ``o [qo_len, Hq, Dv]`` in ``q.dtype`` and fp32 ``lse [qo_len, Hq]`` (base 2).
    """
    qo_len, num_qo_heads, head_dim = q.shape
    kv_len, num_kv_heads = k.shape[:2]
    group = num_qo_heads // num_kv_heads
    sm_scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale
    qf, kf = q.float(), k.float()
    if rope is not None:
        qf = llama_rope_ref(qf, torch.arange(qo_len, device=q.device) + (kv_len - qo_len), *rope)
        kf = llama_rope_ref(kf, torch.arange(kv_len, device=q.device), *rope)
    kf = kf.repeat_interleave(group, dim=1)  # [kv_len, Hq, D]
    vf = v.float().repeat_interleave(group, dim=1)
    logits = torch.einsum("qhd,khd->hqk", qf, kf) * sm_scale
    if alibi is not None:
        distance = (torch.arange(kv_len, device=q.device)[None, :] - torch.arange(qo_len, device=q.device)[:, None])
        logits = logits + alibi.float().to(q.device)[:, None, None] * distance[None].float()
    if logits_soft_cap:
        logits = logits_soft_cap * torch.tanh(logits / logits_soft_cap)
    visible = attention_mask(qo_len, kv_len, causal and custom_mask is None, window_left, q.device)
    if custom_mask is not None:
        visible = visible & custom_mask.to(q.device).bool()[None]
    logits = logits.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)  # natural log; -inf for rows that see nothing
    if sinks is not None:
        lse = torch.logaddexp(lse, sinks.float().to(q.device)[:, None])
    probs = torch.where(visible, torch.exp(logits - torch.where(torch.isinf(lse), 0, lse)[..., None]), 0)
    out = torch.einsum("hqk,khd->qhd", probs, vf)
    return out.to(q.dtype), (lse / math.log(2)).transpose(0, 1).contiguous()


def gather_paged_kv(k_cache, v_cache, kv_indptr, kv_indices, kv_last_page_len, kv_layout: str = "NHD"):
    """The contiguous ``(k, v)`` of every request of a paged cache: a list of ``[kv_len, Hkv, D]`` pairs.

    ``k_cache``/``v_cache`` are 4-D, ``[pages, page_size, Hkv, D]`` (NHD) or ``[pages, Hkv, page_size, D]`` (HND).
    """
    if kv_layout == "HND":
        k_cache, v_cache = k_cache.transpose(1, 2), v_cache.transpose(1, 2)
    page_size = k_cache.shape[1]
    indptr, indices, last = kv_indptr.tolist(), kv_indices.tolist(), kv_last_page_len.tolist()
    out = []
    for b in range(len(indptr) - 1):
        pages = indices[indptr[b]:indptr[b + 1]]
        if not pages:
            out.append((k_cache[:0, 0], v_cache[:0, 0]))
            continue
        kv_len = page_size * (len(pages) - 1) + last[b]
        k = k_cache[pages].reshape(-1, *k_cache.shape[2:])[:kv_len]
        v = v_cache[pages].reshape(-1, *v_cache.shape[2:])[:kv_len]
        out.append((k, v))
    return out


def batch_attention_ref(q, qo_indptr, kv_per_request, causal: bool = False, sm_scale: float | None = None,
                        window_left: int = -1, logits_soft_cap: float | None = None, sinks=None, custom_masks=None,
                        alibi=None, rope=None):
    """A ragged batch: request ``b`` owns ``q[qo_indptr[b]:qo_indptr[b+1]]`` and ``kv_per_request[b] = (k, v)``.

    Returns ``o [total_q, Hq, Dv]`` in ``q.dtype`` and fp32 ``lse [total_q, Hq]``.
    """
    bounds = qo_indptr.tolist()
    outs, lses = [], []
    for b, (k, v) in enumerate(kv_per_request):
        o, lse = single_attention_ref(q[bounds[b]:bounds[b + 1]], k, v, causal, sm_scale, window_left,
                                      logits_soft_cap, sinks, None if custom_masks is None else custom_masks[b], alibi,
                                      rope)
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


def bsr_dense_mask(indptr, indices, M: int, N: int, R: int, C: int, mask=None, causal: bool = False) -> torch.Tensor:
    """The dense ``[M, N]`` visibility of FlashInfer's block-sparse attention, over the original K/V: row r
    sees key j iff j's block column is listed in r's block row (and, with ``mask`` ``(nnz, R, C)``, its bit
    is set). ``causal`` has FlashInfer's fa2/fa3 meaning: a row's listed keys, in list order, form its
    gathered sequence, and row t of block row i (``rows_i`` rows) sees gathered key g iff
    ``g <= t + len - rows_i``; with a mask, causal is ignored (FlashInfer's rule). Columns listed twice are
    counted once here (the engine would read them twice)."""
    visible = torch.zeros(M, N, dtype=torch.bool)
    indptr, indices = [int(x) for x in indptr], [int(x) for x in indices]
    for i in range(len(indptr) - 1):
        r0, rows = i * R, min(R, M - i * R)
        cols = indices[indptr[i]:indptr[i + 1]]
        gathered_len = len(cols) * C
        for p, col in enumerate(cols):
            block = torch.ones(rows, C, dtype=torch.bool)
            if mask is not None:
                block &= mask[indptr[i] + p, :rows].bool().cpu()
            if causal and mask is None:  # FlashInfer: causal applies only without a mask
                g = p * C + torch.arange(C)
                t = torch.arange(rows)
                block &= g[None, :] <= t[:, None] + gathered_len - rows
            visible[r0:r0 + rows, col * C:(col + 1) * C] |= block
    return visible
