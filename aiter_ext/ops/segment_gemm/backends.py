"""Backend registrations for segment GEMM: ``triton`` (kernels.py) and ``torch`` (the fp32 reference; it
reads the segment bounds on the host, so it is not graph-capturable). Each implementation is
``fn(config, x, weights, out, seg_indptr, weight_indices, batch, weight_column_major)`` and writes the
segments' rows of ``out``."""

from __future__ import annotations

from typing import Mapping

from aiter_ext.core.arch import device_info
from aiter_ext.core.backend import define_op, pow2_bucket
from aiter_ext.core.launch import kernels_module

from . import reference


def _bucket(call: Mapping) -> tuple:
    return (pow2_bucket(call["num_rows"]), call["d_in"], call["d_out"], call["dtype"])


SEGMENT_GEMM = define_op("segment_gemm", ("num_rows", "d_in", "d_out", "dtype"), _bucket)


def _torch(config, x, weights, out, seg_indptr, weight_indices, batch, weight_column_major):
    bounds = seg_indptr.tolist()
    index = weight_indices.tolist() if weight_indices is not None else None
    ref = reference.segment_gemm_ref(x, weights, bounds, index, weight_column_major, out)
    out.copy_(ref)


def _triton(config, x, weights, out, seg_indptr, weight_indices, batch, weight_column_major):
    kernels_module(__package__).launch(x, weights, out, seg_indptr, weight_indices, batch, weight_column_major,
                                       config, device_info().cu_num)


SEGMENT_GEMM.register("torch", _torch)
SEGMENT_GEMM.register("triton", _triton)
