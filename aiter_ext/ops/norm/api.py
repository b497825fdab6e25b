"""The RMSNorm family: FlashInfer's ``rmsnorm``, ``fused_add_rmsnorm``, ``gemma_rmsnorm`` and
``gemma_fused_add_rmsnorm``.

Layering (as in ``merge_state``): the public functions validate and allocate; two functions that write
only into given tensors dispatch to a backend; those are also registered as torch custom ops with
``mutates_args``, which ``torch.compile`` traces through (eager calls skip that layer).
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch

from aiter_ext.core.checks import (
    check_inner_contiguous, check_same_device, check_same_dtype, check_shape, check_tensor, dtype_name,
)
from aiter_ext.core.custom_ops import mutating_ops
from aiter_ext.core.plans import CallPlans

from .backends import RMSNORM

#: Call plans (core/plans.py): eager calls replayed from a recorded one of the same kind.
PLANS = CallPlans("rmsnorm")

#: FlashInfer takes fp16 and bf16; fp32 costs nothing more here, so it is accepted too.
NORM_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# --------------------------------------------------------------------------------------------------
# Dispatch (the custom ops' bodies).


def _dispatch(input, residual, weight, out, eps, gemma, backend) -> None:
    hidden = input.shape[-1]
    call = {"num_rows": input.numel() // hidden, "hidden": hidden, "dtype": dtype_name(input.dtype),
            "device": input.device.type, "fused_add": residual is not None, "gemma": gemma}
    choice = RMSNORM.select(call, backend)
    choice.impl.fn(choice.config, input, residual, weight, out, eps, gemma)


def _rmsnorm_out(input: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, eps: float, gemma: bool,
                 backend: Optional[str]) -> None:
    _dispatch(input, None, weight, out, eps, gemma, backend)


def _fused_add_rmsnorm(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                       gemma: bool, backend: Optional[str]) -> None:
    _dispatch(input, residual, weight, input, eps, gemma, backend)


# Registered as torch custom ops so that torch.compile(fullgraph=True) traces through them. They only
# write into their mutated arguments, so the fake implementations do nothing.
_call = mutating_ops({
    _rmsnorm_out: ("rmsnorm_out", ("out",)),
    _fused_add_rmsnorm: ("fused_add_rmsnorm", ("input", "residual")),
})


# --------------------------------------------------------------------------------------------------
# Validation: every check reads metadata only, and all of them run before anything is written.


def _check_rows(name: str, t, like: Optional[torch.Tensor] = None) -> None:
    """``t`` is ``[B, H]`` or ``[B, heads, D]`` fp16/bf16/fp32 with a contiguous, nonempty last dim;
    with ``like`` (the input), also its shape, dtype and device."""
    check_tensor(name, t, dtypes=NORM_DTYPES)
    if like is None:
        if t.dim() not in (2, 3):
            raise ValueError(f"{name} must have 2 dimensions [batch_size, hidden_size] or 3 "
                             f"[batch_size, num_heads, head_dim], got shape {tuple(t.shape)}")
        if t.shape[-1] == 0:
            raise ValueError(f"{name} has an empty hidden size (last dimension 0): nothing to normalise over")
    else:
        check_shape(name, t, like.shape, "the shape of input")
        check_same_dtype([("input", like), (name, t)])
        check_same_device([("input", like), (name, t)])
    check_inner_contiguous(name, t, 1)


def _check_weight(input: torch.Tensor, weight) -> None:
    check_tensor("weight", weight, ndim=1)
    check_shape("weight", weight, input.shape[-1:], "[hidden_size], the last dimension of input")
    # FlashInfer reads the weight as the input's element type; a weight of another dtype is refused
    # rather than converted on every call.
    check_same_dtype([("input", input), ("weight", weight)])
    check_same_device([("input", input), ("weight", weight)])
    check_inner_contiguous("weight", weight, 1)


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    return float(eps)


def _validate(input, weight, eps, residual=None, out=None) -> float:
    _check_rows("input", input)
    _check_weight(input, weight)
    if residual is not None or out is not None:
        _check_rows("residual" if residual is not None else "out", residual if residual is not None else out, input)
    return _check_eps(eps)


# --------------------------------------------------------------------------------------------------
# Public API.


def _norm(input, weight, eps, out, gemma, backend) -> torch.Tensor:
    key, plan = PLANS.find(input, weight, out, eps, gemma, backend)
    if not plan:
        eps = _validate(input, weight, eps, out=out)
    if out is None:
        out = torch.empty_like(input, memory_format=torch.contiguous_format)  # 1 us less than torch.empty(shape, ...)
    if plan:
        plan(input, weight, out)
        return out
    PLANS.recorded(key, (input, weight, out), _call, _rmsnorm_out, input, weight, out, eps, gemma, backend)
    return out


def rmsnorm(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, out: Optional[torch.Tensor] = None,
            enable_pdl: Optional[bool] = None, *, backend: Optional[str] = None) -> torch.Tensor:
    r"""Root mean square normalisation: ``out = input * rsqrt(mean(input^2) + eps) * weight``.

    Computed in fp32 over the last dimension, cast to ``input.dtype`` once at the end.

    Parameters
    ----------
    input : torch.Tensor
        ``[batch_size, hidden_size]``, or ``[batch_size, num_heads, head_dim]`` for QK-norm (every
        (token, head) row is normalised with the same weight), fp16/bf16 (fp32 also accepted, unlike
        FlashInfer). The last dimension must be contiguous; the leading strides are free (e.g. the q or
        k part of a packed qkv buffer).
    weight : torch.Tensor
        ``[hidden_size]`` (``[head_dim]`` for QK-norm), contiguous, of ``input``'s dtype.
    eps : float
        Added to the mean square; default ``1e-6`` (FlashInfer's, not the ``1e-5`` of some models).
    out : torch.Tensor, optional
        Written in place if given: ``input``'s shape and dtype, last dimension contiguous. It may be
        ``input`` itself.
    enable_pdl : bool, optional
        Accepted for FlashInfer compatibility and ignored: AMD GPUs have no programmatic dependent launch.
    backend : str, optional
        ``"triton"`` or ``"torch"`` to force one; ``None``/``"auto"`` selects (DESIGN.md).

    Returns
    -------
    torch.Tensor
        ``out``, or a new contiguous tensor of ``input``'s shape and dtype.

    Note
    ----
    Mutates ``out`` when it is given. Nothing is written when validation fails.

    Examples
    --------
    >>> import torch
    >>> from aiter_ext.ops.norm import rmsnorm
    >>> from aiter_ext.ops.norm.reference import rmsnorm_ref
    >>> x, w = torch.randn(5, 500, dtype=torch.float16), torch.randn(500, dtype=torch.float16)
    >>> torch.testing.assert_close(rmsnorm(x, w), rmsnorm_ref(x, w), atol=1e-3, rtol=1e-3)
    >>> q = torch.randn(3, 12, 64, dtype=torch.float16)[:, :8]  # 8 heads of a wider buffer
    >>> torch.testing.assert_close(rmsnorm(q, w[:64]), rmsnorm_ref(q, w[:64]), atol=1e-3, rtol=1e-3)
    """
    return _norm(input, weight, eps, out, False, backend)


def gemma_rmsnorm(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, out: Optional[torch.Tensor] = None,
                  enable_pdl: Optional[bool] = None, *, backend: Optional[str] = None) -> torch.Tensor:
    r"""Gemma's RMSNorm: ``out = input * rsqrt(mean(input^2) + eps) * (1 + weight)``.

    The ``1 +`` is taken in fp32 (in the weight's 16-bit dtype it would round). Everything else, the
    arguments included, is as in :func:`rmsnorm`; ``enable_pdl`` is accepted and ignored (no PDL on AMD).

    Examples
    --------
    >>> import torch
    >>> from aiter_ext.ops.norm import gemma_rmsnorm
    >>> from aiter_ext.ops.norm.reference import gemma_rmsnorm_ref
    >>> x, w = torch.randn(4, 3584, dtype=torch.bfloat16), torch.randn(3584, dtype=torch.bfloat16)
    >>> torch.testing.assert_close(gemma_rmsnorm(x, w), gemma_rmsnorm_ref(x, w), atol=1e-2, rtol=1e-2)
    """
    return _norm(input, weight, eps, out, True, backend)


def _fused(input, residual, weight, eps, gemma, backend) -> None:
    key, plan = PLANS.find(input, residual, weight, eps, gemma, backend, True)
    if plan:
        plan(input, residual, weight)
        return
    if residual is None:
        raise TypeError("residual must be a torch.Tensor, got NoneType")
    eps = _validate(input, weight, eps, residual=residual)
    PLANS.recorded(key, (input, residual, weight), _call, _fused_add_rmsnorm, input, residual, weight, eps, gemma,
                   backend)


def fused_add_rmsnorm(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                      enable_pdl: Optional[bool] = None, *, backend: Optional[str] = None) -> None:
    r"""Residual add fused with RMSNorm, both results written in place.

    With ``s = input + residual`` in fp32: ``residual <- cast(s)`` and
    ``input <- cast(s * rsqrt(mean(s^2) + eps) * weight)``. The norm is taken of the unrounded fp32
    sum, not of the rounded residual.

    Parameters
    ----------
    input : torch.Tensor
        ``[batch_size, hidden_size]`` (or ``[batch_size, num_heads, head_dim]``), fp16/bf16/fp32, last
        dimension contiguous, leading strides free. Overwritten with the normalised sum.
    residual : torch.Tensor
        Same shape and dtype; last dimension contiguous. Overwritten with the rounded sum.
    weight : torch.Tensor
        ``[hidden_size]``, contiguous, of ``input``'s dtype.
    eps : float
        Default ``1e-6``.
    enable_pdl : bool, optional
        Accepted for FlashInfer compatibility and ignored: AMD GPUs have no programmatic dependent launch.
    backend : str, optional
        ``"triton"`` or ``"torch"``; ``None``/``"auto"`` selects.

    Note
    ----
    Mutates ``input`` and ``residual`` (they must not overlap). Nothing is written when validation fails.

    Examples
    --------
    >>> import torch
    >>> from aiter_ext.ops.norm import fused_add_rmsnorm
    >>> from aiter_ext.ops.norm.reference import fused_add_rmsnorm_ref
    >>> x, r = torch.randn(2, 7, 111, dtype=torch.float16)
    >>> w = torch.randn(111, dtype=torch.float16)
    >>> x_ref, r_ref = fused_add_rmsnorm_ref(x, r, w)
    >>> fused_add_rmsnorm(x, r, w)
    >>> torch.testing.assert_close(x, x_ref, atol=1e-3, rtol=1e-3); torch.testing.assert_close(r, r_ref)
    """
    _fused(input, residual, weight, eps, False, backend)


def gemma_fused_add_rmsnorm(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                            enable_pdl: Optional[bool] = None, *, backend: Optional[str] = None) -> None:
    r"""Gemma form of :func:`fused_add_rmsnorm`: the weight enters as ``(1 + weight)``, the ``1 +`` in fp32.

    Same arguments and in-place writes (``input`` and ``residual``); ``enable_pdl`` is accepted and
    ignored (no PDL on AMD).

    Examples
    --------
    >>> import torch
    >>> from aiter_ext.ops.norm import gemma_fused_add_rmsnorm
    >>> from aiter_ext.ops.norm.reference import gemma_fused_add_rmsnorm_ref
    >>> x, r = torch.randn(2, 3, 1024, dtype=torch.float16)
    >>> w = torch.randn(1024, dtype=torch.float16)
    >>> x_ref, r_ref = gemma_fused_add_rmsnorm_ref(x, r, w)
    >>> gemma_fused_add_rmsnorm(x, r, w)
    >>> torch.testing.assert_close(x, x_ref, atol=1e-3, rtol=1e-3); torch.testing.assert_close(r, r_ref)
    """
    _fused(input, residual, weight, eps, True, backend)
