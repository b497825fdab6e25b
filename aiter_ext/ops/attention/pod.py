"""POD attention (issue 16): prefill and decode of one serving step, FlashInfer 0.7.2's
``BatchPODWithPagedKVCacheWrapper`` and ``PODWithPagedKVCacheWrapper``.

``BatchPODWithPagedKVCacheWrapper``: paged prefill requests and paged decode requests. ``schedule`` (an
aiter_ext keyword; FlashInfer's constructor has none) says how a ``run`` executes them:
- ``"fused"``: when both sides read the same cache (the serving case: one KV pool), one launch whose
  programs are prefill tiles and decode tiles from one work list, scheduled together (longest chunks
  first). Its decode tiles have the prefill's tile height, so 4 of a 64-row tile's rows do work (4 query
  heads per KV head): measured on an H100 this was slower than prefill-then-decode on 5 of 6 mixed
  batches (bench_pod.py), so it is not the default. Decode tiles of 16 rows in the same launch were
  tried and were slower still on all 6 (by 4-12%; at 1 x 512 + 256 x 16384, 7254 us against 5415 for the
  decode kernel alone), so they were taken out. The two query tensors are copied into one buffer.
- ``"streams"``: the prefill on the caller's stream and the decode (its own decode-sized tiles) on a side
  stream at the same time, joined before ``run`` returns; CUDA-graph capturable. ``plan`` puts the
  decode's split-KV states after the prefill's in the workspace; when both do not fit, the sides share it
  and run one after the other.
- ``"sequential"``: the prefill, then the decode, on the caller's stream.
- ``"auto"`` (default): ``"streams"`` while a CUDA graph is captured, else ``"sequential"``. Measured on an
  H100 (bench_pod.py, graph replays): streams beat prefill-then-decode by 0.2-7% on the six mixed batches.
  Eagerly the host is the limit at small batches: issued back to back, one 512-token prefill with 32
  decodes of 1024 cost 456.5 us of host time per call on one stream and 595.7 on two (84-90 us replayed;
  most of it Triton's launch path, four launches a call), so eager calls keep one stream.
Two launches serve what one cannot in any case: two different caches, decode requests of several tokens
under a causal prefill (FlashInfer's decode side is never causal), q/k scales (FlashInfer applies them to
the decode side only).

``PODWithPagedKVCacheWrapper``: one prefill whose K/V are separate contiguous tensors, plus a paged decode
batch. The kernel reads one K/V source per launch, so this runs the prefill (single_prefill_with_kv_cache's
cached plans) and then the decode: two launches, not fused.

Unlike FlashInfer, both return the LSE where asked.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from aiter_ext.core.checks import as_workspace

from .engine import check_unsupported, host_int32
from .wrappers import BatchPrefillWithPagedKVCacheWrapper, _check_layout, _paged_views


def _same_cache(a, b, layout: str) -> bool:
    if a is b:
        return True
    (ka, va, _), (kb, vb, _) = _paged_views(a, layout), _paged_views(b, layout)
    return all(x.data_ptr() == y.data_ptr() and x.shape == y.shape and x.stride() == y.stride()
               for x, y in ((ka, kb), (va, vb)))


def _refuse_run_masks(custom_mask_p, packed_custom_mask_p) -> None:
    if custom_mask_p is not None or packed_custom_mask_p is not None:
        raise ValueError("custom_mask_p / packed_custom_mask_p: a custom mask is planned in aiter_ext (its "
                         "visibility classes are built at plan time); run the prefill through "
                         "BatchPrefillWithPagedKVCacheWrapper.plan(custom_mask=...)")


#: BatchPODWithPagedKVCacheWrapper(schedule=...): how a step's two sides run (module docstring)
SCHEDULES = ("auto", "fused", "streams", "sequential")


def _state_bytes(plan) -> int:
    """Bytes at the start of the workspace that a plan's split-KV partial states take (0: not split)."""
    if plan.partial_o is None:
        return 0
    return (plan.partial_o.numel() + plan.partial_lse.numel()) * 4


def _after(workspace: torch.Tensor, used: int) -> torch.Tensor:
    """The workspace past its first ``used`` bytes, from a 256-byte boundary."""
    start = -(-used // 256) * 256
    return workspace[min(start, workspace.numel()):]


class BatchPODWithPagedKVCacheWrapper:
    """FlashInfer 0.7.2's batched POD: ``plan(qo_indptr_p, kv_indptr_p, kv_indices_p, last_page_len_p,
    qo_indptr_d, kv_indptr_d, kv_indices_d, last_page_len_d, num_qo_heads, num_kv_heads, head_dim, page_size,
    ...)`` then ``run(q_p, paged_kv_cache_p, q_d, paged_kv_cache_d, causal_p=False, return_lse=False)`` ->
    ``(out_p, out_d)``, or ``((out_p, out_d), (lse_p, lse_d))``."""

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD", *, schedule: str = "auto"):
        self._kv_layout = _check_layout(kv_layout)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self._schedule = schedule
        self._workspace = as_workspace("float_workspace_buffer", float_workspace_buffer)
        self._fused = BatchPrefillWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout)
        self._prefill = BatchPrefillWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout)
        self._decode = BatchPrefillWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout)
        self._side_stream = None  # the decode side's stream (schedule "streams"), made on first use
        self._disjoint = False  # whether plan() gave the sides disjoint workspace (then they may run at once)
        self._rows = None  # (prefill rows, decode rows, every decode request one token) from plan()
        self._causal_plans = {}  # wrapper -> {causal_p: its plan}: run() picks one, builds nothing

    def plan(self, qo_indptr_p, kv_indptr_p, kv_indices_p, last_page_len_p, qo_indptr_d, kv_indptr_d, kv_indices_d,
             last_page_len_d, num_qo_heads, num_kv_heads, head_dim, page_size, pos_encoding_mode="NONE",
             window_left=-1, q_data_type="float16", kv_data_type=None, data_type=None, sm_scale=None, rope_scale=None,
             rope_theta=None, non_blocking=True) -> None:
        if data_type is not None:  # FlashInfer's legacy keyword: it fills only what is not given
            q_data_type = data_type if q_data_type is None else q_data_type
            kv_data_type = data_type if kv_data_type is None else kv_data_type
        check_unsupported(pos_encoding_mode, rope_scale=rope_scale, rope_theta=rope_theta)
        common = dict(pos_encoding_mode=pos_encoding_mode, window_left=window_left, sm_scale=sm_scale,
                      rope_scale=rope_scale, rope_theta=rope_theta, q_data_type=q_data_type, kv_data_type=kv_data_type)
        sides = ((qo_indptr_p, kv_indptr_p, kv_indices_p, last_page_len_p),
                 (qo_indptr_d, kv_indptr_d, kv_indices_d, last_page_len_d))
        plan_side = lambda wrapper, side: wrapper.plan(*side, num_qo_heads, num_kv_heads, head_dim,  # noqa: E731
                                                        page_size, **common)
        self._prefill.reset_workspace_buffer(self._workspace)
        plan_side(self._prefill, sides[0])
        # the decode's split-KV states after the prefill's, so that the sides may run at once (schedule
        # "streams"); where the rest of the workspace is too small, they share it and run one after the other
        rest = _after(self._workspace, _state_bytes(self._prefill._require_plan()))
        self._decode.reset_workspace_buffer(rest)
        try:
            plan_side(self._decode, sides[1])
            self._disjoint = True
        except ValueError:
            self._decode.reset_workspace_buffer(self._workspace)
            plan_side(self._decode, sides[1])
            self._disjoint = False
        qo_p, kv_p = host_int32("qo_indptr_p", qo_indptr_p), host_int32("kv_indptr_p", kv_indptr_p)
        qo_d, kv_d = host_int32("qo_indptr_d", qo_indptr_d), host_int32("kv_indptr_d", kv_indptr_d)
        wrappers = [self._prefill]
        if self._schedule == "fused":  # one work list of both sides: decode requests after the prefill ones
            i32 = torch.int32
            self._fused.plan(
                torch.tensor(qo_p + [x + qo_p[-1] for x in qo_d[1:]], dtype=i32),
                torch.tensor(kv_p + [x + kv_p[-1] for x in kv_d[1:]], dtype=i32),
                torch.cat([kv_indices_p.cpu()[:kv_p[-1]], kv_indices_d.cpu()[:kv_d[-1]]]).to(i32),
                torch.cat([last_page_len_p.cpu(), last_page_len_d.cpu()]).to(i32),
                num_qo_heads, num_kv_heads, head_dim, page_size, **common)
            wrappers.append(self._fused)
        one_token = all(qo_d[b + 1] - qo_d[b] <= 1 for b in range(len(qo_d) - 1))
        self._rows = (qo_p[-1], qo_d[-1], one_token)
        # causal_p arrives at run(); both variants of the plans it changes are made here
        self._causal_plans = {w: {c: replace(w._require_plan(), causal=c) for c in (False, True)} for w in wrappers}

    begin_forward = plan

    def run(self, q_p, paged_kv_cache_p, q_d, paged_kv_cache_d, custom_mask_p=None, packed_custom_mask_p=None,
            causal_p=False, q_scale=None, k_scale=None, v_scale=None, return_lse=False, use_fp16_qk_reduction=False,
            enable_pdl=None):
        if self._rows is None:
            raise RuntimeError("BatchPODWithPagedKVCacheWrapper.run() called before plan()")
        _refuse_run_masks(custom_mask_p, packed_custom_mask_p)
        check_unsupported(use_fp16_qk_reduction=use_fp16_qk_reduction)
        rows_p, rows_d, one_token = self._rows
        schedule = self._schedule
        if schedule == "auto":  # streams inside a CUDA graph only: eager, they cost host time (module docstring)
            schedule = "streams" if q_p.is_cuda and torch.cuda.is_current_stream_capturing() else "sequential"
        if schedule == "fused" and _same_cache(paged_kv_cache_p, paged_kv_cache_d, self._kv_layout) and \
                (one_token or not causal_p) and q_scale is None and k_scale is None and q_p.dtype == q_d.dtype:
            self._fused._plan = self._causal_plans[self._fused][bool(causal_p)]
            out, lse = self._fused.run(torch.cat([q_p, q_d]), paged_kv_cache_p, return_lse=True)
            out_p, out_d, lse_p, lse_d = out[:rows_p], out[rows_p:], lse[:rows_p], lse[rows_p:]
            if v_scale is not None:
                out_d.mul_(v_scale)
            return ((out_p, out_d), (lse_p, lse_d)) if return_lse else (out_p, out_d)
        self._prefill._plan = self._causal_plans[self._prefill][bool(causal_p)]

        def decode():
            return self._decode.run(q_d, paged_kv_cache_d, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale,
                                    return_lse=True)

        if schedule == "streams" and self._disjoint and q_p.is_cuda and rows_p and rows_d:
            (out_p, lse_p), (out_d, lse_d) = self._on_two_streams(
                lambda: self._prefill.run(q_p, paged_kv_cache_p, return_lse=True), decode,
                (q_d, *_paged_views(paged_kv_cache_d, self._kv_layout)[:2]))
        else:
            out_p, lse_p = self._prefill.run(q_p, paged_kv_cache_p, return_lse=True)
            out_d, lse_d = decode()
        return ((out_p, out_d), (lse_p, lse_d)) if return_lse else (out_p, out_d)

    def _on_two_streams(self, prefill, decode, decode_inputs):
        """The prefill on the caller's stream and the decode on a side stream, at once, joined before
        returning (capturable: the side stream forks from and joins the capturing stream)."""
        main = torch.cuda.current_stream(decode_inputs[0].device)
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(decode_inputs[0].device)
        side = self._side_stream
        side.wait_stream(main)  # the decode's inputs are ready on the caller's stream
        with torch.cuda.stream(side):
            out_d, lse_d = decode()
        out_p, lse_p = prefill()
        main.wait_stream(side)
        for t in decode_inputs:  # the caller may free them once run() returns: not reused while the side reads
            t.record_stream(side)
        for t in (out_d, lse_d):  # allocated on the side stream, used on the caller's
            t.record_stream(main)
        return (out_p, lse_p), (out_d, lse_d)


class PODWithPagedKVCacheWrapper:
    """FlashInfer 0.7.2's POD: ``plan(indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim,
    page_size, ...)`` for the paged decode batch, then ``run(q_p, k_p, v_p, q_d, paged_kv_cache_d,
    causal_p=False, ..., return_lse_p=False, return_lse_d=False)`` -> ``(out_p, out_d)``, each side
    ``(out, lse)`` where its LSE is asked for. Two launches (module docstring)."""

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 paged_kv_indptr_buffer=None, paged_kv_indices_buffer=None, paged_kv_last_page_len_buffer=None,
                 jit_args=None):
        self._decode = BatchPrefillWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout)
        self._use_cuda_graph = use_cuda_graph

    def is_cuda_graph_enabled(self) -> bool:
        return self._use_cuda_graph

    def reset_workspace_buffer(self, float_workspace_buffer, int_workspace_buffer=None) -> None:
        self._decode.reset_workspace_buffer(float_workspace_buffer, int_workspace_buffer)

    def plan(self, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size,
             pos_encoding_mode="NONE", window_left=-1, q_data_type="float16", kv_data_type=None, data_type=None,
             sm_scale=None, rope_scale=None, rope_theta=None, non_blocking=True) -> None:
        if data_type is not None:
            q_data_type = data_type if q_data_type is None else q_data_type
            kv_data_type = data_type if kv_data_type is None else kv_data_type
        batch = len(host_int32("indptr", indptr)) - 1
        self._decode.plan(torch.arange(batch + 1, dtype=torch.int32), indptr, indices, last_page_len, num_qo_heads,
                          num_kv_heads, head_dim, page_size, pos_encoding_mode=pos_encoding_mode,
                          window_left=window_left, q_data_type=q_data_type, kv_data_type=kv_data_type,
                          sm_scale=sm_scale, rope_scale=rope_scale, rope_theta=rope_theta)

    begin_forward = plan

    def run(self, q_p, k_p, v_p, q_d, paged_kv_cache_d, custom_mask_p=None, packed_custom_mask_p=None,
            causal_p=False, kv_layout_p="NHD", pos_encoding_mode_p="NONE", sm_scale_p=None, window_left_p=-1,
            rope_scale_p=None, rope_theta_p=None, return_lse_p=False, custom_mask_d=None, packed_custom_mask_d=None,
            causal_d=False, kv_layout_d="NHD", pos_encoding_mode_d="NONE", sm_scale_d=None, window_left_d=-1,
            rope_scale_d=None, rope_theta_d=None, q_scale=None, k_scale=None, v_scale=None, return_lse_d=False,
            use_fp16_qk_reduction=False, enable_pdl=None, *args):
        from .api import single_prefill_with_kv_cache

        _refuse_run_masks(custom_mask_d, packed_custom_mask_d)
        plan = self._decode._require_plan()
        for name, given, planned in (("pos_encoding_mode_d", pos_encoding_mode_d,
                                      "ROPE_LLAMA" if plan.rope else "ALIBI" if plan.alibi is not None else "NONE"),
                                     ("window_left_d", window_left_d, plan.window_left)):
            if given != planned:
                raise ValueError(f"{name}={given!r} differs from plan()'s {planned!r}; set it in plan()")
        if causal_d:
            raise ValueError("causal_d: FlashInfer's POD decode side is never causal")
        if sm_scale_d is not None:
            self._decode._plan = replace(plan, sm_scale=float(sm_scale_d))
        result_p = single_prefill_with_kv_cache(
            q_p, k_p, v_p, custom_mask=custom_mask_p, packed_custom_mask=packed_custom_mask_p, causal=causal_p,
            kv_layout=kv_layout_p, pos_encoding_mode=pos_encoding_mode_p, use_fp16_qk_reduction=use_fp16_qk_reduction,
            sm_scale=sm_scale_p, window_left=window_left_p, rope_scale=rope_scale_p, rope_theta=rope_theta_p,
            return_lse=return_lse_p)
        result_d = self._decode.run(q_d, paged_kv_cache_d, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale,
                                    return_lse=return_lse_d)
        return result_p, result_d
