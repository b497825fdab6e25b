"""aiter_ext's samplers inside vLLM 0.33's samplers (issue 15), opt in with ``AITER_EXT_SAMPLER=1`` on ROCm:
the V1 ``TopKTopPSampler`` (:func:`install`) and the V2 model runner's ``Sampler`` (:func:`install_v2`).

vLLM builds its ``TopKTopPSampler`` inside its ``Sampler`` and picks ``forward`` in the constructor (on
ROCm, ``forward_hip`` when ``VLLM_ROCM_USE_AITER`` is set, else ``forward_native``). :func:`install` wraps
that constructor once so that every new sampler's ``forward`` is :func:`forward_aiter_ext`.

What changes and what does not:
- The rows vLLM's own ``forward_hip`` and ``forward_cuda`` hand to a fused kernel (a top-k and/or top-p
  filter, no per-request generator) are drawn by aiter_ext, with FlashInfer's semantics: top-p alone and
  top-k alone from ``softmax(logits)`` in fp32, both jointly from the logits, as vLLM's FlashInfer path
  calls them.
- Everything else goes to vLLM's ``forward_native`` unchanged: no filter at all, any per-request
  ``generators`` (seeded requests: vLLM draws those rows from each request's own generator), fp64
  Gumbel noise. Greedy rows never reach this module (vLLM's ``Sampler`` takes their argmax first).
- Processed-logprobs modes keep vLLM's own choice of ``forward``: the fused samplers return no logits.

V2 (``vllm.v1.worker.gpu.sample.sampler``): its ``Sampler`` already decides per batch when a fused sampler
may draw (top-k or top-p present; no greedy rows, explicit seeds or processed logprobs) and then calls
that module's ``flashinfer_sample(logits, top_k, top_p)`` if ``use_flashinfer``. On ROCm FlashInfer is
absent, so that flag is always off. :func:`install_v2` points the module's ``flashinfer_sample`` at
:func:`sample` and sets the flag wherever no sampling mask is asked for (vLLM's own condition for it).
Every other batch keeps vLLM's Gumbel path.
"""

from __future__ import annotations

import functools
import logging
import os
import types

import torch

logger = logging.getLogger(__name__)

ENV = "AITER_EXT_SAMPLER"
_MARK = "_aiter_ext_installed"


def enabled() -> bool:
    return os.environ.get(ENV, "0") == "1"


def sample(logits: torch.Tensor, k, p) -> torch.Tensor:
    """Tokens (int32, ``[batch]``) for vLLM's per-row ``k`` (int64 ``[batch]``) and ``p`` (float
    ``[batch]``), either of which may be None: the calls vLLM's FlashInfer path makes, through aiter_ext."""
    import aiter_ext

    if k is None and p is None:
        raise ValueError("sample needs a top-k or a top-p filter (vLLM draws unfiltered rows natively)")
    if k is None:
        probs = logits.softmax(dim=-1, dtype=torch.float32)
        tokens = aiter_ext.top_p_sampling_from_probs(probs, p, deterministic=True)
    elif p is None:
        probs = logits.softmax(dim=-1, dtype=torch.float32)
        tokens = aiter_ext.top_k_sampling_from_probs(probs, k, deterministic=True)
    else:
        tokens = aiter_ext.top_k_top_p_sampling_from_logits(logits, k, p, deterministic=True)
    return tokens.view(-1)


def forward_aiter_ext(self, logits: torch.Tensor, generators: dict, k, p):
    """``TopKTopPSampler.forward`` through aiter_ext (this module's docstring says which rows)."""
    if (k is None and p is None) or generators or self.use_fp64_gumbel:
        return self.forward_native(logits, generators, k, p)
    return sample(logits.contiguous(), k, p), None


def install(sampler_cls) -> bool:
    """Wrap ``sampler_cls.__init__`` (vLLM's TopKTopPSampler) once; True if it was wrapped now."""
    if _MARK in vars(sampler_cls):  # the class itself, not a parent it inherits the mark from
        return False
    from vllm.v1.sample.ops.topk_topp_sampler import PROCESSED_LOGPROBS_MODES

    original_init = sampler_cls.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if self.logprobs_mode not in PROCESSED_LOGPROBS_MODES:
            self.forward = types.MethodType(forward_aiter_ext, self)

    sampler_cls.__init__ = __init__
    setattr(sampler_cls, _MARK, True)
    logger.info("aiter_ext: vLLM's top-k/top-p sampler draws through aiter_ext (%s=1)", ENV)
    return True


def install_v2(sampler_module) -> bool:
    """Route the V2 runner's fused draws (``sampler_module``: vllm.v1.worker.gpu.sample.sampler) through
    :func:`sample`; True if installed now."""
    cls = sampler_module.Sampler
    if _MARK in vars(cls):
        return False
    original_init = cls.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if not self.return_sampling_mask:
            self.use_flashinfer = True  # the fused draw: sampler_module.flashinfer_sample is sample() now

    cls.__init__ = __init__
    sampler_module.flashinfer_sample = sample
    setattr(cls, _MARK, True)
    logger.info("aiter_ext: vLLM's V2 fused top-k/top-p draws go through aiter_ext (%s=1)", ENV)
    return True
