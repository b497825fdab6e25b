"""Public sampling functions with FlashInfer's signatures (flashinfer.sampling).

The contract they share:
- ``probs`` is ``[B, V]`` fp32.
- The output is ``[B]`` int32. With ``indices`` (``[B']``), output ``i`` samples row ``indices[i]`` and takes the indices' dtype.
- Thresholds are Python numbers or per-row tensors, indexed by the *source* row.

Randomness:
- Explicit ``seed``/``offset`` reproduce the same tokens and leave every generator alone. Each is an int, or an int64 tensor of length 1 or B' on the device.
- Without them, a seed is drawn on the device from ``generator`` (or the device's default generator). That advances the generator and needs no host synchronization, so graph capture works.
- Tokens need not equal FlashInfer's bit for bit.

Rows must sum to 1, as in FlashInfer: the draw is scaled to 1, not to the row's sum. A row with no positive mass
(all zeros, or all NaN: NaN entries are never drawn) gives token 0; with ``return_valid=True`` its ``valid``
entry is False.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from aiter_ext.core.arch import device_info
from aiter_ext.core.env import interpreted
from aiter_ext.core.checks import check_tensor
from aiter_ext.core.launch import cdiv

INDEX_DTYPES = (torch.int32, torch.int64)
Threshold = Union[int, float, torch.Tensor, None]


def _checked_rows(probs: torch.Tensor, indices: Optional[torch.Tensor], name: str = "probs",
                  dtypes=(torch.float32,)) -> int:
    """Check ``[B, V]`` rows (contiguous in V) and ``indices``; the number of output rows."""
    check_tensor(name, probs, ndim=2, dtypes=dtypes)
    if probs.shape[1] == 0:
        raise ValueError(f"{name} must have a vocabulary of at least one token")
    if probs.stride(1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension")
    if indices is None:
        return probs.shape[0]
    check_tensor("indices", indices, ndim=1, dtypes=INDEX_DTYPES)
    if indices.device != probs.device:
        raise ValueError(f"indices is on {indices.device} but {name} is on {probs.device}")
    return indices.shape[0]


def prepare_draw(x: torch.Tensor, name: str, indices, generator, check_nan: bool, seed, offset, dtypes):
    """What every sampler does before its launch: checks, seed/offset, and the (token, valid) outputs.
    Returns ``(rows, seed, offset, seed_per_row, out, valid)``."""
    rows = _checked_rows(x, indices, name, dtypes)
    seed_t, offset_t, per_row = seed_and_offset(generator, seed, offset, rows, x.device)
    if check_nan and bool(torch.isnan(x).any()):  # opt-in, as in FlashInfer: a host sync
        raise ValueError(f"{name} contains NaN")
    out = torch.empty(rows, dtype=indices.dtype if indices is not None else torch.int32, device=x.device)
    valid = torch.empty(rows, dtype=torch.int8, device=x.device)
    return rows, seed_t, offset_t, per_row, out, valid


_ZERO_OFFSETS: dict = {}


def _zero_offset(device: torch.device) -> torch.Tensor:
    key = (device.type, device.index)
    if key not in _ZERO_OFFSETS:
        _ZERO_OFFSETS[key] = torch.zeros(1, dtype=torch.int64, device=device)
    return _ZERO_OFFSETS[key]


def seed_and_offset(generator, seed, offset, rows: int, device: torch.device):
    """Device int64 tensors ``(seed, offset)`` of length 1 or ``rows``, and whether they are per row."""
    if (seed is None) != (offset is None):
        raise ValueError("seed and offset must be given together (or neither)")
    if seed is None:
        # One seed drawn on the device from the generator: graph-capturable, no host sync. The
        # offset is a cached zero (read only), so a call costs one small launch, not two.
        drawn = torch.randint(0, 2**62, (1,), generator=generator, device=device, dtype=torch.int64)
        return drawn, _zero_offset(device), False
    tensors = []
    for name, value in (("seed", seed), ("offset", offset)):
        if isinstance(value, int):
            if value < 0:
                raise ValueError(f"{name} must be non-negative, got {value}")
            tensors.append(torch.full((1,), value, dtype=torch.int64, device=device))
            continue
        check_tensor(name, value, ndim=1, dtypes=(torch.int64,))
        if value.shape[0] not in (1, rows) or value.device != device:
            raise ValueError(f"{name} must be an int or an int64 tensor of length 1 or {rows} on {device}, got "
                             f"shape {tuple(value.shape)} on {value.device}")
        tensors.append(value)
    if tensors[0].shape != tensors[1].shape:
        raise ValueError(f"seed and offset must have the same length, got {tensors[0].shape[0]} and "
                         f"{tensors[1].shape[0]}")
    return tensors[0], tensors[1], tensors[0].shape[0] == rows and rows > 1


def _threshold(name: str, value: Threshold, probs: torch.Tensor, integer: bool):
    """(mode, tensor or None, scalar) for the kernel: absent, one value for all rows, or per source row."""
    from .kernels import NONE, PER_ROW, SCALAR

    if value is None:
        return NONE, None, 0.0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if integer and (int(value) != value or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value}")
        if not integer and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
        return SCALAR, None, float(value)
    dtypes = INDEX_DTYPES if integer else (torch.float32,)
    check_tensor(name, value, ndim=1, dtypes=dtypes)
    if value.shape[0] != probs.shape[0] or value.device != probs.device:
        raise ValueError(f"a {name} tensor must hold one value per row of probs ({probs.shape[0]}) on {probs.device}, "
                         f"got shape {tuple(value.shape)} on {value.device}")
    return PER_ROW, value, 0.0


def _sample(probs, indices, top_k, top_p, min_p, generator, check_nan, seed, offset, return_valid, config=None):
    """``config`` overrides the launch, for sweeps: chunked.chunked_launch's keys (min-p), or the row
    kernel's (ROWS, BLOCK, num_warps) with ``"chunked": False``."""
    from .chunked import draw_by_chunks, chunked_launch
    from .chunked_kernels import MASS_ABOVE_MIN_P
    from .kernels import NONE, filtered_sampling_kernel, launch_config

    _checked_rows(probs, indices)
    k_mode, k_t, k_v = _threshold("top_k", top_k, probs, integer=True)
    p_mode, p_t, p_v = _threshold("top_p", top_p, probs, integer=False)
    m_mode, m_t, m_v = _threshold("min_p", min_p, probs, integer=False)
    rows, seed_t, offset_t, per_row, out, valid = prepare_draw(probs, "probs", indices, generator, check_nan, seed,
                                                               offset, (torch.float32,))
    if rows and m_mode != NONE:
        # min-p alone needs no rejection rounds: at large batch, each row spread over many programs
        chunks = chunked_launch("min_p", probs.shape[1], rows, config)
        if chunks is not None:
            draw_by_chunks(probs, MASS_ABOVE_MIN_P, indices, (m_mode, m_t, m_v), seed_t, offset_t, per_row, out,
                           valid, chunks)
            return (out, valid.bool()) if return_valid else out
    if rows:
        cfg = {**launch_config(probs.shape[1], rows, device_info().arch, interpreted()),
               **{k: v for k, v in (config or {}).items() if k != "chunked"}}
        any_ptr = probs  # stands in for absent tensors (never read)
        filtered_sampling_kernel[(cdiv(rows, cfg["ROWS"]),)](
            probs, out, valid, indices if indices is not None else out,
            k_t if k_t is not None else any_ptr, p_t if p_t is not None else any_ptr,
            m_t if m_t is not None else any_ptr, seed_t, offset_t, k_v, p_v, m_v, rows, probs.shape[1],
            probs.stride(0), HAS_INDICES=indices is not None, TOP_K=k_mode, TOP_P=p_mode, MIN_P=m_mode,
            SEED_PER_ROW=per_row, ROWS=cfg["ROWS"], BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"])
    return (out, valid.bool()) if return_valid else out


_TAIL_DOC = """
    ``indices``, ``generator``, ``check_nan`` (a host-synchronizing NaN check, off by default), ``seed``,
    ``offset`` and ``return_valid`` as described in this module's docstring. ``deterministic`` is accepted
    for compatibility: these kernels are deterministic for a given seed and offset whatever its value."""


def sampling_from_probs(probs, indices=None, deterministic=True, generator=None, check_nan=False, seed=None,
                        offset=None, return_valid=False):
    """Draw one token per row in proportion to ``probs``."""
    return _sample(probs, indices, None, None, None, generator, check_nan, seed, offset, return_valid)


def top_k_sampling_from_probs(probs, top_k, indices=None, deterministic=True, generator=None, check_nan=False,
                              seed=None, offset=None, return_valid=False):
    """Top-k sampling: keep the tokens whose probability is at least the k-th largest (ties may keep
    more than k), renormalise, draw. ``top_k``: a positive int, or an int tensor with one value per row."""
    return _sample(probs, indices, top_k, None, None, generator, check_nan, seed, offset, return_valid)


def top_p_sampling_from_probs(probs, top_p, indices=None, deterministic=True, generator=None, check_nan=False,
                              seed=None, offset=None, return_valid=False):
    """Top-p (nucleus) sampling: keep a token iff the mass of the strictly more probable tokens is below
    ``top_p`` (the smallest nucleus, crossing token included), renormalise, draw. ``top_p``: a float in
    [0, 1] or a float32 tensor with one value per row."""
    return _sample(probs, indices, None, top_p, None, generator, check_nan, seed, offset, return_valid)


def min_p_sampling_from_probs(probs, min_p, indices=None, deterministic=True, generator=None, check_nan=False,
                              seed=None, offset=None, return_valid=False):
    """Min-p sampling: keep the tokens with ``p >= min_p * max(p)`` of their row (relative to the row's
    maximum, as FlashInfer does), renormalise, draw. ``min_p``: a float in [0, 1] or a float32 tensor with
    one value per row."""
    return _sample(probs, indices, None, None, min_p, generator, check_nan, seed, offset, return_valid)


def top_k_top_p_sampling_from_probs(probs, top_k, top_p, indices=None, filter_apply_order="top_k_first",
                                    deterministic=True, generator=None, check_nan=False, seed=None, offset=None,
                                    return_valid=False):
    """Top-k and top-p together. ``"joint"``: both filters judged on the original distribution, in one
    kernel. ``"top_k_first"`` (FlashInfer's default): top-k, renormalise, then top-p on the result."""
    if filter_apply_order == "joint":
        return _sample(probs, indices, top_k, top_p, None, generator, check_nan, seed, offset, return_valid)
    if filter_apply_order != "top_k_first":
        raise ValueError(f"filter_apply_order must be 'top_k_first' or 'joint', got {filter_apply_order!r}")
    from .renorm import top_k_renorm_probs

    _checked_rows(probs, indices)
    renormed = top_k_renorm_probs(probs, top_k)  # every row (thresholds by source row), then draw
    return _sample(renormed, indices, None, top_p, None, generator, check_nan, seed, offset, return_valid)


def top_k_top_p_sampling_from_logits(logits, top_k, top_p, indices=None, filter_apply_order="top_k_first",
                                     deterministic=True, generator=None, check_nan=False, seed=None, offset=None,
                                     return_valid=False):
    """Top-k and top-p from logits. ``"top_k_first"``: mask the logits below the k-th largest,
    softmax, then top-p sampling. ``"joint"``: softmax, then both filters on that distribution."""
    from .logits import softmax
    from .renorm import top_k_mask_logits

    if filter_apply_order not in ("top_k_first", "joint"):
        raise ValueError(f"filter_apply_order must be 'top_k_first' or 'joint', got {filter_apply_order!r}")
    if filter_apply_order == "joint":
        probs = softmax(logits)
        return _sample(probs, indices, top_k, top_p, None, generator, check_nan, seed, offset, return_valid)
    probs = softmax(top_k_mask_logits(logits, top_k))
    return _sample(probs, indices, None, top_p, None, generator, check_nan, seed, offset, return_valid)


for _fn in (sampling_from_probs, top_k_sampling_from_probs, top_p_sampling_from_probs, min_p_sampling_from_probs,
            top_k_top_p_sampling_from_probs, top_k_top_p_sampling_from_logits):
    _fn.__doc__ += _TAIL_DOC

__all__ = ["min_p_sampling_from_probs", "sampling_from_probs", "top_k_sampling_from_probs",
           "top_k_top_p_sampling_from_logits", "top_k_top_p_sampling_from_probs", "top_p_sampling_from_probs"]
