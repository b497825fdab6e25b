"""Sampling with FlashInfer's contracts (issue 4, in progress).

Done: sampling from probabilities with top-k, top-p, min-p and joint top-k/top-p filters; softmax
with temperature (greedy rows at 0); sampling from logits (Gumbel-max); chain speculative sampling.
Still to come: the filtered ``_from_logits`` forms, renorm/mask, the top-k-first order and the
LogitsPipe."""

from .api import (
    min_p_sampling_from_probs, sampling_from_probs, top_k_sampling_from_probs, top_k_top_p_sampling_from_probs,
    top_p_sampling_from_probs,
)
from .logits import sampling_from_logits, softmax
from .speculative import chain_speculative_sampling

__all__ = ["chain_speculative_sampling", "min_p_sampling_from_probs", "sampling_from_logits", "sampling_from_probs", "softmax",
           "top_k_sampling_from_probs", "top_k_top_p_sampling_from_probs", "top_p_sampling_from_probs"]
