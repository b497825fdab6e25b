"""The public attention API: FlashInfer's wrappers (wrappers.py, cascade.py) and its single-request
functions ``single_prefill_with_kv_cache`` and ``single_decode_with_kv_cache`` (here).

Layout of the op, as the others: ``api`` (this surface), ``engine`` (the plan every wrapper builds,
and ``run_levels`` for several plans over the same queries), ``plan`` (tiles and the work list),
``backends`` (registrations: triton, torch, aiter), ``kernels`` (Triton), ``reference`` (fp32 torch).

One request with contiguous K/V is a ragged batch of size one; the plan comes from shapes alone, so no
device data is read on the host. Plans are cached by shape and options (not with a custom mask, whose
contents are part of the plan), so a repeated call launches at once, and a call inside a CUDA graph
(torch.compile's "reduce-overhead") finds its plan built by the warm-up run. Cached plans are built on a
side stream, whose allocations stay out of a graph's private memory pool. Each function is one custom
op under torch.compile.
"""

from __future__ import annotations

import collections
from typing import Optional

import torch

from aiter_ext.core.checks import check_tensor
from aiter_ext.core.custom_ops import mutating_ops

from .backends import ATTENTION
from .cascade import (
    BatchDecodeWithSharedPrefixPagedKVCacheWrapper, BatchPrefillWithSharedPrefixPagedKVCacheWrapper,
    MultiLevelCascadeAttentionWrapper, cascade_attention,
)
from .masks import packbits, segment_packbits
from .pod import BatchPODWithPagedKVCacheWrapper, PODWithPagedKVCacheWrapper
from .sparse import BlockSparseAttentionWrapper, VariableBlockSparseAttentionWrapper
from .wrappers import (
    BatchAttentionWithAttentionSinkWrapper, BatchDecodeWithPagedKVCacheWrapper, BatchPrefillWithPagedKVCacheWrapper,
    BatchPrefillWithRaggedKVCacheWrapper, _check_layout,
)

__all__ = ["BatchAttentionWithAttentionSinkWrapper", "BatchDecodeWithPagedKVCacheWrapper", "BlockSparseAttentionWrapper", "VariableBlockSparseAttentionWrapper", "BatchPODWithPagedKVCacheWrapper",
           "PODWithPagedKVCacheWrapper", "BatchDecodeWithSharedPrefixPagedKVCacheWrapper",
           "BatchPrefillWithPagedKVCacheWrapper", "BatchPrefillWithRaggedKVCacheWrapper",
           "BatchPrefillWithSharedPrefixPagedKVCacheWrapper", "MultiLevelCascadeAttentionWrapper",
           "cascade_attention", "packbits", "segment_packbits", "single_decode_with_kv_cache",
           "single_prefill_with_kv_cache"]

_WORKSPACES: dict = {}
_SIDE_STREAMS: dict = {}
_SINGLE_PLANS: "collections.OrderedDict[tuple, BatchPrefillWithRaggedKVCacheWrapper]" = collections.OrderedDict()
SINGLE_PLAN_CACHE_SIZE = 64


def _off_pool(device: torch.device, build):
    """``build()``, on a side stream when on a GPU: what it allocates then comes from the ordinary
    allocator, not from a CUDA graph's private pool (a cached tensor left in that pool fails graph
    capture: "All live allocations must be tracked"). The caller's stream waits for it."""
    if device.type != "cuda":
        return build()
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    side, current = _SIDE_STREAMS[device], torch.cuda.current_stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        result = build()
    current.wait_stream(side)
    return result


def _workspace(device: torch.device) -> torch.Tensor:
    if device not in _WORKSPACES:
        _WORKSPACES[device] = _off_pool(device, lambda: torch.empty(128 << 20, dtype=torch.uint8, device=device))
    return _WORKSPACES[device]


def _single_wrapper(q, k, backend, plan_kw: dict) -> BatchPrefillWithRaggedKVCacheWrapper:
    """A planned one-request wrapper for these shapes and options: from the cache, or built (and cached
    unless a custom mask is part of the plan)."""
    masked = plan_kw.get("custom_mask") is not None or plan_kw.get("packed_custom_mask") is not None
    # an automatic backend follows AITER_EXT_BACKEND(_ATTENTION): a cached plan must not outlive a change of it
    env_backend = ATTENTION.env_request()[0] if backend in (None, "auto") else None
    key = None if masked else (q.device, q.shape, k.shape, q.dtype, k.dtype, backend, env_backend,
                               tuple(sorted(plan_kw.items())))
    if key is not None and key in _SINGLE_PLANS:
        _SINGLE_PLANS.move_to_end(key)
        return _SINGLE_PLANS[key]

    def build():
        w = BatchPrefillWithRaggedKVCacheWrapper(_workspace(q.device), backend=backend)
        w.plan(torch.tensor([0, q.shape[0]], dtype=torch.int32), torch.tensor([0, k.shape[0]], dtype=torch.int32),
               q.shape[1], k.shape[1], q.shape[2], q_data_type=q.dtype, kv_data_type=k.dtype, **plan_kw)
        return w

    if key is None:
        return build()
    _SINGLE_PLANS[key] = w = _off_pool(q.device, build)
    if len(_SINGLE_PLANS) > SINGLE_PLAN_CACHE_SIZE:
        _SINGLE_PLANS.popitem(last=False)
    return w


def _single_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                      causal: bool, sm_scale: Optional[float], window_left: int, logits_soft_cap: Optional[float],
                      pos_encoding_mode: str, rope_scale: Optional[float], rope_theta: Optional[float],
                      custom_mask: Optional[torch.Tensor], packed_custom_mask: Optional[torch.Tensor],
                      q_scale: Optional[float], k_scale: Optional[float], v_scale: Optional[float],
                      sinks: Optional[torch.Tensor], backend: str) -> None:
    """One request's attention into ``out``/``lse`` (the custom op of both single functions)."""
    plan_kw = dict(causal=causal, sm_scale=sm_scale, window_left=window_left, logits_soft_cap=logits_soft_cap,
                   pos_encoding_mode=pos_encoding_mode, rope_scale=rope_scale, rope_theta=rope_theta,
                   custom_mask=custom_mask, packed_custom_mask=packed_custom_mask)
    w = _single_wrapper(q, k, backend, plan_kw)
    w.run(q, k, v, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale, out=out, lse=lse, return_lse=True, sinks=sinks)


_call = mutating_ops({_single_attention: ("single_attention", ("out", "lse"))})


def _run_single(q, k, v, return_lse, *, causal=False, sm_scale=None, window_left=-1, logits_soft_cap=None,
                pos_encoding_mode="NONE", rope_scale=None, rope_theta=None, custom_mask=None, packed_custom_mask=None,
                q_scale=None, k_scale=None, v_scale=None, sinks=None, backend="auto"):
    as_float = lambda x: None if x is None else float(x)  # noqa: E731
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    _call(_single_attention, q, k, v, out, lse, bool(causal), as_float(sm_scale), int(window_left),
          as_float(logits_soft_cap), pos_encoding_mode, as_float(rope_scale), as_float(rope_theta), custom_mask,
          packed_custom_mask, as_float(q_scale), as_float(k_scale), as_float(v_scale), sinks, backend)
    return (out, lse) if return_lse else out


def _as_nhd(name: str, t: torch.Tensor, kv_layout: str) -> torch.Tensor:
    check_tensor(name, t, ndim=3)
    return t.transpose(0, 1) if _check_layout(kv_layout) == "HND" else t  # [Hkv, L, D] -> a [L, Hkv, D] view


def single_prefill_with_kv_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale_q=None, scale_k=None,
                                 scale_v=None, o_dtype: Optional[torch.dtype] = None, custom_mask=None,
                                 packed_custom_mask=None, causal: bool = False, kv_layout: str = "NHD",
                                 pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False,
                                 sm_scale: Optional[float] = None, window_left: int = -1,
                                 logits_soft_cap: Optional[float] = None, rope_scale=None, rope_theta=None,
                                 backend: str = "auto", return_lse: bool = False, kv_cache_sf=None,
                                 k_scale: Optional[float] = None, v_scale: Optional[float] = None, *, sinks=None):
    """Attention of one request: ``q [qo_len, Hq, D]`` against ``k, v [kv_len, Hkv, D]`` (NHD) or
    ``[Hkv, kv_len, D]`` (HND). Causal masking is aligned bottom-right. Returns ``out [qo_len, Hq, D]``,
    and with ``return_lse`` also the base-2 ``lse [qo_len, Hq]``.

    FlashInfer 0.7.2's signature, keyword for keyword (a misspelt keyword is a ``TypeError``).
    ``k_scale``/``v_scale`` (floats) scale the scores and the output, as FlashInfer's fp8 path does;
    ``o_dtype`` other than q's dtype converts the output. ``custom_mask`` (bool ``[qo_len, kv_len]``,
    True = visible) or ``packed_custom_mask`` (``packbits`` of it flattened, little bit order)
    replaces the causal mask, as in FlashInfer. ``sinks`` (ours; keyword only): attention-sink
    logits ``[Hq]``, as the wrappers take them. Not supported, and refused unless left at None: the
    per-head fp8 scale tensors ``scale_q``/``scale_k``/``scale_v`` and ``kv_cache_sf``.

    Examples
    --------
    >>> import torch, aiter_ext
    >>> from aiter_ext.ops.attention.reference import single_attention_ref
    >>> q, k, v = torch.randn(5, 4, 64).half(), torch.randn(9, 2, 64).half(), torch.randn(9, 2, 64).half()
    >>> out = aiter_ext.single_prefill_with_kv_cache(q, k, v, causal=True)
    >>> torch.testing.assert_close(out, single_attention_ref(q, k, v, causal=True)[0], atol=2e-3, rtol=1e-2)
    """
    for name, value in (("scale_q", scale_q), ("scale_k", scale_k), ("scale_v", scale_v),
                        ("kv_cache_sf", kv_cache_sf)):
        if value is not None:
            raise ValueError(f"{name} is not supported yet (per-head fp8 scales); pass k_scale/v_scale floats")
    check_tensor("q", q, ndim=3)
    k, v = _as_nhd("k", k, kv_layout), _as_nhd("v", v, kv_layout)
    _check_same_tokens(k, v)
    if custom_mask is not None and packed_custom_mask is None:  # [qo_len, kv_len], True = visible
        check_tensor("custom_mask", custom_mask, ndim=2)
        if tuple(custom_mask.shape) != (q.shape[0], k.shape[0]):
            raise ValueError(f"custom_mask must be [qo_len, kv_len] = [{q.shape[0]}, {k.shape[0]}], got "
                             f"{tuple(custom_mask.shape)}")
        custom_mask = custom_mask.reshape(-1)
    result = _run_single(q, k, v, return_lse, causal=causal, sm_scale=sm_scale, window_left=window_left,
                         logits_soft_cap=logits_soft_cap, pos_encoding_mode=pos_encoding_mode, rope_scale=rope_scale,
                         rope_theta=rope_theta, custom_mask=custom_mask, packed_custom_mask=packed_custom_mask,
                         k_scale=k_scale, v_scale=v_scale, sinks=sinks, backend=backend)
    if o_dtype is None or o_dtype == q.dtype:
        return result
    return (result[0].to(o_dtype), result[1]) if return_lse else result.to(o_dtype)


def _check_same_tokens(k: torch.Tensor, v: torch.Tensor) -> None:
    """One request's K and V hold the same tokens and heads (a shorter v would be read past its end)."""
    if v.shape[:2] != k.shape[:2]:
        raise ValueError(f"k and v must hold the same tokens and heads: k is {tuple(k.shape)} and v is "
                         f"{tuple(v.shape)} (as [kv_len, num_kv_heads, head_dim])")


def single_decode_with_kv_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_layout: str = "NHD",
                                pos_encoding_mode: str = "NONE", use_tensor_cores: bool = False,
                                q_scale: Optional[float] = None, k_scale: Optional[float] = None,
                                v_scale: Optional[float] = None, window_left: int = -1,
                                logits_soft_cap: Optional[float] = None, sm_scale: Optional[float] = None,
                                rope_scale=None, rope_theta=None, return_lse: bool = False, backend: str = "auto", *,
                                sinks=None):
    """Decode one token: ``q [Hq, D]`` against ``k, v [kv_len, Hkv, D]`` (NHD) or ``[Hkv, kv_len, D]`` (HND).
    Returns ``out [Hq, D]`` (and the base-2 ``lse [Hq]`` with ``return_lse``). A long ``kv_len`` is split
    across programs and merged, so one request still fills the GPU.

    Examples
    --------
    >>> import torch, aiter_ext
    >>> from aiter_ext.ops.attention.reference import single_attention_ref
    >>> q, k, v = torch.randn(8, 64).half(), torch.randn(300, 2, 64).half(), torch.randn(300, 2, 64).half()
    >>> out = aiter_ext.single_decode_with_kv_cache(q, k, v)
    >>> torch.testing.assert_close(out, single_attention_ref(q[None], k, v)[0][0], atol=2e-3, rtol=1e-2)
    """
    check_tensor("q", q, ndim=2)
    k, v = _as_nhd("k", k, kv_layout), _as_nhd("v", v, kv_layout)
    _check_same_tokens(k, v)
    result = _run_single(q[None], k, v, return_lse, sm_scale=sm_scale, window_left=window_left,
                         logits_soft_cap=logits_soft_cap, pos_encoding_mode=pos_encoding_mode, rope_scale=rope_scale,
                         rope_theta=rope_theta, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale, sinks=sinks,
                         backend=backend)
    return (result[0][0], result[1][0]) if return_lse else result[0]
