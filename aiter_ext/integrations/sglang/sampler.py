"""aiter_ext's sampler for SGLang 0.5.23 (issue 15): ``--sampling-backend aiter_ext``.

SGLang's ``Sampler`` draws filtered rows in ``_sample_from_probs``; with its ``flashinfer`` backend it calls
FlashInfer's samplers. :class:`AiterExtSampler` makes the same calls through aiter_ext (top-k and top-p
jointly, or with min-p: top-k renorm, top-p renorm, then min-p sampling, FlashInfer's order in SGLang).

What stays SGLang's own:
- rows with no filter (SGLang's "simple" case: its multinomial, seeded or not);
- batches with per-request seeds (``sampling_seed``) or a sampling-mask capture: SGLang's flashinfer
  backend refuses seeds and the mask needs the filtered weights, so both take SGLang's pytorch sampler,
  exactly as ``--sampling-backend pytorch`` would.
"""

from __future__ import annotations

import torch
from sglang.srt.layers.sampler import (  # the two private names: the mask capture's own record and row pick
    Sampler, _SamplingMaskCapture, _select_sampling_mask_rows, top_k_top_p_min_p_sampling_from_probs_torch,
)

import aiter_ext


def draw(probs: torch.Tensor, info) -> torch.Tensor:
    """Tokens for SGLang's per-request ``top_ks`` / ``top_ps`` / ``min_ps`` (``info``: its SamplingBatchInfo)."""
    if info.need_min_p_sampling:
        probs = aiter_ext.top_k_renorm_probs(probs, info.top_ks)
        probs = aiter_ext.top_p_renorm_probs(probs, info.top_ps)
        return aiter_ext.min_p_sampling_from_probs(probs, info.min_ps)
    return aiter_ext.top_k_top_p_sampling_from_probs(probs.contiguous(), info.top_ks, info.top_ps,
                                                     filter_apply_order="joint")


def sglang_pytorch_draw(probs: torch.Tensor, info, positions: torch.Tensor):
    """SGLang's own pytorch sampler for a filtered batch, with its mask capture when one is asked for."""
    rows = info.sampling_mask_batch_indices
    result = top_k_top_p_min_p_sampling_from_probs_torch(
        probs, info.top_ks, info.top_ps, info.min_ps, info.need_min_p_sampling, info.sampling_seed, positions,
        return_filtered_probs=rows is not None, max_top_k=info.max_top_k)
    if rows is None:
        return result, None
    tokens, weights, token_ids, selected = result
    capture = _SamplingMaskCapture(weights=_select_sampling_mask_rows(weights, rows),
                                   token_ids=_select_sampling_mask_rows(token_ids, rows),
                                   selected_weight=_select_sampling_mask_rows(selected, rows), batch_rows=rows)
    return tokens, capture


class AiterExtSampler(Sampler):
    def _sample_from_probs(self, probs, sampling_info, positions, simple_sampling_case):
        if simple_sampling_case:
            return super()._sample_from_probs(probs, sampling_info, positions, simple_sampling_case)
        if sampling_info.sampling_seed is not None or sampling_info.sampling_mask_batch_indices is not None:
            return sglang_pytorch_draw(probs, sampling_info, positions)
        return draw(probs, sampling_info), None
