"""The Triton attention engine: one kernel for batch prefill and decode over ragged or paged KV.

A launch runs a *work list* built on the host by ``plan.py``: work item ``w`` is (request, tile of
packed query rows, chunk of the request's KV, split index); the grid is (work items, KV heads).

Packed rows: the ``GROUP = Hq / Hkv`` query heads that share a KV head are stacked with the query
positions, row ``r`` = (position ``r // GROUP``, head ``r % GROUP`` of the group). A decode step of a
GQA model then still gives the dot several rows, and every K/V tile is read once for the whole group.

Each program computes its tile's attention over its KV chunk with an online softmax in base 2. With
``SPLIT`` it writes the fp32 partial state (o, LSE) of each row to a workspace row that
``merge_indptr`` assigns, and the merge op combines the chunks; otherwise it writes the final
output and LSE directly.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _tanh(x):
    # tanh through exp2, which every Triton version and backend has; saturates correctly at +-inf.
    return 1.0 - 2.0 / (tl.exp2(x * (2.0 * 1.4426950408889634)) + 1.0)


@triton.jit
def attention_kernel(
    q, k_cache, v_cache, o, lse, kv_indices,
    qo_indptr, kv_indptr, kv_last_page_len,
    work_req, work_q_start, work_kv_start, work_kv_end, work_split, merge_indptr,
    sm_scale_log2, cap_pre, cap_post, window_left, page_size,
    stride_q_tok, stride_q_head,
    stride_k_page, stride_k_slot, stride_k_head,
    stride_v_page, stride_v_slot, stride_v_head,
    stride_o_tok, stride_o_head, stride_lse_tok,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PAGED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, SOFT_CAP: tl.constexpr,
    SPLIT: tl.constexpr,
):
    w = tl.program_id(0)
    h_kv = tl.program_id(1)
    req = tl.load(work_req + w)
    row0 = tl.load(work_q_start + w)
    kv_lo = tl.load(work_kv_start + w)
    kv_hi = tl.load(work_kv_end + w)

    qo_begin = tl.load(qo_indptr + req)
    qo_len = tl.load(qo_indptr + req + 1) - qo_begin
    kv_begin = tl.load(kv_indptr + req)
    if PAGED:
        num_pages = tl.load(kv_indptr + req + 1) - kv_begin
        kv_len = tl.where(num_pages > 0, (num_pages - 1) * page_size + tl.load(kv_last_page_len + req), 0)
    else:
        kv_len = tl.load(kv_indptr + req + 1) - kv_begin

    rows = row0 + tl.arange(0, BLOCK_M)
    qpos = rows // GROUP
    head = h_kv * GROUP + rows % GROUP
    row_ok = qpos < qo_len
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < HEAD_DIM
    q_tok = (qo_begin + qpos).to(tl.int64)
    q_tile = tl.load(q + q_tok[:, None] * stride_q_tok + head[:, None] * stride_q_head + cols[None, :],
                     mask=row_ok[:, None] & col_ok[None, :], other=0.0)

    # Keys this tile can see at all: causal ends at the last row's diagonal, the window starts at
    # the first row's. Aligned bottom-right: query i sees key j iff j <= i + kv_len - qo_len.
    diag = qpos + (kv_len - qo_len)
    if CAUSAL:
        last_q = tl.minimum(row0 + BLOCK_M - 1, qo_len * GROUP - 1) // GROUP
        kv_hi = tl.minimum(kv_hi, last_q + (kv_len - qo_len) + 1)
    if HAS_WINDOW:
        kv_lo = tl.maximum(kv_lo, row0 // GROUP + (kv_len - qo_len) - window_left)

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(kv_lo, kv_hi, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        key_ok = keys < kv_hi
        if PAGED:
            page = tl.load(kv_indices + kv_begin + keys // page_size, mask=key_ok, other=0).to(tl.int64)
            k_off = page * stride_k_page + (keys % page_size) * stride_k_slot
            v_off = page * stride_v_page + (keys % page_size) * stride_v_slot
        else:
            tok = (kv_begin + keys).to(tl.int64)
            k_off = tok * stride_k_page
            v_off = tok * stride_v_page
        kv_mask = key_ok[:, None] & col_ok[None, :]
        k_tile = tl.load(k_cache + k_off[:, None] + h_kv * stride_k_head + cols[None, :], mask=kv_mask, other=0.0)
        qk = tl.dot(q_tile, tl.trans(k_tile.to(q_tile.dtype)))
        if SOFT_CAP:
            s = cap_post * _tanh(qk * cap_pre)
        else:
            s = qk * sm_scale_log2
        visible = row_ok[:, None] & key_ok[None, :]
        if CAUSAL:
            visible = visible & (keys[None, :] <= diag[:, None])
        if HAS_WINDOW:
            visible = visible & (keys[None, :] >= diag[:, None] - window_left)
        s = tl.where(visible, s, float("-inf"))

        m_new = tl.maximum(m, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen nothing yet
        alpha = tl.exp2(m - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        v_tile = tl.load(v_cache + v_off[:, None] + h_kv * stride_v_head + cols[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(q_tile.dtype), v_tile.to(q_tile.dtype))
        m = m_new

    empty = l == 0.0
    out = acc / tl.where(empty, 1.0, l)[:, None]
    row_lse = tl.where(empty, float("-inf"), m + tl.log2(tl.where(empty, 1.0, l)))
    if SPLIT:
        out_row = (tl.load(merge_indptr + qo_begin + qpos, mask=row_ok, other=0) + tl.load(work_split + w)).to(tl.int64)
    else:
        out_row = q_tok
    tl.store(o + out_row[:, None] * stride_o_tok + head[:, None] * stride_o_head + cols[None, :],
             out.to(o.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])
    tl.store(lse + out_row * stride_lse_tok + head, row_lse, mask=row_ok)


def launch_attention(plan, q, k, v, kv_indices, qo_indptr, kv_indptr, kv_last_page_len, out, lse,
                     partial_o, partial_lse, *, paged: bool, page_size: int, kv_strides, sm_scale: float,
                     causal: bool, window_left: int, logits_soft_cap: float | None, merge) -> None:
    """Run ``plan``'s work list. ``k``/``v`` are 4-D page views ``[pages, page_size, Hkv, D]`` (any
    strides) when ``paged``, else ragged ``[total_kv, Hkv, D]``; ``kv_strides`` gives (page, slot, head)
    element strides of K then V. With a split plan, the partial states go to ``partial_o``/``partial_lse``
    and ``merge(partial_o, partial_lse, merge_indptr, out, lse)`` combines them."""
    num_kv_heads, head_dim = k.shape[-2], q.shape[-1]
    group = q.shape[1] // num_kv_heads
    if plan.num_work == 0:
        return
    dst_o, dst_lse = (partial_o, partial_lse) if plan.split else (out, lse)
    work = plan.work
    cap = float(logits_soft_cap or 0.0)
    attention_kernel[(plan.num_work, num_kv_heads)](
        q, k, v, dst_o, dst_lse, kv_indices if paged else kv_indptr,
        qo_indptr, kv_indptr, kv_last_page_len if paged else kv_indptr,
        work[0], work[1], work[2], work[3], work[4], plan.merge_indptr,
        sm_scale * LOG2E, (sm_scale / cap) if cap else 0.0, cap * LOG2E, window_left, page_size,
        q.stride(0), q.stride(1), *kv_strides,
        dst_o.stride(0), dst_o.stride(1), dst_lse.stride(0),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_M=plan.block_m, BLOCK_N=plan.block_n,
        PAGED=paged, CAUSAL=causal, HAS_WINDOW=window_left >= 0, SOFT_CAP=cap > 0, SPLIT=plan.split,
        num_warps=4,
    )
    if plan.split:
        merge(partial_o, partial_lse, plan.merge_indptr, out, lse)
