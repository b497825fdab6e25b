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

from typing import NamedTuple, Optional

import torch
# Triton itself is imported only when a kernel needs it (core/lazy_triton.py: not for a code object's launch)
from aiter_ext.core.lazy_triton import tl, triton

from aiter_ext.core.aot import KernelSpec, register_aot_specs
from aiter_ext.core.launch import cdiv, next_pow2
from aiter_ext.core.thin import thin

LOG2E = 1.4426950408889634
LOG2E_JIT = tl.constexpr(LOG2E)  # the same constant where a kernel reads it (compiled Triton needs a constexpr)
CLASS_KEYS = tl.constexpr(16)  # masks.CLASS_KEYS (masks.py imports no Triton)


@triton.jit
def _tanh(x):
    # tanh through exp2, which every Triton version and backend has; saturates correctly at +-inf.
    return 1.0 - 2.0 / (tl.exp2(x * (2.0 * 1.4426950408889634)) + 1.0)


@triton.jit
def _turn(lo, hi, cos, sin):
    return lo * cos - hi * sin, hi * cos + lo * sin


@triton.jit
def _cis_halves(rope_cis, pos, ok, HALF: tl.constexpr):
    """cos and sin (fp32 ``[R, HALF]``) of the angles of positions ``pos [R]`` (rows where ``ok``), read
    from the plan's table (rope_cis_table: row p = cos of p's angles, then their sin). No sin or cos
    is computed in a kernel: the library calls cost more than the attention around them (in-kernel RoPE
    took 2.3-5.7x the plain kernel on an H100 while the kernels computed them)."""
    row = rope_cis + pos.to(tl.int64)[:, None] * (2 * HALF) + tl.arange(0, HALF)[None, :]
    return tl.load(row, mask=ok[:, None], other=0.0), tl.load(row + HALF, mask=ok[:, None], other=0.0)


@triton.jit
def _mask_range(class_rows, row_ok, kv_lo, kv_hi, BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """The part of the chunk ``[kv_lo, kv_hi)`` (``kv_lo`` a multiple of CLASS_KEYS) that the tile's custom
    mask leaves: from the block of the first key group any row sees to the end of the last such group,
    and the end of the leading whole blocks every row sees entirely, which take the unmasked path (none
    with a window). For a causal-like mask that is the plain causal kernel's loop: the blocks below the
    diagonal unmasked, the diagonal's masked, the rest never visited. Two short scans of the tile's
    classes (a byte per row and 16 keys)."""
    SCAN: tl.constexpr = 64  # key groups a step
    g_lo = kv_lo // CLASS_KEYS
    g_hi = tl.cdiv(kv_hi, CLASS_KEYS)
    first_seen = g_hi
    last_seen = g_lo - 1
    for g0 in range(g_lo, g_hi, SCAN):
        g = g0 + tl.arange(0, SCAN)
        cls = tl.load(class_rows[:, None] + g[None, :], mask=row_ok[:, None] & (g < g_hi)[None, :], other=0)
        seen = tl.max(cls.to(tl.int32), axis=0) > 0  # padding rows load 0 (CLASS_NONE)
        first_seen = tl.minimum(first_seen, tl.min(tl.where(seen, g, g_hi)))
        last_seen = tl.maximum(last_seen, tl.max(tl.where(seen, g, g_lo - 1)))
    new_lo = tl.minimum(kv_lo + tl.maximum(first_seen * CLASS_KEYS - kv_lo, 0) // BLOCK_N * BLOCK_N, kv_hi)
    new_hi = tl.maximum(tl.minimum(kv_hi, (last_seen + 1) * CLASS_KEYS), new_lo)
    # the first group from the first seen one that some row does not see whole (padding rows: whole)
    first_part = g_hi
    for g0 in range(g_lo, g_hi, SCAN):
        g = g0 + tl.arange(0, SCAN)
        cls = tl.load(class_rows[:, None] + g[None, :], mask=row_ok[:, None] & (g < g_hi)[None, :], other=1)
        whole = tl.min((cls == 1).to(tl.int32), axis=0) > 0  # masks.CLASS_ALL
        first_part = tl.minimum(first_part, tl.min(tl.where(~whole & (g >= first_seen) & (g < g_hi), g, g_hi)))
    run_end = tl.minimum(first_part * CLASS_KEYS, new_hi)
    # whole blocks from new_lo, if the run of whole groups starts there (groups before first_seen are unseen)
    unmasked_hi = tl.where(new_lo == first_seen * CLASS_KEYS,
                           new_lo + tl.maximum(run_end - new_lo, 0) // BLOCK_N * BLOCK_N, new_lo)
    if HAS_WINDOW:
        unmasked_hi = new_lo
    return new_lo, unmasked_hi, new_hi


@triton.jit
def _block_classes(class_rows, row_ok, start, num_groups, BLOCK_N: tl.constexpr):
    """From the tile rows' classes of the key groups of the block at ``start`` (a multiple of
    CLASS_KEYS): whether any row sees any key of it, and whether the mask's bits are needed (some
    row sees only some keys). Padding rows count for neither; groups past the request's keys are
    CLASS_NONE (they hold no key), which makes the block's last group need bits."""
    g = start // CLASS_KEYS + tl.arange(0, BLOCK_N // CLASS_KEYS)
    cls = tl.load(class_rows[:, None] + g[None, :], mask=row_ok[:, None] & (g < num_groups)[None, :], other=0)
    seen_any = tl.max(tl.where(row_ok[:, None], cls, 0).to(tl.int32)) > 0
    seen_all = tl.min(tl.where(row_ok[:, None], cls == 1, True).to(tl.int32)) > 0  # masks.CLASS_ALL
    return seen_any, ~seen_all


@triton.jit
def _row_offsets(kv_indices, kv_begin, keys, h_kv, stride_kv_page, stride_kv_slot, stride_kv_head,
                 PAGE_SIZE: tl.constexpr, PAGED: tl.constexpr):
    """Element offsets of the K/V rows of ``keys`` (positions in the request's KV) for KV head ``h_kv``."""
    if PAGED:
        page = tl.load(kv_indices + kv_begin + keys // PAGE_SIZE).to(tl.int64)
        return page * stride_kv_page + (keys % PAGE_SIZE) * stride_kv_slot + h_kv * stride_kv_head
    else:
        return (kv_begin + keys).to(tl.int64) * stride_kv_page + h_kv * stride_kv_head


@triton.jit
def _rotated_key_offsets(kv_begin, keys, h_kv, PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Element offsets of ``keys`` of KV head ``h_kv`` in the plan's pre-rotated keys (rotate_rows_kernel):
    ``[listed pages * PAGE_SIZE (ragged: KV rows), Hkv, HEAD_DIM]`` in the plan's page order, so a
    request's keys start at its ``kv_begin`` (in pages, or rows) times PAGE_SIZE, with no page table."""
    return ((kv_begin * PAGE_SIZE + keys).to(tl.int64) * tl.num_programs(1) + h_kv) * HEAD_DIM


@triton.jit
def _attend_block(acc, m, l, q_tile, k_cache, v_cache, kv_off, k_off, keys, kv_hi, diag, cols,
                  sm_scale_log2, cap_pre, cap_post, window_left, mask_bytes, qpos, kv_len, mask_last, alibi_log2,
                  q_lo, q_hi, rope_cis, key0, need_bits,
                  MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, SOFT_CAP: tl.constexpr,
                  CUSTOM_MASK: tl.constexpr, ALIBI: tl.constexpr, ROPE: tl.constexpr):
    """One online-softmax step over ``keys`` (a block of BLOCK_N), whose K rows are at ``k_off`` and V
    rows at ``kv_off`` (the same, unless the keys were rotated ahead into the plan's scratch).
    ``MASKED`` is False for the blocks that lie wholly inside the chunk, below every row's diagonal
    and inside every row's window: they skip all per-element masks (each mask costs compares, and on
    AMD 64-bit lane masks held in SGPRs). ``need_bits`` (CUSTOM_MASK): whether some row sees only some
    of the block's keys, so that the mask's bits must be read (else every key is visible to every row,
    up to the other masks)."""
    if ROPE:
        # The keys rotated at their positions, as two half-width tiles, and the score as two
        # half-width dots with the rotated query halves: no re-shuffle of columns, and each pair's
        # cos/sin is read once ([BLOCK_N, D/2], not [BLOCK_N, D]).
        HALF: tl.constexpr = q_lo.shape[1]
        half = tl.arange(0, HALF)
        k_lo = tl.load(k_cache + kv_off[:, None] + half[None, :]).to(tl.float32)
        k_hi = tl.load(k_cache + kv_off[:, None] + (half + HALF)[None, :]).to(tl.float32)
        # the keys' rows of the table (L2-resident: 512 B a position at d128); keys past the chunk read
        # its last key's row, as they read its K row
        cos, sin = _cis_halves(rope_cis, tl.minimum(keys, kv_hi - 1), keys >= 0, HALF)
        k_lo, k_hi = _turn(k_lo, k_hi, cos, sin)
        qk = tl.dot(q_lo, tl.trans(k_lo.to(q_lo.dtype))) + tl.dot(q_hi, tl.trans(k_hi.to(q_hi.dtype)))
    else:
        k_tile = tl.load(k_cache + k_off[:, None] + cols[None, :])
        qk = tl.dot(q_tile, tl.trans(k_tile.to(q_tile.dtype)))
    if SOFT_CAP:
        s = cap_post * _tanh(qk * cap_pre)
    else:
        s = qk * sm_scale_log2
    row_shift = 0.0
    if ALIBI:
        # FlashInfer's bias, slope * (key - query index in the request), in base 2, split as
        # slope * j for the block's key j (a tile the same for every block, so the loop keeps it and
        # the scale's multiply becomes a multiply-add) plus slope * (block start - query), constant
        # along the row: that part shifts the row's maximum and its exponents' offset, not each score.
        # (+8.1% over plain causal prefill on an H100 at 25f7ab2, when the whole bias went on each score.)
        col = tl.arange(0, s.shape[1]).to(tl.float32)
        s += alibi_log2[:, None] * col[None, :]
        row_shift = alibi_log2 * (key0 - qpos).to(tl.float32)
    if MASKED:
        # One integer "room" per score, visible iff >= 0: a single compare (one lane mask) per
        # element instead of one per condition. Padding rows need no mask: they are never stored.
        room = (kv_hi - 1 - keys)[None, :]
        if CAUSAL:
            room = tl.minimum(room, diag[:, None] - keys[None, :])
        if HAS_WINDOW:
            room = tl.minimum(room, keys[None, :] - diag[:, None] + window_left)
        visible = room >= 0
        if CUSTOM_MASK:
            visible = visible & (qpos >= 0)[:, None]  # [BLOCK_M, BLOCK_N] before the branch (compiled Triton)
            if need_bits:
                # bit (query, key) of the request's row-major mask, little bit order; clamped into the
                # request's bits (padding rows and keys past the chunk are masked above anyway)
                bit = tl.minimum(qpos[:, None].to(tl.int64) * kv_len + keys[None, :], mask_last)
                byte = tl.load(mask_bytes + bit // 8)
                visible = visible & (((byte >> (bit % 8).to(tl.uint8)) & 1) != 0)
        s = tl.where(visible, s, float("-inf"))

    m_new = tl.maximum(m, tl.max(s, axis=1) + row_shift)
    if MASKED:
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen nothing yet
    else:
        m_safe = m_new  # an unmasked block gives every row a finite score
    alpha = tl.exp2(m - m_safe)
    p = tl.exp2(s - (m_safe - row_shift)[:, None])
    l = l * alpha + tl.sum(p, axis=1)
    v_tile = tl.load(v_cache + kv_off[:, None] + cols[None, :])
    acc = acc * alpha[:, None] + tl.dot(p.to(q_tile.dtype), v_tile.to(q_tile.dtype))
    return acc, m_new, l


@thin
@triton.jit
def attention_kernel(
    q, k_cache, v_cache, o, lse, kv_indices, meta, work, merge_indptr, sinks, custom_mask, alibi_slopes, rope_cis,
    batch, num_work, sm_scale_log2, cap_pre, cap_post, window_left,
    stride_q_tok, stride_q_head, stride_kv_page, stride_kv_slot, stride_kv_head,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PAGE_SIZE: tl.constexpr, PAGED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
    SOFT_CAP: tl.constexpr, SPLIT: tl.constexpr, PREFETCH_PAGES: tl.constexpr, SINK: tl.constexpr = False,
    CUSTOM_MASK: tl.constexpr = False, ALIBI: tl.constexpr = False, ROPE: tl.constexpr = False,
    ROPE_KEYS_AHEAD: tl.constexpr = False, ROPE_Q_IN_KERNEL: tl.constexpr = False,
):
    """``SINK``: ``sinks`` (fp32 ``[Hq]``, natural-log units, not scaled by ``sm_scale``) adds one
    logit per query head to the softmax denominator only (gpt-oss's attention sinks), as a key of
    value 0. Only the work item of a request's first KV chunk (split index 0) adds it, so split
    chunks and cascade levels merge to one sink term per row.

    ``CUSTOM_MASK``: FlashInfer's custom mask, packed (masks.py), then each query row's visibility
    classes per group of masks.CLASS_KEYS keys (mask_with_classes); each request's byte offsets of both
    follow the request tables in ``meta``. The tile's key range shrinks to the keys its rows see, and its
    leading blocks that every row sees whole take the unmasked path (_mask_range); of the rest, a block
    no row sees is skipped, one every row sees whole reads no mask bit, the others gather a bit per
    score. Causal is off (the plan drops it, as FlashInfer does).

    ``ALIBI``: ``alibi_slopes`` (fp32 ``[Hq]``) add ``slope * (key - query index)`` to every score.

    ``ROPE``: Llama's RoPE in the kernel (FlashInfer's ``ROPE_LLAMA``, decode-sized plans): q rotated once
    at position ``kv_len - qo_len + i``, each K block at its keys' positions, with the cos and sin of
    ``rope_cis`` (rope_cis_table). ``ROPE_KEYS_AHEAD`` (prefill plans; not with ROPE): q and the keys were
    rotated before the launch (rotate_rows_kernel), ``k_cache`` holds the keys in the layout of
    _rotated_key_offsets, and V stays in the cache; with ``ROPE_Q_IN_KERNEL``, q is rotated here instead,
    once per tile, at full width (the dots stay whole)."""
    # Few scalar arguments on purpose: every one takes SGPRs, which the AMD compile ran short of.
    # So the request tables are packed into `meta` (qo_indptr | kv_indptr | kv_last_page_len), the
    # work list into `work` [5, num_work], K and V share their strides, and o/lse are packed
    # [rows, Hq, D] / [rows, Hq] with Hq = GROUP * (KV heads in the grid). HEAD_DIM is a power of
    # two (64/128/256), so no column masks; PAGE_SIZE is constexpr so a key's page and slot cost a
    # shift (or a multiply by a constant), not a runtime division.
    w = tl.program_id(0)
    h_kv = tl.program_id(1)
    num_qo_heads = GROUP * tl.num_programs(1)
    req = tl.load(work + w)
    row0 = tl.load(work + num_work + w)
    kv_lo = tl.load(work + 2 * num_work + w)
    kv_hi = tl.load(work + 3 * num_work + w)

    qo_begin = tl.load(meta + req)
    qo_len = tl.load(meta + req + 1) - qo_begin
    kv_begin = tl.load(meta + batch + 1 + req)
    if PAGED:
        num_pages = tl.load(meta + batch + 2 + req) - kv_begin
        kv_len = tl.where(num_pages > 0, (num_pages - 1) * PAGE_SIZE + tl.load(meta + 2 * batch + 2 + req), 0)
    else:
        kv_len = tl.load(meta + batch + 2 + req) - kv_begin

    rows = row0 + tl.arange(0, BLOCK_M)
    qpos = rows // GROUP
    head = h_kv * GROUP + rows % GROUP
    row_ok = qpos < qo_len
    cols = tl.arange(0, HEAD_DIM)
    q_tok = (qo_begin + qpos).to(tl.int64)
    q_tile = tl.load(q + q_tok[:, None] * stride_q_tok + head[:, None] * stride_q_head + cols[None, :],
                     mask=row_ok[:, None], other=0.0)
    q_lo = q_tile  # with ROPE: the rotated halves of the query rows (else unused)
    q_hi = q_tile
    if ROPE:
        HALF: tl.constexpr = HEAD_DIM // 2
        half = tl.arange(0, HALF)
        q_row = q + q_tok[:, None] * stride_q_tok + head[:, None] * stride_q_head
        lo = tl.load(q_row + half[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
        hi = tl.load(q_row + (half + HALF)[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
        cos, sin = _cis_halves(rope_cis, qpos + (kv_len - qo_len), row_ok, HALF)
        lo, hi = _turn(lo, hi, cos, sin)
        q_lo = lo.to(q_tile.dtype)
        q_hi = hi.to(q_tile.dtype)
    if ROPE_Q_IN_KERNEL:
        HALF_Q: tl.constexpr = HEAD_DIM // 2
        partner = (cols + HALF_Q) % HEAD_DIM  # column c turns with c + D/2 (rotate-half)
        q_partner = tl.load(q + q_tok[:, None] * stride_q_tok + head[:, None] * stride_q_head + partner[None, :],
                            mask=row_ok[:, None], other=0.0).to(tl.float32)
        cis = rope_cis + (qpos + (kv_len - qo_len)).to(tl.int64)[:, None] * HEAD_DIM + (cols % HALF_Q)[None, :]
        cos = tl.load(cis, mask=row_ok[:, None], other=0.0)
        sin = tl.load(cis + HALF_Q, mask=row_ok[:, None], other=0.0)
        signed_partner = tl.where((cols < HALF_Q)[None, :], -q_partner, q_partner)
        q_tile = (q_tile.to(tl.float32) * cos + signed_partner * sin).to(q_tile.dtype)

    # Keys this tile can see at all: causal ends at the last row's diagonal, the window starts at
    # the first row's. Aligned bottom-right: query i sees key j iff j <= i + kv_len - qo_len.
    diag = qpos + (kv_len - qo_len)
    if CAUSAL:
        last_q = tl.minimum(row0 + BLOCK_M - 1, qo_len * GROUP - 1) // GROUP
        kv_hi = tl.minimum(kv_hi, last_q + (kv_len - qo_len) + 1)
    if HAS_WINDOW:
        kv_lo = tl.maximum(kv_lo, row0 // GROUP + (kv_len - qo_len) - window_left)
        if CUSTOM_MASK:  # blocks start on a class group (chunks do); keys before the window stay masked
            kv_lo = kv_lo // CLASS_KEYS * CLASS_KEYS
    # Whole blocks that every row of the tile sees entirely need no masks: those that end inside the
    # chunk and, causally, at or before the first row's diagonal. Padding rows (past qo_len) score 0
    # against them and are never stored. With a window the lower edge differs per row: all masked.
    unmasked_hi = kv_lo + tl.maximum(kv_hi - kv_lo, 0) // BLOCK_N * BLOCK_N
    if CAUSAL:
        first_diag = row0 // GROUP + (kv_len - qo_len)
        unmasked_hi = tl.minimum(unmasked_hi, kv_lo + tl.maximum(first_diag + 1 - kv_lo, 0) // BLOCK_N * BLOCK_N)
    if HAS_WINDOW or CUSTOM_MASK:
        unmasked_hi = kv_lo  # with CUSTOM_MASK, _mask_range below sets it
    mask_bytes = custom_mask
    mask_last = kv_len * 0
    alibi_log2 = tl.zeros([BLOCK_M], tl.float32)
    if ALIBI:
        alibi_log2 = tl.load(alibi_slopes + head, mask=row_ok, other=0.0) * LOG2E_JIT
    class_rows = custom_mask  # with CUSTOM_MASK: the tile's rows of the request's classes
    num_groups = kv_len * 0
    if CUSTOM_MASK:  # the request's offsets sit after qo_indptr | kv_indptr (| kv_last_page_len)
        if PAGED:
            mask_table = meta + 3 * batch + 2
        else:
            mask_table = meta + 2 * batch + 2
        mask_bytes = custom_mask + tl.load(mask_table + req).to(tl.int64)
        mask_last = tl.maximum(qo_len * kv_len - 1, 0).to(tl.int64)
        num_groups = tl.cdiv(kv_len, CLASS_KEYS)
        class_rows = custom_mask + tl.load(mask_table + batch + 1 + req).to(tl.int64) + \
            tl.where(row_ok, qpos, 0).to(tl.int64) * num_groups
        kv_lo, unmasked_hi, kv_hi = _mask_range(class_rows, row_ok, kv_lo, kv_hi, BLOCK_N, HAS_WINDOW)

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    blk = tl.arange(0, BLOCK_N)
    if PREFETCH_PAGES:
        # The page ids of the next block are loaded one step ahead, so a block's K/V addresses never
        # wait on a page-table load of the same step: on an H200 this took paged prefill from 0.69x
        # to 0.81x of FlashInfer and cascade's shared level from 224 to 204 us (plan.default_config).
        # Short steps do not profit: decode tiles leave it off.
        kv_off = _row_offsets(kv_indices, kv_begin, tl.minimum(kv_lo + blk, tl.maximum(unmasked_hi - 1, 0)), h_kv,
                              stride_kv_page, stride_kv_slot, stride_kv_head, PAGE_SIZE, PAGED)
    for start in range(kv_lo, unmasked_hi, BLOCK_N):
        if PREFETCH_PAGES:
            next_off = _row_offsets(kv_indices, kv_begin, tl.minimum(start + BLOCK_N + blk, unmasked_hi - 1), h_kv,
                                    stride_kv_page, stride_kv_slot, stride_kv_head, PAGE_SIZE, PAGED)
        else:
            kv_off = _row_offsets(kv_indices, kv_begin, start + blk, h_kv, stride_kv_page, stride_kv_slot,
                                  stride_kv_head, PAGE_SIZE, PAGED)
        k_off = kv_off
        if ROPE_KEYS_AHEAD:
            k_off = _rotated_key_offsets(kv_begin, start + blk, h_kv, PAGE_SIZE, HEAD_DIM)
        acc, m, l = _attend_block(acc, m, l, q_tile, k_cache, v_cache, kv_off, k_off, start + blk, kv_hi, diag,
                                  cols, sm_scale_log2, cap_pre, cap_post, window_left, mask_bytes, qpos, kv_len,
                                  mask_last, alibi_log2, q_lo, q_hi, rope_cis, start,
                                  False, False, CAUSAL, HAS_WINDOW, SOFT_CAP, CUSTOM_MASK, ALIBI, ROPE)
        if PREFETCH_PAGES:
            kv_off = next_off
    for start in range(unmasked_hi, kv_hi, BLOCK_N):
        # Keys past the chunk's end read the chunk's last key instead of being masked: every load is
        # in bounds and unpredicated, and the score mask gives those keys zero weight.
        seen_any = True
        need_bits = True
        if CUSTOM_MASK:
            seen_any, need_bits = _block_classes(class_rows, row_ok, start, num_groups, BLOCK_N)
        if seen_any:
            keys = tl.minimum(start + blk, kv_hi - 1)
            kv_off = _row_offsets(kv_indices, kv_begin, keys, h_kv, stride_kv_page, stride_kv_slot, stride_kv_head,
                                  PAGE_SIZE, PAGED)
            k_off = kv_off
            if ROPE_KEYS_AHEAD:
                k_off = _rotated_key_offsets(kv_begin, keys, h_kv, PAGE_SIZE, HEAD_DIM)
            acc, m, l = _attend_block(acc, m, l, q_tile, k_cache, v_cache, kv_off, k_off, start + blk, kv_hi, diag,
                                      cols, sm_scale_log2, cap_pre, cap_post, window_left, mask_bytes, qpos, kv_len,
                                      mask_last, alibi_log2, q_lo, q_hi, rope_cis, start,
                                      need_bits, True, CAUSAL, HAS_WINDOW, SOFT_CAP, CUSTOM_MASK, ALIBI, ROPE)

    if SINK:
        # the sink as one more key: rescale to the new maximum, add its weight to the denominator
        first_chunk = tl.load(work + 4 * num_work + w) == 0
        sink = tl.where(first_chunk, tl.load(sinks + head, mask=row_ok, other=0.0) * LOG2E_JIT, float("-inf"))
        m_sink = tl.maximum(m, sink)
        m_sink_safe = tl.where(m_sink == float("-inf"), 0.0, m_sink)
        alpha = tl.exp2(m - m_sink_safe)
        l = l * alpha + tl.exp2(sink - m_sink_safe)
        acc = acc * alpha[:, None]
        m = m_sink
    empty = l == 0.0
    out = acc / tl.where(empty, 1.0, l)[:, None]
    row_lse = tl.where(empty, float("-inf"), m + tl.log2(tl.where(empty, 1.0, l)))
    if SPLIT:
        out_row = (tl.load(merge_indptr + qo_begin + qpos, mask=row_ok, other=0)
                   + tl.load(work + 4 * num_work + w)).to(tl.int64)
    else:
        out_row = q_tok
    out_idx = out_row * num_qo_heads + head
    tl.store(o + out_idx[:, None] * HEAD_DIM + cols[None, :], out.to(o.dtype.element_ty), mask=row_ok[:, None])
    tl.store(lse + out_idx, row_lse, mask=row_ok)


@thin
@triton.jit
def rotate_rows_kernel(src, rotated, kv_indices, unit_pos0, rope_cis, num_rows, stride_page, stride_slot,
                       stride_head, HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr, PAGED: tl.constexpr,
                       BLOCK_R: tl.constexpr):
    """RoPE ahead of the attention kernel (ROPE_KEYS_AHEAD): rows of ``src`` rotated into ``rotated``
    (``[num_rows, heads, HEAD_DIM]`` contiguous, _rotated_key_offsets' layout). Grid (cdiv(num_rows,
    BLOCK_R), heads). For the keys, row r is slot ``r % PAGE_SIZE`` of the plan's listed page
    ``r // PAGE_SIZE`` (ragged: KV row r); for the queries, ``src`` is q and row r its token (PAGE_SIZE 1).
    Row r's position is ``unit_pos0[r // PAGE_SIZE] + r % PAGE_SIZE``. Slots past a last page's length are
    turned too (whatever they hold) and never read."""
    HALF: tl.constexpr = HEAD_DIM // 2
    h = tl.program_id(1)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    ok = r < num_rows
    r = tl.minimum(r, num_rows - 1)  # in bounds, unpredicated loads; the stores are masked
    src_row = src + _row_offsets(kv_indices, 0, r, h, stride_page, stride_slot, stride_head, PAGE_SIZE, PAGED)
    half = tl.arange(0, HALF)
    lo = tl.load(src_row[:, None] + half[None, :]).to(tl.float32)
    hi = tl.load(src_row[:, None] + (half + HALF)[None, :]).to(tl.float32)
    cos, sin = _cis_halves(rope_cis, tl.load(unit_pos0 + r // PAGE_SIZE) + r % PAGE_SIZE, ok, HALF)
    lo, hi = _turn(lo, hi, cos, sin)
    dst = rotated + _rotated_key_offsets(0, r, h, 1, HEAD_DIM)
    tl.store(dst[:, None] + half[None, :], lo.to(rotated.dtype.element_ty), mask=ok[:, None])
    tl.store(dst[:, None] + (half + HALF)[None, :], hi.to(rotated.dtype.element_ty), mask=ok[:, None])


ROTATE_ROWS = 32  # rows a program of rotate_rows_kernel

_CIS_TABLES: dict = {}


def rope_cis_table(rope: tuple, head_dim: int, positions: int, device) -> torch.Tensor:
    """fp32 ``[>= positions, head_dim]``: row p is cos of p's angles then their sin, angle of pair c
    ``p / rope_scale * rope_theta^(-2c / head_dim)`` computed in fp64 (FlashInfer computes it in fp32).
    Cached per (rope, head_dim, device) and grown by powers of two, at least 256 rows (a key block's
    turns read its first BLOCK_N rows). Plan time: a run reuses it (run() allocates nothing)."""
    key = (rope, head_dim, str(device))
    table = _CIS_TABLES.get(key)
    if table is None or table.shape[0] < positions:
        rows = max(256, next_pow2(max(positions, 1)))
        freq = (1.0 / rope[0]) * rope[1] ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angle = torch.arange(rows, dtype=torch.float64)[:, None] * freq[None, :]
        table = torch.cat([angle.cos(), angle.sin()], 1).to(device=device, dtype=torch.float32)
        _CIS_TABLES[key] = table
    return table


class RopeAhead(NamedTuple):
    """Prefill plans' RoPE ahead of the kernel: the scratch q and the keys are rotated into, and each
    token's (q) and each listed page's or KV row's (keys) first position. ``q`` None: q is rotated in the
    kernel's tiles (ROPE_Q_IN_KERNEL)."""

    q: Optional[torch.Tensor]
    q_pos: torch.Tensor
    keys: torch.Tensor
    key_pos0: torch.Tensor


def rope_ahead_scratch(qo_lens: list, kv_lens: list, kv_indptr: list, page_size: int, paged: bool, num_qo_heads: int,
                       num_kv_heads: int, head_dim: int, dtype: torch.dtype, device, q_ahead: bool = True) -> RopeAhead:
    """Plan time (ROPE_KEYS_AHEAD): the RopeAhead of a plan."""
    unit = page_size if paged else 1
    indptr = torch.tensor(kv_indptr, dtype=torch.int64)
    units = int(indptr[-1])
    req = torch.repeat_interleave(torch.arange(len(kv_indptr) - 1), indptr[1:] - indptr[:-1])
    key_pos0 = (torch.arange(units) - indptr[req]) * unit
    qo, kv = torch.tensor(qo_lens, dtype=torch.int64), torch.tensor(kv_lens, dtype=torch.int64)
    q_req = torch.repeat_interleave(torch.arange(len(qo_lens)), qo)
    first = torch.cumsum(qo, 0) - qo
    q_pos = torch.arange(q_req.numel()) - first[q_req] + (kv - qo)[q_req]  # bottom-right aligned
    q = torch.empty(q_req.numel(), num_qo_heads, head_dim, dtype=dtype, device=device) if q_ahead else None
    return RopeAhead(q,
                     q_pos.to(device=device, dtype=torch.int32),
                     torch.empty(units * unit, num_kv_heads, head_dim, dtype=dtype, device=device),
                     key_pos0.to(device=device, dtype=torch.int32))


def _rotate_rows(src, rotated, pos0, rope_cis, strides, kv_indices=None, page_size=1) -> torch.Tensor:
    if rotated.shape[0]:
        paged = kv_indices is not None
        rotate_rows_kernel[(cdiv(rotated.shape[0], ROTATE_ROWS), rotated.shape[1])](
            src, rotated, kv_indices if paged else pos0, pos0, rope_cis, rotated.shape[0], *strides,
            HEAD_DIM=rotated.shape[2], PAGE_SIZE=page_size if paged else 1, PAGED=paged, BLOCK_R=ROTATE_ROWS)
    return rotated


@thin
@triton.jit
def mask_classes_kernel(mask_bytes, rows, classes, CLASS_KEYS: tl.constexpr, GROUPS: tl.constexpr):
    """Each query row's visibility classes (masks.CLASS_*), one program per query row of the batch.
    ``rows`` (int64 ``[total_q, 3]``): the row's first bit in ``mask_bytes`` (little bit order), its
    request's kv_len, and its first class byte in ``classes``."""
    t = tl.program_id(0).to(tl.int64)
    bit0 = tl.load(rows + 3 * t)
    kv_len = tl.load(rows + 3 * t + 1)
    out0 = tl.load(rows + 3 * t + 2)
    num_groups = tl.cdiv(kv_len, CLASS_KEYS)
    lanes = tl.arange(0, CLASS_KEYS)
    for g0 in range(0, num_groups, GROUPS):
        g = g0 + tl.arange(0, GROUPS)
        key = g[:, None] * CLASS_KEYS + lanes[None, :]
        real = key < kv_len
        bit = bit0 + key
        byte = tl.load(mask_bytes + bit // 8, mask=real, other=0)
        seen = real & (((byte >> (bit % 8).to(tl.uint8)) & 1) != 0)
        count = tl.sum(seen.to(tl.int32), axis=1)
        cls = tl.where(count == 0, 0, tl.where(count == CLASS_KEYS, 1, 2))  # masks.CLASS_NONE / ALL / SOME
        tl.store(classes + out0 + g, cls.to(tl.uint8), mask=g < num_groups)


def mask_with_classes(packed: torch.Tensor, mask_offsets: list, class_offsets: list, qo_lens: list,
                      kv_lens: list) -> torch.Tensor:
    """``packed`` (the plan's mask bytes) followed by every query row's classes at ``class_offsets``
    (masks.class_offsets, from ``packed.numel()``): the one buffer the kernel reads with CUSTOM_MASK.
    Plan time: one launch whatever the batch."""
    from .masks import CLASS_KEYS as KEYS

    assert KEYS == CLASS_KEYS.value, "masks.CLASS_KEYS and kernels.CLASS_KEYS must agree"
    buffer = torch.empty(class_offsets[-1], dtype=torch.uint8, device=packed.device)
    buffer[:packed.numel()] = packed
    qo = torch.tensor(qo_lens, dtype=torch.int64)
    kv = torch.tensor(kv_lens, dtype=torch.int64)
    req = torch.repeat_interleave(torch.arange(len(qo_lens)), qo)
    if req.numel() == 0:
        return buffer
    first = torch.cumsum(qo, 0) - qo
    row = torch.arange(req.numel()) - first[req]  # the query row within its request
    bit0 = 8 * torch.tensor(mask_offsets[:-1], dtype=torch.int64)[req] + row * kv[req]
    out0 = torch.tensor(class_offsets[:-1], dtype=torch.int64)[req] + row * ((kv[req] + KEYS - 1) // KEYS)
    rows = torch.stack([bit0, kv[req], out0], 1).to(packed.device)
    mask_classes_kernel[(req.numel(),)](packed, rows, buffer, CLASS_KEYS=KEYS, GROUPS=CLASS_GROUPS)
    return buffer


CLASS_GROUPS = 64  # key groups a step of mask_classes_kernel (1024 keys)


def launch_attention(plan, q, k, v, kv_indices, meta, batch, out, lse, partial_o, partial_lse, *, paged: bool,
                     page_size: int, kv_strides, sm_scale: float, causal: bool, window_left: int,
                     logits_soft_cap: float | None, merge, sinks=None, custom_mask=None, alibi=None,
                     rope=None, rope_ahead: RopeAhead | None = None) -> None:
    """Run ``plan``'s work list. ``k``/``v`` are 4-D page views (any strides, the same for both) when
    ``paged``, else ragged ``[total_kv, Hkv, D]``; ``kv_strides`` = (page or token, slot, head) element
    strides. ``meta`` = qo_indptr | kv_indptr | kv_last_page_len (int32). ``out``/``lse`` are contiguous.
    With a split plan, the partial states go to ``partial_o``/``partial_lse`` and
    ``merge(partial_o, partial_lse, merge_indptr, out, lse)`` combines them. ``rope``: the rope_cis_table
    of in-kernel RoPE; with ``rope_ahead`` too, q and the keys are rotated into its scratch first and the
    kernel reads them there (ROPE_KEYS_AHEAD)."""
    if plan.num_work == 0:
        return
    if rope is not None and rope_ahead is not None and rope_ahead.q is not None:
        q = _rotate_rows(q, rope_ahead.q, rope_ahead.q_pos, rope, (q.stride(0), 0, q.stride(1)))
    if rope is not None and rope_ahead is not None:
        k = _rotate_rows(k, rope_ahead.keys, rope_ahead.key_pos0, rope, kv_strides, kv_indices if paged else None,
                         page_size)
    num_kv_heads, head_dim = k.shape[-2], q.shape[-1]
    dst_o, dst_lse = (partial_o, partial_lse) if plan.split else (out, lse)
    cap = float(logits_soft_cap or 0.0)
    launch_opts = {"num_warps": plan.num_warps}
    if plan.num_stages is not None:
        launch_opts["num_stages"] = plan.num_stages
    attention_kernel[(plan.num_work, num_kv_heads)](
        q, k, v, dst_o, dst_lse, kv_indices if paged else meta, meta, plan.work, plan.merge_indptr,
        sinks if sinks is not None else meta, custom_mask if custom_mask is not None else meta,
        alibi if alibi is not None else meta, rope if rope is not None else meta, batch, plan.num_work,
        sm_scale * LOG2E, (sm_scale / cap) if cap else 0.0, cap * LOG2E, window_left, q.stride(0), q.stride(1),
        *kv_strides,
        GROUP=q.shape[1] // num_kv_heads, HEAD_DIM=head_dim, BLOCK_M=plan.block_m, BLOCK_N=plan.block_n,
        PAGE_SIZE=page_size if paged else 1, PAGED=paged, CAUSAL=causal, HAS_WINDOW=window_left >= 0,
        SOFT_CAP=cap > 0, SPLIT=plan.split, PREFETCH_PAGES=paged and plan.prefetch_pages, SINK=sinks is not None,
        CUSTOM_MASK=custom_mask is not None, ALIBI=alibi is not None, ROPE=rope is not None and rope_ahead is None,
        ROPE_KEYS_AHEAD=rope is not None and rope_ahead is not None,
        ROPE_Q_IN_KERNEL=rope is not None and rope_ahead is not None and rope_ahead.q is None, **launch_opts,
    )
    if plan.split and merge is not None:  # no merge: the caller merges (cascade folds all levels at once)
        merge(partial_o, partial_lse, plan.merge_indptr, out, lse)


# --------------------------------------------------------------------------------------------------
# The AMD compile check: each head dim with the tiles plan.py picks for AMD (a decode-sized and a
# prefill-sized query tile), paged and ragged, split and direct, in both 16-bit dtypes; then, at d128,
# each feature flag and KV format the engine launches (no causal, window, soft cap, fp8 KV, page 1,
# page-id prefetch).

POINTER_ARGS = ("q", "k_cache", "v_cache", "o", "lse", "kv_indices", "meta", "work", "merge_indptr", "sinks",
                "custom_mask", "alibi_slopes", "rope_cis")
STRIDE_ARGS = ("stride_q_tok", "stride_q_head", "stride_kv_page", "stride_kv_slot", "stride_kv_head")


def kernel_spec(dtype: str, head_dim: int, packed_rows: int, group: int, paged: bool, split: bool, *,
                kv_dtype: str | None = None, page_size: int = 16, arch: str = "gfx942", label: str = "",
                config: dict | None = None, **flags) -> KernelSpec:
    """The compile an AMD launch of ``arch`` makes for this shape: ``dtype``/``kv_dtype`` are Triton
    names (``bf16``, ``fp8e4nv``), ``packed_rows`` the largest (query positions x group) of the plan,
    ``config`` a tuned row's keys over the heuristic's tiles, ``flags`` override CAUSAL (default True),
    HAS_WINDOW, SOFT_CAP."""
    from .plan import default_config

    cfg = {**default_config(packed_rows, head_dim, arch=arch), **(config or {})}
    kv_dtype = kv_dtype or dtype
    consts = {"GROUP": group, "HEAD_DIM": head_dim, "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"],
              "PAGE_SIZE": page_size if paged else 1, "PAGED": paged, "CAUSAL": True, "HAS_WINDOW": False,
              "SOFT_CAP": False, "SPLIT": split, "SINK": False, "CUSTOM_MASK": False, "ALIBI": False, "ROPE": False,
              "ROPE_KEYS_AHEAD": False, "ROPE_Q_IN_KERNEL": False,
              "PREFETCH_PAGES": paged and bool(cfg.get("prefetch_pages")), **flags}
    # an optional tensor a launch does not use is the int32 meta tensor (launch_attention's stand-in, never read)
    sig = {n: "*i32" for n in POINTER_ARGS}
    sig.update(q=f"*{dtype}", k_cache=f"*{kv_dtype}", v_cache=f"*{kv_dtype}", lse="*fp32",
               o="*fp32" if split else f"*{dtype}")
    for pointer, used, ty in (("sinks", consts["SINK"], "*fp32"), ("custom_mask", consts["CUSTOM_MASK"], "*u8"),
                              ("alibi_slopes", consts["ALIBI"], "*fp32"),
                              ("rope_cis", consts["ROPE"] or consts["ROPE_KEYS_AHEAD"], "*fp32")):
        sig[pointer] = ty if used else "*i32"
    sig.update({n: "fp32" for n in ("sm_scale_log2", "cap_pre", "cap_post")})
    sig.update(batch="i32", num_work="i32", window_left="i32", **{n: "i32" for n in STRIDE_ARGS})
    kind = ("paged" if paged else "ragged") + ("-split" if split else "") + label
    name = f"attention[{dtype}-d{head_dim}-g{group}-m{cfg['BLOCK_M']}n{cfg['BLOCK_N']}-{kind}]"
    options = {k: cfg[k] for k in ("num_warps", "num_stages") if k in cfg}
    return KernelSpec(name, attention_kernel, sig, consts, options, uses_dot=True,
                      divisible_by_16=POINTER_ARGS + STRIDE_ARGS)


def _tuned_specs(arch: str):
    """Every tuned row measured on ``arch`` (tuning.py), as the plans it serves launch it: causal or not, split
    or direct, over a paged cache of 16-key pages (a tuned tile needs its code object as much as a default)."""
    from aiter_ext.core.tuned import measured_configs

    names = {"bf16": "bf16", "fp16": "fp16"}
    for row, config in measured_configs("attention", arch):
        if row["dtype"] not in names or row["kv_dtype"] != row["dtype"]:
            continue  # the tuner times 16-bit caches of q's dtype only
        group = int(row["num_qo_heads"]) // int(row["num_kv_heads"])
        tile = "".join(f"-{k}{config[k]}" for k in ("BLOCK_N", "num_warps", "num_stages") if k in config)
        tile += "-prefetch" if config.get("prefetch_pages") else ""
        for causal in (True, False):
            for split in (True, False):
                yield kernel_spec(names[row["dtype"]], int(row["head_dim"]), int(row["packed_rows"]), group, True,
                                  split, arch=arch, config=config, CAUSAL=causal,
                                  label=f"-tuned{tile}" + ("" if causal else "-nocausal"))


def aot_specs(arch: str = "gfx942"):
    """The AMD compile check's specs (the same for every arch: the AMD tiles), then the tiles of the tuned rows
    measured on ``arch``."""
    yield from _amd_specs()
    yield from _tuned_specs(arch)


def _amd_specs():
    from dataclasses import replace

    from .engine import MASK_WARPS_AMD

    for dtype in ("bf16", "fp16"):
        for head_dim in (64, 128, 256):
            for rows, group in ((8, 8), (64, 4)):  # a GQA decode tile and a prefill tile
                for paged, split in ((True, True), (True, False), (False, False)):
                    yield kernel_spec(dtype, head_dim, rows, group, paged, split)
            # decode (BatchDecode's plans: one query per request, no causal mask) at the GQA groups of common
            # models (MHA, Llama's 4 and 8), paged or ragged (single_decode_with_kv_cache), split over KV chunks or not
            for group in (1, 4, 8):
                for paged in (True, False):
                    for split in (True, False):
                        yield kernel_spec(dtype, head_dim, group, group, paged, split, label="-decode", CAUSAL=False)
    for rows, group in ((8, 8), (64, 4)):
        yield kernel_spec("bf16", 128, rows, group, True, True, label="-nocausal", CAUSAL=False)
        yield kernel_spec("bf16", 128, rows, group, True, True, label="-window", HAS_WINDOW=True)
        yield kernel_spec("bf16", 128, rows, group, True, True, label="-softcap", SOFT_CAP=True)
        yield kernel_spec("bf16", 128, rows, group, True, True, kv_dtype="fp8e4nv", label="-kv_e4m3fn")
        yield kernel_spec("bf16", 128, rows, group, True, True, page_size=1, label="-page1")
        # AMD defaults leave the page prefetch off (unmeasured there); a tuned row may turn it on.
        yield kernel_spec("bf16", 128, rows, group, True, True, label="-prefetch", PREFETCH_PAGES=True)
        # attention sinks (gpt-oss: with and without its 128-token sliding window)
        yield kernel_spec("bf16", 64, rows, group, True, True, label="-sink", SINK=True)
        yield kernel_spec("bf16", 64, rows, group, True, True, label="-sink-window", SINK=True, HAS_WINDOW=True)
        yield kernel_spec("bf16", 128, rows, group, True, False, label="-sink", SINK=True)
        # gpt-oss itself (64 query heads over 8, head dim 64, every other layer windowed): its decode tile unsplit
        # (the split one is above) and its prefill tile, split or not
        for window in (False, True):
            label = "-gptoss-sink" + ("-window" if window else "")
            splits = (False,) if (rows, group) == (8, 8) else (True, False)
            for split in splits:
                yield kernel_spec("bf16", 64, rows, 8, True, split, label=label, SINK=True, HAS_WINDOW=window)
        yield kernel_spec("bf16", 128, rows, group, True, True, label="-alibi", ALIBI=True)
        # in-kernel RoPE (decode-sized plans) at the 8 warps the plan gives it off NVIDIA (engine.build)
        spec = kernel_spec("bf16", 128, rows, group, True, True, label="-rope", ROPE=True)
        yield replace(spec, options={**spec.options, "num_warps": MASK_WARPS_AMD})
        yield kernel_spec("bf16", 128, rows, group, True, False, label="-rope-ahead", ROPE_KEYS_AHEAD=True)
        yield kernel_spec("bf16", 128, rows, group, True, False, label="-rope-keys-ahead", ROPE_KEYS_AHEAD=True,
                          ROPE_Q_IN_KERNEL=True)
        # FlashInfer's custom masks (causal off, as with a mask FlashInfer ignores it), at the warps the
        # plan gives them off NVIDIA (engine.MASK_WARPS_AMD: 4 warps ran at one wave per SIMD)
        for paged, split in ((True, True), (False, False)):
            spec = kernel_spec("bf16", 128, rows, group, paged, split, label="-custom-mask", CUSTOM_MASK=True,
                               CAUSAL=False)
            yield replace(spec, options={**spec.options, "num_warps": MASK_WARPS_AMD})
    # block-sparse attention (sparse.py): BSR blocks of 64 x 64 as one-request-per-block-row pages of 64 keys
    # (FlashInfer's grid has C in 1, 4, 16; page 1 and 16 are compiled above)
    for c in (4, 64, 128):
        yield kernel_spec("bf16", 128, 256, 4, True, False, page_size=c, label=f"-bsr-c{c}", CAUSAL=False)
    yield kernel_spec("bf16", 128, 256, 4, True, True, page_size=64, label="-bsr-c64", CAUSAL=False)
    # RoPE ahead of prefill plans: keys from a paged bf16 or fp8 cache, ragged keys or q
    for kv_dtype, paged in (("bf16", True), ("fp8e4nv", True), ("bf16", False)):
        yield KernelSpec(f"rotate_rows[{kv_dtype}-d128-{'paged' if paged else 'ragged'}]", rotate_rows_kernel,
                         {"src": f"*{kv_dtype}", "rotated": "*bf16", "kv_indices": "*i32", "unit_pos0": "*i32",
                          "rope_cis": "*fp32", "num_rows": "i32", "stride_page": "i32", "stride_slot": "i32",
                          "stride_head": "i32"},
                         {"HEAD_DIM": 128, "PAGE_SIZE": 16 if paged else 1, "PAGED": paged, "BLOCK_R": ROTATE_ROWS},
                         {"num_warps": 4}, divisible_by_16=("src", "rotated", "kv_indices", "unit_pos0", "rope_cis",
                                                            "stride_page", "stride_slot", "stride_head"))
    # the custom mask's visibility classes, at plan time
    yield KernelSpec("mask_classes", mask_classes_kernel, {"mask_bytes": "*u8", "rows": "*i64", "classes": "*u8"},
                     {"CLASS_KEYS": CLASS_KEYS.value, "GROUPS": CLASS_GROUPS}, {"num_warps": 4},
                     divisible_by_16=("mask_bytes", "rows", "classes"))


# History, for the next engineer: the first version of this kernel spilled SGPRs into VGPR lanes on
# gfx942/gfx950 in every paged variant. The causes were per-element masks, each a 64-bit lane mask
# in SGPRs (a masked load is also an exec-mask branch on AMD), and a runtime page-size division. The
# cure: unmasked loads of clamped key indices, masks only on boundary blocks and folded into one
# compare per score, and a constexpr PAGE_SIZE.
register_aot_specs("attention", aot_specs)
