"""Sampling from probabilities, with FlashInfer's signatures (``flashinfer.sampling``).

>>> import torch, aiter_ext
>>> probs = torch.softmax(torch.randn(4, 1000), -1)
>>> tokens = aiter_ext.top_p_sampling_from_probs(probs, 0.9, seed=1, offset=0)
>>> tokens.shape, tokens.dtype
(torch.Size([4]), torch.int32)
>>> torch.equal(tokens, aiter_ext.top_p_sampling_from_probs(probs, 0.9, seed=1, offset=0))
True

The contract the samplers share:
- ``probs`` is ``[B, V]``, fp32 (fp16/bf16 are read as fp32, as FlashInfer's ``.float()`` does).
- The output is ``[B]`` int32. With ``indices`` (``[B']`` int32/int64), output ``i`` samples row
  ``indices[i]`` and takes the indices' dtype. An index outside ``[0, B)`` is not read: its output is
  token 0, and ``valid`` False.
- Rows must sum to 1, as in FlashInfer: the draw is scaled to 1, not to the row's sum. A row with no
  positive mass (all zeros, or all NaN: NaN and negative entries are never drawn) gives token 0; with
  ``return_valid=True`` its ``valid`` entry is False.
- Only a token of positive probability inside the kept set is ever returned, at any number of draws
  (kernels.inverse_cdf_pick says how rounding is kept from breaking this).

Thresholds (``top_k``, ``top_p``, ``min_p``): a Python number, checked on the host (``top_k`` a
positive integer, ``top_p``/``min_p`` in [0, 1]), or a 1-D tensor of any real or integer dtype with one
value per row of ``probs``, indexed by the *source* row. Tensor values are read on the device only,
so out-of-range values get a meaning instead of an error: ``top_k <= 0`` keeps every token (FlashInfer
reads k unsigned, so its negative k do too), a float ``top_k`` is truncated (FlashInfer's ``.int()``);
``top_p >= 1`` or NaN keeps every token, ``top_p <= 0`` keeps the maximum and its ties; ``min_p`` is
clamped into [0, 1] (NaN as 0).

Randomness:
- Explicit ``seed``/``offset`` reproduce the same tokens and leave every generator alone. Each is an
  int (up to 2**64 - 1), or an int64/uint64 tensor of length 1 or B' on the device.
- Without them, a seed is drawn on the device from ``generator`` (or the device's default
  generator). That advances the generator and needs no host synchronization, so graph capture works.
- Tokens need not equal FlashInfer's bit for bit.
- Top-p alone at 2-64 rows of a vocabulary from 32768 takes another path inside a CUDA graph than
  eagerly (launchers._rounds_route: the same rounds, summed by chunks over the whole GPU). For one seed
  the two give the same tokens except where rounding at a boundary differs (at most 1% of draws in
  the tests), so an eager call and a graph replay with one seed can rarely differ there.

Differences from FlashInfer 0.7.2 that remain:
- ``deterministic`` is accepted and ignored: these kernels are deterministic for a seed and offset.
- ``top_k_first`` with an int ``k <= 256``, ``V >= 65536`` and no indices keeps *exactly* k in
  FlashInfer (its radix top-k); here ties at the k-th value are all kept, as FlashInfer does elsewhere.
- FlashInfer raises for a scalar ``top_k`` of 0 only through its kernel's invalid output; here it is a
  ``ValueError``.
- ``backend=`` (``"triton"``, ``"torch"`` or None for automatic) is ours.
"""

from __future__ import annotations

from typing import Optional

import torch

from aiter_ext.core.plans import CallPlans

from .backends import SAMPLING, dispatch, sampling_filter
from .inputs import ABSENT, Threshold, checked_rows, finish, prepare_draw, threshold
from .renorm import top_k_renorm_probs


#: Call plans (core/plans.py) of the samplers from probabilities: the launches after the checks, the seed's
#: draw and the outputs' allocation (which every call makes), replayed from a recorded call of the same kind.
PLANS = CallPlans("sampling")


def _sample(probs, indices, top_k: Threshold, top_p: Threshold, min_p: Threshold, generator, check_nan, seed, offset,
            return_valid, backend=None, config=None):
    """The one path of every sampler from probabilities; ``config`` overrides the launch (sweeps, no plan)."""
    draw = prepare_draw(probs, "probs", indices, generator, check_nan, seed, offset)
    slots = (probs, indices, top_k.tensor, top_p.tensor, min_p.tensor, draw.seed, draw.offset, draw.out, draw.valid)
    # the route may differ inside a CUDA graph (launchers._graph_timed): the capture state is part of the key
    key, plan = PLANS.find(*slots, int(top_k.mode), top_k.value, int(top_p.mode), top_p.value, int(min_p.mode),
                           min_p.value, draw.seed_per_row, probs.is_cuda and torch.cuda.is_current_stream_capturing(),
                           backend, config)
    if plan:
        plan(*slots)
    else:
        fn, tuned = dispatch(SAMPLING, probs, draw.rows, backend, filter=sampling_filter(top_k, top_p, min_p))
        PLANS.recorded(key, slots, fn, tuned if config is None else config, probs, indices, top_k, top_p, min_p, draw)
    return finish(draw, return_valid)


def _thresholds(probs, top_k=None, top_p=None, min_p=None):
    rows = checked_rows(probs, None)
    return (threshold("top_k", top_k, rows, probs.device, "top_k"),
            threshold("top_p", top_p, rows, probs.device, "unit"),
            threshold("min_p", min_p, rows, probs.device, "unit"))


_TAIL_DOC = """

    ``indices``, ``generator``, ``check_nan`` (a host-synchronizing NaN check, off by default), ``seed``,
    ``offset`` and ``return_valid`` as described in this module's docstring."""


def sampling_from_probs(probs, indices=None, deterministic=True, generator=None, check_nan=False, seed=None,
                        offset=None, return_valid=False, *, backend: Optional[str] = None):
    """Draw one token per row in proportion to ``probs``.

    >>> import torch, aiter_ext
    >>> probs = torch.tensor([[0.0, 0.25, 0.75]])
    >>> int(aiter_ext.sampling_from_probs(probs, seed=0, offset=0)) in (1, 2)
    True"""
    return _sample(probs, indices, ABSENT, ABSENT, ABSENT, generator, check_nan, seed, offset, return_valid, backend)


def top_k_sampling_from_probs(probs, top_k, indices=None, deterministic=True, generator=None, check_nan=False,
                              seed=None, offset=None, return_valid=False, *, backend: Optional[str] = None):
    """Top-k sampling: keep the tokens whose probability is at least the k-th largest (ties may keep
    more than k), renormalise, draw.

    >>> import torch, aiter_ext
    >>> probs = torch.tensor([[0.1, 0.6, 0.3]])
    >>> aiter_ext.top_k_sampling_from_probs(probs, 1, seed=0, offset=0).tolist()
    [1]"""
    k, _, _ = _thresholds(probs, top_k=top_k)
    return _sample(probs, indices, k, ABSENT, ABSENT, generator, check_nan, seed, offset, return_valid, backend)


def top_p_sampling_from_probs(probs, top_p, indices=None, deterministic=True, generator=None, check_nan=False,
                              seed=None, offset=None, return_valid=False, *, backend: Optional[str] = None):
    """Top-p (nucleus) sampling: keep a token iff the mass of the strictly more probable tokens is
    below ``top_p`` (the smallest nucleus, crossing token included), renormalise, draw.

    >>> import torch, aiter_ext
    >>> probs = torch.tensor([[0.1, 0.6, 0.3]])
    >>> aiter_ext.top_p_sampling_from_probs(probs, 0.5, seed=0, offset=0).tolist()
    [1]"""
    _, p, _ = _thresholds(probs, top_p=top_p)
    return _sample(probs, indices, ABSENT, p, ABSENT, generator, check_nan, seed, offset, return_valid, backend)


def min_p_sampling_from_probs(probs, min_p, indices=None, deterministic=True, generator=None, check_nan=False,
                              seed=None, offset=None, return_valid=False, *, backend: Optional[str] = None):
    """Min-p sampling: keep the tokens with ``p >= min_p * max(p)`` of their row (relative to the row's
    maximum, as FlashInfer does), renormalise, draw.

    >>> import torch, aiter_ext
    >>> probs = torch.tensor([[0.05, 0.6, 0.35]])
    >>> aiter_ext.min_p_sampling_from_probs(probs, torch.tensor([0.5]), seed=0, offset=0).tolist() in ([1], [2])
    True"""
    _, _, m = _thresholds(probs, min_p=min_p)
    return _sample(probs, indices, ABSENT, ABSENT, m, generator, check_nan, seed, offset, return_valid, backend)


def top_k_top_p_sampling_from_probs(probs, top_k, top_p, indices=None, filter_apply_order="top_k_first",
                                    deterministic=True, generator=None, check_nan=False, seed=None, offset=None,
                                    return_valid=False, *, backend: Optional[str] = None):
    """Top-k and top-p together. ``"joint"``: both filters judged on the original distribution, in one
    kernel. ``"top_k_first"`` (FlashInfer's default): top-k, renormalise, then top-p on the result.

    >>> import torch, aiter_ext
    >>> probs = torch.tensor([[0.1, 0.5, 0.4]])
    >>> aiter_ext.top_k_top_p_sampling_from_probs(probs, 2, 0.5, seed=0, offset=0).tolist()
    [1]"""
    if filter_apply_order not in ("top_k_first", "joint"):
        raise ValueError(f"filter_apply_order must be 'top_k_first' or 'joint', got {filter_apply_order!r}")
    k, p, _ = _thresholds(probs, top_k=top_k, top_p=top_p)
    checked_rows(probs, indices)
    if filter_apply_order == "joint":
        return _sample(probs, indices, k, p, ABSENT, generator, check_nan, seed, offset, return_valid, backend)
    renormed = top_k_renorm_probs(probs, top_k, backend=backend)  # every row (thresholds by source row), then draw
    return _sample(renormed, indices, ABSENT, p, ABSENT, generator, check_nan, seed, offset, return_valid, backend)


for _fn in (sampling_from_probs, top_k_sampling_from_probs, top_p_sampling_from_probs, min_p_sampling_from_probs,
            top_k_top_p_sampling_from_probs):
    _fn.__doc__ += _TAIL_DOC

__all__ = ["min_p_sampling_from_probs", "sampling_from_probs", "top_k_sampling_from_probs",
           "top_k_top_p_sampling_from_probs", "top_p_sampling_from_probs"]
