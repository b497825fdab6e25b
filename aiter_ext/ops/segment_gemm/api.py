"""Segment GEMM: FlashInfer 0.7.2's ``SegmentGEMMWrapper(float_workspace_buffer, backend="auto").run(x, weights,
batch_size, weight_column_major, out=None, seg_lens=None, seg_indptr=None, weight_indices=None)``.

``y[seg_indptr[i]:seg_indptr[i+1]] = x[same rows] @ W[weight_indices[i]]`` (``W^T`` when
``weight_column_major``: weights ``[num_weights, d_out, d_in]``, else ``[num_weights, d_in, d_out]``).
Differences from FlashInfer, both on purpose: ``seg_lens`` stay exact integers (FlashInfer converts them
through x's dtype, so bf16 rounds 257 to 256), and weight indices given on the host are checked
(device ones are clamped into the weights in the kernel: reading them would be a sync). An output
allocated here is zero-filled, so rows of x outside every segment give 0, as FlashInfer's do.
"""

from __future__ import annotations

from typing import Optional

import torch

from aiter_ext.core.checks import as_workspace, check_same_device, check_tensor, dtype_name

from .backends import SEGMENT_GEMM

DTYPES = (torch.float16, torch.bfloat16)
#: FlashInfer's backend names (its CUTLASS sm80/sm90 paths) mean ours
BACKENDS = {"auto": None, "sm80": None, "sm90": None, "triton": "triton", "torch": "torch"}


def _segment_table(batch_size: int, seg_lens, seg_indptr, num_rows: int, device) -> tuple[torch.Tensor, bool]:
    """``(table, holds_lengths)`` on ``device``: ``seg_indptr`` (int64), or ``seg_lens`` as they are (int32 or
    int64: the kernel sums them, so no cumulative sum is launched here). Host tensors are checked (no
    sync); device ones are bounded in the kernel."""
    if seg_indptr is None and seg_lens is None:
        raise ValueError("either seg_lens or seg_indptr must be given")
    name = "seg_indptr" if seg_indptr is not None else "seg_lens"
    given = seg_indptr if seg_indptr is not None else seg_lens
    check_tensor(name, given, ndim=1, dtypes=(torch.int32, torch.int64))
    want = batch_size + 1 if seg_indptr is not None else batch_size
    if given.shape[0] != want:
        raise ValueError(f"{name} must have {want} entries for batch_size={batch_size}, got {given.shape[0]}")
    if given.device.type == "cpu":
        bounds = given.to(torch.int64) if seg_indptr is not None else \
            torch.cat([torch.zeros(1, dtype=torch.int64), given.to(torch.int64).cumsum(0)])
        if (batch_size and int(bounds[0]) < 0) or bool((bounds[1:] < bounds[:-1]).any()) or \
                (batch_size and int(bounds[-1]) > num_rows):
            raise ValueError(f"{name} must give nondecreasing segment bounds from 0 within x's {num_rows} rows, "
                             f"got {name} {given.tolist()[:8]}{'...' if len(given) > 8 else ''}")
    if seg_indptr is None:
        return given.to(device), True
    return given.to(device, torch.int64), False


def segment_gemm(x: torch.Tensor, weights: torch.Tensor, batch_size: int, weight_column_major: bool,
                 out: Optional[torch.Tensor] = None, seg_lens=None, seg_indptr=None, weight_indices=None,
                 backend: Optional[str] = None, workspace: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The functional form of ``SegmentGEMMWrapper.run`` (module docstring). ``workspace`` (bytes) lets a
    product of few output tiles split K: SegmentGEMMWrapper passes its buffer."""
    check_tensor("x", x, ndim=2, dtypes=DTYPES)
    check_tensor("weights", weights, ndim=3, dtypes=(x.dtype,))
    check_same_device([("x", x), ("weights", weights)])
    for name, t in (("x", x), ("weights", weights)):
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (the kernel takes its sizes as constants, not strides)")
    d_in = weights.shape[2] if weight_column_major else weights.shape[1]
    d_out = weights.shape[1] if weight_column_major else weights.shape[2]
    if x.shape[1] != d_in:
        raise ValueError(f"x has {x.shape[1]} columns but weights{' (column major)' if weight_column_major else ''} "
                         f"of shape {tuple(weights.shape)} take d_in={d_in}")
    if batch_size < 0:
        raise ValueError(f"batch_size must be non-negative, got {batch_size}")
    segments, lengths = _segment_table(int(batch_size), seg_lens, seg_indptr, x.shape[0], x.device)
    if weight_indices is not None:
        check_tensor("weight_indices", weight_indices, ndim=1, dtypes=(torch.int32, torch.int64))
        if weight_indices.shape[0] != batch_size:
            raise ValueError(f"weight_indices must have batch_size={batch_size} entries, got {weight_indices.shape[0]}")
        if weight_indices.device.type == "cpu" and weight_indices.numel():
            low, high = int(weight_indices.min()), int(weight_indices.max())
            if low < 0 or high >= weights.shape[0]:
                raise ValueError(f"weight_indices must lie in [0, {weights.shape[0]}) (the weights given), got values "
                                 f"in [{low}, {high}]")
        weight_indices = weight_indices.to(x.device, torch.int64)
    elif batch_size > weights.shape[0]:
        raise ValueError(f"without weight_indices segment i uses weight i: batch_size={batch_size} needs that many "
                         f"weights, got {weights.shape[0]}")
    if out is None:
        out = torch.zeros(x.shape[0], d_out, dtype=x.dtype, device=x.device)
    else:
        check_tensor("out", out, ndim=2, dtypes=(x.dtype,))
        if tuple(out.shape) != (x.shape[0], d_out):
            raise ValueError(f"out must be {(x.shape[0], d_out)}, got {tuple(out.shape)}")
        if not out.is_contiguous():
            raise ValueError("out must be contiguous")
        check_same_device([("x", x), ("out", out)])
    if batch_size == 0 or x.shape[0] == 0 or d_out == 0:
        return out
    call = {"num_rows": x.shape[0], "d_in": d_in, "d_out": d_out, "dtype": dtype_name(x.dtype),
            "device": x.device.type}
    choice = SEGMENT_GEMM.select(call, backend)
    choice.impl.fn(choice.config, x, weights, out, segments, weight_indices, int(batch_size), bool(weight_column_major),
                   workspace=workspace, seg_lens=lengths)
    return out


class SegmentGEMMWrapper:
    """FlashInfer 0.7.2's ``SegmentGEMMWrapper`` (module docstring). The workspace (any dtype, taken as
    bytes) holds the fp32 partial products when a skinny product splits K (kernels.split_k); one too small
    for that only means no split. Calls on one wrapper must not overlap on different streams."""

    def __init__(self, float_workspace_buffer: torch.Tensor, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}: SegmentGEMMWrapper takes {sorted(BACKENDS)}")
        self.reset_workspace_buffer(float_workspace_buffer)
        self.backend = backend

    def reset_workspace_buffer(self, float_workspace_buffer, int_workspace_buffer=None) -> None:
        self._workspace = as_workspace("float_workspace_buffer", float_workspace_buffer)

    def run(self, x, weights, batch_size, weight_column_major, out=None, seg_lens=None, seg_indptr=None,
            weight_indices=None) -> torch.Tensor:
        return segment_gemm(x, weights, batch_size, weight_column_major, out, seg_lens, seg_indptr, weight_indices,
                            BACKENDS[self.backend], workspace=self._workspace)

    forward = run
