"""fp32 PyTorch references for RMSNorm fused with FP4 quantization (plain torch, no Triton).

The quantizers are written from the published rules, independently of the kernel's arithmetic, so
that the tests compare two derivations of the same rule:

- ``"e4m3"`` (NVFP4, FlashInfer): ``sf = e4m3(min(gs * (amax * fp32(1/6)), 448))`` rounded to
  nearest-even by torch's own float8 cast; output scale ``1 / (float(sf) * (1 / gs))`` (FlashInfer's
  CUDA recipe, fp32 and correctly rounded here), 0 when ``sf == 0``; ``q = y * out_scale`` rounded to
  the nearest E2M1 value, ties to the even code, saturating at 6 (nearest value found by distance).
- ``"ue8m0"`` (MXFP4, FlashInfer): ``s = amax * fp32(1/6)``; byte ``= ((bits(s) + 0x7FFFFF) &
  0x7F800000) >> 23`` (``2^ceil(log2 s)``), at most 254; ``q = y * 2^(127 - byte)``, ties to even.
- ``"aiter"`` (MXFP4, AITER's ``_mxfp4_quant_op``): ``e = floor(log2(bits(amax) + 0x200000 &
  0xFF800000)) - 2`` clamped to [-127, 127], byte ``e + 127``; ``q = y * 2^-e`` converted by AITER's
  bit recipe (subnormal shift, then ``min(((e2 << 2 | m >> 21) + 1) >> 1, 7)``): nearest, ties away.

Codes carry the sign in bit 3 (a negative value that rounds to 0 gives -0, 0x8, in every rule);
two codes per byte, the even element in the low nibble.
"""

from __future__ import annotations

import torch

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
RCP6 = float(torch.tensor(1.0 / 6.0, dtype=torch.float32))  # fp32(1/6), as the kernels use it
E4M3_MAX = 448.0
SCALE_RULES = ("e4m3", "ue8m0", "aiter")
#: Pad byte of the padded scale layouts: FlashInfer's 128x4 swizzle (our choice, zeros) and AITER's shuffle.
SWIZZLE_PAD = 0
SHUFFLE_PAD = 127


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.float().contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """2^e in fp32 for integer ``e`` in [-127, 127], exactly (2^-127 is subnormal: half of 2^-126)."""
    normal = ((e.clamp(min=-126) + 127).to(torch.int32) << 23).view(torch.float32)
    return torch.where(e < -126, normal * 0.5, normal)


def rmsnorm_fp32_ref(x, weight, eps=1e-6, residual=None):
    """``(y, h)``: ``h = x + residual`` in fp32 (``x`` alone without a residual) and
    ``y = (h * rsqrt(mean(h^2) + eps)) * w`` in fp32, never rounded to the input dtype."""
    h = x.float() if residual is None else x.float() + residual.float()
    rstd = torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (h * rstd) * weight.float(), h


def _round_e2m1_even(q: torch.Tensor) -> torch.Tensor:
    """Nearest E2M1 magnitude code of ``|q|``, ties to the even code, saturating at 6."""
    grid = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=q.device)
    a = q.abs().clamp(max=6.0)
    dist = (a.unsqueeze(-1) - grid).abs()
    best = dist.min(dim=-1, keepdim=True).values
    ties = dist == best  # one or two candidates
    idx = torch.arange(8, device=q.device)
    even_first = torch.where(ties, (idx % 2) * 8 + idx, 100)  # an even code before an odd one
    return even_first.argmin(dim=-1)


def _round_e2m1_aiter(q: torch.Tensor) -> torch.Tensor:
    """AITER's bit recipe from the fp32 bits (magnitude code); shifts of 32 or more give 0."""
    b = _bits(q)
    e = (b >> 23) & 0xFF
    m = b & 0x7FFFFF
    shift = (126 - e).clamp(min=0, max=40)
    m = torch.where(e < 127, (0x400000 | (m >> 1)) >> shift, m)
    e = e.clamp(min=126) - 126
    return torch.clamp((((e << 2) | (m >> 21)) + 1) >> 1, max=7)


def block_scales_ref(amax: torch.Tensor, scale_rule: str, global_scale=None):
    """Per block: ``(scale byte uint8, fp32 factor mapping y onto the E2M1 grid)`` from fp32 ``amax``."""
    assert scale_rule in SCALE_RULES
    if scale_rule == "e4m3":
        gs = torch.ones((), device=amax.device) if global_scale is None else global_scale.float().reshape(())
        sf = torch.clamp(gs * (amax * RCP6), max=E4M3_MAX).to(torch.float8_e4m3fn)
        sf_f = sf.float()
        safe = torch.where(sf_f == 0, torch.ones_like(sf_f), sf_f)
        return sf.view(torch.uint8), torch.where(sf_f == 0, torch.zeros_like(sf_f), 1.0 / (safe * (1.0 / gs)))
    if scale_rule == "ue8m0":
        byte = (((_bits(amax * RCP6) + 0x7FFFFF) & 0x7F800000) >> 23).clamp(max=254)
        return byte.to(torch.uint8), _pow2(127 - byte)
    rounded = (_bits(amax) + 0x200000) & 0xFF800000
    e = (((rounded >> 23) & 0xFF) - 127 - 2).clamp(-127, 127)  # floor(log2) of a power of two, - 2
    e = torch.where(rounded == 0, torch.full_like(e, -127), e)  # log2(0) = -inf, clamped
    return (e + 127).to(torch.uint8), _pow2(-e)


def e2m1_codes_ref(q: torch.Tensor, scale_rule: str) -> torch.Tensor:
    """E2M1 nibbles (int64) of fp32 ``q``: AITER's bit recipe for ``"aiter"``, else nearest-even."""
    mag = _round_e2m1_aiter(q) if scale_rule == "aiter" else _round_e2m1_even(q)
    return mag | (((_bits(q) >> 31) & 1) << 3)


def prerounding_ref(y: torch.Tensor, block_size: int, scale_rule: str, global_scale=None):
    """``(amax [M, N/bs], scale bytes, q [M, N/bs, bs])``: the values the rounding steps see."""
    m, n = y.shape
    yb = y.float().reshape(m, n // block_size, block_size)
    amax = yb.abs().amax(dim=-1)
    byte, factor = block_scales_ref(amax, scale_rule, global_scale)
    return amax, byte, yb * factor.unsqueeze(-1)


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """Nibbles ``[M, N]`` -> bytes ``[M, N/2]``, the even element in the low nibble."""
    codes = codes.to(torch.uint8)
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def quantize_fp4_ref(y: torch.Tensor, block_size: int, scale_rule: str, global_scale=None):
    """Quantize fp32 ``y [M, N]`` block-wise: ``(codes uint8 [M, N/2], scales uint8 [M, N/block_size])``
    with linear (row-major) scales."""
    _, byte, q = prerounding_ref(y, block_size, scale_rule, global_scale)
    return pack_codes(e2m1_codes_ref(q, scale_rule).reshape(y.shape)), byte


def swizzle_128x4_ref(scales: torch.Tensor) -> torch.Tensor:
    """FlashInfer's 128x4 scale layout, flattened: rows padded to 128, columns to 4 (pad bytes 0)."""
    m, k = scales.shape
    mp, kp = -(-m // 128) * 128, -(-k // 4) * 4
    padded = torch.full((mp, kp), SWIZZLE_PAD, dtype=torch.uint8, device=scales.device)
    padded[:m, :k] = scales.view(torch.uint8)
    # (m_tile, inner_m, outer_m, k_tile, inner_k) -> (m_tile, k_tile, outer_m, inner_m, inner_k)
    return padded.view(mp // 128, 4, 32, kp // 4, 4).permute(0, 3, 2, 1, 4).reshape(-1)


def unswizzle_128x4_ref(flat: torch.Tensor, m: int, k: int) -> torch.Tensor:
    mp, kp = -(-m // 128) * 128, -(-k // 4) * 4
    return flat.view(torch.uint8).view(mp // 128, kp // 4, 32, 4, 4).permute(0, 3, 2, 1, 4).reshape(mp, kp)[:m, :k]


def e8m0_shuffle_ref(scales: torch.Tensor) -> torch.Tensor:
    """AITER's ``e8m0_shuffle`` order: pad to [ceil(M/256)*256, ceil(K/8)*8] with 127, then
    ``view(sm//32, 2, 16, sn//8, 2, 4).permute(0, 3, 5, 2, 4, 1)``."""
    m, k = scales.shape
    sm, sn = -(-m // 256) * 256, -(-k // 8) * 8
    padded = torch.full((sm, sn), SHUFFLE_PAD, dtype=torch.uint8, device=scales.device)
    padded[:m, :k] = scales.view(torch.uint8)
    return padded.view(sm // 32, 2, 16, sn // 8, 2, 4).permute(0, 3, 5, 2, 4, 1).contiguous().view(sm, sn)


def e8m0_unshuffle_ref(shuffled: torch.Tensor, m: int, k: int) -> torch.Tensor:
    sm, sn = shuffled.shape
    return shuffled.view(sm // 32, sn // 8, 4, 16, 2, 2).permute(0, 5, 3, 1, 4, 2).reshape(sm, sn)[:m, :k]


def layout_scales_ref(scales: torch.Tensor, layout: str) -> torch.Tensor:
    return {"linear": lambda s: s, "swizzled": swizzle_128x4_ref, "shuffled": e8m0_shuffle_ref}[layout](scales)


def norm_fp4_quant_ref(x, weight, residual=None, global_scale=None, eps=1e-6, norm=True, block_size=16,
                       scale_rule="e4m3", layout="linear"):
    """Everything the kernel computes, for ``x [M, N]``: ``(codes, scales in layout, residual_sum or None)``;
    the residual sum is rounded to ``x.dtype``."""
    if norm:
        y, h = rmsnorm_fp32_ref(x, weight, eps, residual)
    else:
        y, h = x.float(), None
    codes, scales = quantize_fp4_ref(y, block_size, scale_rule, global_scale)
    res_out = None if residual is None else h.to(x.dtype)
    return codes, layout_scales_ref(scales, layout), res_out


def fp4_dequantize_ref(packed, scales, block_size=16, scale_format="e4m3", global_scale=None,
                       layout="linear", num_rows=None):
    """Dequantize ``packed [M, N/2]`` (uint8 or float4_e2m1fn_x2) to fp32 ``[M, N]``.

    ``scale_format``: ``"e4m3"`` (value ``q * sf / gs``) or ``"ue8m0"``/``"aiter"`` (``q * 2^(byte-127)``);
    ``layout``: ``"linear"``, ``"swizzled"`` (FlashInfer 128x4, flat) or ``"shuffled"`` (AITER).
    """
    codes = packed.view(torch.uint8)
    m, half = codes.shape
    n = 2 * half
    k = n // block_size
    if layout == "swizzled":
        scales = unswizzle_128x4_ref(scales, m, k)
    elif layout == "shuffled":
        scales = e8m0_unshuffle_ref(scales.view(torch.uint8), m, k)
    scales = scales.view(torch.uint8)
    nib = torch.stack([codes & 0xF, codes >> 4], dim=-1).reshape(m, n).long()
    grid = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=codes.device)
    vals = grid[nib & 7] * torch.where((nib & 8) != 0, -1.0, 1.0)
    if scale_format == "e4m3":
        s = scales.view(torch.float8_e4m3fn).float()
        if global_scale is not None:
            s = s / global_scale.float().reshape(())
    else:
        s = _pow2(scales.long() - 127)
    return (vals.view(m, k, block_size) * s.unsqueeze(-1)).reshape(m, n)


# -- public-function references -------------------------------------------------------------------


def _scale_rule(block_size, scale_format):
    fmt = scale_format or ("ue8m0" if block_size == 32 else "e4m3")
    return fmt


def rmsnorm_fp4quant_ref(input, weight, global_scale=None, eps=1e-6, block_size=16, scale_format=None,
                         is_sf_swizzled_layout=False):
    """``(y_fp4 uint8 [..., H/2], block_scale uint8)`` of :func:`rmsnorm_fp4quant`."""
    x2 = input.reshape(-1, input.shape[-1])
    codes, sf, _ = norm_fp4_quant_ref(x2, weight, None, global_scale, eps, True, block_size,
                                      _scale_rule(block_size, scale_format),
                                      "swizzled" if is_sf_swizzled_layout else "linear")
    if not is_sf_swizzled_layout:
        sf = sf.reshape(*input.shape[:-1], -1)
    return codes.reshape(*input.shape[:-1], -1), sf


def add_rmsnorm_fp4quant_ref(input, residual, weight, global_scale=None, eps=1e-6, block_size=16,
                             scale_format=None, is_sf_swizzled_layout=False):
    """``(y_fp4, block_scale, new_residual)`` of :func:`add_rmsnorm_fp4quant` (which writes the last
    into ``residual``)."""
    h = input.shape[-1]
    codes, sf, res = norm_fp4_quant_ref(input.reshape(-1, h), weight, residual.reshape(-1, h), global_scale, eps,
                                        True, block_size, _scale_rule(block_size, scale_format),
                                        "swizzled" if is_sf_swizzled_layout else "linear")
    if not is_sf_swizzled_layout:
        sf = sf.reshape(*input.shape[:-1], -1)
    return codes.reshape(*input.shape[:-1], -1), sf, res.reshape(input.shape)


def fp4_quantize_ref(input, global_scale=None, sf_vec_size=16, sf_use_ue8m0=False, is_sf_swizzled_layout=True):
    codes, sf, _ = norm_fp4_quant_ref(input, None, None, global_scale, 0.0, False, sf_vec_size,
                                      "ue8m0" if sf_use_ue8m0 else "e4m3",
                                      "swizzled" if is_sf_swizzled_layout else "linear")
    return codes, sf


def rmsnorm_mxfp4_quant_ref(x, weight, eps=1e-6, residual=None, shuffle=False):
    return norm_fp4_quant_ref(x, weight, residual, None, eps, True, 32, "aiter", "shuffled" if shuffle else "linear")


def mxfp4_quantize_ref(x, shuffle=False):
    codes, sf, _ = norm_fp4_quant_ref(x, None, None, None, 0.0, False, 32, "aiter",
                                      "shuffled" if shuffle else "linear")
    return codes, sf
