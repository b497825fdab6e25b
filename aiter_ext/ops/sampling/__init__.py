"""Sampling with FlashInfer's contracts: from probabilities with top-k, top-p, min-p and top-k/top-p
filters (joint and top-k-first orders), from logits (Gumbel-max or a chunked inverse CDF, and
top-k/top-p), softmax with temperature (greedy rows at 0), top-k/top-p renormalisation, top-k logit
masking, chain speculative sampling and the LogitsPipe.

Layout, as the other ops: ``inputs`` (checks, thresholds, seeds; no Triton), ``api`` / ``logits`` /
``renorm`` / ``speculative`` / ``pipe`` (public functions), ``backends`` (the dispatcher's ops:
``triton`` through ``launchers``, ``torch`` through ``reference``), the Triton kernels in ``kernels``
(one program per row), ``split_kernels`` (small batches: each row over several programs),
``chunked_kernels``, ``logits_kernels``, ``renorm_kernels`` and ``speculative_kernels``."""

from .api import (
    min_p_sampling_from_probs, sampling_from_probs, top_k_sampling_from_probs, top_k_top_p_sampling_from_probs,
    top_p_sampling_from_probs,
)
from .logits import sampling_from_logits, softmax, top_k_top_p_sampling_from_logits
from .pipe import LogitsPipe, MinP, Sample, Softmax, Temperature, TensorType, TopK, TopP
from .renorm import top_k_mask_logits, top_k_renorm_probs, top_p_renorm_probs
from .speculative import chain_speculative_sampling

__all__ = ["LogitsPipe", "MinP", "Sample", "Softmax", "Temperature", "TensorType", "TopK", "TopP",
           "chain_speculative_sampling", "min_p_sampling_from_probs", "sampling_from_logits", "sampling_from_probs",
           "softmax", "top_k_mask_logits", "top_k_renorm_probs", "top_k_sampling_from_probs",
           "top_k_top_p_sampling_from_logits", "top_k_top_p_sampling_from_probs", "top_p_renorm_probs",
           "top_p_sampling_from_probs"]
