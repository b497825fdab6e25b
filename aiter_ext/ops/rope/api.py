"""Rotary position embedding: FlashInfer's ``apply_rope`` family (``apply_rope``, ``apply_rope_pos_ids``,
``apply_llama31_rope``, ``apply_llama31_rope_pos_ids``, each also ``_inplace``) and
``apply_rope_with_cos_sin_cache`` (vLLM/SGLang layout, also ``_inplace``).

Layering (as in ``merge_state``): the public functions validate (metadata only: no device reads, so
calls stay graph-capturable) and allocate; ``_rope_out``/``_rope_inplace`` dispatch to a backend and
are also torch custom ops declaring what they write, which ``torch.compile`` traces through.

Semantics: token ``j`` of segment ``b`` sits at ``offsets[b] + j - indptr[b]`` (or ``pos_ids[t]``); pair
``i`` of the first ``rotary_dim`` dims has frequency ``theta^(-2i/rotary_dim)``; plain RoPE divides it by
``rope_scale``; Llama 3.1 divides only low frequencies, interpolating a band between; later dims pass
through. fp32 maths, fp16/bf16 storage.
"""

from __future__ import annotations

from typing import Optional

import torch

from aiter_ext.core.checks import (
    HALF_DTYPES,
    check_indptr_values,
    check_same_device,
    check_same_dtype,
    check_tensor,
    dtype_name,
)
from aiter_ext.core.custom_ops import mutating_ops
from aiter_ext.core.plans import CallPlans

from .backends import ROPE, RopeArgs

#: Call plans (core/plans.py) of the q/k forms: eager calls replayed from a recorded one of the same kind.
PLANS = CallPlans("rope")

INDEX_DTYPES = (torch.int32, torch.int64)
_OPTIONAL = Optional[torch.Tensor]


# --------------------------------------------------------------------------------------------------
# Dispatch (the custom ops' bodies).


def _dispatch(q, k, q_out, k_out, args: RopeArgs, backend: Optional[str]) -> None:
    call = {"num_tokens": q.shape[0], "num_heads": q.shape[1] + k.shape[1], "head_dim": q.shape[2],
            "dtype": dtype_name(q.dtype), "device": q.device.type}
    choice = ROPE.select(call, backend)
    choice.impl.fn(choice.config, q, k, q_out, k_out, args)


def _args(pos_ids, indptr, offsets, cos_sin_cache, rotary_dim, interleave, rope_scale, rope_theta, llama31,
          low_freq_factor, high_freq_factor, old_context_len) -> RopeArgs:
    return RopeArgs(rotary_dim, interleave, pos_ids, indptr, offsets, cos_sin_cache, rope_scale, rope_theta,
                    (low_freq_factor, high_freq_factor, old_context_len) if llama31 else None)


def _rope_out(q: torch.Tensor, k: torch.Tensor, q_out: torch.Tensor, k_out: torch.Tensor, pos_ids: _OPTIONAL,
              indptr: _OPTIONAL, offsets: _OPTIONAL, cos_sin_cache: _OPTIONAL, rotary_dim: int, interleave: bool,
              rope_scale: float, rope_theta: float, llama31: bool, low_freq_factor: float,
              high_freq_factor: float, old_context_len: float, backend: Optional[str]) -> None:
    _dispatch(q, k, q_out, k_out, _args(pos_ids, indptr, offsets, cos_sin_cache, rotary_dim, interleave, rope_scale,
                                        rope_theta, llama31, low_freq_factor, high_freq_factor, old_context_len),
              backend)


def _rope_inplace(q: torch.Tensor, k: torch.Tensor, pos_ids: _OPTIONAL, indptr: _OPTIONAL, offsets: _OPTIONAL,
                  cos_sin_cache: _OPTIONAL, rotary_dim: int, interleave: bool, rope_scale: float,
                  rope_theta: float, llama31: bool, low_freq_factor: float, high_freq_factor: float,
                  old_context_len: float, backend: Optional[str]) -> None:
    _dispatch(q, k, q, k, _args(pos_ids, indptr, offsets, cos_sin_cache, rotary_dim, interleave, rope_scale,
                                rope_theta, llama31, low_freq_factor, high_freq_factor, old_context_len), backend)


# As torch custom ops, so torch.compile(fullgraph=True) traces through them; they only write into
# their mutated arguments, so the fake implementations do nothing.
_call = mutating_ops({
    _rope_out: ("rope_out", ("q_out", "k_out")),
    _rope_inplace: ("rope_inplace", ("q", "k")),
})


# --------------------------------------------------------------------------------------------------
# Validation: metadata only, each error naming the argument.


def _check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension (got strides {tuple(t.stride())}); "
                         "the token and head strides are free")


def _check_qk(q, k, q_name: str = "q", k_name: str = "k", ndim: int = 3) -> None:
    check_tensor(q_name, q, ndim=ndim, dtypes=HALF_DTYPES)
    check_tensor(k_name, k, ndim=ndim, dtypes=HALF_DTYPES)
    check_same_dtype([(q_name, q), (k_name, k)])
    check_same_device([(q_name, q), (k_name, k)])
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"{k_name} must have as many tokens as {q_name}: {q_name}.shape[0] = {q.shape[0]}, "
                         f"{k_name}.shape[0] = {k.shape[0]}")
    if ndim == 3 and k.shape[2] != q.shape[2]:
        raise ValueError(f"{k_name} must have the head_dim of {q_name}: {q_name}.shape[2] = {q.shape[2]}, "
                         f"{k_name}.shape[2] = {k.shape[2]}")
    _check_last_dim_contiguous(q_name, q)
    _check_last_dim_contiguous(k_name, k)


def _rotary_dim(rotary_dim, head_dim: int) -> int:
    if rotary_dim is None:
        rotary_dim = head_dim
    if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, int):
        raise TypeError(f"rotary_dim must be an int or None, got {type(rotary_dim).__name__}")
    if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_dim:
        raise ValueError(f"rotary_dim must be even and in (0, head_dim = {head_dim}], got {rotary_dim}")
    return rotary_dim


def _check_positions(name: str, pos, q_name: str, q) -> None:
    check_tensor(name, pos, ndim=1, dtypes=INDEX_DTYPES)
    if pos.shape[0] != q.shape[0]:
        raise ValueError(f"{name} must have one entry per token: {q_name}.shape[0] = {q.shape[0]}, "
                         f"got {pos.shape[0]}")
    check_same_device([(q_name, q), (name, pos)])


def _check_segments(indptr, offsets, q) -> None:
    check_tensor("indptr", indptr, ndim=1, dtypes=INDEX_DTYPES)
    check_tensor("offsets", offsets, ndim=1, dtypes=INDEX_DTYPES)
    if indptr.shape[0] < 1 or (q.shape[0] > 0 and indptr.shape[0] < 2):
        raise ValueError(f"indptr must have batch_size + 1 >= 2 entries for {q.shape[0]} tokens, "
                         f"got {indptr.shape[0]}")
    if offsets.shape[0] != indptr.shape[0] - 1:
        raise ValueError(f"offsets must have batch_size = len(indptr) - 1 = {indptr.shape[0] - 1} entries, "
                         f"got {offsets.shape[0]}")
    check_same_device([("q", q), ("indptr", indptr), ("offsets", offsets)])
    # A CPU indptr is free to read here (not while torch.compile traces); a device one is never read.
    if indptr.device.type == "cpu" and not torch.compiler.is_compiling():
        check_indptr_values("indptr", indptr, q.shape[0], "the number of tokens q.shape[0]")


def _check_frequencies(rope_scale, rope_theta) -> None:
    if not rope_scale > 0:
        raise ValueError(f"rope_scale must be positive, got {rope_scale}")
    if not rope_theta > 0:
        raise ValueError(f"rope_theta must be positive, got {rope_theta}")


def _check_llama31(low_freq_factor, high_freq_factor, old_context_len) -> None:
    if low_freq_factor == high_freq_factor:
        raise ValueError(f"low_freq_factor and high_freq_factor must differ (both are {low_freq_factor}): "
                         "the smooth band divides by their difference")
    if not old_context_len > 0:
        raise ValueError(f"old_context_len must be positive, got {old_context_len}")


def _prepare(q, k, rotary_dim, rope_scale, rope_theta, pos_ids=None, indptr=None, offsets=None, llama31=None):
    """Validate a q/k call; returns the rotary dim."""
    _check_qk(q, k)
    rotary_dim = _rotary_dim(rotary_dim, q.shape[2])
    if pos_ids is not None:
        _check_positions("pos_ids", pos_ids, "q", q)
    else:
        _check_segments(indptr, offsets, q)
    _check_frequencies(rope_scale, rope_theta)
    if llama31 is not None:
        _check_llama31(*llama31)
    return rotary_dim


def _run(q, k, inplace, pos_ids, indptr, offsets, cache, rotary_dim, interleave, rope_scale, rope_theta, llama31,
         backend, key=None):
    """Dispatch a validated call (recorded for its call plan under ``key``, where one is given)."""
    lf, hf, ctx = llama31 if llama31 is not None else (0.0, 0.0, 0.0)
    tail = (pos_ids, indptr, offsets, cache, rotary_dim, bool(interleave), float(rope_scale), float(rope_theta),
            llama31 is not None, float(lf), float(hf), float(ctx), backend)
    if inplace:
        PLANS.recorded(key, (q, k, pos_ids, indptr, offsets, None, None), _call, _rope_inplace, q, k, *tail)
        return None
    q_out, k_out = _new_outputs(q, k)
    PLANS.recorded(key, (q, k, pos_ids, indptr, offsets, q_out, k_out), _call, _rope_out, q, k, q_out, k_out, *tail)
    return q_out, k_out


def _new_outputs(q, k):
    """Contiguous outputs of q's and k's shapes and dtype (``empty_like``: about 1 us a call less than
    ``torch.empty(shape, dtype=, device=)``)."""
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format))


def _rope(q, k, inplace, pos_ids, indptr, offsets, rotary_dim, interleave, rope_scale, rope_theta, llama31, backend):
    """One q/k call of the public forms (positions from ``pos_ids``, or from ``indptr`` and ``offsets``): replayed
    from its call plan, or validated and dispatched. The out-of-place forms return ``(q_out, k_out)``."""
    low, high, context = llama31 if llama31 is not None else (None, None, None)
    key, plan = PLANS.find(q, k, inplace, pos_ids, indptr, offsets, rotary_dim, interleave, rope_scale, rope_theta,
                           low, high, context, backend)
    if plan:
        if inplace:
            plan(q, k, pos_ids, indptr, offsets, None, None)
            return None
        q_out, k_out = _new_outputs(q, k)
        plan(q, k, pos_ids, indptr, offsets, q_out, k_out)
        return q_out, k_out
    rotary_dim = _prepare(q, k, rotary_dim, rope_scale, rope_theta, pos_ids=pos_ids, indptr=indptr, offsets=offsets,
                          llama31=llama31)
    return _run(q, k, inplace, pos_ids, indptr, offsets, None, rotary_dim, interleave, rope_scale, rope_theta, llama31,
                backend, key)


# --------------------------------------------------------------------------------------------------
# Public API: indptr/offsets and pos_ids forms, plain and Llama 3.1.


def apply_rope(q: torch.Tensor, k: torch.Tensor, indptr: torch.Tensor, offsets: torch.Tensor,
               rotary_dim: Optional[int] = None, interleave: bool = False, rope_scale: float = 1,
               rope_theta: float = 1e4, *, backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Apply rotary embedding to ragged (segment-packed) queries and keys; cos/sin computed in the kernel.

    Token ``j`` of segment ``b`` (rows ``indptr[b]:indptr[b+1]``) sits at position
    ``offsets[b] + j - indptr[b]``. Pair ``i`` of the first ``rotary_dim`` dims rotates by
    ``pos * theta^(-2i/rotary_dim) / rope_scale`` (``rope_scale`` *divides* the frequency); the other dims
    are copied unchanged. fp32 maths.

    Parameters
    ----------
    q : torch.Tensor
        ``[nnz, num_q_heads, head_dim]`` fp16/bf16. Only the last dim must be contiguous: strided views
        of a packed qkv buffer are fine.
    k : torch.Tensor
        ``[nnz, num_k_heads, head_dim]``, same dtype and head_dim (the head count may differ).
    indptr : torch.Tensor
        ``[batch_size + 1]`` int32/int64, from 0 to ``nnz``, nondecreasing. Checked here when on the CPU;
        a device ``indptr`` is not read on the host (the segment of each token is found on the device).
    offsets : torch.Tensor
        ``[batch_size]`` int32/int64, the position of each segment's first token.
    rotary_dim : int, optional
        Even, at most head_dim; default head_dim.
    interleave : bool
        ``True``: GPT-J pairs ``(x[2i], x[2i+1])``; ``False`` (default): NeoX halves ``(x[i], x[i + r/2])``.
    rope_scale : float
        Divides every frequency, default 1.
    rope_theta : float
        Base of the frequencies, default 1e4.
    backend : str, optional
        ``"triton"`` or ``"torch"`` (the fp32 reference) to force one; ``None`` selects.

    Returns
    -------
    q_rope, k_rope : torch.Tensor
        New contiguous tensors, shapes and dtype of ``q`` and ``k``.

    Examples
    --------
    >>> import torch
    >>> from aiter_ext.ops import rope
    >>> from aiter_ext.ops.rope.reference import apply_rope_ref
    >>> q, k = torch.randn(7, 4, 64, dtype=torch.float16), torch.randn(7, 2, 64, dtype=torch.float16)
    >>> indptr, offsets = torch.tensor([0, 3, 7], dtype=torch.int32), torch.tensor([5, 0], dtype=torch.int32)
    >>> q_rope, k_rope = rope.apply_rope(q, k, indptr, offsets)
    >>> q_ref, k_ref = apply_rope_ref(q, k, indptr, offsets)
    >>> torch.testing.assert_close(q_rope, q_ref, atol=1e-3, rtol=1e-3)
    >>> torch.testing.assert_close(k_rope, k_ref, atol=1e-3, rtol=1e-3)
    """
    return _rope(q, k, False, None, indptr, offsets, rotary_dim, interleave, rope_scale, rope_theta,
                 None, backend)


def apply_rope_inplace(q: torch.Tensor, k: torch.Tensor, indptr: torch.Tensor, offsets: torch.Tensor,
                       rotary_dim: Optional[int] = None, interleave: bool = False, rope_scale: float = 1,
                       rope_theta: float = 1e4, *, backend: Optional[str] = None) -> None:
    r""":func:`apply_rope`, writing ``q`` and ``k`` in place (dims past ``rotary_dim`` are not touched).

    Note
    ----
    Mutates ``q`` and ``k`` (strided views are written through; only the last dim must be contiguous).
    Nothing is written when validation fails.

    Examples
    --------
    >>> import torch
    >>> from aiter_ext.ops import rope
    >>> from aiter_ext.ops.rope.reference import apply_rope_ref
    >>> qkv = torch.randn(5, (4 + 2 * 2) * 64, dtype=torch.float16)
    >>> q, k = qkv[:, :256].unflatten(1, (4, 64)), qkv[:, 256:384].unflatten(1, (2, 64))
    >>> indptr, offsets = torch.tensor([0, 5], dtype=torch.int32), torch.tensor([9], dtype=torch.int32)
    >>> q_ref, k_ref = apply_rope_ref(q, k, indptr, offsets, rotary_dim=32, interleave=True)
    >>> rope.apply_rope_inplace(q, k, indptr, offsets, rotary_dim=32, interleave=True)
    >>> torch.testing.assert_close(q, q_ref, atol=1e-3, rtol=1e-3); torch.testing.assert_close(k, k_ref, atol=1e-3, rtol=1e-3)
    """
    _rope(q, k, True, None, indptr, offsets, rotary_dim, interleave, rope_scale, rope_theta,
          None, backend)


def apply_rope_pos_ids(q: torch.Tensor, k: torch.Tensor, pos_ids: torch.Tensor, rotary_dim: Optional[int] = None,
                       interleave: bool = False, rope_scale: float = 1, rope_theta: float = 1e4,
                       *, backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    r""":func:`apply_rope` with one position per token: ``pos_ids [nnz]`` int32/int64.

    Examples
    --------
    >>> import torch
    >>> from aiter_ext.ops import rope
    >>> from aiter_ext.ops.rope.reference import apply_rope_pos_ids_ref
    >>> q, k = torch.randn(6, 2, 128, dtype=torch.bfloat16), torch.randn(6, 1, 128, dtype=torch.bfloat16)
    >>> pos = torch.tensor([0, 1, 2, 40, 41, 7])
    >>> q_rope, k_rope = rope.apply_rope_pos_ids(q, k, pos, rope_scale=2.0)
    >>> q_ref, k_ref = apply_rope_pos_ids_ref(q, k, pos, rope_scale=2.0)
    >>> torch.testing.assert_close(q_rope, q_ref, atol=1e-2, rtol=1e-2)
    """
    return _rope(q, k, False, pos_ids, None, None, rotary_dim, interleave, rope_scale, rope_theta,
                 None, backend)


def apply_rope_pos_ids_inplace(q: torch.Tensor, k: torch.Tensor, pos_ids: torch.Tensor,
                               rotary_dim: Optional[int] = None, interleave: bool = False, rope_scale: float = 1,
                               rope_theta: float = 1e4, *, backend: Optional[str] = None) -> None:
    r""":func:`apply_rope_pos_ids`, writing ``q`` and ``k`` in place.

    Note
    ----
    Mutates ``q`` and ``k``; nothing is written when validation fails.

    Examples
    --------
    >>> import torch
    >>> from aiter_ext.ops import rope
    >>> from aiter_ext.ops.rope.reference import apply_rope_pos_ids_ref
    >>> q, k = torch.randn(3, 2, 64, dtype=torch.float16), torch.randn(3, 2, 64, dtype=torch.float16)
    >>> pos = torch.tensor([3, 1, 4], dtype=torch.int32)
    >>> q_ref, k_ref = apply_rope_pos_ids_ref(q, k, pos)
    >>> rope.apply_rope_pos_ids_inplace(q, k, pos)
    >>> torch.testing.assert_close(k, k_ref, atol=1e-3, rtol=1e-3)
    """
    _rope(q, k, True, pos_ids, None, None, rotary_dim, interleave, rope_scale, rope_theta,
          None, backend)


def apply_llama31_rope(q: torch.Tensor, k: torch.Tensor, indptr: torch.Tensor, offsets: torch.Tensor,
                       rotary_dim: Optional[int] = None, interleave: bool = False, rope_scale: float = 8,
                       rope_theta: float = 5e5, low_freq_factor: float = 1, high_freq_factor: float = 4,
                       old_context_len: int = 8192, *, backend: Optional[str] = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    r""":func:`apply_rope` with Llama 3.1 frequency scaling.

    Per pair, with ``freq = theta^(-2i/rotary_dim)``:
    ``smooth = clamp(freq * old_context_len / (2 pi (high - low)) - low / (high - low), 0, 1)`` and
    ``freq' = (1 - smooth) * freq / rope_scale + smooth * freq``: high frequencies unchanged, low ones
    divided by ``rope_scale``, the band between interpolated.

    Parameters
    ----------
    q, k, indptr, offsets, rotary_dim, interleave, backend
        As in :func:`apply_rope`.
    rope_scale : float
        Llama 3.1's ``factor``, default 8.
    rope_theta : float
        Default 5e5.
    low_freq_factor, high_freq_factor : float
        Defaults 1 and 4; they must differ.
    old_context_len : int
        The original context length, default 8192.

    Returns
    -------
    q_rope, k_rope : torch.Tensor
        New contiguous tensors, shapes and dtype of ``q`` and ``k``.

    Examples
    --------
    >>> import torch
    >>> from aiter_ext.ops import rope
    >>> from aiter_ext.ops.rope.reference import apply_llama31_rope_ref
    >>> q, k = torch.randn(9, 4, 128, dtype=torch.float16), torch.randn(9, 2, 128, dtype=torch.float16)
    >>> indptr, offsets = torch.tensor([0, 2, 9]), torch.tensor([100, 300])
    >>> q_rope, k_rope = rope.apply_llama31_rope(q, k, indptr, offsets)
    >>> q_ref, k_ref = apply_llama31_rope_ref(q, k, indptr, offsets)
    >>> torch.testing.assert_close(q_rope, q_ref, atol=1e-3, rtol=1e-3)
    """
    llama31 = (low_freq_factor, high_freq_factor, old_context_len)
    return _rope(q, k, False, None, indptr, offsets, rotary_dim, interleave, rope_scale, rope_theta,
                 llama31, backend)


def apply_llama31_rope_inplace(q: torch.Tensor, k: torch.Tensor, indptr: torch.Tensor, offsets: torch.Tensor,
                               rotary_dim: Optional[int] = None, interleave: bool = False, rope_scale: float = 8,
                               rope_theta: float = 5e5, low_freq_factor: float = 1, high_freq_factor: float = 4,
                               old_context_len: int = 8192, *, backend: Optional[str] = None) -> None:
    r""":func:`apply_llama31_rope`, writing ``q`` and ``k`` in place.

    Note
    ----
    Mutates ``q`` and ``k``; nothing is written when validation fails.

    Examples
    --------
    >>> import torch
    >>> from aiter_ext.ops import rope
    >>> from aiter_ext.ops.rope.reference import apply_llama31_rope_ref
    >>> q, k = torch.randn(4, 2, 64, dtype=torch.float16), torch.randn(4, 2, 64, dtype=torch.float16)
    >>> indptr, offsets = torch.tensor([0, 4], dtype=torch.int32), torch.tensor([200], dtype=torch.int32)
    >>> q_ref, k_ref = apply_llama31_rope_ref(q, k, indptr, offsets, interleave=True)
    >>> rope.apply_llama31_rope_inplace(q, k, indptr, offsets, interleave=True)
    >>> torch.testing.assert_close(q, q_ref, atol=1e-3, rtol=1e-3)
    """
    llama31 = (low_freq_factor, high_freq_factor, old_context_len)
    _rope(q, k, True, None, indptr, offsets, rotary_dim, interleave, rope_scale, rope_theta,
          llama31, backend)


def apply_llama31_rope_pos_ids(q: torch.Tensor, k: torch.Tensor, pos_ids: torch.Tensor,
                               rotary_dim: Optional[int] = None, interleave: bool = False, rope_scale: float = 8,
                               rope_theta: float = 5e5, low_freq_factor: float = 1, high_freq_factor: float = 4,
                               old_context_len: int = 8192, *, backend: Optional[str] = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    r""":func:`apply_llama31_rope` with one position per token: ``pos_ids [nnz]`` int32/int64.

    Examples
    --------
    >>> import torch
    >>> from aiter_ext.ops import rope
    >>> from aiter_ext.ops.rope.reference import apply_llama31_rope_pos_ids_ref
    >>> q, k = torch.randn(5, 2, 64, dtype=torch.float16), torch.randn(5, 1, 64, dtype=torch.float16)
    >>> pos = torch.tensor([0, 900, 2, 3, 500])
    >>> q_rope, k_rope = rope.apply_llama31_rope_pos_ids(q, k, pos, rotary_dim=32)
    >>> q_ref, k_ref = apply_llama31_rope_pos_ids_ref(q, k, pos, rotary_dim=32)
    >>> torch.testing.assert_close(k_rope, k_ref, atol=1e-3, rtol=1e-3)
    """
    llama31 = (low_freq_factor, high_freq_factor, old_context_len)
    return _rope(q, k, False, pos_ids, None, None, rotary_dim, interleave, rope_scale, rope_theta,
                 llama31, backend)


def apply_llama31_rope_pos_ids_inplace(q: torch.Tensor, k: torch.Tensor, pos_ids: torch.Tensor,
                                       rotary_dim: Optional[int] = None, interleave: bool = False,
                                       rope_scale: float = 8, rope_theta: float = 5e5, low_freq_factor: float = 1,
                                       high_freq_factor: float = 4, old_context_len: int = 8192,
                                       *, backend: Optional[str] = None) -> None:
    r""":func:`apply_llama31_rope_pos_ids`, writing ``q`` and ``k`` in place.

    Note
    ----
    Mutates ``q`` and ``k``; nothing is written when validation fails.

    Examples
    --------
    >>> import torch
    >>> from aiter_ext.ops import rope
    >>> from aiter_ext.ops.rope.reference import apply_llama31_rope_pos_ids_ref
    >>> q, k = torch.randn(2, 2, 64, dtype=torch.float16), torch.randn(2, 2, 64, dtype=torch.float16)
    >>> pos = torch.tensor([17, 819])
    >>> q_ref, k_ref = apply_llama31_rope_pos_ids_ref(q, k, pos)
    >>> rope.apply_llama31_rope_pos_ids_inplace(q, k, pos)
    >>> torch.testing.assert_close(q, q_ref, atol=1e-3, rtol=1e-3)
    """
    llama31 = (low_freq_factor, high_freq_factor, old_context_len)
    _rope(q, k, True, pos_ids, None, None, rotary_dim, interleave, rope_scale, rope_theta,
          llama31, backend)


# --------------------------------------------------------------------------------------------------
# Public API: vLLM/SGLang layout with a precomputed cos/sin cache.


def _prepare_cache(positions, query, key, head_size, cos_sin_cache):
    """Validate a cos/sin-cache call; returns ``(q, k)`` as ``[nnz, H, head_size]`` views."""
    _check_qk(query, key, "query", "key", ndim=2)
    if isinstance(head_size, bool) or not isinstance(head_size, int) or head_size <= 0:
        raise ValueError(f"head_size must be a positive int, got {head_size!r}")
    for name, t in (("query", query), ("key", key)):
        if t.shape[1] % head_size:
            raise ValueError(f"head_size ({head_size}) must divide {name}'s width {name}.shape[1] = {t.shape[1]}")
    _check_positions("positions", positions, "query", query)
    check_tensor("cos_sin_cache", cos_sin_cache, ndim=2, dtypes=(torch.float32,))
    rotary_dim = cos_sin_cache.shape[1]
    if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_size:
        raise ValueError(f"cos_sin_cache must have an even rotary_dim in (0, head_size = {head_size}] columns, "
                         f"got shape {tuple(cos_sin_cache.shape)}")
    if cos_sin_cache.shape[0] < 1:
        raise ValueError("cos_sin_cache must have at least one row (position)")
    _check_last_dim_contiguous("cos_sin_cache", cos_sin_cache)
    check_same_device([("query", query), ("cos_sin_cache", cos_sin_cache)])
    return query.unflatten(1, (-1, head_size)), key.unflatten(1, (-1, head_size)), rotary_dim


def apply_rope_with_cos_sin_cache(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, head_size: int,
                                  cos_sin_cache: torch.Tensor, is_neox: bool = True,
                                  *, backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Apply rotary embedding with precomputed cos/sin (the vLLM/SGLang layout).

    Parameters
    ----------
    positions : torch.Tensor
        ``[nnz]`` int32/int64. A position past the cache's last row reads the last row (FlashInfer
        reads out of bounds).
    query : torch.Tensor
        ``[nnz, num_q_heads * head_size]`` fp16/bf16; last dim contiguous, token stride free.
    key : torch.Tensor
        ``[nnz, num_k_heads * head_size]``, same dtype.
    head_size : int
        Must divide both widths.
    cos_sin_cache : torch.Tensor
        ``[max_position, rotary_dim]`` **fp32**, rows ``[cos(r/2) | sin(r/2)]``; ``rotary_dim`` is its
        width (even, at most ``head_size``). A non-fp32 cache raises ``TypeError`` (FlashInfer: ``ValueError``).
    is_neox : bool
        ``True`` (default): NeoX halves, i.e. ``interleave=False``; ``False``: GPT-J pairs.
    backend : str, optional
        ``"triton"`` or ``"torch"``; ``None`` selects.

    Returns
    -------
    query_out, key_out : torch.Tensor
        New contiguous tensors, shapes ``[nnz, H * head_size]`` and dtype of ``query``/``key``.

    Examples
    --------
    >>> import torch
    >>> from aiter_ext.ops import rope
    >>> from aiter_ext.ops.rope.reference import apply_rope_with_cos_sin_cache_ref
    >>> freqs = torch.outer(torch.arange(32.0), 1e4 ** (-torch.arange(0, 64, 2) / 64))
    >>> cache = torch.cat([freqs.cos(), freqs.sin()], dim=-1)
    >>> query, key = torch.randn(5, 2 * 80, dtype=torch.bfloat16), torch.randn(5, 80, dtype=torch.bfloat16)
    >>> pos = torch.tensor([0, 1, 2, 30, 31])
    >>> q_out, k_out = rope.apply_rope_with_cos_sin_cache(pos, query, key, 80, cache)
    >>> q_ref, k_ref = apply_rope_with_cos_sin_cache_ref(pos, query, key, 80, cache)
    >>> torch.testing.assert_close(q_out, q_ref, atol=1e-2, rtol=1e-2)
    """
    q, k, rotary_dim = _prepare_cache(positions, query, key, head_size, cos_sin_cache)
    q_out, k_out = _run(q, k, False, positions, None, None, cos_sin_cache, rotary_dim, not is_neox, 1.0, 1e4, None,
                        backend)
    return q_out.flatten(1), k_out.flatten(1)


def apply_rope_with_cos_sin_cache_inplace(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                                          head_size: int, cos_sin_cache: torch.Tensor, is_neox: bool = True,
                                          *, backend: Optional[str] = None) -> None:
    r""":func:`apply_rope_with_cos_sin_cache`, writing ``query`` and ``key`` in place.

    Note
    ----
    Mutates ``query`` and ``key``; nothing is written when validation fails.

    Examples
    --------
    >>> import torch
    >>> from aiter_ext.ops import rope
    >>> from aiter_ext.ops.rope.reference import apply_rope_with_cos_sin_cache_ref
    >>> freqs = torch.outer(torch.arange(16.0), 1e4 ** (-torch.arange(0, 32, 2) / 32))
    >>> cache = torch.cat([freqs.cos(), freqs.sin()], dim=-1)
    >>> query, key = torch.randn(3, 4 * 64, dtype=torch.float16), torch.randn(3, 64, dtype=torch.float16)
    >>> pos = torch.tensor([5, 0, 15])
    >>> q_ref, k_ref = apply_rope_with_cos_sin_cache_ref(pos, query, key, 64, cache, is_neox=False)
    >>> rope.apply_rope_with_cos_sin_cache_inplace(pos, query, key, 64, cache, is_neox=False)
    >>> torch.testing.assert_close(query, q_ref, atol=1e-3, rtol=1e-3)
    """
    q, k, rotary_dim = _prepare_cache(positions, query, key, head_size, cos_sin_cache)
    _run(q, k, True, positions, None, None, cos_sin_cache, rotary_dim, not is_neox, 1.0, 1e4, None, backend)
