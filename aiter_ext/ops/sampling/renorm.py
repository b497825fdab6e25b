"""FlashInfer's ``top_k_renorm_probs``, ``top_p_renorm_probs`` and ``top_k_mask_logits``: exact
thresholds found by a snapping bisection (renorm_kernels.py).

Output dtypes as in FlashInfer 0.7.2: ``top_k_renorm_probs`` and ``top_k_mask_logits`` keep the
input's (fp32/fp16/bf16); ``top_p_renorm_probs`` returns fp32 (FlashInfer converts with ``.float()``
first). Thresholds as for the samplers (api.py): numbers checked on the host, per-row tensors of any
real dtype read on the device (``k <= 0`` or NaN ``p``: nothing is dropped).

>>> import torch, aiter_ext
>>> probs = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
>>> aiter_ext.top_k_renorm_probs(probs, 2)
tensor([[0.0000, 0.0000, 0.4286, 0.5714]])
>>> aiter_ext.top_k_mask_logits(torch.tensor([[1.0, 3.0, 2.0]]), 2)
tensor([[-inf, 3., 2.]])
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from .backends import RENORM, TOP_K_MASK, TOP_K_RENORM, TOP_P_RENORM, dispatch
from .inputs import checked_rows, threshold

VALUE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _run(x: torch.Tensor, name: str, param, mode: int, backend, out_dtype=None) -> torch.Tensor:
    rows = checked_rows(x, None, name, VALUE_DTYPES)
    pname = "top_p" if mode == TOP_P_RENORM else "top_k"
    param = threshold(pname, param, rows, x.device, "unit" if mode == TOP_P_RENORM else "top_k")
    out = torch.empty(x.shape, dtype=out_dtype or x.dtype, device=x.device)
    fn, config = dispatch(RENORM, x, rows, backend)
    fn(config, x, mode, param, out)
    return out


def top_k_renorm_probs(probs: torch.Tensor, top_k: Union[int, torch.Tensor], is_deterministic: bool = False, *,
                       backend: Optional[str] = None) -> torch.Tensor:
    """Keep the entries >= the row's k-th largest (ties may keep more than k), renormalise to sum 1.
    ``is_deterministic`` is accepted and ignored (this kernel is deterministic)."""
    return _run(probs, "probs", top_k, TOP_K_RENORM, backend)


def top_p_renorm_probs(probs: torch.Tensor, top_p: Union[float, torch.Tensor], is_deterministic: bool = False, *,
                       backend: Optional[str] = None) -> torch.Tensor:
    """Keep an entry iff the mass of the strictly larger entries is below ``top_p`` (the row maximum
    always stays), renormalise to sum 1; fp32 out. ``is_deterministic`` is accepted and ignored."""
    return _run(probs, "probs", top_p, TOP_P_RENORM, backend, out_dtype=torch.float32)


def top_k_mask_logits(logits: torch.Tensor, top_k: Union[int, torch.Tensor], *,
                      backend: Optional[str] = None) -> torch.Tensor:
    """Set every logit below the row's k-th largest to -inf (ties may keep more than k)."""
    return _run(logits, "logits", top_k, TOP_K_MASK, backend)
