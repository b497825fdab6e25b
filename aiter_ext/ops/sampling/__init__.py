"""Sampling with FlashInfer's contracts (issue 4, in progress): from probabilities, with top-k, top-p,
min-p and joint top-k/top-p filters. Still to come: the ``_from_logits`` forms, renorm/mask,
softmax with temperature, chain speculative sampling and the LogitsPipe."""

from .api import (
    min_p_sampling_from_probs, sampling_from_probs, top_k_sampling_from_probs, top_k_top_p_sampling_from_probs,
    top_p_sampling_from_probs,
)

__all__ = ["min_p_sampling_from_probs", "sampling_from_probs", "top_k_sampling_from_probs",
           "top_k_top_p_sampling_from_probs", "top_p_sampling_from_probs"]
