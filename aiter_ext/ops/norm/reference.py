"""fp32 PyTorch references for the RMSNorm family (FlashInfer semantics).

``y = x * rsqrt(mean(x^2) + eps) * w``, computed in fp32 over the last dimension and cast to ``x.dtype``
once at the end. Gemma's variant multiplies by ``(1 + w)``, the ``+1`` taken in fp32 (in the weight's
own dtype, ``1 + w`` would round). The fused-add forms first form ``s = x + residual`` in fp32, store
``residual <- cast(s)`` and normalise the *unrounded* ``s``, not the rounded residual.

These functions are the oracle of the tests, the benchmarks' baseline and the ``torch`` backend.
"""

from __future__ import annotations

import torch


def _normalize(x32: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool) -> torch.Tensor:
    """fp32 RMSNorm of the rows (last dim) of the fp32 tensor ``x32``."""
    w32 = weight.float()
    if gemma:
        w32 = 1.0 + w32
    rstd = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (x32 * rstd) * w32


def rmsnorm_ref(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, gemma: bool = False) -> torch.Tensor:
    """RMSNorm of ``input [..., H]`` with ``weight [H]``; the result has ``input.dtype``."""
    return _normalize(input.float(), weight, eps, gemma).to(input.dtype)


def gemma_rmsnorm_ref(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Gemma RMSNorm: ``rmsnorm_ref`` with ``(1 + weight)``."""
    return rmsnorm_ref(input, weight, eps, gemma=True)


def fused_add_rmsnorm_ref(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                          gemma: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(normed, new_residual)``: ``new_residual = cast(input + residual)`` and ``normed`` the RMSNorm of
    the fp32 sum before that rounding. Returns new tensors; the inputs are not modified."""
    total = input.float() + residual.float()
    return _normalize(total, weight, eps, gemma).to(input.dtype), total.to(residual.dtype)


def gemma_fused_add_rmsnorm_ref(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                                eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma form of :func:`fused_add_rmsnorm_ref`."""
    return fused_add_rmsnorm_ref(input, residual, weight, eps, gemma=True)
