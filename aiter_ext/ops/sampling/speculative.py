"""Chain speculative sampling (FlashInfer's ``chain_speculative_sampling``; Chen et al., arXiv 2302.01318).

For each request, ``n`` draft tokens ``d_i`` with draft probabilities ``q_i`` are checked against the
target model's ``p_i``:
- draft ``i`` is accepted iff ``u_i * q_i[d_i] < p_i[d_i]``, with ``u_i`` uniform in [0, 1);
- at the first rejection, position ``pos``, a token is drawn from ``normalise(relu(p_pos - q_pos))``;
- if every draft passes, ``pos = n`` and a bonus token is drawn from ``p_n``.

The emitted distribution is then exactly the target's, which is the lossless property the tests
check. Output row: the accepted drafts, then the drawn token, then -1. Counters, both *added*
into the caller's int32 tensors:
- ``emitted`` += ``pos``;
- ``accepted`` += ``pos`` plus the later drafts that would pass on their own, with fresh uniforms
  (FlashInfer's definition).
"""

from __future__ import annotations

from typing import Optional

import torch

from aiter_ext.core.checks import check_shape, check_tensor

from .backends import CHAIN_SPECULATIVE, dispatch
from .inputs import PROB_DTYPES, seed_and_offset

def chain_speculative_sampling(draft_probs: torch.Tensor, draft_token_ids: torch.Tensor, target_probs: torch.Tensor,
                               maybe_output_accepted_token_num: Optional[torch.Tensor] = None,
                               maybe_output_emitted_draft_token_num: Optional[torch.Tensor] = None,
                               deterministic: bool = True, generator: Optional[torch.Generator] = None,
                               seed=None, offset=None, *, backend: Optional[str] = None):
    """FlashInfer's chain speculative sampling. ``draft_probs`` ``[B, n, V]`` and ``target_probs``
    ``[B, n + 1, V]`` fp32 (contiguous; fp16/bf16 are converted, as FlashInfer does), ``draft_token_ids`` ``[B, n]`` int32/int64. Returns
    ``(output_token_ids [B, n + 1] int32, accepted [B], emitted [B])``; the two counters are the
    caller's int32 tensors when given, *added to* (``+=``), else new zeros plus this call's counts.

    A draft id outside ``[0, V)`` (only the device sees it) is never read past the rows: it is
    rejected, and the token at its position is drawn from the target distribution there (nothing
    was drawn from the draft). FlashInfer reads such an id unchecked.

    >>> import torch, aiter_ext
    >>> q = torch.softmax(torch.randn(2, 3, 10), -1); p = torch.softmax(torch.randn(2, 4, 10), -1)
    >>> ids = torch.multinomial(q.view(-1, 10), 1).view(2, 3).int()
    >>> out, accepted, emitted = aiter_ext.chain_speculative_sampling(q, ids, p, seed=0, offset=0)
    >>> bool(((out >= 0).sum(1) == emitted + 1).all())
    True"""
    check_tensor("draft_probs", draft_probs, ndim=3, dtypes=PROB_DTYPES)
    check_tensor("target_probs", target_probs, ndim=3, dtypes=PROB_DTYPES)
    # FlashInfer converts with .float(): fp16/bf16 probabilities are taken, as an fp32 copy (fixed shape)
    draft_probs, target_probs = draft_probs.float(), target_probs.float()
    check_tensor("draft_token_ids", draft_token_ids, ndim=2, dtypes=(torch.int32, torch.int64))
    batch, n, vocab = draft_probs.shape
    if n < 1:
        raise ValueError("draft_probs must hold at least one draft token per request")
    if vocab < 1:
        raise ValueError("draft_probs must have a vocabulary of at least one token")
    check_shape("target_probs", target_probs, (batch, n + 1, vocab), "[batch, num_draft + 1, vocab] of draft_probs")
    check_shape("draft_token_ids", draft_token_ids, (batch, n), "[batch, num_draft] of draft_probs")
    for name, t in (("draft_probs", draft_probs), ("target_probs", target_probs),
                    ("draft_token_ids", draft_token_ids)):
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
        if t.device != draft_probs.device:
            raise ValueError(f"{name} is on {t.device} but draft_probs is on {draft_probs.device}")
    counters = []
    for name, t in (("maybe_output_accepted_token_num", maybe_output_accepted_token_num),
                    ("maybe_output_emitted_draft_token_num", maybe_output_emitted_draft_token_num)):
        if t is None:
            t = torch.zeros(batch, dtype=torch.int32, device=draft_probs.device)
        else:
            # int64 counters would silently lose the accumulation in FlashInfer; here they are refused
            check_tensor(name, t, ndim=1, dtypes=(torch.int32,))
            check_shape(name, t, (batch,), "[batch]")
            if t.device != draft_probs.device or not t.is_contiguous():
                raise ValueError(f"{name} must be a contiguous int32 tensor on {draft_probs.device}")
        counters.append(t)
    accepted, emitted = counters
    seed_t, offset_t, per_row = seed_and_offset(generator, seed, offset, batch, draft_probs.device)
    out = torch.empty(batch, n + 1, dtype=torch.int32, device=draft_probs.device)
    fn, config = dispatch(CHAIN_SPECULATIVE, draft_probs, batch, backend)
    fn(config, draft_probs, draft_token_ids, target_probs, out, accepted, emitted, seed_t, offset_t, per_row)
    return out, accepted, emitted
