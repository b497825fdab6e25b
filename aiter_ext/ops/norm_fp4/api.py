"""RMSNorm fused with FP4 quantization: FlashInfer's ``rmsnorm_fp4quant``, ``add_rmsnorm_fp4quant`` and
``fp4_quantize`` (NVFP4, or MXFP4 with ``block_size=32``), and AITER-style ``rmsnorm_mxfp4_quant`` and
``mxfp4_quantize`` whose bytes are those AITER's ``fused_rms_mxfp4_quant``/``dynamic_mxfp4_quant``
produce, so its FP4 GEMMs consume them directly.

Layering as in ``merge_state``: public functions validate and allocate; ``_quant_out`` and
``_quant_add_in_place`` write into given outputs through the selected backend, and are torch custom
ops for ``torch.compile`` (eager calls skip that layer).
"""

from __future__ import annotations

from typing import Optional

import torch

from aiter_ext.core.checks import check_same_device, check_shape, check_tensor, dtype_name
from aiter_ext.core.custom_ops import mutating_ops
from aiter_ext.core.plans import CallPlans

from .backends import NORM_FP4
from .layout import scale_padding

HALF = (torch.float16, torch.bfloat16)
FP4_DTYPE = getattr(torch, "float4_e2m1fn_x2", torch.uint8)
#: FlashInfer's fused kernels need at least this hidden size.
MIN_HIDDEN = 64


# --------------------------------------------------------------------------------------------------
# Dispatch (the custom ops' bodies).


def _dispatch(x, residual, weight, global_scale, q, sf, res_out, eps, norm, block_size, scale_rule, layout, backend):
    call = {"num_tokens": x.shape[0], "hidden": x.shape[1], "dtype": dtype_name(x.dtype), "device": x.device.type}
    choice = NORM_FP4.select(call, backend)
    choice.impl.fn(choice.config, x, residual, weight, global_scale, q, sf, res_out, eps, norm, block_size,
                   scale_rule, layout)


def _quant_out(x: torch.Tensor, residual: Optional[torch.Tensor], weight: Optional[torch.Tensor],
               global_scale: Optional[torch.Tensor], q: torch.Tensor, sf: torch.Tensor,
               res_out: Optional[torch.Tensor], eps: float, norm: bool, block_size: int, scale_rule: str,
               layout: str, backend: Optional[str]) -> None:
    _dispatch(x, residual, weight, global_scale, q, sf, res_out, eps, norm, block_size, scale_rule, layout, backend)


def _quant_add_in_place(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                        global_scale: Optional[torch.Tensor], q: torch.Tensor, sf: torch.Tensor, eps: float,
                        block_size: int, scale_rule: str, layout: str, backend: Optional[str]) -> None:
    _dispatch(x, residual, weight, global_scale, q, sf, residual, eps, True, block_size, scale_rule, layout, backend)


_call = mutating_ops({
    _quant_out: ("norm_fp4_quant_out", ("q", "sf", "res_out")),
    _quant_add_in_place: ("add_norm_fp4_quant_in_place", ("residual", "q", "sf")),
})


# --------------------------------------------------------------------------------------------------
# Validation (metadata only, before anything is allocated or written).


def _rows(name: str, t: torch.Tensor) -> torch.Tensor:
    """``t [..., H]`` as ``[rows, H]``; the last dimension must be packed."""
    if t.dim() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension, got strides {tuple(t.stride())}")
    return t.reshape(-1, t.shape[-1])


def _check_hidden(name: str, hidden: int, block_size: int, minimum: int) -> None:
    if hidden % block_size:
        raise ValueError(f"{name}: hidden size {hidden} must be divisible by block_size {block_size}")
    if hidden < minimum:
        raise ValueError(f"{name}: hidden size {hidden} must be at least {minimum}")


def _check_weight(weight, hidden: int, dtypes) -> None:
    check_tensor("weight", weight, ndim=1, dtypes=dtypes)
    check_shape("weight", weight, (hidden,), "[hidden_size]")


def _check_global_scale(global_scale) -> None:
    if global_scale is not None:
        check_tensor("global_scale", global_scale, ndim=1, dtypes=(torch.float32,))
        check_shape("global_scale", global_scale, (1,), "a one-element fp32 tensor")


def _check_out(name: str, t, shape, dtypes) -> None:
    check_tensor(name, t, dtypes=dtypes)
    check_shape(name, t, shape, "the shape this call writes")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _scale_rule(block_size: int, scale_format: Optional[str]) -> str:
    if block_size not in (16, 32):
        raise ValueError(f"block_size must be 16 or 32, got {block_size}")
    fmt = scale_format if scale_format is not None else ("ue8m0" if block_size == 32 else "e4m3")
    if fmt not in ("e4m3", "ue8m0"):
        raise ValueError(f"scale_format must be 'e4m3', 'ue8m0' or None, got {scale_format!r}")
    return fmt


def _flashinfer_outputs(input, y_fp4, block_scale, block_size, rule, swizzled):
    """Check or allocate ``y_fp4`` and ``block_scale``; return them with their uint8 2-D/flat views."""
    lead, hidden = tuple(input.shape[:-1]), input.shape[-1]
    n_rows, n_blocks = int(torch.Size(lead).numel()), hidden // block_size
    sf_dtype = torch.float8_e4m3fn if rule == "e4m3" else torch.uint8
    if swizzled:
        pad_rows, pad_blocks = scale_padding(n_rows, n_blocks, "swizzled")
        sf_shape = (pad_rows * pad_blocks,)
    else:
        sf_shape = lead + (n_blocks,)
    if y_fp4 is not None:
        _check_out("y_fp4", y_fp4, lead + (hidden // 2,), (FP4_DTYPE, torch.uint8))
    if block_scale is not None:
        _check_out("block_scale", block_scale, sf_shape, (sf_dtype, torch.uint8))
    if y_fp4 is None:
        y_fp4 = torch.empty(lead + (hidden // 2,), dtype=FP4_DTYPE, device=input.device)
    if block_scale is None:
        block_scale = torch.empty(sf_shape, dtype=sf_dtype, device=input.device)
    q = y_fp4.view(torch.uint8).view(-1, hidden // 2)
    sf = block_scale.view(torch.uint8)
    return y_fp4, block_scale, q, (sf if swizzled else sf.view(-1, n_blocks))


def _check_flashinfer(input, weight, global_scale, block_size, scale_format, minimum=MIN_HIDDEN):
    check_tensor("input", input, dtypes=HALF)
    if input.dim() not in (2, 3):
        raise ValueError(f"input must be [batch, hidden] or [batch, seq_len, hidden], got {tuple(input.shape)}")
    rule = _scale_rule(block_size, scale_format)
    _check_hidden("input", input.shape[-1], block_size, minimum)
    _check_weight(weight, input.shape[-1], (input.dtype,))
    _check_global_scale(global_scale)
    check_same_device([("input", input), ("weight", weight)] +
                      ([("global_scale", global_scale)] if global_scale is not None else []))
    return rule


def _global_scale(global_scale, rule: str, device):
    """What the kernel gets as the global scale: only NVFP4 (e4m3) reads one, so the MXFP4 rules pass
    None rather than a fresh tensor (an allocation and a fill launch per call); NVFP4 without one uses
    FlashInfer's default, 1.0."""
    if global_scale is not None or rule != "e4m3":
        return global_scale
    return torch.ones(1, dtype=torch.float32, device=device)


# --------------------------------------------------------------------------------------------------
# FlashInfer API.

#: Call plans (core/plans.py) of rmsnorm_fp4quant: eager calls replayed from a recorded one of the same kind.
PLANS = CallPlans("rmsnorm_fp4quant")


def rmsnorm_fp4quant(input: torch.Tensor, weight: torch.Tensor, y_fp4: Optional[torch.Tensor] = None,
                     block_scale: Optional[torch.Tensor] = None, global_scale: Optional[torch.Tensor] = None,
                     eps: float = 1e-6, block_size: int = 16, scale_format: Optional[str] = None,
                     is_sf_swizzled_layout: bool = False, enable_pdl: Optional[bool] = None, *,
                     backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""RMSNorm then FP4 quantization in one pass (FlashInfer's ``rmsnorm_fp4quant``).

    ``y = (x * rsqrt(mean(x^2) + eps)) * w`` in fp32, then per block of ``block_size`` values:
    NVFP4 (``"e4m3"``): ``sf = e4m3(min(gs * amax / 6, 448))``, codes ``round_e2m1(y * gs / sf)``
    (the global scale **multiplies**; dequantize as ``q * sf / gs``); MXFP4 (``"ue8m0"``): scale
    ``2^ceil(log2(amax / 6))`` as a biased exponent byte, ``global_scale`` ignored. E2M1 rounding is to
    nearest, ties to even, saturating at 6; two codes per byte, the even element in the low nibble.

    Parameters
    ----------
    input : torch.Tensor
        ``[batch, hidden]`` or ``[batch, seq_len, hidden]``, fp16/bf16, last dim packed; hidden a
        multiple of ``block_size`` and at least 64.
    weight : torch.Tensor
        ``[hidden]``, same dtype as ``input``.
    y_fp4, block_scale : torch.Tensor, optional
        Outputs to write: ``y_fp4 [..., hidden/2]`` ``float4_e2m1fn_x2`` (or uint8); ``block_scale``
        ``[..., hidden/block_size]`` (linear) or flat ``[ceil(rows/128)*128 * ceil(hidden/block_size/4)*4]``
        (swizzled), ``float8_e4m3fn`` for e4m3 or uint8.
    global_scale : torch.Tensor, optional
        fp32 ``[1]`` (NVFP4 only); ``None`` means 1.0.
    eps, block_size, scale_format, is_sf_swizzled_layout
        As FlashInfer: ``block_size`` 16 or 32; ``scale_format`` defaults to ``"e4m3"`` for 16 and
        ``"ue8m0"`` for 32. Swizzled scale ``(row, k)`` lies at ``(row//128)*(kTiles*512) +
        (k//4)*512 + (row%32)*16 + ((row%128)//32)*4 + k%4``; its pad bytes are written as 0.
    enable_pdl : bool, optional
        Accepted for FlashInfer compatibility; ignored.
    backend : str, optional
        ``"triton"`` or ``"torch"``; ``None``/``"auto"`` selects.

    Returns
    -------
    (y_fp4, block_scale)

    Examples
    --------
    >>> import torch, aiter_ext.ops.norm_fp4 as nf
    >>> from aiter_ext.ops.norm_fp4.reference import rmsnorm_fp4quant_ref
    >>> x, w = torch.randn(3, 128, dtype=torch.bfloat16), torch.rand(128, dtype=torch.bfloat16) + 0.5
    >>> y, sf = nf.rmsnorm_fp4quant(x, w)
    >>> y_ref, sf_ref = rmsnorm_fp4quant_ref(x, w)
    >>> bool((sf.view(torch.uint8) == sf_ref).all()), (y.view(torch.uint8) != y_ref).float().mean().item() < 0.01
    (True, True)
    """
    key, plan = PLANS.find(input, weight, y_fp4, block_scale, global_scale, eps, block_size, scale_format,
                           is_sf_swizzled_layout, backend)
    # with a plan, validation is skipped (the plan exists because a call of this key passed it)
    rule = _scale_rule(block_size, scale_format) if plan else _check_flashinfer(input, weight, global_scale,
                                                                                block_size, scale_format)
    y_fp4, block_scale, q, sf = _flashinfer_outputs(input, y_fp4, block_scale, block_size, rule,
                                                    is_sf_swizzled_layout)
    gs = _global_scale(global_scale, rule, input.device)
    if plan:
        plan(input, weight, gs, y_fp4, block_scale)
    else:
        PLANS.recorded(key, (input, weight, gs, y_fp4, block_scale), _call, _quant_out, _rows("input", input), None,
                       weight, gs, q, sf, None, float(eps), True, block_size, rule,
                       "swizzled" if is_sf_swizzled_layout else "linear", backend)
    return y_fp4, block_scale


def add_rmsnorm_fp4quant(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                         y_fp4: Optional[torch.Tensor] = None, block_scale: Optional[torch.Tensor] = None,
                         global_scale: Optional[torch.Tensor] = None, eps: float = 1e-6, block_size: int = 16,
                         scale_format: Optional[str] = None, is_sf_swizzled_layout: bool = False,
                         enable_pdl: Optional[bool] = None, *, backend: Optional[str] = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``residual = input + residual`` (in place), then :func:`rmsnorm_fp4quant` of that sum.

    The sum is formed in fp32 and normalised unrounded; ``residual`` receives it rounded to its dtype.

    Parameters
    ----------
    input : torch.Tensor
        As in :func:`rmsnorm_fp4quant`.
    residual : torch.Tensor
        Same shape and dtype as ``input``, contiguous; **overwritten** with ``input + residual``.
    weight, y_fp4, block_scale, global_scale, eps, block_size, scale_format, is_sf_swizzled_layout, enable_pdl, backend
        As in :func:`rmsnorm_fp4quant`.

    Note
    ----
    Mutates ``residual`` (and ``y_fp4``/``block_scale`` when given). Nothing is written when validation fails.

    Examples
    --------
    >>> import torch, aiter_ext.ops.norm_fp4 as nf
    >>> from aiter_ext.ops.norm_fp4.reference import add_rmsnorm_fp4quant_ref
    >>> x, r = torch.randn(2, 4, 64, dtype=torch.float16), torch.randn(2, 4, 64, dtype=torch.float16)
    >>> w = torch.rand(64, dtype=torch.float16) + 0.5
    >>> y_ref, sf_ref, r_ref = add_rmsnorm_fp4quant_ref(x, r, w, block_size=32)
    >>> y, sf = nf.add_rmsnorm_fp4quant(x, r, w, block_size=32)
    >>> bool((r == r_ref).all()), bool((sf == sf_ref).all())
    (True, True)
    """
    rule = _check_flashinfer(input, weight, global_scale, block_size, scale_format)
    check_tensor("residual", residual, dtypes=(input.dtype,))
    check_shape("residual", residual, input.shape, "the shape of input")
    check_same_device([("input", input), ("residual", residual)])
    if not residual.is_contiguous():
        raise ValueError("residual is written in place and must be contiguous")
    y_fp4, block_scale, q, sf = _flashinfer_outputs(input, y_fp4, block_scale, block_size, rule,
                                                    is_sf_swizzled_layout)
    gs = _global_scale(global_scale, rule, input.device)
    _call(_quant_add_in_place, _rows("input", input), residual.view(-1, residual.shape[-1]), weight, gs, q, sf,
          float(eps), block_size, rule, "swizzled" if is_sf_swizzled_layout else "linear", backend)
    return y_fp4, block_scale


def fp4_quantize(input: torch.Tensor, global_scale: Optional[torch.Tensor] = None, sf_vec_size: int = 16,
                 sf_use_ue8m0: bool = False, is_sf_swizzled_layout: bool = True, is_sf_8x4_layout: bool = False,
                 enable_pdl: Optional[bool] = None, *, backend: Optional[str] = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""FP4 quantization without the norm (FlashInfer's ``fp4_quantize``; the same kernel, NORM off).

    Parameters
    ----------
    input : torch.Tensor
        ``[M, K]`` fp16/bf16, last dim packed; ``K`` a multiple of ``sf_vec_size``.
    global_scale : torch.Tensor, optional
        fp32 ``[1]``; ``None`` means 1.0 (ignored with ``sf_use_ue8m0``).
    sf_vec_size : int
        16 or 32.
    sf_use_ue8m0 : bool
        UE8M0 (MXFP4) scales instead of e4m3.
    is_sf_swizzled_layout : bool
        FlashInfer's 128x4 layout (the default here, as in FlashInfer), flat; else ``[M, K/sf_vec_size]``.
    is_sf_8x4_layout : bool
        Not supported (raises ``ValueError``).
    enable_pdl, backend
        ``enable_pdl`` is ignored; ``backend`` as in :func:`rmsnorm_fp4quant`.

    Returns
    -------
    (uint8 ``[M, K/2]`` codes, uint8 scales)

    Examples
    --------
    >>> import torch, aiter_ext.ops.norm_fp4 as nf
    >>> from aiter_ext.ops.norm_fp4.reference import fp4_quantize_ref
    >>> x, gs = torch.randn(5, 64, dtype=torch.bfloat16), torch.tensor([448 * 6 / 4.0])
    >>> q, sf = nf.fp4_quantize(x, gs)
    >>> q_ref, sf_ref = fp4_quantize_ref(x, gs)
    >>> bool((q == q_ref).all()), bool((sf == sf_ref).all())
    (True, True)
    """
    check_tensor("input", input, ndim=2, dtypes=HALF)
    if sf_vec_size not in (16, 32):
        raise ValueError(f"sf_vec_size must be 16 or 32, got {sf_vec_size}")
    if is_sf_8x4_layout:
        raise ValueError("is_sf_8x4_layout=True is not supported by aiter_ext")
    _check_hidden("input", input.shape[1], sf_vec_size, sf_vec_size)
    _check_global_scale(global_scale)
    if global_scale is not None:
        check_same_device([("input", input), ("global_scale", global_scale)])
    rule = "ue8m0" if sf_use_ue8m0 else "e4m3"
    m, k = input.shape
    layout = "swizzled" if is_sf_swizzled_layout else "linear"
    pad_rows, pad_blocks = scale_padding(m, k // sf_vec_size, layout)
    q = torch.empty((m, k // 2), dtype=torch.uint8, device=input.device)
    sf = torch.empty((pad_rows * pad_blocks,) if is_sf_swizzled_layout else (m, k // sf_vec_size),
                     dtype=torch.uint8, device=input.device)
    gs = _global_scale(global_scale, rule, input.device)
    _call(_quant_out, _rows("input", input), None, None, gs, q, sf, None, 0.0, False, sf_vec_size, rule, layout,
          backend)
    return q, sf


# --------------------------------------------------------------------------------------------------
# AITER-style API (MXFP4 bytes as AITER lays them out).


def _check_aiter_x(name, x):
    check_tensor(name, x, ndim=2, dtypes=HALF + (torch.float32,))
    _check_hidden(name, x.shape[1], 32, 32)


def _aiter_outputs(x, shuffle):
    m, n = x.shape
    layout = "shuffled" if shuffle else "linear"
    pad_rows, pad_blocks = scale_padding(m, n // 32, layout)
    q = torch.empty((m, n // 2), dtype=torch.uint8, device=x.device)
    sf = torch.empty((pad_rows, pad_blocks), dtype=torch.uint8, device=x.device)
    return q, sf, layout


def rmsnorm_mxfp4_quant(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                        residual: Optional[torch.Tensor] = None, shuffle: bool = False, *,
                        backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    r"""RMSNorm then MXFP4 quantization with AITER's rules (``fused_rms_mxfp4_quant``'s bytes).

    Norm in fp32, not rounded before quantizing; per 32 values the scale byte is
    ``floor(log2(amax rounded up at its 3rd mantissa bit)) - 2 + 127`` and E2M1 rounding is to nearest,
    ties away from zero, saturating at 6.

    Parameters
    ----------
    x : torch.Tensor
        ``[M, N]`` fp16/bf16/fp32, last dim packed, ``N`` a multiple of 32.
    weight : torch.Tensor
        ``[N]`` fp16/bf16/fp32.
    residual : torch.Tensor, optional
        ``[M, N]`` like ``x``: ``x + residual`` (fp32) is normalised and returned in ``x.dtype``.
    shuffle : bool
        Scales in AITER's ``e8m0_shuffle`` order, padded to ``[ceil(M/256)*256, ceil(N/32/8)*8]`` with 127.

    Returns
    -------
    (x_fp4 uint8 ``[M, N/2]``, scales uint8 ``[M, N/32]`` or shuffled, residual_out or None)

    Examples
    --------
    >>> import torch, aiter_ext.ops.norm_fp4 as nf
    >>> from aiter_ext.ops.norm_fp4.reference import rmsnorm_mxfp4_quant_ref
    >>> x, w = torch.randn(4, 256, dtype=torch.bfloat16), torch.ones(256, dtype=torch.bfloat16)
    >>> q, sf, _ = nf.rmsnorm_mxfp4_quant(x, w, shuffle=True)
    >>> q_ref, sf_ref, _ = rmsnorm_mxfp4_quant_ref(x, w, shuffle=True)
    >>> sf.shape, bool((sf == sf_ref).all()), (q != q_ref).float().mean().item() < 0.01
    (torch.Size([256, 8]), True, True)
    """
    _check_aiter_x("x", x)
    _check_weight(weight, x.shape[1], HALF + (torch.float32,))
    named = [("x", x), ("weight", weight)]
    if residual is not None:
        check_tensor("residual", residual, dtypes=(x.dtype,))
        check_shape("residual", residual, x.shape, "the shape of x")
        named.append(("residual", residual))
        if residual.shape[1] > 1 and residual.stride(1) != 1:
            raise ValueError("residual must be contiguous in its last dimension")
    check_same_device(named)
    _rows("x", x)
    q, sf, layout = _aiter_outputs(x, shuffle)
    res_out = None if residual is None else torch.empty_like(x, memory_format=torch.contiguous_format)
    _call(_quant_out, x, residual, weight, None, q, sf, res_out, float(eps), True, 32, "aiter", layout, backend)
    return q, sf, res_out


def mxfp4_quantize(x: torch.Tensor, shuffle: bool = False, *, backend: Optional[str] = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""MXFP4 quantization with AITER's rules (``dynamic_mxfp4_quant``'s bytes), no norm.

    Parameters
    ----------
    x : torch.Tensor
        ``[M, N]`` fp16/bf16/fp32, last dim packed, ``N`` a multiple of 32.
    shuffle : bool
        As in :func:`rmsnorm_mxfp4_quant`.

    Returns
    -------
    (x_fp4 uint8 ``[M, N/2]``, scales uint8 ``[M, N/32]`` or shuffled)

    Examples
    --------
    >>> import torch, aiter_ext.ops.norm_fp4 as nf
    >>> from aiter_ext.ops.norm_fp4.reference import mxfp4_quantize_ref
    >>> x = torch.randn(3, 64)
    >>> q, sf = nf.mxfp4_quantize(x)
    >>> q_ref, sf_ref = mxfp4_quantize_ref(x)
    >>> bool((q == q_ref).all()), bool((sf == sf_ref).all())
    (True, True)
    """
    _check_aiter_x("x", x)
    _rows("x", x)
    q, sf, layout = _aiter_outputs(x, shuffle)
    _call(_quant_out, x, None, None, None, q, sf, None, 0.0, False, 32, "aiter", layout, backend)
    return q, sf
