"""Backend registrations for the attention engine (the ``attention`` op): ``triton`` (kernels.py),
``torch`` (the fp32 reference, per request; reads lengths on the host, so not graph-capturable) and
``aiter`` (AITER's CK batch prefill on ROCm, aiter_backend.py).

Each implementation is ``fn(plan, q, k, v, kv_strides, out, lse, sm_scale, sinks)`` and writes
``out``/``lse``; ``sinks`` is None or the fp32 ``[Hq]`` attention-sink logits.
``PARTIAL_STATE_RUNNERS`` lists the backends that can also write a work list's partial states into
given workspace rows (``fn(plan, work, q, k, v, kv_strides, partial_o, partial_lse, sinks, sm_scale_mult)``),
which lets
several plans over the same queries share one merge (engine.run_levels).
"""

from __future__ import annotations

from aiter_ext.core.arch import device_info
from aiter_ext.core.backend import define_op, pow2_bucket
from aiter_ext.core.env import interpreted

from . import aiter_backend, reference, tuning


def _run_torch(plan, q, k, v, kv_strides, out, lse, sm_scale, sinks=None) -> None:
    """The fp32 reference, per request. Paged K/V arrive as ``[pages, page_size, Hkv, D]`` views
    whatever the cache's layout."""
    if plan.paged:
        kv = reference.gather_paged_kv(k, v, plan.kv_indptr, plan.kv_indices, plan.kv_last_page_len)
    else:
        bounds = plan.kv_indptr.tolist()
        kv = [(k[bounds[b]:bounds[b + 1]], v[bounds[b]:bounds[b + 1]]) for b in range(len(bounds) - 1)]
    masks = None
    if plan.custom_mask is not None:
        from .masks import unpack_request_masks

        masks = unpack_request_masks(plan.custom_mask, plan.mask_offsets, plan.qo_lens, plan.kv_lens)
    o, s = reference.batch_attention_ref(q, plan.qo_indptr, kv, plan.causal, sm_scale, plan.window_left,
                                         plan.logits_soft_cap, sinks, masks, plan.alibi, plan.rope)
    out.copy_(o)
    lse.copy_(s)


def _prepare_triton(*, qo_lens, kv_lens, paged, page_size, device, custom_mask=None, rope=None, **_) -> dict:
    """Plan time: a custom mask's bytes followed by its rows' visibility classes (kernels.mask_with_classes);
    with ``rope`` (engine.RopePlan), RoPE's cos/sin table and, for a plan that rotates ahead, its scratch."""
    from .kernels import mask_with_classes, rope_ahead_scratch, rope_cis_table

    extra = {}
    if custom_mask is not None:
        packed, mask_offsets, class_offsets = custom_mask
        extra["mask"] = mask_with_classes(packed, mask_offsets, class_offsets, qo_lens, kv_lens)
    if rope is not None:
        extra["rope_cis"] = (rope.params, rope_cis_table(rope.params, rope.head_dim, max(kv_lens, default=1), device))
        if rope.ahead:
            extra["rope_ahead"] = rope_ahead_scratch(qo_lens, kv_lens, rope.kv_indptr, page_size, paged,
                                                     rope.num_qo_heads, rope.num_kv_heads, rope.head_dim,
                                                     rope.dtype, device, q_ahead=rope.q_ahead)
    return extra


def _kernel_mask(plan):
    """What the kernel reads with CUSTOM_MASK (_prepare_triton), or None."""
    return plan.extra["mask"] if plan.custom_mask is not None else None


def _kernel_options(plan) -> dict:
    """The plan's kernel flags beyond the basic ones (launch_attention's keywords). forward() may have
    turned RoPE on, off or to other parameters since plan(): the table follows plan.rope (cached)."""
    rope = None
    if plan.rope is not None:
        planned = plan.extra.get("rope_cis")
        if planned is not None and planned[0] == plan.rope:
            rope = planned[1]
        else:
            from .kernels import rope_cis_table

            rope = rope_cis_table(plan.rope, plan.head_dim, max(plan.kv_lens, default=1), plan.meta.device)
    return {"custom_mask": _kernel_mask(plan), "alibi": plan.alibi, "rope": rope,
            "rope_ahead": plan.extra.get("rope_ahead") if rope is not None else None}


def _run_triton(plan, q, k, v, kv_strides, out, lse, sm_scale, sinks=None) -> None:
    from aiter_ext.ops.merge_state.api import _merge_many_out
    from .kernels import launch_attention

    launch_attention(plan.work, q, k, v, plan.kv_indices, plan.meta, plan.qo_indptr.shape[0] - 1,
                     out, lse, plan.partial_o, plan.partial_lse, paged=plan.paged, page_size=plan.page_size,
                     kv_strides=kv_strides, sm_scale=sm_scale, causal=plan.causal, window_left=plan.window_left,
                     logits_soft_cap=plan.logits_soft_cap, sinks=sinks, **_kernel_options(plan),
                     merge=lambda po, pl, ind, o, s: _merge_many_out(po, pl, ind, o, s, None))


def _triton_partial(plan, work, q, k, v, kv_strides, partial_o, partial_lse, sinks=None, sm_scale_mult=1.0) -> None:
    """``work`` (a split work list) writes its partial states into ``partial_o``/``partial_lse``, at the
    plan's scale times ``sm_scale_mult``."""
    from .kernels import launch_attention

    launch_attention(work, q, k, v, plan.kv_indices, plan.meta, plan.qo_indptr.shape[0] - 1, None, None,
                     partial_o, partial_lse, paged=plan.paged, page_size=plan.page_size, kv_strides=kv_strides,
                     sm_scale=plan.sm_scale * sm_scale_mult, causal=plan.causal, window_left=plan.window_left,
                     logits_soft_cap=plan.logits_soft_cap, merge=None, sinks=sinks, **_kernel_options(plan))


def _triton_supports(call) -> tuple[bool, str]:
    if call["head_dim"] not in (64, 128, 256):
        return False, "head_dim must be 64, 128 or 256"
    if call.get("kv_dtype") == "float8_e4m3fnuz":
        # gfx942's fp8; other targets (and FlashInfer) use e4m3fn. The CPU interpreter converts either.
        arch = device_info().arch
        if arch != "gfx942" and not (call["device"] == "cpu" and interpreted()):
            return False, f"float8_e4m3fnuz KV is gfx942's fp8 format; on {arch} use float8_e4m3fn"
    return True, ""


#: A plan's call: its heads, head_dim, q and KV dtypes, the packed rows' power of two (tuning.packed_rows_bucket:
#: the tile regime, so a tuned row serves no other) and the longest request's keys.
SHAPE_KEYS = ("num_qo_heads", "num_kv_heads", "head_dim", "dtype", "kv_dtype", "packed_rows", "kv_len")
ATTENTION = define_op("attention", SHAPE_KEYS,
                      lambda c: (c["num_qo_heads"], c["num_kv_heads"], c["head_dim"], c["dtype"], c["kv_dtype"],
                                 c["packed_rows"], pow2_bucket(c["kv_len"])),
                      exact_keys=("head_dim", "dtype", "kv_dtype", "packed_rows"))
ATTENTION.register("torch", _run_torch)
ATTENTION.register("triton", _run_triton, supports=_triton_supports, prepare=_prepare_triton,
                   configs=tuning.TRITON_TUNE_CONFIGS)
def _run_aiter(plan, q, k, v, kv_strides, out, lse, sm_scale, sinks=None) -> None:
    if sinks is not None or plan.custom_mask is not None or plan.alibi is not None or plan.rope is not None:
        raise ValueError("sinks=, custom masks, ALiBi and in-kernel RoPE are not served by the aiter backend "
                         "(AITER's batch prefill takes none of them); plan with backend='triton'")
    aiter_backend.run(plan, q, k, v, kv_strides, out, lse, sm_scale)


ATTENTION.register("aiter", _run_aiter, prepare=aiter_backend.prepare,
                   supports=lambda c: (c["head_dim"] in (64, 128, 256), "head_dim must be 64, 128 or 256"))

#: Backends whose work lists can write partial states into given rows (see the module docstring).
PARTIAL_STATE_RUNNERS = {"triton": _triton_partial}


def _register_tuning():
    from aiter_ext.core.tuner import register_tune_target

    register_tune_target("attention", tuning.tune_case)


_register_tuning()
