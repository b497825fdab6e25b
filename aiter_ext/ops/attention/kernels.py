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
    q, k_cache, v_cache, o, lse, kv_indices, meta, work, merge_indptr,
    batch, num_work, sm_scale_log2, cap_pre, cap_post, window_left, page_size,
    stride_q_tok, stride_q_head, stride_kv_page, stride_kv_slot, stride_kv_head,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PAGED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, SOFT_CAP: tl.constexpr,
    SPLIT: tl.constexpr,
):
    # Few scalar arguments on purpose: every one takes SGPRs, and with ~30 of them the AMD compile
    # spilled SGPRs. So the request tables are packed into `meta` (qo_indptr | kv_indptr |
    # kv_last_page_len), the work list into `work` [5, num_work], K and V share their strides, and
    # o/lse are packed [rows, Hq, D] / [rows, Hq] with Hq = GROUP * (KV heads in the grid).
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
        kv_len = tl.where(num_pages > 0, (num_pages - 1) * page_size + tl.load(meta + 2 * batch + 2 + req), 0)
    else:
        kv_len = tl.load(meta + batch + 2 + req) - kv_begin

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
            kv_off = page * stride_kv_page + (keys % page_size) * stride_kv_slot + h_kv * stride_kv_head
        else:
            kv_off = (kv_begin + keys).to(tl.int64) * stride_kv_page + h_kv * stride_kv_head
        kv_mask = key_ok[:, None] & col_ok[None, :]
        k_tile = tl.load(k_cache + kv_off[:, None] + cols[None, :], mask=kv_mask, other=0.0)
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
        v_tile = tl.load(v_cache + kv_off[:, None] + cols[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(q_tile.dtype), v_tile.to(q_tile.dtype))
        m = m_new

    empty = l == 0.0
    out = acc / tl.where(empty, 1.0, l)[:, None]
    row_lse = tl.where(empty, float("-inf"), m + tl.log2(tl.where(empty, 1.0, l)))
    if SPLIT:
        out_row = (tl.load(merge_indptr + qo_begin + qpos, mask=row_ok, other=0)
                   + tl.load(work + 4 * num_work + w)).to(tl.int64)
    else:
        out_row = q_tok
    out_idx = out_row * num_qo_heads + head
    tl.store(o + out_idx[:, None] * HEAD_DIM + cols[None, :], out.to(o.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])
    tl.store(lse + out_idx, row_lse, mask=row_ok)


def launch_attention(plan, q, k, v, kv_indices, meta, batch, out, lse, partial_o, partial_lse, *, paged: bool,
                     page_size: int, kv_strides, sm_scale: float, causal: bool, window_left: int,
                     logits_soft_cap: float | None, merge) -> None:
    """Run ``plan``'s work list. ``k``/``v`` are 4-D page views (any strides, the same for both) when
    ``paged``, else ragged ``[total_kv, Hkv, D]``; ``kv_strides`` = (page or token, slot, head) element
    strides. ``meta`` = qo_indptr | kv_indptr | kv_last_page_len (int32). ``out``/``lse`` are contiguous.
    With a split plan, the partial states go to ``partial_o``/``partial_lse`` and
    ``merge(partial_o, partial_lse, merge_indptr, out, lse)`` combines them."""
    if plan.num_work == 0:
        return
    num_kv_heads, head_dim = k.shape[-2], q.shape[-1]
    dst_o, dst_lse = (partial_o, partial_lse) if plan.split else (out, lse)
    cap = float(logits_soft_cap or 0.0)
    launch_opts = {"num_warps": plan.num_warps}
    if plan.num_stages is not None:
        launch_opts["num_stages"] = plan.num_stages
    attention_kernel[(plan.num_work, num_kv_heads)](
        q, k, v, dst_o, dst_lse, kv_indices if paged else meta, meta, plan.work, plan.merge_indptr,
        batch, plan.num_work, sm_scale * LOG2E, (sm_scale / cap) if cap else 0.0, cap * LOG2E, window_left,
        page_size, q.stride(0), q.stride(1), *kv_strides,
        GROUP=q.shape[1] // num_kv_heads, HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_M=plan.block_m, BLOCK_N=plan.block_n,
        PAGED=paged, CAUSAL=causal, HAS_WINDOW=window_left >= 0, SOFT_CAP=cap > 0, SPLIT=plan.split,
        **launch_opts,
    )
    if plan.split and merge is not None:  # no merge: the caller merges (cascade folds all levels at once)
        merge(partial_o, partial_lse, plan.merge_indptr, out, lse)


# --------------------------------------------------------------------------------------------------
# The AMD compile check: each head dim with the tiles plan.py picks (decode-sized and prefill-sized
# query tiles), paged and ragged, split and direct, in both 16-bit dtypes.

def aot_specs():
    from aiter_ext.core.aot import KernelSpec

    from .plan import default_config

    pointer_args = ("q", "k_cache", "v_cache", "o", "lse", "kv_indices", "meta", "work", "merge_indptr")
    stride_args = ("stride_q_tok", "stride_q_head", "stride_kv_page", "stride_kv_slot", "stride_kv_head")
    for dtype in ("bf16", "fp16"):
        for head_dim in (64, 128, 256):
            for rows in (8, 64):  # a GQA decode tile (group 8) and a prefill tile
                cfg = default_config(rows, head_dim, arch="gfx942")  # what an AMD launch would use
                block_m, block_n = cfg["BLOCK_M"], cfg["BLOCK_N"]
                options = {k: cfg[k] for k in ("num_warps", "num_stages") if k in cfg}
                for paged, split in ((True, True), (True, False), (False, False)):
                    sig = {n: "*i32" for n in pointer_args}
                    sig.update(q=f"*{dtype}", k_cache=f"*{dtype}", v_cache=f"*{dtype}", lse="*fp32",
                               o="*fp32" if split else f"*{dtype}")
                    sig.update({n: "fp32" for n in ("sm_scale_log2", "cap_pre", "cap_post")})
                    sig.update(batch="i32", num_work="i32", window_left="i32", page_size="i32",
                               **{n: "i32" for n in stride_args})
                    consts = {"GROUP": 8 if rows == 8 else 4, "HEAD_DIM": head_dim, "BLOCK_D": head_dim,
                              "BLOCK_M": block_m, "BLOCK_N": block_n, "PAGED": paged, "CAUSAL": True,
                              "HAS_WINDOW": False, "SOFT_CAP": False, "SPLIT": split}
                    kind = ("paged" if paged else "ragged") + ("-split" if split else "")
                    yield KernelSpec(f"attention[{dtype}-d{head_dim}-m{block_m}n{block_n}-{kind}]", attention_kernel,
                                     sig, consts, options, uses_dot=True,
                                     divisible_by_16=pointer_args + stride_args)


# NOT registered with `aiter-ext aot --check` yet, on purpose (issue 3 is open): on Triton 3.9 every
# variant above compiles for gfx942 and gfx950 with MFMA for both dots and LDS within the limits, but
# the paged variants spill SGPRs into VGPR lanes (no scratch), which the check rightly fails; the
# ragged ones mostly pass. Tried without success: fewer kernel arguments; a constexpr page size
# (shifts instead of divisions: a few SGPRs fewer); other warps/stages/waves_per_eu. 32-bit addressing
# plus num_stages=1 cured the 16-row tiles only, and 32-bit page offsets overflow on real KV caches.
# Next: address K/V pages through a per-page base (page * stride once per page, not per key row). Inspect with:
#   python3 -c "from aiter_ext.core import aot; from aiter_ext.ops.attention import kernels; \
#     aot.register_aot_specs('attention', kernels.aot_specs); raise SystemExit(aot.cli(['--check', '--kernel', 'attention']))"
