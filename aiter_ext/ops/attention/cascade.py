"""Cascade (shared-prefix) attention: FlashInfer's ``MultiLevelCascadeAttentionWrapper``, the two-level
``BatchDecodeWithSharedPrefixPagedKVCacheWrapper`` / ``BatchPrefillWithSharedPrefixPagedKVCacheWrapper``,
and the functional :func:`cascade_attention`.

Each level is one batch prefill over the same ``q`` and the same KV storage, with its own page table;
level 0 is usually one "request" holding every query of the batch against the shared prefix. The
engine packs all those queries (times the query heads of each KV group) as the rows of one prefill and
splits the prefix across programs, so the prefix is read once for the whole batch and still fills the
GPU. Only the last level is causal (aligned bottom-right within that level). The levels' states are
combined with ``merge_state_in_place``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from aiter_ext.ops.merge_state import merge_state_in_place

from aiter_ext.core.plans import CallPlans

from .engine import (
    bind_levels, held_device_tensors, host_scale, new_plan_slot, plan_level_merge, outputs_for, run_levels,
)
from .wrappers import (
    BatchPrefillWithPagedKVCacheWrapper, BatchPrefillWithRaggedKVCacheWrapper, _check_layout, checked_paged_views,
    paged_cache_parts,
)


class MultiLevelCascadeAttentionWrapper:
    """Attention over ``num_levels`` page tables of one paged KV cache, merged (FlashInfer's contract).

    ``plan(qo_indptr_arr, paged_kv_indptr_arr, paged_kv_indices_arr, paged_kv_last_page_len, num_qo_heads,
    num_kv_heads, head_dim, page_size, causal=False, ...)``: one array per level for each of the four
    page-table arguments. ``run(q, paged_kv_cache) -> out``.

    Examples
    --------
    >>> import torch
    >>> from aiter_ext import MultiLevelCascadeAttentionWrapper
    >>> from aiter_ext.ops.attention.reference import single_attention_ref
    >>> page, heads, dim = 4, 2, 64
    >>> cache = torch.randn(6, 2, page, heads, dim, dtype=torch.float16)   # 6 pages, NHD
    >>> q = torch.randn(3, heads, dim, dtype=torch.float16)                 # 3 requests, 1 token each
    >>> i32 = lambda *x: torch.tensor(x, dtype=torch.int32)
    >>> w = MultiLevelCascadeAttentionWrapper(2, torch.empty(1 << 20, dtype=torch.uint8))
    >>> w.plan([i32(0, 3), i32(0, 1, 2, 3)],               # level 0: all queries; level 1: one each
    ...        [i32(0, 2), i32(0, 1, 2, 3)],               # shared prefix = pages 0-1
    ...        [i32(0, 1), i32(2, 3, 4)],                  # unique pages 2, 3, 4
    ...        [i32(4), i32(2, 4, 1)], heads, heads, dim, page)
    >>> out = w.run(q, cache)
    >>> k, v = cache[:, 0].reshape(-1, heads, dim), cache[:, 1].reshape(-1, heads, dim)
    >>> ref = single_attention_ref(q[1:2], torch.cat([k[:8], k[12:16]]), torch.cat([v[:8], v[12:16]]))[0]
    >>> torch.testing.assert_close(out[1:2], ref, atol=1e-3, rtol=1e-3)
    """

    def __init__(self, num_levels: int, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD",
                 use_cuda_graph: bool = False, qo_indptr_buf_arr=None, paged_kv_indptr_buf_arr=None,
                 paged_kv_indices_buf_arr=None, paged_kv_last_page_len_buf_arr=None, backend: str = "auto"):
        if num_levels < 1:
            raise ValueError(f"num_levels must be at least 1, got {num_levels}")
        # The levels share the workspace: their runs are ordered on one stream, so one level's split
        # partial states are merged before the next level reuses the space.
        self._levels = [BatchPrefillWithPagedKVCacheWrapper(float_workspace_buffer, _check_layout(kv_layout),
                                                            use_cuda_graph, backend=backend)
                        for _ in range(num_levels)]
        self._slot = new_plan_slot(self)  # where a torch.compile'd run finds the levels (engine.bind_levels)
        self._call_plans: Optional[CallPlans] = None  # run()'s call plans, made anew by each plan()
        self._held: tuple = ()  # the device tensors plan() built, which run()'s launches point into

    def reset_workspace_buffer(self, float_workspace_buffer, int_workspace_buffers=None) -> None:
        for level in self._levels:
            level.reset_workspace_buffer(float_workspace_buffer)

    def plan(self, qo_indptr_arr: Sequence[torch.Tensor], paged_kv_indptr_arr: Sequence[torch.Tensor],
             paged_kv_indices_arr: Sequence[torch.Tensor], paged_kv_last_page_len: Sequence[torch.Tensor],
             num_qo_heads: int, num_kv_heads: int, head_dim: int, page_size: int, causal: bool = False,
             pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False, sm_scale: Optional[float] = None,
             window_left: int = -1, logits_soft_cap: Optional[float] = None, rope_scale=None, rope_theta=None,
             q_data_type="float16", kv_data_type=None) -> None:
        n = len(self._levels)
        if pos_encoding_mode == "ALIBI":  # each level counts its keys from 0: the bias would be wrong
            raise ValueError("pos_encoding_mode='ALIBI' is not supported in cascade attention: each level's keys are "
                             "numbered from 0, so the bias slope * (key - query) would not see absolute positions")
        for name, arr in (("qo_indptr_arr", qo_indptr_arr), ("paged_kv_indptr_arr", paged_kv_indptr_arr),
                          ("paged_kv_indices_arr", paged_kv_indices_arr),
                          ("paged_kv_last_page_len", paged_kv_last_page_len)):
            if len(arr) != n:
                raise ValueError(f"{name} must hold one tensor per level ({n}), got {len(arr)}")
        for i, level in enumerate(self._levels):
            level.plan(qo_indptr_arr[i], paged_kv_indptr_arr[i], paged_kv_indices_arr[i], paged_kv_last_page_len[i],
                       num_qo_heads, num_kv_heads, head_dim, page_size, causal=causal and i == n - 1,
                       pos_encoding_mode=pos_encoding_mode, use_fp16_qk_reduction=use_fp16_qk_reduction,
                       sm_scale=sm_scale, window_left=window_left, logits_soft_cap=logits_soft_cap,
                       rope_scale=rope_scale, rope_theta=rope_theta, q_data_type=q_data_type,
                       kv_data_type=kv_data_type)
        plans = [level.attention_plan for level in self._levels]
        totals = {p.total_q for p in plans}
        if len(totals) != 1:
            raise ValueError(f"every level's qo_indptr must end at the same number of queries, got {sorted(totals)}")
        # one merge for all levels where every level's backend can write partial states (engine.py)
        self._merge = plan_level_merge(plans, self._levels[0].workspace)
        bind_levels(self._slot, plans, self._merge)
        # Call plans (core/plans.py) where every launch of a run goes through the thin launch path: the levels'
        # Triton kernels writing partial states, then one merge. Another backend's launches (AITER's, on ROCm)
        # would be invisible to a recording, so those runs always take the usual path.
        plannable = self._merge is not None and all(p.backend == "triton" for p in plans)
        self._call_plans = CallPlans("cascade run") if plannable else None
        self._held = held_device_tensors(plans, self._merge) if plannable else ()

    begin_forward = plan

    def run(self, q: torch.Tensor, paged_kv_cache, return_lse: bool = False, *, sinks=None, out=None,
            k_scale: Optional[float] = None, v_scale: Optional[float] = None):
        """``sinks`` (ours; FlashInfer's cascade has none): attention-sink logits ``[Hq]``, counted once
        in the softmax over all levels. ``out`` (ours): a contiguous ``q``-shaped tensor of q's dtype
        that receives the result (a serving engine's output buffer), else a new one. ``k_scale`` /
        ``v_scale`` (ours, as FlashInfer's decode run takes them): an fp8 KV cache's dequantization
        scales (engine.host_scale): scores use ``sm_scale * k_scale`` (a number), the output is multiplied
        by ``v_scale`` (a number or a one-element tensor)."""
        # A call plan is keyed by everything about the arguments but their values (core/plans.py); the second
        # call of a kind is recorded, later ones replay its launches with one C call (validation, views and
        # launch set-up were decided by the same metadata, under the same plan()).
        v_mult = host_scale("v_scale", v_scale, tensor_ok=True)
        cache = paged_cache_parts(paged_kv_cache)
        key, replay = (self._call_plans.find(q, *cache, out, sinks, return_lse, k_scale, v_scale)
                       if self._call_plans is not None else (None, False))
        if replay:
            out, lse = outputs_for(q, out, None)
            replay(q, *cache, out, lse, sinks, *self._held)
        else:
            k_mult = host_scale("k_scale", k_scale)
            plans = [level.attention_plan for level in self._levels]
            k, v, strides = checked_paged_views(self._levels[0], paged_kv_cache)
            for level in self._levels[1:]:  # each level's page ids against the cache (metadata only)
                checked_paged_views(level, paged_kv_cache)
            if key is None:
                out, lse = run_levels(plans, self._merge, q, k, v, strides, sinks=sinks, slot=self._slot, out=out,
                                      sm_scale_mult=k_mult)
            else:  # the outputs allocated outside the recording, which keeps launches only
                out, lse = plans[0].checked_outputs(q, k, out, None)
                self._call_plans.recorded(key, (q, *cache, out, lse, sinks, *self._held), run_levels, plans,
                                          self._merge, q, k, v, strides, sinks, self._slot, out, k_mult, lse)
        if isinstance(v_mult, torch.Tensor) or v_mult != 1.0:  # a tensor is not compared (a sync)
            out.mul_(v_mult)  # the merged output is linear in V (the LSE does not involve it)
        return (out, lse) if return_lse else out

    forward = run


class _SharedPrefixWrapper:
    """Two levels: a contiguous shared prefix (``k_shared``/``v_shared``) and each request's unique pages."""

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD", backend: str = "auto"):
        self._layout = _check_layout(kv_layout)
        self._workspace = float_workspace_buffer
        self._unique = BatchPrefillWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout, backend=backend)
        self._shared = BatchPrefillWithRaggedKVCacheWrapper(float_workspace_buffer, "NHD", backend=backend)
        self._shared_key = None
        self._heads = None

    def _shared_state(self, q, k_shared, v_shared, sm_scale, logits_soft_cap):
        if self._layout == "HND":  # [Hkv, L, D] -> a [L, Hkv, D] view (the engine takes any token stride)
            k_shared, v_shared = k_shared.transpose(0, 1), v_shared.transpose(0, 1)
        key = (q.shape[0], k_shared.shape[0], sm_scale, logits_soft_cap, q.dtype)
        if key != self._shared_key:  # plan from shapes alone: no device data is read
            num_qo_heads, num_kv_heads, head_dim = self._heads
            self._shared.plan(torch.tensor([0, q.shape[0]], dtype=torch.int32),
                              torch.tensor([0, k_shared.shape[0]], dtype=torch.int32), num_qo_heads, num_kv_heads,
                              head_dim, causal=False, sm_scale=sm_scale, logits_soft_cap=logits_soft_cap,
                              q_data_type=q.dtype, kv_data_type=k_shared.dtype)
            self._shared_key = key
        return self._shared.run(q, k_shared, v_shared, return_lse=True)

    def _forward(self, q, k_shared, v_shared, unique_kv_cache, sm_scale, logits_soft_cap):
        out, lse = self._shared_state(q, k_shared, v_shared, sm_scale, logits_soft_cap)
        o_unique, lse_unique = self._unique.run(q, unique_kv_cache, return_lse=True)
        merge_state_in_place(out, lse, o_unique, lse_unique)
        return out


class BatchDecodeWithSharedPrefixPagedKVCacheWrapper(_SharedPrefixWrapper):
    """FlashInfer's (deprecated) two-level decode: ``begin_forward(unique_kv_indptr, unique_kv_indices,
    unique_kv_last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size, data_type)`` then
    ``forward(q [batch, Hq, D], k_shared, v_shared, unique_kv_cache)``; the shared K/V are
    ``[L, Hkv, D]`` (NHD) or ``[Hkv, L, D]`` (HND)."""

    def begin_forward(self, unique_kv_indptr, unique_kv_indices, unique_kv_last_page_len, num_qo_heads,
                      num_kv_heads, head_dim, page_size, data_type="float16", *args, **kwargs) -> None:
        self._heads = (num_qo_heads, num_kv_heads, head_dim)
        batch = unique_kv_indptr.shape[0] - 1
        self._unique.plan(torch.arange(batch + 1, dtype=torch.int32), unique_kv_indptr, unique_kv_indices,
                          unique_kv_last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size,
                          q_data_type=data_type, kv_data_type=data_type)
        self._shared_key = None

    plan = begin_forward

    def forward(self, q, k_shared, v_shared, unique_kv_cache, allow_fp16_qk_reduction=False, sm_scale=None,
                rope_scale=None, rope_theta=None):
        if rope_scale is not None or rope_theta is not None:
            raise ValueError("rope_scale / rope_theta are not supported (in-kernel RoPE is not implemented)")
        return self._forward(q, k_shared, v_shared, unique_kv_cache, sm_scale, None)

    run = forward


class BatchPrefillWithSharedPrefixPagedKVCacheWrapper(_SharedPrefixWrapper):
    """FlashInfer's (deprecated) two-level prefill/append: ``begin_forward(qo_indptr, paged_kv_indptr,
    paged_kv_indices, paged_kv_last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size)`` then
    ``forward(q, k_shared, v_shared, unique_kv_cache, causal=False)``; ``causal`` applies to the unique
    part only (the shared prefix precedes every query)."""

    def begin_forward(self, qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, num_qo_heads,
                      num_kv_heads, head_dim, page_size, *args, **kwargs) -> None:
        self._heads = (num_qo_heads, num_kv_heads, head_dim)
        self._plan_args = (qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, num_qo_heads,
                           num_kv_heads, head_dim, page_size)
        self._unique_key = None
        self._shared_key = None

    plan = begin_forward

    def forward(self, q, k_shared, v_shared, unique_kv_cache, causal=False, allow_fp16_qk_reduction=False,
                sm_scale=None, logits_soft_cap=None, rope_scale=None, rope_theta=None):
        if rope_scale is not None or rope_theta is not None:
            raise ValueError("rope_scale / rope_theta are not supported (in-kernel RoPE is not implemented)")
        key = (causal, sm_scale, logits_soft_cap, q.dtype)
        if key != self._unique_key:  # FlashInfer takes causal at forward(); the engine plans with it
            self._unique.plan(*self._plan_args, causal=causal, sm_scale=sm_scale, logits_soft_cap=logits_soft_cap,
                              q_data_type=q.dtype, kv_data_type=k_shared.dtype)
            self._unique_key = key
        return self._forward(q, k_shared, v_shared, unique_kv_cache, sm_scale, logits_soft_cap)

    run = forward


def cascade_attention(q: torch.Tensor, paged_kv_cache, qo_indptr_arr: Sequence[torch.Tensor],
                      paged_kv_indptr_arr: Sequence[torch.Tensor], paged_kv_indices_arr: Sequence[torch.Tensor],
                      paged_kv_last_page_len_arr: Sequence[torch.Tensor], *, causal: bool = False,
                      sm_scale: Optional[float] = None, window_left: int = -1,
                      logits_soft_cap: Optional[float] = None, kv_layout: str = "NHD",
                      workspace: Optional[torch.Tensor] = None, return_lse: bool = False,
                      backend: Optional[str] = None):
    """Functional multi-level cascade attention: plan and run in one call.

    Arguments as :class:`MultiLevelCascadeAttentionWrapper` (one page table per level; ``causal``
    applies to the last level). Head counts, head dim and page size come from ``q`` and the cache.
    ``plan`` reads the page tables on the host, so this call synchronizes; under a CUDA/HIP graph,
    plan a wrapper outside the graph and capture only its ``run``.
    """
    from aiter_ext.ops.paged_kv import unpack_paged_kv_cache

    k_cache, _ = unpack_paged_kv_cache(paged_kv_cache, kv_layout)
    page_size, num_kv_heads = (k_cache.shape[1], k_cache.shape[2]) if kv_layout == "NHD" else \
        (k_cache.shape[2], k_cache.shape[1])
    if workspace is None:
        workspace = torch.empty(128 << 20, dtype=torch.uint8, device=q.device)
    wrapper = MultiLevelCascadeAttentionWrapper(len(qo_indptr_arr), workspace, kv_layout, backend=backend or "auto")
    wrapper.plan(qo_indptr_arr, paged_kv_indptr_arr, paged_kv_indices_arr, paged_kv_last_page_len_arr, q.shape[1],
                 num_kv_heads, q.shape[2], page_size, causal=causal, sm_scale=sm_scale, window_left=window_left,
                 logits_soft_cap=logits_soft_cap, q_data_type=q.dtype, kv_data_type=k_cache.dtype)
    return wrapper.run(q, paged_kv_cache, return_lse=return_lse)
