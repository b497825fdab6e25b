"""Backend registrations for the RMSNorm family.

One op for the dispatcher, ``rmsnorm``, serving all four public functions: the call says whether the
residual is fused (``fused_add``) and whether the weight is Gemma's ``(1 + w)``. Backends: ``triton``
and ``torch`` (the fp32 reference). Every implementation has the signature
``fn(config, input, residual, weight, out, eps, gemma)`` and writes into ``out`` (the plain forms) or
into ``input`` and ``residual`` (the fused forms, where ``residual`` is not None and ``out is input``).
"""

from __future__ import annotations

from typing import Mapping

from aiter_ext.core.arch import get_arch
from aiter_ext.core.backend import define_op, pow2_bucket
from aiter_ext.core.launch import kernels_module

from . import reference


def _bucket(call: Mapping) -> tuple:
    return (pow2_bucket(call["num_rows"]), call["hidden"], call["dtype"])


SHAPE_KEYS = ("num_rows", "hidden", "dtype")
RMSNORM = define_op("rmsnorm", SHAPE_KEYS, _bucket)


def _torch(config, input, residual, weight, out, eps, gemma):
    if residual is None:
        out.copy_(reference.rmsnorm_ref(input, weight, eps, gemma))
        return
    normed, new_residual = reference.fused_add_rmsnorm_ref(input, residual, weight, eps, gemma)
    residual.copy_(new_residual)
    out.copy_(normed)


def _triton(config, input, residual, weight, out, eps, gemma):
    kernels_module(__package__).launch(input, residual, weight, out, eps, gemma, config, get_arch())


RMSNORM.register("torch", _torch)
RMSNORM.register("triton", _triton)
