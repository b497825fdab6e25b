"""Attention-state merging: FlashInfer's ``merge_state``, ``merge_state_in_place``, ``merge_states`` and
``variable_length_merge_states``.

Layering (as quack does it): the public functions validate and allocate; functions that write into
given outputs dispatch to a backend; those are also registered as torch custom ops, which
``torch.compile`` traces through (eager calls skip that layer).
"""

from __future__ import annotations

from typing import Optional

import torch

from aiter_ext.core.checks import (
    check_indptr_values, check_inner_contiguous, check_same_device, check_same_dtype, check_shape, check_tensor,
    dtype_name,
)
from aiter_ext.core.custom_ops import mutating_ops
from aiter_ext.core.plans import CallPlans

from .backends import MERGE_STATE, MERGE_STATES

V_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MASK_DTYPES = (torch.bool, torch.uint8)


# --------------------------------------------------------------------------------------------------
# Dispatch (the custom ops' bodies).


def _pair_call(v_a, v_out, mask) -> dict:
    n, h, d = v_a.shape
    return {"num_tokens": n, "num_heads": h, "head_dim": d, "dtype": dtype_name(v_a.dtype),
            "device": v_a.device.type, "has_mask": mask is not None, "contiguous": all(t.is_contiguous() for t in (v_a, v_out))}


def _merge_pair_out(v_a: torch.Tensor, s_a: torch.Tensor, v_b: torch.Tensor, s_b: torch.Tensor,
                    v_out: torch.Tensor, s_out: torch.Tensor, mask: Optional[torch.Tensor],
                    backend: Optional[str]) -> None:
    call = _pair_call(v_a, v_out, mask)
    call["contiguous"] = call["contiguous"] and all(t.is_contiguous() for t in (v_b, s_a, s_b, s_out))
    call["aligned16"] = all(t.data_ptr() % 16 == 0 for t in (v_a, v_b, v_out))
    choice = MERGE_STATE.select(call, backend)
    choice.impl.fn(choice.config, v_a, s_a, v_b, s_b, v_out, s_out, mask)


def _merge_many_out(v: torch.Tensor, s: torch.Tensor, indptr: Optional[torch.Tensor], v_out: torch.Tensor,
                    s_out: torch.Tensor, backend: Optional[str]) -> None:
    n, h, d = v_out.shape
    call = {"num_tokens": n, "num_heads": h, "head_dim": d, "dtype": dtype_name(v.dtype),
            "device": v.device.type, "varlen": indptr is not None}
    choice = MERGE_STATES.select(call, backend)
    choice.impl.fn(choice.config, v, s, indptr, v_out, s_out)


def _merge_state_out(v_a: torch.Tensor, s_a: torch.Tensor, v_b: torch.Tensor, s_b: torch.Tensor,
                     v_out: torch.Tensor, s_out: torch.Tensor, backend: Optional[str]) -> None:
    _merge_pair_out(v_a, s_a, v_b, s_b, v_out, s_out, None, backend)


def _merge_state_in_place(v: torch.Tensor, s: torch.Tensor, v_other: torch.Tensor, s_other: torch.Tensor,
                          mask: Optional[torch.Tensor], backend: Optional[str]) -> None:
    _merge_pair_out(v, s, v_other, s_other, v, s, mask, backend)


# The same functions as torch custom ops, so torch.compile(fullgraph=True) traces through them. They
# only write into their mutated arguments, so the fake implementations do nothing.
#: Call plans (core/plans.py) of the two-state forms: eager calls replayed from a recorded one of the same kind.
PLANS = CallPlans("merge_state")

_call = mutating_ops({
    _merge_state_out: ("merge_state_out", ("v_out", "s_out")),
    _merge_state_in_place: ("merge_state_in_place", ("v", "s")),
    _merge_many_out: ("merge_states_out", ("v_out", "s_out")),
})


# --------------------------------------------------------------------------------------------------
# Validation.


def _check_state(v_name, v, s_name, s, lead: int = 1):
    """``v [*lead, H, D]`` in fp16/bf16/fp32 with packed (H, D); ``s [*lead, H]`` fp32 with packed H."""
    check_tensor(v_name, v, ndim=lead + 2, dtypes=V_DTYPES)
    check_tensor(s_name, s, ndim=lead + 1, dtypes=(torch.float32,))
    check_shape(s_name, s, v.shape[:-1], f"{v_name}.shape[:-1]")
    check_inner_contiguous(v_name, v, lead + 1 if lead > 1 else 2)
    check_inner_contiguous(s_name, s, lead if lead > 1 else 1)


def _check_pair(names, v_a, s_a, v_b, s_b):
    va_n, sa_n, vb_n, sb_n = names
    _check_state(va_n, v_a, sa_n, s_a)
    check_tensor(vb_n, v_b)
    check_shape(vb_n, v_b, v_a.shape, f"the shape of {va_n}")
    _check_state(vb_n, v_b, sb_n, s_b)
    check_same_dtype([(va_n, v_a), (vb_n, v_b)])
    check_same_device([(va_n, v_a), (sa_n, s_a), (vb_n, v_b), (sb_n, s_b)])


# --------------------------------------------------------------------------------------------------
# Public API.


def merge_state(v_a: torch.Tensor, s_a: torch.Tensor, v_b: torch.Tensor, s_b: torch.Tensor,
                *, backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Merge two attention states computed over disjoint sets of keys.

    With base-2 log-sum-exps ``s``: ``m = max(s_a, s_b)``, ``w_x = 2^(s_x - m)``,
    ``v = (w_a v_a + w_b v_b) / (w_a + w_b)``, ``s = m + log2(w_a + w_b)``. A state with ``s = -inf``
    is empty; merging two empty states gives ``v = 0`` and ``s = -inf`` (no NaN).

    Parameters
    ----------
    v_a, v_b : torch.Tensor
        ``[seq_len, num_heads, head_dim]``, fp16/bf16 (fp32 also accepted, unlike FlashInfer), same
        dtype. The last two dimensions must be packed; the token stride is free.
    s_a, s_b : torch.Tensor
        ``[seq_len, num_heads]``, fp32, the base-2 LSE of the scaled logits (a natural-log LSE, as
        AITER and FlashAttention return, must first be multiplied by ``log2(e)``).
    backend : str, optional
        ``"triton"``, ``"ck"`` or ``"torch"`` to force one; ``None``/``"auto"`` selects (DESIGN.md).

    Returns
    -------
    v : torch.Tensor
        ``[seq_len, num_heads, head_dim]`` in ``v_a.dtype``.
    s : torch.Tensor
        ``[seq_len, num_heads]``, fp32.

    Examples
    --------
    >>> import torch, aiter_ext
    >>> from aiter_ext.ops.merge_state.reference import merge_state_ref
    >>> v_a, v_b = torch.randn(2, 5, 4, 64, dtype=torch.float16)
    >>> s_a, s_b = torch.randn(2, 5, 4)
    >>> v, s = aiter_ext.merge_state(v_a, s_a, v_b, s_b)
    >>> v_ref, s_ref = merge_state_ref(v_a, s_a, v_b, s_b)
    >>> torch.testing.assert_close(v, v_ref, atol=1e-3, rtol=1e-3); torch.testing.assert_close(s, s_ref)
    """
    key, plan = PLANS.find(v_a, s_a, v_b, s_b, backend)
    if not plan:
        _check_pair(("v_a", "s_a", "v_b", "s_b"), v_a, s_a, v_b, s_b)
    # empty_like: about 1 us a call less than torch.empty(shape, dtype=, device=); s_a is fp32 (checked)
    v_out = torch.empty_like(v_a, memory_format=torch.contiguous_format)
    s_out = torch.empty_like(s_a, memory_format=torch.contiguous_format)
    if plan:
        plan(v_a, s_a, v_b, s_b, v_out, s_out)
    else:
        PLANS.recorded(key, (v_a, s_a, v_b, s_b, v_out, s_out), _call, _merge_state_out, v_a, s_a, v_b, s_b, v_out,
                       s_out, backend)
    return v_out, s_out


def merge_state_in_place(v: torch.Tensor, s: torch.Tensor, v_other: torch.Tensor, s_other: torch.Tensor,
                         mask: Optional[torch.Tensor] = None, *, backend: Optional[str] = None) -> None:
    r"""Merge ``(v_other, s_other)`` into ``(v, s)``, writing both ``v`` and ``s`` in place.

    Same math as :func:`merge_state`. With ``mask``, only tokens whose mask is nonzero are merged;
    the other rows of ``v`` and ``s`` are left untouched.

    Parameters
    ----------
    v : torch.Tensor
        ``[seq_len, num_heads, head_dim]`` fp16/bf16/fp32, updated in place; last two dims packed.
    s : torch.Tensor
        ``[seq_len, num_heads]`` **fp32**, updated in place. FlashInfer silently casts a non-fp32 ``s``
        and then updates the temporary; aiter_ext raises ``TypeError`` instead.
    v_other, s_other : torch.Tensor
        The state to merge in; same shapes and ``v`` dtype.
    mask : torch.Tensor, optional
        ``[seq_len]`` bool or uint8 (read as bytes, as FlashInfer does; other dtypes are refused).
    backend : str, optional
        As in :func:`merge_state`.

    Note
    ----
    Mutates ``v`` and ``s``. Nothing is written when validation fails.

    Examples
    --------
    >>> import torch, aiter_ext
    >>> from aiter_ext.ops.merge_state.reference import merge_state_ref
    >>> v, v_o = torch.randn(2, 6, 2, 64, dtype=torch.bfloat16)
    >>> s, s_o = torch.randn(2, 6, 2)
    >>> mask = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)
    >>> v_ref, s_ref = merge_state_ref(v, s, v_o, s_o)
    >>> v_ref[~mask], s_ref[~mask] = v[~mask], s[~mask]
    >>> aiter_ext.merge_state_in_place(v, s, v_o, s_o, mask=mask)
    >>> torch.testing.assert_close(v, v_ref, atol=1e-2, rtol=1e-2); torch.testing.assert_close(s, s_ref)
    """
    key, plan = PLANS.find(v, s, v_other, s_other, mask, backend, True)
    if plan:
        plan(v, s, v_other, s_other, mask)
        return
    _check_pair(("v", "s", "v_other", "s_other"), v, s, v_other, s_other)
    if mask is not None:
        check_tensor("mask", mask, ndim=1, dtypes=MASK_DTYPES)
        check_shape("mask", mask, v.shape[:1], "[seq_len]")
        check_same_device([("v", v), ("mask", mask)])
    PLANS.recorded(key, (v, s, v_other, s_other, mask), _call, _merge_state_in_place, v, s, v_other, s_other, mask,
                   backend)


def merge_states(v: torch.Tensor, s: torch.Tensor, *, backend: Optional[str] = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Merge ``num_states`` attention states per token.

    Parameters
    ----------
    v : torch.Tensor
        ``[seq_len, num_states, num_heads, head_dim]`` fp16/bf16/fp32; last three dims packed.
    s : torch.Tensor
        ``[seq_len, num_states, num_heads]`` fp32 base-2 LSE.
    backend : str, optional
        ``"triton"`` or ``"torch"``; ``None``/``"auto"`` selects.

    Returns
    -------
    (v, s) : ``[seq_len, num_heads, head_dim]`` in ``v.dtype`` and fp32 ``[seq_len, num_heads]``.
    With ``num_states = 0`` every row is empty: ``v = 0``, ``s = -inf``.

    Examples
    --------
    >>> import torch, aiter_ext
    >>> from aiter_ext.ops.merge_state.reference import merge_states_ref
    >>> v, s = torch.randn(3, 5, 2, 128, dtype=torch.float16), torch.randn(3, 5, 2)
    >>> out, lse = aiter_ext.merge_states(v, s)
    >>> ref, ref_lse = merge_states_ref(v, s)
    >>> torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-3); torch.testing.assert_close(lse, ref_lse)
    """
    _check_state("v", v, "s", s, lead=2)
    check_same_device([("v", v), ("s", s)])
    n, _, h, d = v.shape
    v_out = torch.empty((n, h, d), dtype=v.dtype, device=v.device)
    s_out = torch.empty((n, h), dtype=torch.float32, device=v.device)
    _call(_merge_many_out, v, s, None, v_out, s_out, backend)
    return v_out, s_out


def variable_length_merge_states(v: torch.Tensor, s: torch.Tensor, indptr: torch.Tensor,
                                 *, backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Merge a variable number of states per output token.

    Output token ``i`` merges rows ``indptr[i]:indptr[i+1]`` of the packed states.

    Parameters
    ----------
    v : torch.Tensor
        ``[total_states, num_heads, head_dim]`` fp16/bf16/fp32; last two dims packed.
    s : torch.Tensor
        ``[total_states, num_heads]`` fp32 base-2 LSE.
    indptr : torch.Tensor
        ``[seq_len + 1]`` int32/int64, nondecreasing, from 0 to ``total_states``. A CPU ``indptr`` is
        checked here; a device ``indptr`` is not read on the host (that would synchronize), but the
        kernel never reads outside ``v`` whatever its values.
    backend : str, optional
        ``"triton"`` or ``"torch"``; ``None``/``"auto"`` selects.

    Returns
    -------
    (v, s) : ``[seq_len, num_heads, head_dim]`` in ``v.dtype`` and fp32 ``[seq_len, num_heads]``; an
    empty segment gives ``v = 0``, ``s = -inf``.

    Examples
    --------
    >>> import torch, aiter_ext
    >>> from aiter_ext.ops.merge_state.reference import variable_length_merge_states_ref
    >>> v, s = torch.randn(7, 2, 64, dtype=torch.float16), torch.randn(7, 2)
    >>> indptr = torch.tensor([0, 3, 3, 7], dtype=torch.int32)
    >>> out, lse = aiter_ext.variable_length_merge_states(v, s, indptr)
    >>> ref, ref_lse = variable_length_merge_states_ref(v, s, indptr)
    >>> torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-3); torch.testing.assert_close(lse, ref_lse)
    """
    _check_state("v", v, "s", s)
    check_tensor("indptr", indptr, ndim=1, dtypes=(torch.int32, torch.int64))
    if indptr.shape[0] < 1:
        raise ValueError("indptr must have seq_len + 1 >= 1 entries, got an empty tensor")
    check_same_device([("v", v), ("s", s), ("indptr", indptr)])
    if indptr.device.type == "cpu":
        check_indptr_values("indptr", indptr, v.shape[0], "the number of states v.shape[0]")
    n, (h, d) = indptr.shape[0] - 1, v.shape[1:]
    v_out = torch.empty((n, h, d), dtype=v.dtype, device=v.device)
    s_out = torch.empty((n, h), dtype=torch.float32, device=v.device)
    _call(_merge_many_out, v, s, indptr, v_out, s_out, backend)
    return v_out, s_out
