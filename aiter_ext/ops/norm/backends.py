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
from aiter_ext.core.checks import DTYPES_BY_NAME
from aiter_ext.core.launch import kernels_module

from . import reference


def _bucket(call: Mapping) -> tuple:
    return (pow2_bucket(call["num_rows"]), call["hidden"], call["dtype"])


SHAPE_KEYS = ("num_rows", "hidden", "dtype")
#: A tuned tile serves other row counts, never another width: a tile is sized for its row (kernels.py).
RMSNORM = define_op("rmsnorm", SHAPE_KEYS, _bucket, exact_keys=("hidden", "dtype"))

#: What `aiter-ext tune rmsnorm` tries beside the heuristic (kernels.launch_config, the `{}` candidate): rows per
#: program and warps; the row tile (BLOCK_H) stays the heuristic's, from the width.
TRITON_TUNE_CONFIGS = [{}] + [{"BLOCK_R": r, "num_warps": w} for r in (1, 2, 4, 8) for w in (4, 8, 16)]


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
RMSNORM.register("triton", _triton, configs=TRITON_TUNE_CONFIGS)


# -- tuning: how `aiter-ext tune rmsnorm` builds and checks one shape ---------------------------------


def _tune_case(shape: Mapping, device: str):
    import torch

    from aiter_ext.core.testing import error_over_bound, poison_, tolerance
    from aiter_ext.core.tuner import TuneCase

    dtype = DTYPES_BY_NAME[shape["dtype"]]
    rows, hidden = shape["num_rows"], shape["hidden"]
    x = torch.randn(rows, hidden, device=device).to(dtype)
    w = torch.randn(hidden, device=device).to(dtype)
    ref = reference.rmsnorm_ref(x, w, 1e-6, False)
    out = torch.empty_like(x)

    def run(impl, cfg):
        impl.fn(cfg, x, None, w, out, 1e-6, False)

    def check(impl, cfg):
        poison_(out)
        run(impl, cfg)
        atol, rtol = tolerance(dtype)
        return error_over_bound(out, ref, atol, rtol)

    return TuneCase(run, check, tolerance=1.0, nbytes=2 * x.numel() * x.element_size() + w.numel() * w.element_size())


def _register_tuning():
    from aiter_ext.core.tuner import register_tune_target

    register_tune_target("rmsnorm", _tune_case)


_register_tuning()
