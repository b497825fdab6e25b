"""FlashInfer's ``top_k_renorm_probs``, ``top_p_renorm_probs`` and ``top_k_mask_logits``: exact
thresholds found by a snapping bisection (renorm_kernels.py); dtypes fp32/fp16/bf16 are kept."""

from __future__ import annotations

from typing import Union

import torch

from aiter_ext.core.arch import device_info
from aiter_ext.core.env import interpreted
from aiter_ext.core.checks import check_tensor
from aiter_ext.core.launch import cdiv

from .api import _threshold

VALUE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _run(x: torch.Tensor, name: str, param, mode: int, integer: bool) -> torch.Tensor:
    from .logits_kernels import launch_config
    from .renorm_kernels import renorm_kernel

    check_tensor(name, x, ndim=2, dtypes=VALUE_DTYPES)
    if x.shape[1] == 0 or x.stride(1) != 1:
        raise ValueError(f"{name} must have at least one column and be contiguous in its last dimension")
    pname = "top_k" if integer else "top_p"
    _, tensor, value = _threshold(pname, param, x, integer=integer)
    out = torch.empty_like(x)
    rows, vocab = x.shape
    if rows:
        cfg = launch_config(vocab, rows, device_info().arch, interpreted())
        renorm_kernel[(cdiv(rows, cfg["ROWS"]),)](
            x, out, tensor if tensor is not None else x, value, rows, vocab, x.stride(0), out.stride(0),
            MODE=mode, PER_ROW=tensor is not None, ROWS=cfg["ROWS"], BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"])
    return out


def top_k_renorm_probs(probs: torch.Tensor, top_k: Union[int, torch.Tensor]) -> torch.Tensor:
    """Keep the entries >= the row's k-th largest (ties may keep more than k), renormalise to sum 1."""
    return _run(probs, "probs", top_k, 0, integer=True)


def top_p_renorm_probs(probs: torch.Tensor, top_p: Union[float, torch.Tensor]) -> torch.Tensor:
    """Keep an entry iff the mass of the strictly larger entries is below ``top_p`` (the row maximum
    always stays), renormalise to sum 1."""
    return _run(probs, "probs", top_p, 1, integer=False)


def top_k_mask_logits(logits: torch.Tensor, top_k: Union[int, torch.Tensor]) -> torch.Tensor:
    """Set every logit below the row's k-th largest to -inf (ties may keep more than k)."""
    return _run(logits, "logits", top_k, 2, integer=True)
