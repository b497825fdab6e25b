"""FlashInfer's batch attention wrappers: ``BatchPrefillWithPagedKVCacheWrapper``,
``BatchPrefillWithRaggedKVCacheWrapper`` and ``BatchDecodeWithPagedKVCacheWrapper``, with plan/run.

``plan()`` validates (clear errors naming the argument), reads lengths on the host and builds the work
list; ``run()`` checks tensor metadata and launches, with no host synchronization (CUDA/HIP graph
capture works for a given plan). FlashInfer's ``backend`` values (``"auto"``, ``"fa2"``, ``"fa3"``)
mean automatic selection; ``"triton"`` and ``"torch"`` force one.

Attention sinks: ``run(..., sinks=)`` on every wrapper (fp32 ``[Hq]`` logits in natural-log units,
not scaled by ``sm_scale``, in the softmax denominator only, the LSE included), and
``BatchAttentionWithAttentionSinkWrapper``. Not implemented yet, and refused with a clear error
nothing else. Position encodings in the kernel: ``"ALIBI"`` (FlashInfer's bias, slope * (key - query
index in the request), its slopes by head count) and ``"ROPE_LLAMA"`` (rotate-half RoPE of q at
kv_len - qo_len + i and k at j, ``rope_scale``/``rope_theta``).

Custom masks: ``plan(custom_mask=...)`` (bool, every request's ``[qo_len, kv_len]`` row-major,
concatenated) or ``plan(packed_custom_mask=...)`` (``segment_packbits(..., bitorder="little")`` of
it, each request on its own bytes), on the paged and ragged prefill wrappers; with one, ``causal``
is ignored (FlashInfer's rule) and ``window_left`` still applies.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from aiter_ext.core.checks import as_workspace, check_tensor
from aiter_ext.core.plans import CallPlans

from .engine import (
    KV_DTYPES, AttentionPlan, as_dtype, bind_plan, check_unsupported, held_device_tensors, host_scale, new_plan_slot,
    outputs_for,
)

LAYOUTS = ("NHD", "HND")

#: FlashInfer 0.7.2 ``plan()`` keywords that only steer its own scheduling or other backends' inputs:
#: accepted, with no effect here (this engine reads the lengths from the CSR tables itself).
SCHEDULING_HINTS = frozenset({"fixed_split_size", "disable_split_kv", "seq_lens", "seq_lens_q", "block_tables",
                              "max_token_per_sequence", "max_sequence_kv", "uniform_q_len"})
#: FlashInfer 0.7.2 ``plan()`` keywords of features not implemented here, with the value that means
#: "off": anything else is refused rather than ignored.
FEATURES_OFF = {"prefix_len_ptr": None, "token_pos_in_items_ptr": None, "token_pos_in_items_len": 0,
                "max_item_len_ptr": None, "v_indptr": None, "o_indptr": None}


def check_plan_extras(method: str, extras: dict, allowed: frozenset, q_data_type) -> None:
    """``plan()``'s keywords beyond those it names: FlashInfer's are accepted (hints) or refused unless
    off (features); any other is a misspelling, a ``TypeError`` as Python gives for a named parameter."""
    for name, value in extras.items():
        if name not in allowed:
            raise TypeError(f"{method}() got an unexpected keyword argument {name!r}")
        if name == "o_data_type":
            if value is not None and as_dtype(value, "o_data_type") != as_dtype(q_data_type, "q_data_type"):
                raise ValueError(f"{method}(o_data_type={value}) differs from q_data_type: the output is written "
                                 "in q's dtype here")
        elif name in FEATURES_OFF and not (value is None or value is FEATURES_OFF[name] or
                                            (FEATURES_OFF[name] == 0 and value == 0)):
            raise ValueError(f"{method}({name}=...) is not supported by aiter_ext yet; refusing rather than "
                             "ignoring it")


PAGED_PLAN_EXTRAS = SCHEDULING_HINTS | {"o_data_type", "prefix_len_ptr", "token_pos_in_items_ptr",
                                        "token_pos_in_items_len", "max_item_len_ptr"}
RAGGED_PLAN_EXTRAS = PAGED_PLAN_EXTRAS | {"v_indptr", "o_indptr"}


LSE_BASES = ("log2", "ln")
LSE_LAYOUTS = ("NH", "HN")
LN2 = 0.6931471805599453


def _lse_request(q, lse, lse_base: str, lse_layout: str, return_lse: bool):
    """FlashInfer 0.7.2's ``lse_base`` / ``lse_layout``: check them, and split the caller's ``lse`` into
    what the engine writes (``[tokens, heads]``, base 2) and where the result goes. Returns
    ``(lse_for_engine, lse_out)``; ``lse_out`` is None when the engine's tensor is the result."""
    if lse_base not in LSE_BASES:
        raise ValueError(f"lse_base must be one of {LSE_BASES}, got {lse_base!r}")
    if lse_layout not in LSE_LAYOUTS:
        raise ValueError(f"lse_layout must be one of {LSE_LAYOUTS}, got {lse_layout!r}")
    if not return_lse or lse_layout == "NH" or lse is None:
        return lse, None
    check_tensor("lse", lse, ndim=2, dtypes=(torch.float32,))
    if tuple(lse.shape) != (q.shape[1], q.shape[0]) or not lse.is_contiguous():
        raise ValueError(f'lse for lse_layout="HN" must be a contiguous [{q.shape[1]}, {q.shape[0]}] tensor, '
                         f"got shape {tuple(lse.shape)}")
    return None, lse


def _lse_finish(result, return_lse: bool, lse_base: str, lse_layout: str, lse_out):
    """The engine's ``(out, lse)`` in the requested base and layout (one pass over the LSE at most)."""
    if not return_lse:
        return result
    out, lse = result
    if lse_layout == "HN":
        target = lse_out if lse_out is not None else torch.empty(lse.shape[::-1], dtype=lse.dtype, device=lse.device)
        if lse_base == "ln":
            torch.mul(lse.t(), LN2, out=target)
        else:
            target.copy_(lse.t())
        return out, target
    if lse_base == "ln":
        lse.mul_(LN2)
    return out, lse


def _forward_overrides(wrapper, causal=None, pos_encoding_mode="NONE", use_fp16_qk_reduction=False,
                       window_left=-1, logits_soft_cap=None, sm_scale=None, rope_scale=None, rope_theta=None):
    """FlashInfer's legacy ``forward``: its arguments replace the planned causal flag, window, soft cap
    and scale (``None`` scale: 1/sqrt(head_dim)), and stay for later ``run`` calls, as in FlashInfer."""
    from dataclasses import replace

    plan = wrapper._require_plan()
    check_unsupported(pos_encoding_mode, use_fp16_qk_reduction, rope_scale=rope_scale, rope_theta=rope_theta)
    changes = {"window_left": window_left, "logits_soft_cap": logits_soft_cap or None,
               "sm_scale": plan.head_dim ** -0.5 if sm_scale is None else float(sm_scale)}
    if causal is not None and plan.custom_mask is None:  # with a custom mask causal stays off (FlashInfer)
        changes["causal"] = bool(causal)
    if (pos_encoding_mode == "ROPE_LLAMA") or plan.rope is not None:
        changes["rope"] = (float(rope_scale or 1.0), float(rope_theta or 1e4)) if pos_encoding_mode == "ROPE_LLAMA" \
            else None
    if (pos_encoding_mode == "ALIBI") != (plan.alibi is not None):
        from .reference import alibi_slopes

        if pos_encoding_mode == "ALIBI" and logits_soft_cap:
            raise ValueError("ALiBi with logits_soft_cap is not supported (FlashInfer scales such scores twice)")
        changes["alibi"] = alibi_slopes(plan.num_qo_heads).to(plan.meta.device) if pos_encoding_mode == "ALIBI" \
            else None
    wrapper._plan = replace(plan, **changes)


def _check_layout(kv_layout: str) -> str:
    if kv_layout not in LAYOUTS:
        raise ValueError(f"kv_layout must be 'NHD' or 'HND', got {kv_layout!r}")
    return kv_layout


def _paged_views(paged_kv_cache, kv_layout: str):
    """K/V as ``[pages, page_size, Hkv, D]`` views whatever the layout (HND is transposed as a view,
    never copied), and their (page, slot, head) element strides: every backend sees one orientation."""
    from aiter_ext.ops.paged_kv import unpack_paged_kv_cache

    k, v = unpack_paged_kv_cache(paged_kv_cache, kv_layout)
    check_tensor("paged_kv_cache", k, dtypes=KV_DTYPES)
    if kv_layout == "HND":
        k, v = k.transpose(1, 2), v.transpose(1, 2)
    return k, v, _shared_strides("paged_kv_cache", k, v, (0, 1, 2))


def _shared_strides(name: str, k, v, dims) -> tuple[int, int, int]:
    """The engine addresses K and V with one set of strides (fewer kernel arguments)."""
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError(f"{name}: K and V must be contiguous in head_dim")
    strides = tuple(k.stride(d) for d in dims)
    if strides != tuple(v.stride(d) for d in dims):
        raise ValueError(f"{name}: K and V must have the same strides (got {tuple(k.stride())} and "
                         f"{tuple(v.stride())}); pass them from one allocation or make them contiguous")
    return strides


class _Wrapper:
    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 backend: str = "auto"):
        self._workspace = as_workspace("float_workspace_buffer", float_workspace_buffer)
        self._kv_layout = _check_layout(kv_layout)
        self._use_cuda_graph = use_cuda_graph
        self._backend = backend
        self._config: Optional[dict] = None  # kernel config override (experiments; tuned rows come via the op)
        self._slot = new_plan_slot(self)
        self._plan = None

    @property
    def _plan(self) -> Optional[AttentionPlan]:
        return self._bound_plan

    @_plan.setter
    def _plan(self, plan: Optional[AttentionPlan]) -> None:
        # every plan() and override goes through here, so a torch.compile'd run (engine.bind_plan) sees it
        self._bound_plan = bind_plan(self._slot, plan)

    # run()'s call plans (core/plans.py) belong to one plan: made on the first run after each plan() (POD swaps
    # plans per run, so nothing is built at the swap), for plans that run Triton's kernels, whose launches all go
    # through the thin launch path (another backend's would be invisible to a recording).
    _plans_owner: Optional[AttentionPlan] = None
    _call_plans: Optional[CallPlans] = None
    _held: Optional[tuple] = None

    def _run_plans(self) -> Optional[CallPlans]:
        plan = self._bound_plan
        if self._plans_owner is not plan:
            self._plans_owner, self._held = plan, None
            plannable = plan is not None and plan.backend == "triton"
            self._call_plans = CallPlans(f"{type(self).__name__}.run") if plannable else None
        return self._call_plans

    def _held_tensors(self) -> tuple:
        """The device tensors the current plan holds, which its launches point into: a call plan's slots."""
        if self._held is None:
            self._held = held_device_tensors(self._bound_plan)
        return self._held

    def _require_plan(self) -> AttentionPlan:
        if self._plan is None:
            raise RuntimeError(f"{type(self).__name__}.run() called before plan()")
        return self._plan

    @property
    def attention_plan(self) -> AttentionPlan:
        """What ``plan()`` built (read-only use: cascade runs several of them as one)."""
        return self._require_plan()

    @property
    def workspace(self) -> torch.Tensor:
        """The float workspace, as bytes."""
        return self._workspace

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor, int_workspace_buffer=None) -> None:
        self._workspace = as_workspace("float_workspace_buffer", float_workspace_buffer)
        self._plan = None


def paged_cache_parts(paged_kv_cache) -> tuple:
    """The tensors of a paged cache argument (one tensor, or K and V), as a call plan's key and slots take them."""
    return tuple(paged_kv_cache) if isinstance(paged_kv_cache, (tuple, list)) else (paged_kv_cache,)


def _run_paged(wrapper: _Wrapper, q, paged_kv_cache, q_scale, k_scale, v_scale, out, lse, return_lse, sinks,
               lse_base="log2", lse_layout="NH"):
    # A call plan (core/plans.py) is keyed by everything about the arguments but their values: the second call of
    # a kind is recorded, later ones replay its launches with one C call. The LSE in another base or layout is
    # converted after the kernel by torch (not a launch a plan holds): those calls take the usual path.
    calls = wrapper._run_plans() if lse_base == "log2" and lse_layout == "NH" else None
    cache = paged_cache_parts(paged_kv_cache)
    key, replay = (calls.find(q, *cache, out, lse, sinks, return_lse, q_scale, k_scale, v_scale)
                   if calls is not None else (None, False))
    if replay:
        out, lse = outputs_for(q, out, lse)
        replay(q, *cache, out, lse, sinks, *wrapper._held)
        return (out, lse) if return_lse else out
    plan = wrapper._require_plan()
    k, v, strides = checked_paged_views(wrapper, paged_kv_cache)
    lse, lse_out = _lse_request(q, lse, lse_base, lse_layout, return_lse)
    mult = host_scale("q_scale", q_scale) * host_scale("k_scale", k_scale)
    run = functools.partial(plan.run, return_lse=return_lse, sm_scale_mult=mult,
                            v_scale=host_scale("v_scale", v_scale, tensor_ok=True), sinks=sinks)
    if key is None:
        result = run(q, k, v, strides, out=out, lse=lse)
    else:  # the outputs allocated outside the recording, which keeps launches only
        out, lse = plan.checked_outputs(q, k, out, lse)
        # the plan's tensors gathered only for the recording (a walk of its fields: tens of us)
        result = calls.recorded(key, lambda: (q, *cache, out, lse, sinks, *wrapper._held_tensors()),
                                functools.partial(run, out=out, lse=lse), q, k, v, strides)
    return _lse_finish(result, return_lse, lse_base, lse_layout, lse_out)


def checked_paged_views(wrapper: _Wrapper, paged_kv_cache):
    """The cache as K/V page views, checked against the wrapper's plan (metadata only)."""
    plan = wrapper._require_plan()
    k, v, strides = _paged_views(paged_kv_cache, wrapper._kv_layout)
    if k.shape[1] != plan.page_size or k.shape[-1] != plan.head_dim:
        raise ValueError(f"paged_kv_cache pages of shape {tuple(k.shape[1:])} do not match plan() "
                         f"(page_size={plan.page_size}, head_dim={plan.head_dim}, kv_layout={wrapper._kv_layout})")
    if plan.max_page >= k.shape[0]:
        raise ValueError(f"the page table from plan() uses page {plan.max_page}, but paged_kv_cache has "
                         f"{k.shape[0]} pages")
    return k, v, strides


class BatchPrefillWithPagedKVCacheWrapper(_Wrapper):
    """Batch prefill (and append) attention over a paged KV cache, FlashInfer's contract.

    ``plan(qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, num_qo_heads,
    num_kv_heads, head_dim_qk, page_size, ..., causal=False, sm_scale=None, window_left=-1,
    logits_soft_cap=None, q_data_type="float16", kv_data_type=None)`` then
    ``run(q [qo_indptr[-1], Hq, D], paged_kv_cache, return_lse=False) -> out`` or ``(out, lse)``.
    Causal masking is aligned bottom-right; ``lse`` is base 2, fp32 ``[total_q, Hq]``.
    """

    def __init__(self, float_workspace_buffer, kv_layout="NHD", use_cuda_graph=False, qo_indptr_buf=None,
                 paged_kv_indptr_buf=None, paged_kv_indices_buf=None, paged_kv_last_page_len_buf=None,
                 custom_mask_buf=None, mask_indptr_buf=None, backend="auto", jit_args=None):
        super().__init__(float_workspace_buffer, kv_layout, use_cuda_graph, backend)

    def plan(self, qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, num_qo_heads,
             num_kv_heads, head_dim_qk, page_size, head_dim_vo=None, custom_mask=None, packed_custom_mask=None,
             causal=False, pos_encoding_mode="NONE", use_fp16_qk_reduction=False, sm_scale=None, window_left=-1,
             logits_soft_cap=None, rope_scale=None, rope_theta=None, q_data_type="float16", kv_data_type=None,
             non_blocking=True, **flashinfer_extras) -> None:
        check_plan_extras("plan", flashinfer_extras, PAGED_PLAN_EXTRAS, q_data_type)
        check_unsupported(pos_encoding_mode, use_fp16_qk_reduction, rope_scale, rope_theta)
        if head_dim_vo not in (None, head_dim_qk):
            raise ValueError(f"head_dim_vo ({head_dim_vo}) different from head_dim_qk ({head_dim_qk}) is not supported")
        if page_size <= 0:
            raise ValueError(f"page_size must be positive, got {page_size}")
        self._plan = AttentionPlan.build(
            paged=True, qo_indptr=qo_indptr, kv_indptr=paged_kv_indptr, kv_indices=paged_kv_indices,
            kv_last_page_len=paged_kv_last_page_len, num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads,
            head_dim=head_dim_qk, page_size=page_size, causal=causal, sm_scale=sm_scale, window_left=window_left,
            logits_soft_cap=logits_soft_cap, q_data_type=q_data_type, kv_data_type=kv_data_type,
            workspace=self._workspace, backend=self._backend, config=self._config, custom_mask=custom_mask,
            packed_custom_mask=packed_custom_mask, pos_encoding_mode=pos_encoding_mode, rope_scale=rope_scale,
            rope_theta=rope_theta)

    begin_forward = plan

    def run(self, q, paged_kv_cache, *args, q_scale=None, k_scale=None, v_scale=None, out=None, lse=None,
            return_lse=False, lse_base="log2", lse_layout="NH", enable_pdl=None, window_left=None, sinks=None):
        if window_left not in (None, self._require_plan().window_left):
            raise ValueError(f"run(window_left={window_left}) differs from plan()'s "
                             f"{self._plan.window_left}; set it in plan()")
        return _run_paged(self, q, paged_kv_cache, q_scale, k_scale, v_scale, out, lse, return_lse, sinks,
                          lse_base, lse_layout)

    run_return_lse = functools.partialmethod(run, return_lse=True)

    def forward(self, q, paged_kv_cache, causal=False, pos_encoding_mode="NONE", use_fp16_qk_reduction=False,
                k_scale=None, v_scale=None, window_left=-1, logits_soft_cap=None, sm_scale=None, rope_scale=None,
                rope_theta=None):
        """FlashInfer's legacy form: ``causal`` and the rest replace plan()'s values (and stay)."""
        _forward_overrides(self, causal, pos_encoding_mode, use_fp16_qk_reduction, window_left, logits_soft_cap,
                           sm_scale, rope_scale, rope_theta)
        return self.run(q, paged_kv_cache, k_scale=k_scale, v_scale=v_scale)

    def forward_return_lse(self, q, paged_kv_cache, causal=False, pos_encoding_mode="NONE",
                           use_fp16_qk_reduction=False, k_scale=None, v_scale=None, window_left=-1,
                           logits_soft_cap=None, sm_scale=None, rope_scale=None, rope_theta=None):
        _forward_overrides(self, causal, pos_encoding_mode, use_fp16_qk_reduction, window_left, logits_soft_cap,
                           sm_scale, rope_scale, rope_theta)
        return self.run(q, paged_kv_cache, k_scale=k_scale, v_scale=v_scale, return_lse=True)


class BatchAttentionWithAttentionSinkWrapper(BatchPrefillWithPagedKVCacheWrapper):
    """FlashInfer 0.7.2's paged prefill/decode with attention sinks (gpt-oss):
    ``run(q, paged_kv_cache, sink, sm_scale)``, the sink logits ``[Hq]`` and the scale positional, and
    that run-time scale is the one used. The constructor takes FlashInfer's keywords; where FlashInfer
    allows only bf16 and head dim 128, this serves fp16 and bf16 at every head dim the engine has, and
    ``window_left`` (gpt-oss's 128-token sliding layers) as plan() takes it."""

    def __init__(self, float_workspace_buffer, kv_layout="NHD", use_cuda_graph=False, qo_indptr_buf=None,
                 paged_kv_indptr_buf=None, paged_kv_indices_buf=None, paged_kv_last_page_len_buf=None,
                 custom_mask_buf=None, mask_indptr_buf=None, backend="auto", pos_encoding_mode="NONE",
                 use_fp16_qk_reduction=False, q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16,
                 head_dim_qk=128, head_dim_vo=128, window_left=-1):
        check_unsupported(pos_encoding_mode, use_fp16_qk_reduction)
        if head_dim_vo != head_dim_qk:
            raise ValueError(f"head_dim_vo ({head_dim_vo}) different from head_dim_qk ({head_dim_qk}) is not supported")
        super().__init__(float_workspace_buffer, kv_layout, use_cuda_graph, backend=backend)
        self._defaults = {"q_data_type": q_data_type, "kv_data_type": kv_data_type, "window_left": window_left,
                          "pos_encoding_mode": pos_encoding_mode}

    def plan(self, *args, **kwargs) -> None:
        """As BatchPrefillWithPagedKVCacheWrapper.plan; the constructor's dtypes and window are the defaults."""
        super().plan(*args, **{**self._defaults, **kwargs})

    begin_forward = plan

    def run(self, q, paged_kv_cache, sink=None, sm_scale=None, *, k_scale=None, v_scale=None, out=None, lse=None,
            return_lse=False, lse_base="log2", lse_layout="NH", enable_pdl=None, sinks=None):
        if sink is not None and sinks is not None:
            raise TypeError("pass the sink logits once: run(q, cache, sink, sm_scale) or sinks=")
        sinks = sink if sink is not None else sinks
        if sinks is None:
            raise TypeError("BatchAttentionWithAttentionSinkWrapper.run() needs the sink logits: "
                            "run(q, paged_kv_cache, sink, sm_scale)")
        plan = self._require_plan()
        # the run-time scale replaces plan()'s: passed on as a factor on it (the q_scale slot)
        factor = 1.0 if sm_scale is None else float(sm_scale) / plan.sm_scale
        return _run_paged(self, q, paged_kv_cache, factor, k_scale, v_scale, out, lse, return_lse, sinks, lse_base,
                          lse_layout)

    run_return_lse = functools.partialmethod(run, return_lse=True)


class BatchDecodeWithPagedKVCacheWrapper(_Wrapper):
    """Batch decode (one query token per request) over a paged KV cache, FlashInfer's contract.

    ``plan(indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size, ...)`` then
    ``run(q [batch, Hq, D], paged_kv_cache, return_lse=False)``. Long contexts are split across programs
    and merged, so a small batch still fills the GPU.
    """

    def __init__(self, float_workspace_buffer, kv_layout="NHD", use_cuda_graph=False, use_tensor_cores=False,
                 paged_kv_indptr_buffer=None, paged_kv_indices_buffer=None, paged_kv_last_page_len_buffer=None,
                 backend="auto", jit_args=None):
        super().__init__(float_workspace_buffer, kv_layout, use_cuda_graph, backend)

    def plan(self, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size,
             pos_encoding_mode="NONE", window_left=-1, logits_soft_cap=None, q_data_type="float16",
             kv_data_type=None, o_data_type=None, data_type=None, sm_scale=None, rope_scale=None, rope_theta=None,
             non_blocking=True, block_tables=None, seq_lens=None, fixed_split_size=None, disable_split_kv=False,
             q_len_per_req=1, *, window_right=0, is_causal=None) -> None:
        """FlashInfer 0.7.2's ``plan`` (its deprecated positional order after ``page_size`` included).

        ``q_len_per_req = n`` plans ``n`` query tokens per request (speculative verification, MTP):
        ``run`` then takes ``q [batch * n, Hq, D]``, request ``b`` owning rows ``[b * n, (b + 1) * n)``,
        causal within the request's new tokens, aligned bottom-right; a request whose KV is shorter than
        ``n`` is a ``ValueError`` here. ``block_tables``, ``seq_lens``, ``fixed_split_size`` and
        ``disable_split_kv`` steer FlashInfer's other backends or its scheduler: accepted, no effect."""
        check_unsupported(pos_encoding_mode, rope_scale=rope_scale, rope_theta=rope_theta)
        if data_type is not None:  # FlashInfer's deprecated alias, resolved as FlashInfer resolves it
            q_data_type = data_type if q_data_type is None else q_data_type
            kv_data_type = data_type if kv_data_type is None else kv_data_type
        if window_right != 0:
            raise ValueError(f"window_right={window_right} is not supported (FlashInfer serves it on cute-dsl only)")
        check_plan_extras("plan", {"o_data_type": o_data_type}, frozenset({"o_data_type"}), q_data_type)
        if page_size <= 0:
            raise ValueError(f"page_size must be positive, got {page_size}")
        if not isinstance(q_len_per_req, int) or q_len_per_req < 1:
            raise ValueError(f"q_len_per_req must be a positive int, got {q_len_per_req!r}")
        if is_causal not in (None, q_len_per_req > 1):
            raise ValueError(f"is_causal={is_causal} with q_len_per_req={q_len_per_req} is not supported: the mask "
                             "is causal exactly when a request has several query tokens")
        check_tensor("indptr", indptr, ndim=1, dtypes=(torch.int32, torch.int64))
        check_tensor("last_page_len", last_page_len, ndim=1, dtypes=(torch.int32, torch.int64))
        batch = indptr.shape[0] - 1
        if q_len_per_req > 1:
            pages = indptr.cpu().long()
            last = last_page_len.cpu().long()
            if last.shape[0] == batch:
                count = pages[1:] - pages[:-1]
                kv_lens = torch.where(count > 0, (count - 1) * page_size + last, torch.zeros_like(count))
                short = torch.nonzero(kv_lens < q_len_per_req).flatten()
                if short.numel():
                    b = int(short[0])
                    raise ValueError(f"request {b} has {int(kv_lens[b])} KV tokens, fewer than q_len_per_req="
                                     f"{q_len_per_req} (its new tokens are part of its KV)")
        qo_indptr = torch.arange(batch + 1, dtype=torch.int32) * q_len_per_req
        self._plan = AttentionPlan.build(
            paged=True, qo_indptr=qo_indptr, kv_indptr=indptr, kv_indices=indices, kv_last_page_len=last_page_len,
            num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, page_size=page_size,
            causal=q_len_per_req > 1, sm_scale=sm_scale, window_left=window_left, logits_soft_cap=logits_soft_cap,
            q_data_type=q_data_type, kv_data_type=kv_data_type, workspace=self._workspace, backend=self._backend,
            config=self._config, pos_encoding_mode=pos_encoding_mode, rope_scale=rope_scale, rope_theta=rope_theta)

    begin_forward = plan

    def run(self, q, paged_kv_cache, *args, q_scale=None, k_scale=None, v_scale=None, out=None, lse=None,
            return_lse=False, lse_base="log2", lse_layout="NH", enable_pdl=None, window_left=None, sinks=None,
            q_len_per_req=None):
        plan = self._require_plan()
        if window_left not in (None, plan.window_left):
            raise ValueError(f"run(window_left={window_left}) differs from plan()'s {plan.window_left}")
        planned = plan.total_q // max(1, plan.qo_indptr.shape[0] - 1)
        if q_len_per_req not in (None, planned):
            raise ValueError(f"run(q_len_per_req={q_len_per_req}) differs from plan()'s {planned}")
        return _run_paged(self, q, paged_kv_cache, q_scale, k_scale, v_scale, out, lse, return_lse, sinks,
                          lse_base, lse_layout)

    run_return_lse = functools.partialmethod(run, return_lse=True)

    def forward(self, q, paged_kv_cache, pos_encoding_mode="NONE", q_scale=None, k_scale=None, v_scale=None,
                window_left=-1, logits_soft_cap=None, sm_scale=None, rope_scale=None, rope_theta=None):
        """FlashInfer's legacy form: its window, soft cap and scale replace plan()'s (and stay)."""
        _forward_overrides(self, None, pos_encoding_mode, False, window_left, logits_soft_cap, sm_scale,
                           rope_scale, rope_theta)
        return self.run(q, paged_kv_cache, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale)

    def forward_return_lse(self, q, paged_kv_cache, pos_encoding_mode="NONE", q_scale=None, k_scale=None,
                           v_scale=None, window_left=-1, logits_soft_cap=None, sm_scale=None, rope_scale=None,
                           rope_theta=None):
        _forward_overrides(self, None, pos_encoding_mode, False, window_left, logits_soft_cap, sm_scale,
                           rope_scale, rope_theta)
        return self.run(q, paged_kv_cache, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale, return_lse=True)


class BatchPrefillWithRaggedKVCacheWrapper(_Wrapper):
    """Batch prefill over ragged (packed, unpaged) K/V: ``k, v [kv_indptr[-1], Hkv, D]``."""

    def __init__(self, float_workspace_buffer, kv_layout="NHD", use_cuda_graph=False, qo_indptr_buf=None,
                 kv_indptr_buf=None, custom_mask_buf=None, mask_indptr_buf=None, backend="auto", jit_args=None):
        if kv_layout != "NHD":
            raise ValueError(f"ragged K/V are [tokens, heads, dim] (kv_layout='NHD'), got {kv_layout!r}")
        super().__init__(float_workspace_buffer, kv_layout, use_cuda_graph, backend)

    def plan(self, qo_indptr, kv_indptr, num_qo_heads, num_kv_heads, head_dim_qk, head_dim_vo=None,
             custom_mask=None, packed_custom_mask=None, causal=False, pos_encoding_mode="NONE",
             use_fp16_qk_reduction=False, window_left=-1, logits_soft_cap=None, sm_scale=None, rope_scale=None,
             rope_theta=None, q_data_type="float16", kv_data_type=None, non_blocking=True,
             **flashinfer_extras) -> None:
        check_plan_extras("plan", flashinfer_extras, RAGGED_PLAN_EXTRAS, q_data_type)
        check_unsupported(pos_encoding_mode, use_fp16_qk_reduction, rope_scale, rope_theta)
        if head_dim_vo not in (None, head_dim_qk):
            raise ValueError(f"head_dim_vo ({head_dim_vo}) different from head_dim_qk ({head_dim_qk}) is not supported")
        self._plan = AttentionPlan.build(
            paged=False, qo_indptr=qo_indptr, kv_indptr=kv_indptr, kv_indices=None, kv_last_page_len=None,
            num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim_qk, page_size=1, causal=causal,
            sm_scale=sm_scale, window_left=window_left, logits_soft_cap=logits_soft_cap, q_data_type=q_data_type,
            kv_data_type=kv_data_type, workspace=self._workspace, backend=self._backend, config=self._config,
            custom_mask=custom_mask, packed_custom_mask=packed_custom_mask, pos_encoding_mode=pos_encoding_mode,
            rope_scale=rope_scale, rope_theta=rope_theta)

    begin_forward = plan

    def run(self, q, k, v, *args, q_scale=None, k_scale=None, v_scale=None, o_scale=None, out=None, lse=None,
            return_lse=False, lse_base="log2", lse_layout="NH", enable_pdl=None, kv_cache_sf=None, sinks=None):
        plan = self._require_plan()
        if o_scale is not None or kv_cache_sf is not None:
            raise ValueError("o_scale / kv_cache_sf (fp8 output and NVFP4 KV scales) are not supported yet")
        for name, t in (("k", k), ("v", v)):
            check_tensor(name, t, ndim=3, dtypes=KV_DTYPES)
            if tuple(t.shape[1:]) != (plan.num_kv_heads, plan.head_dim) or t.shape[0] < plan.total_kv:
                raise ValueError(f"{name} must be [kv_indptr[-1] = {plan.total_kv}, {plan.num_kv_heads}, "
                                 f"{plan.head_dim}] as planned, got shape {tuple(t.shape)}")
        token, head = _shared_strides("k/v", k, v, (0, 1))[:2]
        strides = (token, 0, head)
        lse, lse_out = _lse_request(q, lse, lse_base, lse_layout, return_lse)
        mult = host_scale("q_scale", q_scale) * host_scale("k_scale", k_scale)
        result = plan.run(q, k, v, strides, out=out, lse=lse, return_lse=return_lse, sm_scale_mult=mult,
                          v_scale=host_scale("v_scale", v_scale, tensor_ok=True), sinks=sinks)
        return _lse_finish(result, return_lse, lse_base, lse_layout, lse_out)

    run_return_lse = functools.partialmethod(run, return_lse=True)

    def forward(self, q, k, v, causal=False, pos_encoding_mode="NONE", use_fp16_qk_reduction=False, window_left=-1,
                logits_soft_cap=None, sm_scale=None, rope_scale=None, rope_theta=None):
        """FlashInfer's legacy form: ``causal`` and the rest replace plan()'s values (and stay)."""
        _forward_overrides(self, causal, pos_encoding_mode, use_fp16_qk_reduction, window_left, logits_soft_cap,
                           sm_scale, rope_scale, rope_theta)
        return self.run(q, k, v)

    def forward_return_lse(self, q, k, v, causal=False, pos_encoding_mode="NONE", use_fp16_qk_reduction=False,
                           window_left=-1, logits_soft_cap=None, sm_scale=None, rope_scale=None, rope_theta=None):
        _forward_overrides(self, causal, pos_encoding_mode, use_fp16_qk_reduction, window_left, logits_soft_cap,
                           sm_scale, rope_scale, rope_theta)
        return self.run(q, k, v, return_lse=True)
