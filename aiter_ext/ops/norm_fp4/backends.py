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
from aiter_ext.core.checks import DTYPES_BY_NAME
from aiter_ext.core.launch import kernels_module

from . import reference


def _bucket(call: Mapping) -> tuple:
    return (pow2_bucket(call["num_tokens"]), call["hidden"], call["dtype"])


SHAPE_KEYS = ("num_tokens", "hidden", "dtype")
#: A tuned tile serves other token counts, never another width (the tile holds a whole row).
NORM_FP4 = define_op("norm_fp4", SHAPE_KEYS, _bucket, exact_keys=("hidden", "dtype"))

#: What `aiter-ext tune norm_fp4` tries beside the heuristic (kernels.launch_config, the `{}` candidate): rows per
#: program and warps; the row's width (BLOCK_N) stays the heuristic's. The kernel is ALU-bound on Hopper (the
#: E2M1 rounding in software), so the elements a thread holds, which these set, decide its speed.
TRITON_TUNE_CONFIGS = [{}] + [{"ROWS": r, "num_warps": w} for r in (1, 2, 4) for w in (4, 8, 16)]


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
NORM_FP4.register("triton", _triton_impl, _triton_supports, configs=TRITON_TUNE_CONFIGS)


# -- tuning: how `aiter-ext tune norm_fp4` builds and checks one shape --------------------------------

#: Bytes (codes and scales) a tuning candidate may write other than the reference's: a value within
#: rounding of an E2M1 or scale boundary may land on either side (test_norm_fp4's assert_codes_match
#: bounds where); a wrong tile writes most bytes wrong.
TUNE_BYTE_MISMATCH = 1e-3


def _tune_case(shape: Mapping, device: str):
    """FlashInfer's rmsnorm_fp4quant (NVFP4: e4m3 scales of 16-element blocks, linear layout, a global
    scale), the call the issue-18 table times."""
    import torch

    from aiter_ext.core.tuner import TuneCase

    from .layout import scale_padding

    dtype = DTYPES_BY_NAME[shape["dtype"]]
    rows, hidden = shape["num_tokens"], shape["hidden"]
    x = torch.randn(rows, hidden, device=device).to(dtype)
    w = torch.randn(hidden, device=device).to(dtype)
    # FlashInfer's global scale for NVFP4: 448 * 6 over the amax of what is quantized (the normalised rows)
    gs = (448.0 * 6.0 / reference.rmsnorm_fp32_ref(x, w, 1e-6)[0].abs().amax()).reshape(1)
    q = torch.empty(rows, hidden // 2, dtype=torch.uint8, device=device)
    sf = torch.empty(rows, scale_padding(rows, hidden // 16, "linear")[1], dtype=torch.uint8, device=device)
    q_ref, sf_ref, _ = reference.norm_fp4_quant_ref(x, w, None, gs, 1e-6, True, 16, "e4m3", "linear")
    sf_ref = sf_ref.reshape(sf.shape)

    def run(impl, cfg):
        impl.fn(cfg, x, None, w, gs, q, sf, None, 1e-6, True, 16, "e4m3", "linear")

    def check(impl, cfg):
        wrong = 0
        for fill in (0x00, 0xFF):  # every byte is some pair of codes: a byte left unwritten equals one of these
            q.fill_(fill), sf.fill_(fill)
            run(impl, cfg)
            wrong = max(wrong, int((q != q_ref).sum()) + int((sf != sf_ref).sum()))
        return wrong / (q.numel() + sf.numel()) / TUNE_BYTE_MISMATCH

    return TuneCase(run, check, tolerance=1.0, nbytes=x.numel() * x.element_size() + q.numel() + sf.numel())


def _register_tuning():
    from aiter_ext.core.tuner import register_tune_target

    register_tune_target("norm_fp4", _tune_case)


_register_tuning()
