"""Backend registrations for segment GEMM: ``triton`` (kernels.py) and ``torch`` (the fp32 reference; it
reads the segment bounds on the host, so it is not graph-capturable). Each implementation is
``fn(config, x, weights, out, segments, weight_indices, batch, weight_column_major, workspace=None,
seg_lens=False)`` and writes the segments' rows of ``out``; ``segments`` is the int64 seg_indptr, or the
lengths where ``seg_lens``; ``workspace`` (bytes: SegmentGEMMWrapper's buffer) lets the Triton kernel
split K for a product of few output tiles."""

from __future__ import annotations

from typing import Mapping

import torch

from aiter_ext.core.arch import device_info
from aiter_ext.core.backend import define_op, pow2_bucket
from aiter_ext.core.checks import DTYPES_BY_NAME
from aiter_ext.core.launch import kernels_module

from . import reference


def _bucket(call: Mapping) -> tuple:
    return (pow2_bucket(call["num_rows"]), call["d_in"], call["d_out"], call["dtype"])


SEGMENT_GEMM = define_op("segment_gemm", ("num_rows", "d_in", "d_out", "dtype"), _bucket)


def _torch(config, x, weights, out, segments, weight_indices, batch, weight_column_major, workspace=None,
           seg_lens=False):
    bounds = [0, *segments.cumsum(0).tolist()] if seg_lens else segments.tolist()
    index = weight_indices.tolist() if weight_indices is not None else None
    ref = reference.segment_gemm_ref(x, weights, bounds, index, weight_column_major, out)
    out.copy_(ref)


def _triton(config, x, weights, out, segments, weight_indices, batch, weight_column_major, workspace=None,
            seg_lens=False):
    kernels = kernels_module(__package__)
    d_out = out.shape[1]
    split = kernels.split_k(x.shape[0], x.shape[1], d_out, config or {}, device_info().cu_num,
                            slabs=out.dtype != torch.float32)
    # the split's fp32 slabs must fit the workspace (none: the functional form), else one pass
    if workspace is None or kernels.partials_bytes(split, x.shape[0], d_out) > workspace.numel():
        split = 1
    kernels.launch(x, weights, out, segments, weight_indices, batch, weight_column_major,
                   {**(config or {}), "SPLIT_K": split}, workspace=workspace, seg_lens=seg_lens)


#: what `aiter-ext tune segment_gemm` tries per shape (kernels.default_config is the untuned choice); each is
#: in the AMD compile check (kernels.aot_specs). Without SPLIT_K, kernels.split_k picks the K split (a
#: skinny product of a few row tiles splits); the last three fix it, so that the tuner weighs the split.
#: 32 x 128 tiles: a rank-128 GEMM of 4096 rows (1.37-1.42x FlashInfer on an H100 at 64 x 128) in twice the
#: programs without reading x twice.
TRITON_TUNE_CONFIGS = [
    {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "num_warps": w}
    for m, n, k, w in ((16, 16, 128, 4), (16, 64, 64, 4), (32, 16, 64, 4), (64, 16, 64, 4), (128, 16, 64, 4), (64, 16, 128, 4), (32, 64, 64, 4),
                       (64, 64, 64, 4), (64, 128, 32, 4), (64, 128, 64, 8), (128, 128, 32, 8), (128, 64, 64, 8),
                       (32, 128, 64, 4))
] + [{"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": k, "num_warps": 4, "SPLIT_K": split}
     for k, split in ((64, 1), (128, 1), (64, 4))]

SEGMENT_GEMM.register("torch", _torch)
SEGMENT_GEMM.register("triton", _triton, configs=TRITON_TUNE_CONFIGS)


# -- tuning: how `aiter-ext tune segment_gemm` builds and checks one shape -----------------------------


def _tune_case(shape: dict, device: str):
    """A LoRA-like call: up to 8 equal segments (the last takes the rest), column-major weights."""
    import torch

    from aiter_ext.core.testing import error_over_bound, poison_, tolerance
    from aiter_ext.core.tuner import TuneCase

    dtype = DTYPES_BY_NAME[shape["dtype"]]
    rows, d_in, d_out = shape["num_rows"], shape["d_in"], shape["d_out"]
    segments = min(8, rows)
    bounds = [rows * s // segments for s in range(segments + 1)]
    x = torch.randn(rows, d_in, device=device).to(dtype)
    weights = (torch.randn(segments, d_out, d_in, device=device) / d_in ** 0.5).to(dtype)
    seg_indptr = torch.tensor(bounds, dtype=torch.int64, device=device)
    out = torch.empty(rows, d_out, dtype=dtype, device=device)
    ref = reference.segment_gemm_ref(x, weights, bounds, None, True)
    workspace = torch.empty(128 << 20, dtype=torch.uint8, device=device)  # FlashInfer's usual size

    def run(impl, cfg):
        impl.fn(cfg, x, weights, out, seg_indptr, None, segments, True, workspace=workspace)

    def check(impl, cfg):
        poison_(out)
        run(impl, cfg)
        atol, rtol = tolerance(dtype)
        return error_over_bound(out, ref, atol, rtol)

    nbytes = (x.numel() + weights.numel() + out.numel()) * x.element_size()
    return TuneCase(run, check, tolerance=1.0, nbytes=nbytes, flops=2 * rows * d_in * d_out)


def _register_tuning():
    from aiter_ext.core.tuner import register_tune_target

    register_tune_target("segment_gemm", _tune_case)


_register_tuning()
