"""The fp32 reference of segment GEMM: one matmul per segment."""

from __future__ import annotations

import torch


def segment_gemm_ref(x: torch.Tensor, weights: torch.Tensor, seg_indptr, weight_indices, weight_column_major: bool,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """``y[seg] = x[seg] @ W[weight_indices[s]]`` (``W^T`` when ``weight_column_major``: weights
    ``[E, d_out, d_in]``), in fp32, into ``out`` (else zeros, as FlashInfer allocates); rows outside every
    segment are left as they are."""
    bounds = [int(v) for v in seg_indptr]
    index = [int(v) for v in weight_indices] if weight_indices is not None else list(range(len(bounds) - 1))
    d_out = weights.shape[1] if weight_column_major else weights.shape[2]
    y = torch.zeros(x.shape[0], d_out, dtype=torch.float32, device=x.device) if out is None else out.float().clone()
    for s in range(len(bounds) - 1):
        w = weights[index[s]].float()
        y[bounds[s]:bounds[s + 1]] = x[bounds[s]:bounds[s + 1]].float() @ (w.t() if weight_column_major else w)
    return y
