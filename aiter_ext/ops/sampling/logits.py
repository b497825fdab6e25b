"""FlashInfer's ``softmax`` (with temperature), ``sampling_from_logits`` and
``top_k_top_p_sampling_from_logits``.

``softmax(logits, temperature)`` returns fp32 probabilities. ``temperature`` is None (1), a number
>= 0, or a 1-D tensor with one value per row. A row at temperature 0 is greedy: its output is one-hot
at the first maximum, in the same launch as the other rows (AITER's mixed greedy/random batches), so
any sampler then returns the argmax for it.

``sampling_from_logits`` draws from ``softmax(logits)`` without writing the probabilities: for small
vocabularies the argmax of the logits plus Gumbel noise, in one pass; for larger ones an inverse CDF
over ``exp(x - max)`` with each row spread over many programs (chunked.py). Under one seed its draws
differ from ``sampling_from_probs(softmax(x))``, as in FlashInfer. NaN logits count as ``-inf``.

>>> import torch, aiter_ext
>>> logits = torch.tensor([[1.0, 3.0, float("-inf")], [0.5, 0.2, 0.1]])
>>> probs = aiter_ext.softmax(logits, torch.tensor([0.0, 1.0]))   # row 0 greedy
>>> probs[0].tolist()
[0.0, 1.0, 0.0]
>>> int(aiter_ext.sampling_from_logits(logits, seed=3, offset=0)[0]) in (0, 1)
True
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from aiter_ext.core.plans import CallPlans

from .api import _sample
from .backends import SAMPLING_FROM_LOGITS, SOFTMAX, dispatch
from .inputs import ABSENT, checked_rows, finish, prepare_draw, threshold

LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: Call plans (core/plans.py) of sampling_from_logits, as api.PLANS for the samplers from probabilities: the launches
#: after the checks, the seed's draw and the outputs' allocation, replayed. Without them an eager call's host time was
#: 55-94 us against FlashInfer's 31-44 on an H100 (bench_sampling_tuned.py, issue 18). Its routes do not depend on a
#: CUDA graph's capture, so the capture state is not part of the key (api.PLANS' is). Only the Gumbel-max route keeps
#: plans: the chunked draw (large vocabularies) refuses them (chunked.CHUNKED_DRAW_UNPLANNED).
PLANS = CallPlans("sampling_from_logits")


def softmax(logits: torch.Tensor, temperature: Union[float, torch.Tensor, None] = None,
            enable_pdl: Optional[bool] = None, *, backend: Optional[str] = None) -> torch.Tensor:
    """``softmax(logits / temperature)`` per row, fp32 ``[B, V]``; temperature 0 gives the one-hot
    argmax of the row. A row with no finite logit gives zeros (the samplers report it invalid).
    ``enable_pdl`` (FlashInfer's programmatic dependent launch on Hopper) is accepted and ignored."""
    rows = checked_rows(logits, None, "logits", LOGIT_DTYPES)
    temp = threshold("temperature", 1.0 if temperature is None else temperature, rows, logits.device, "temperature")
    out = torch.empty(rows, logits.shape[1], dtype=torch.float32, device=logits.device)
    fn, config = dispatch(SOFTMAX, logits, rows, backend)
    fn(config, logits, temp, out)
    return out


def sampling_from_logits(logits: torch.Tensor, indices: Optional[torch.Tensor] = None, deterministic: bool = True,
                         generator: Optional[torch.Generator] = None, check_nan: bool = False, seed=None,
                         offset=None, return_valid: bool = False, *, backend: Optional[str] = None):
    """One token per row drawn from ``softmax(logits)``: Gumbel-max in one pass, or for large
    vocabularies an inverse CDF over ``exp(x - max)`` by chunks (chunked.py). ``indices``,
    ``generator``, ``seed``/``offset``, ``check_nan`` and ``return_valid`` as for the ``_from_probs``
    samplers (api.py); a row with no finite logit gives token 0, invalid. (FlashInfer 0.7.2 has no
    ``return_valid`` here; it is ours.)"""
    draw = prepare_draw(logits, "logits", indices, generator, check_nan, seed, offset, LOGIT_DTYPES)
    slots = (logits, indices, draw.seed, draw.offset, draw.out, draw.valid)
    key, plan = PLANS.find(*slots, draw.seed_per_row, backend)
    if plan:
        plan(*slots)
    else:
        fn, config = dispatch(SAMPLING_FROM_LOGITS, logits, draw.rows, backend)
        PLANS.recorded(key, slots, fn, config, logits, indices, draw)
    return finish(draw, return_valid)


def top_k_top_p_sampling_from_logits(logits, top_k, top_p, indices=None, filter_apply_order="top_k_first",
                                     deterministic=True, generator=None, check_nan=False, seed=None, offset=None,
                                     return_valid=False, *, backend: Optional[str] = None):
    """Top-k and top-p from logits. ``"top_k_first"``: mask the logits below the k-th largest,
    softmax, then top-p sampling. ``"joint"``: softmax, then both filters on that distribution.
    Thresholds and the keyword tail as for the ``_from_probs`` samplers (api.py)."""
    from .renorm import top_k_mask_logits

    if filter_apply_order not in ("top_k_first", "joint"):
        raise ValueError(f"filter_apply_order must be 'top_k_first' or 'joint', got {filter_apply_order!r}")
    checked_rows(logits, indices, "logits", LOGIT_DTYPES)
    k = threshold("top_k", top_k, logits.shape[0], logits.device, "top_k")
    p = threshold("top_p", top_p, logits.shape[0], logits.device, "unit")
    if filter_apply_order == "joint":
        probs = softmax(logits, backend=backend)
        return _sample(probs, indices, k, p, ABSENT, generator, check_nan, seed, offset, return_valid, backend)
    probs = softmax(top_k_mask_logits(logits, top_k, backend=backend), backend=backend)
    return _sample(probs, indices, ABSENT, p, ABSENT, generator, check_nan, seed, offset, return_valid, backend)
