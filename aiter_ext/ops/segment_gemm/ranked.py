"""Multi-LoRA with per-adapter ranks and scalings, in the form SGLang's LoRA backends call it (SGLang 0.5.23,
``srt/lora/backend/triton_backend.py`` and ``kernels/ops/lora/dense``; its route is
``integrations/sglang/lora.py``).

SGLang keeps every adapter in pool slots sized for the largest rank, ``max_r``:
- A ``[slots, slices * max_r, hidden]``. An adapter of rank r fills its first ``slices * r`` rows, slice j
  at rows ``[j * r, (j + 1) * r)``. The rows past them are not zeroed.
- B ``[slots, out, max_r]``. Its first r columns are filled.

A batch is segments (``seg_indptr``, one pool slot each in ``weight_indices``) of token positions, gathered
through ``permutation`` when it is given. ``lora_ranks`` / ``scalings`` are per slot. A rank-0 slot (no
adapter) does nothing.

- :func:`lora_a` ``out[t] = x[t] @ A[slot]^T`` for every row of A: the columns past ``slices * r`` are
  products of unused rows, which SGLang's kernel leaves unwritten and no B reads.
- :func:`lora_b` ``output[t] += scalings[slot] * x[t, j*r : (j+1)*r] @ B[slot][:, :r]^T`` for slice
  ``j = x_slice`` of A's output.

Both launch the segment-GEMM kernel (kernels.py, ADAPTER_RANKS / RANK_K). They read no device value back,
so they are graph-capturable. Device tables are bounded in the kernel: slots are clamped into the pool,
and ranks to ``max_r``.
"""

from __future__ import annotations

import torch

from aiter_ext.core.checks import check_inner_contiguous, check_same_device, check_tensor
from aiter_ext.core.launch import kernels_module

from .lora import DTYPES, _tuned_config


def _check_tables(num_segments: int, slots: int, seg_indptr, weight_indices, lora_ranks, permutation,
                  scalings=None) -> None:
    """Shapes and dtypes only (no values: they live on the device)."""
    for name, t in (("seg_indptr", seg_indptr), ("weight_indices", weight_indices), ("lora_ranks", lora_ranks)):
        check_tensor(name, t, ndim=1, dtypes=(torch.int32, torch.int64))
    if seg_indptr.shape[0] < num_segments + 1 or weight_indices.shape[0] < num_segments:
        raise ValueError(f"{num_segments} segments need seg_indptr of >= {num_segments + 1} entries and weight_indices "
                         f"of >= {num_segments}, got {seg_indptr.shape[0]} and {weight_indices.shape[0]}")
    if lora_ranks.shape[0] < slots:
        raise ValueError(f"lora_ranks must have an entry per pool slot ({slots}), got {lora_ranks.shape[0]}")
    if scalings is not None:
        check_tensor("scalings", scalings, ndim=1, dtypes=(torch.float32,))
        if scalings.shape[0] < slots:
            raise ValueError(f"scalings must have an entry per pool slot ({slots}), got {scalings.shape[0]}")
    if permutation is not None:
        check_tensor("permutation", permutation, ndim=1, dtypes=(torch.int32, torch.int64))


def _check_rows(name: str, t: torch.Tensor, ndim: int, dtypes) -> None:
    check_tensor(name, t, ndim=ndim, dtypes=dtypes)
    check_inner_contiguous(name, t, 1)


def lora_a(x: torch.Tensor, weights: torch.Tensor, seg_indptr: torch.Tensor, weight_indices: torch.Tensor,
           lora_ranks: torch.Tensor, num_segments: int, permutation=None) -> torch.Tensor:
    """SGLang's LoRA-A (module docstring): x ``[tokens, hidden]``, weights ``[slots, slices * max_r, hidden]``
    -> ``[tokens, slices * max_r]`` in x's dtype (rows of rank-0 segments, and of tokens in no segment,
    unwritten, as SGLang's)."""
    _check_rows("x", x, 2, DTYPES)
    _check_rows("weights", weights, 3, (x.dtype,))
    if weights.shape[2] != x.shape[1] or weights.stride(1) != weights.shape[2]:
        raise ValueError(f"weights must be [slots, rows, hidden={x.shape[1]}] with contiguous rows, got "
                         f"{tuple(weights.shape)} strides {weights.stride()}")
    _check_tables(num_segments, weights.shape[0], seg_indptr, weight_indices, lora_ranks, permutation)
    check_same_device([("x", x), ("weights", weights), ("seg_indptr", seg_indptr), ("lora_ranks", lora_ranks)])
    out = torch.empty(x.shape[0], weights.shape[1], dtype=x.dtype, device=x.device)
    if x.shape[0] == 0 or num_segments == 0:
        return out
    kernels = kernels_module(__package__)
    config = _tuned_config(x.shape[0], x.shape[1], weights.shape[1], x.dtype, out, kernels)  # x's dtype: no K split
    kernels.launch(x, weights, out, seg_indptr, weight_indices, num_segments, True, config, row_index=permutation,
                   ranks=lora_ranks)
    return out


def lora_b(x: torch.Tensor, weights: torch.Tensor, output: torch.Tensor, seg_indptr: torch.Tensor,
           weight_indices: torch.Tensor, lora_ranks: torch.Tensor, scalings: torch.Tensor, num_segments: int,
           permutation=None, x_slice: int = 0) -> None:
    """SGLang's LoRA-B (module docstring), added into ``output`` ``[tokens, out]`` (a column slice of a wider
    tensor is fine): weights ``[slots, out, max_r]`` (a slice of SGLang's fused QKV or gate/up B is fine),
    x the LoRA-A output ``[tokens, >= (x_slice + 1) * max_r]``."""
    _check_rows("x", x, 2, DTYPES)
    _check_rows("weights", weights, 3, (x.dtype,))
    _check_rows("output", output, 2, (x.dtype,))
    max_r = weights.shape[2]
    if weights.stride(1) != max_r:
        raise ValueError(f"weights must be [slots, out, max_r] with contiguous rows, got strides {weights.stride()}")
    if x.shape[1] < (x_slice + 1) * max_r or x_slice < 0:
        raise ValueError(f"x_slice={x_slice} of max rank {max_r} needs x of >= {(x_slice + 1) * max_r} columns, got "
                         f"{x.shape[1]}")
    if tuple(output.shape) != (x.shape[0], weights.shape[1]):
        raise ValueError(f"output must be {(x.shape[0], weights.shape[1])}, got {tuple(output.shape)}")
    _check_tables(num_segments, weights.shape[0], seg_indptr, weight_indices, lora_ranks, permutation, scalings)
    check_same_device([("x", x), ("weights", weights), ("output", output), ("seg_indptr", seg_indptr),
                       ("lora_ranks", lora_ranks), ("scalings", scalings)])
    if x.shape[0] == 0 or num_segments == 0:
        return
    kernels = kernels_module(__package__)
    config = _tuned_config(x.shape[0], max_r, weights.shape[1], x.dtype, output, kernels)  # x's dtype: no K split
    kernels.launch(x, weights, output, seg_indptr, weight_indices, num_segments, True, config, row_index=permutation,
                   accumulate=True, ranks=lora_ranks, scales=scalings, x_slice=int(x_slice))
