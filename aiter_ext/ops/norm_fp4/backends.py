"""Backend registrations for RMSNorm fused with FP4 quantization.

One op for the dispatcher, ``norm_fp4``: every public function (FlashInfer's NVFP4/MXFP4 and
AITER's MXFP4, fused or the standalone quantizer) is one call of it, with the flags in the call.
Backends: ``triton`` (one kernel with constexpr flags) and ``torch`` (the fp32 reference, written
into the outputs). Each implementation takes the selected config first, then
``(x, residual, weight, global_scale, q, sf, res_out, eps, norm, block_size, scale_rule, layout)``,
all outputs given as uint8 views (``res_out`` in ``x.dtype``).
"""

from __future__ import annotations

from typing import Mapping

from aiter_ext.core.backend import define_op, pow2_bucket
from aiter_ext.core.launch import kernels_module

from . import reference


def _bucket(call: Mapping) -> tuple:
    return (pow2_bucket(call["num_tokens"]), call["hidden"], call["dtype"])


SHAPE_KEYS = ("num_tokens", "hidden", "dtype")
NORM_FP4 = define_op("norm_fp4", SHAPE_KEYS, _bucket)


def _torch_impl(config, x, residual, weight, global_scale, q, sf, res_out, eps, norm, block_size, scale_rule,
                layout):
    codes, scales, res = reference.norm_fp4_quant_ref(x, weight, residual, global_scale, eps, norm, block_size,
                                                      scale_rule, layout)
    q.copy_(codes)
    sf.copy_(scales.reshape(sf.shape))
    if res_out is not None:
        res_out.copy_(res)


def _triton_supports(call: Mapping) -> tuple[bool, str]:
    from .kernels import MAX_HIDDEN

    if call["hidden"] > MAX_HIDDEN:
        return False, f"the Triton kernel keeps a whole row in registers: hidden <= {MAX_HIDDEN}, got {call['hidden']}"
    return True, ""


def _triton_impl(config, x, residual, weight, global_scale, q, sf, res_out, eps, norm, block_size, scale_rule,
                 layout):
    kernels_module(__package__).launch(x, residual, weight, global_scale, q, sf, res_out, eps, norm, block_size,
                                       scale_rule, layout, config)


NORM_FP4.register("torch", _torch_impl)
NORM_FP4.register("triton", _triton_impl, _triton_supports)
