"""rmsnorm_fp4quant, add_rmsnorm_fp4quant, fp4_quantize (FlashInfer) and rmsnorm_mxfp4_quant,
mxfp4_quantize (AITER-style MXFP4).

pytest: the kernel's codes and scales against the fp32 reference quantizer byte for byte (ties, zero
blocks, one huge value, negatives, saturation, tiny scales), hand-computed examples of the nibble
order and of both padded scale layouts, the fused functions over FlashInfer's grid, round-trip error
bounds, layouts against each other, and bad inputs.
CLI (``python op_tests/test_norm_fp4.py [--quick]``): the benchmark on a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import DEVICE, grid  # noqa: E402

from aiter_ext.ops.norm_fp4 import api, reference as ref  # noqa: E402
from aiter_ext.ops.norm_fp4.backends import NORM_FP4  # noqa: E402
from aiter_ext.ops.norm_fp4.layout import scale_padding  # noqa: E402

HALF = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]
#: (scale rule, block size, layouts it has)
FORMATS = [("e4m3", 16, ("linear", "swizzled")), ("ue8m0", 32, ("linear", "swizzled")),
           ("aiter", 32, ("linear", "shuffled"))]
FORMAT_LAYOUTS = [pytest.param(r, b, lay, id=f"{r}-{lay}") for r, b, lays in FORMATS for lay in lays]
#: Midpoints between E2M1 code points: the only places where a 1e-6 change of q can change a code.
BOUNDARIES = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
NEAR = 1e-6  # "within a tiny relative distance of a rounding boundary"


def _backends():
    out = []
    for name in ("torch", "triton"):
        ok, why = NORM_FP4.usable(name, {"num_tokens": 1, "hidden": 128, "dtype": "bf16", "device": DEVICE.type})
        out.append(pytest.param(name, id=name, marks=() if ok else pytest.mark.skip(reason=why)))
    return out


BACKENDS = _backends()


def run_kernel(x, rule, block_size, layout, *, weight=None, residual=None, gs=None, eps=1e-6, backend="triton"):
    """The op on 2-D ``x`` with poisoned outputs: ``(codes, scales, residual_out)``."""
    m, n = x.shape
    pad_rows, pad_blocks = scale_padding(m, n // block_size, layout)
    q = torch.full((m, n // 2), 0xEE, dtype=torch.uint8, device=DEVICE)  # 0xEE: not a byte any input gives here
    sf = torch.full((pad_rows * pad_blocks,) if layout == "swizzled" else (pad_rows, pad_blocks), 0xEE,
                    dtype=torch.uint8, device=DEVICE)
    res_out = None if residual is None else torch.full_like(x, float("nan"))
    gs = gs if gs is not None else torch.ones(1, device=DEVICE)
    api._quant_out(x, residual, weight, gs, q, sf, res_out, eps, weight is not None, block_size, rule, layout, backend)
    return q, sf, res_out


def linear_scales(sf, m, k, layout):
    if layout == "swizzled":
        return ref.unswizzle_128x4_ref(sf, m, k)
    if layout == "shuffled":
        return ref.e8m0_unshuffle_ref(sf, m, k)
    return sf


def nibbles(q):
    return torch.stack([q & 0xF, q >> 4], dim=-1).reshape(q.shape[0], -1).long()


def assert_codes_match(q, sf, y, rule, block_size, layout, gs=None):
    """Scales equal the reference's; codes equal, except a code may be one step away where the
    reference's value before rounding lies within NEAR (relative) of a rounding boundary. A scale may
    differ only where the reference gives that scale for an amax within NEAR; those blocks' codes are
    then not compared (and must be rare)."""
    m, n = y.shape
    k = n // block_size
    amax, byte_ref, q_ref = ref.prerounding_ref(y, block_size, rule, gs)
    byte = linear_scales(sf, m, k, layout)
    scale_ok = byte == byte_ref
    if not bool(scale_ok.all()):
        lo, _ = ref.block_scales_ref(amax * (1 - NEAR), rule, gs)
        hi, _ = ref.block_scales_ref(amax * (1 + NEAR), rule, gs)
        near_edge = (byte == lo) | (byte == hi)
        bad = ~scale_ok & ~near_edge
        assert not bool(bad.any()), f"{int(bad.sum())} scales differ away from a boundary, first at {bad.nonzero()[0].tolist()}"
        assert float((~scale_ok).float().mean()) < 0.01, "too many scales on a boundary to be chance"
    codes, codes_ref = nibbles(q), ref.e2m1_codes_ref(q_ref, rule).reshape(m, n)
    differ = (codes != codes_ref) & scale_ok.repeat_interleave(block_size, dim=1)
    if bool(differ.any()):
        qv = q_ref.reshape(m, n)[differ].abs()
        step = ((codes[differ] & 7) - (codes_ref[differ] & 7)).abs()
        same_sign = (codes[differ] & 8) == (codes_ref[differ] & 8)
        near = torch.zeros_like(qv, dtype=torch.bool)
        for b in BOUNDARIES:
            near |= (qv - b).abs() <= NEAR * b
        assert bool((step == 1).all() & same_sign.all() & near.all()), (
            f"{int(differ.sum())} codes differ; values {qv[:8].tolist()}, steps {step[:8].tolist()}")


# --------------------------------------------------------------------------------------------------
# Hand-computed examples: nibble order, tie rules, scale bytes and both padded layouts.


def tie_block(block_size):
    """amax 6 (every rule's scale is then exactly 1), every midpoint, both signs, and -0."""
    vals = [6.0] + list(BOUNDARIES) + [-b for b in BOUNDARIES] + [-0.0]
    return torch.tensor((vals * 2)[:block_size], dtype=torch.float32)


def test_nibble_order_and_ties_by_hand():
    x = torch.stack([tie_block(32), torch.tensor([0.5, -1.0, 6.0] + [0.0] * 13 + [6.0] + [0.0] * 15)]).to(DEVICE)
    even = [7, 0, 2, 2, 4, 4, 6, 6, 8, 10, 10, 12, 12, 14, 14, 8]  # ties to the even code
    away = [7, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 8]  # ties away from zero (AITER)
    for rule, block_size, expect, scale in (("e4m3", 16, even, 0x38), ("ue8m0", 32, even, 127),
                                            ("aiter", 32, away, 127)):
        q, sf, _ = run_kernel(x, rule, block_size, "linear")
        first = expect * 2
        assert q[0].tolist() == [first[i] | (first[i + 1] << 4) for i in range(0, 32, 2)], rule
        assert q[1, 0] == 0xA1, rule  # 0.5 (code 1) in the low nibble, -1.0 (code 0xA) in the high one
        assert bool((sf == scale).all()), f"{rule}: scale 1.0 is byte {scale:#x}, got {sf.tolist()}"
        assert torch.equal(q.cpu(), ref.quantize_fp4_ref(x.cpu(), block_size, rule)[0])


def test_scale_layouts_by_hand():
    """One scale placed by the formulas: swizzled (130, 6) with 8 blocks at 1024 + 512 + 32 + 2;
    shuffled (17, 5) at 64 + 4 + 2 + 1; pads 0 and 127."""
    scales = torch.zeros(200, 8, dtype=torch.uint8)
    scales[130, 6] = 77
    flat = ref.swizzle_128x4_ref(scales)
    assert flat.shape == (2 * 2 * 512,) and flat[1570] == 77 and int(flat.sum()) == 77
    small = torch.zeros(20, 6, dtype=torch.uint8)
    small[17, 5] = 9
    shuffled = ref.e8m0_shuffle_ref(small)
    assert shuffled.shape == (256, 8) and shuffled.reshape(-1)[71] == 9
    assert int((shuffled == 127).sum()) == 256 * 8 - 20 * 6  # every pad byte is 127


def test_e4m3_scale_rounding_by_hand():
    """Scale bytes from amax with gs = 1 (amax * fp32(1/6) rounds to the value named): 1.125 (0x39);
    ties 1.0625 -> 1.0 (0x38) and 1.1875 -> 1.25 (0x3A), to the even mantissa; a subnormal tie
    1.5 * 2^-9 -> 2 * 2^-9 (0x02); a clamp at 448 (0x7E); 0."""
    amax = torch.tensor([6 * 1.125, 6 * 1.0625, 6 * 1.1875, 6 * 1.5 * 2 ** -9, 1e6, 0.0])
    rows = torch.zeros(6, 16)
    rows[:, 0] = amax
    q, sf, _ = run_kernel(rows.to(DEVICE), "e4m3", 16, "linear")
    assert sf[:, 0].tolist() == [0x39, 0x38, 0x3A, 0x02, 0x7E, 0x00]
    assert q[5].tolist() == [0] * 8  # a zero block: scale 0, codes 0, no NaN


# --------------------------------------------------------------------------------------------------
# The quantizer alone, exact.


def special_rows(n, block_size, gen_scale=1.0):
    """Random rows plus rows built to hit ties (scaled by powers of two), zero blocks, one huge value
    per block, all negatives and tiny magnitudes."""
    x = torch.randn(12, n) * gen_scale
    tie = tie_block(block_size).repeat(n // block_size)
    x[0] = tie
    x[1] = tie * 2.0 ** 7
    x[2] = -tie * 2.0 ** -9
    x[3] = 0.0
    x[4, ::block_size] = 1e4  # one huge value per block, the rest far below it
    x[5] = -x[5].abs()
    x[6] *= 1e-30
    x[7, : n // 2] = 0.0  # half the row zero
    x[8] = torch.randint(-12, 13, (n,)) * 0.5  # many exact code points and midpoints
    return x


@pytest.mark.parametrize("rule,block_size,layout", FORMAT_LAYOUTS)
@pytest.mark.parametrize("n", [64, 256])
def test_quantizer_exact(rule, block_size, layout, n):
    x = special_rows(n, block_size).to(DEVICE)
    gs = torch.tensor([0.37], device=DEVICE) if rule == "e4m3" else None
    for g in ([gs, torch.tensor([1e5], device=DEVICE)] if rule == "e4m3" else [None]):  # 1e5: sf saturates at 448
        q, sf, _ = run_kernel(x, rule, block_size, layout, gs=g)
        q_ref, sf_ref, _ = ref.norm_fp4_quant_ref(x.cpu(), None, None, None if g is None else g.cpu(), 0.0, False,
                                                  block_size, rule, layout)
        assert torch.equal(q.cpu(), q_ref), f"{int((q.cpu() != q_ref).sum())} code bytes differ"
        assert torch.equal(sf.cpu().reshape(-1), sf_ref.reshape(-1)), "scale bytes differ"


@pytest.mark.parametrize("dtype", HALF + [pytest.param(torch.float32, id="fp32")])
def test_mxfp4_quantize_public(dtype):
    x = (torch.randn(33, 128, device=DEVICE) * 3).to(dtype)
    for shuffle in (False, True):
        q, sf = api.mxfp4_quantize(x, shuffle=shuffle)
        q_ref, sf_ref = ref.mxfp4_quantize_ref(x.cpu(), shuffle=shuffle)
        assert torch.equal(q.cpu(), q_ref) and torch.equal(sf.cpu(), sf_ref)


@pytest.mark.parametrize("swizzled", [False, True])
@pytest.mark.parametrize("ue8m0", [False, True])
def test_fp4_quantize_public(swizzled, ue8m0):
    x = torch.randn(130, 64, device=DEVICE).to(torch.bfloat16)
    gs = torch.tensor([448 * 6 / float(x.float().abs().max())], device=DEVICE)
    q, sf = api.fp4_quantize(x, gs, 32 if ue8m0 else 16, ue8m0, swizzled)
    q_ref, sf_ref = ref.fp4_quantize_ref(x.cpu(), gs.cpu(), 32 if ue8m0 else 16, ue8m0, swizzled)
    assert q.dtype == sf.dtype == torch.uint8
    assert torch.equal(q.cpu(), q_ref) and torch.equal(sf.cpu(), sf_ref)


# --------------------------------------------------------------------------------------------------
# Fused: FlashInfer's functions over its grid, and AITER's.


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("swizzled", [False, True])
@pytest.mark.parametrize("shape", grid([(1, 64), (17, 1024), (3, 5, 256), (128, 4096), (4, 8192)],
                                       [(b, h) for b in (1, 4, 16, 128) for h in (64, 128, 256, 1024, 4096, 8192)]
                                       + [(4, 7, 2048), (2, 130, 1024)]))
def test_rmsnorm_fp4quant(backend, dtype, block_size, swizzled, shape):
    x = torch.randn(shape, device=DEVICE).to(dtype)
    w = (torch.rand(shape[-1], device=DEVICE) * 1.5 + 0.25).to(dtype)
    h = shape[-1]
    y, _ = ref.rmsnorm_fp32_ref(x.reshape(-1, h).cpu(), w.cpu())
    gs = torch.tensor([448 * 6 / float(y.abs().max())], device=DEVICE) if block_size == 16 else None
    y_fp4, sf = api.rmsnorm_fp4quant(x, w, global_scale=gs, block_size=block_size,
                                     is_sf_swizzled_layout=swizzled, backend=backend)
    assert y_fp4.dtype == api.FP4_DTYPE and y_fp4.shape == (*shape[:-1], h // 2)
    assert sf.dtype == (torch.float8_e4m3fn if block_size == 16 else torch.uint8)
    rule = "e4m3" if block_size == 16 else "ue8m0"
    sf2 = sf.view(torch.uint8) if swizzled else sf.view(torch.uint8).reshape(-1, h // block_size)
    assert_codes_match(y_fp4.view(torch.uint8).reshape(-1, h // 2).cpu(), sf2.cpu(), y, rule, block_size,
                       "swizzled" if swizzled else "linear", None if gs is None else gs.cpu())


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("shape", grid([(5, 128), (2, 3, 64), (16, 4096)], [(1, 64), (16, 4096), (128, 8192), (4, 9, 1024)]))
def test_add_rmsnorm_fp4quant(dtype, block_size, shape):
    x, r = (torch.randn(shape, device=DEVICE).to(dtype) for _ in range(2))
    w = (torch.rand(shape[-1], device=DEVICE) + 0.5).to(dtype)
    r_before = r.clone()
    h = shape[-1]
    y, _ = ref.rmsnorm_fp32_ref(x.reshape(-1, h).cpu(), w.cpu(), residual=r.reshape(-1, h).cpu())
    gs = torch.tensor([3.0], device=DEVICE)
    y_fp4, sf = api.add_rmsnorm_fp4quant(x, r, w, global_scale=gs, block_size=block_size)
    assert torch.equal(r.cpu(), (x.float() + r_before.float()).to(dtype).cpu()), "residual must become input + residual"
    rule = "e4m3" if block_size == 16 else "ue8m0"
    assert_codes_match(y_fp4.view(torch.uint8).reshape(-1, h // 2).cpu(),
                       sf.view(torch.uint8).reshape(-1, h // block_size).cpu(), y, rule, block_size, "linear", gs.cpu())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("m,n", grid([(3, 256), (40, 7168 // 8), (33, 7168)], [(1, 4096), (33, 7168), (256, 8192), (300, 2048)]))
def test_rmsnorm_mxfp4_quant(backend, dtype, residual, shuffle, m, n):
    x = torch.randn(m, n, device=DEVICE).to(dtype)
    res = torch.randn(m, n, device=DEVICE).to(dtype) if residual else None
    w = (torch.rand(n, device=DEVICE) + 0.5).to(dtype)
    q, sf, res_out = api.rmsnorm_mxfp4_quant(x, w, 1e-6, res, shuffle, backend=backend)
    y, hsum = ref.rmsnorm_fp32_ref(x.cpu(), w.cpu(), 1e-6, None if res is None else res.cpu())
    assert q.shape == (m, n // 2) and sf.shape == scale_padding(m, n // 32, "shuffled" if shuffle else "linear")
    assert_codes_match(q.cpu(), sf.cpu(), y, "aiter", 32, "shuffled" if shuffle else "linear")
    if residual:
        assert torch.equal(res_out.cpu(), hsum.to(dtype))
    else:
        assert res_out is None
    if shuffle:  # pad rows and columns are 127, as AITER's shuffle pads
        flat = ref.e8m0_unshuffle_ref(sf.cpu(), *sf.shape)
        assert bool((flat[m:] == 127).all()) and bool((flat[:, n // 32:] == 127).all())


@pytest.mark.parametrize("dtype", HALF + [pytest.param(torch.float32, id="fp32")])
@pytest.mark.parametrize("view", ["even-stride", "odd-stride", "odd-offset"])
def test_strided_rows(dtype, view):
    """Row-strided views: an even row stride takes the kernel's paired (one word per two elements)
    loads; an odd stride or an odd element offset takes element loads. Same bytes as the reference
    on a contiguous copy, with and without a residual."""
    m, n = 9, 256
    pad = {"even-stride": 32, "odd-stride": 3, "odd-offset": 2}[view]
    first = 1 if view == "odd-offset" else 0
    x = torch.randn(m, n + pad, device=DEVICE).to(dtype)[:, first:first + n]
    res = torch.randn(m, n + pad, device=DEVICE).to(dtype)[:, first:first + n]
    w = (torch.rand(n, device=DEVICE) + 0.5).to(dtype)
    for residual in (None, res):
        q, sf, res_out = api.rmsnorm_mxfp4_quant(x, w, 1e-6, residual)
        q_c, sf_c, res_out_c = api.rmsnorm_mxfp4_quant(x.contiguous(), w, 1e-6,
                                                       None if residual is None else residual.contiguous())
        y, hsum = ref.rmsnorm_fp32_ref(x.cpu(), w.cpu(), 1e-6, None if residual is None else residual.cpu())
        assert_codes_match(q.cpu(), sf.cpu(), y, "aiter", 32, "linear")
        assert torch.equal(q, q_c) and torch.equal(sf, sf_c)
        if residual is not None:
            assert torch.equal(res_out.cpu(), hsum.to(dtype)) and torch.equal(res_out, res_out_c)


@pytest.mark.parametrize("rule,block_size,layout", [f for f in FORMAT_LAYOUTS if f.values[2] != "linear"])
def test_padded_layout_equals_linear(rule, block_size, layout):
    """The padded layout, unpadded with view(mT, kT, 32, 4, 4)-style indexing, equals the linear
    scales exactly; pad bytes are 0 (swizzled, our choice) or 127 (shuffled, AITER's)."""
    m, n = grid(131, 300), 352  # 352 / 16 = 22 and 352 / 32 = 11 scale columns: both layouts pad columns
    x = torch.randn(m, n, device=DEVICE).to(torch.bfloat16)
    w = (torch.rand(n, device=DEVICE) + 0.5).to(torch.bfloat16)
    q_lin, sf_lin, _ = run_kernel(x, rule, block_size, "linear", weight=w)
    q_pad, sf_pad, _ = run_kernel(x, rule, block_size, layout, weight=w)
    assert torch.equal(q_lin, q_pad)
    k = n // block_size
    mp, kp = scale_padding(m, k, layout)
    if layout == "swizzled":
        full = sf_pad.view(mp // 128, kp // 4, 32, 4, 4).permute(0, 3, 2, 1, 4).reshape(mp, kp)
        pad = 0
    else:
        full = sf_pad.view(mp // 32, kp // 8, 4, 16, 2, 2).permute(0, 5, 3, 1, 4, 2).reshape(mp, kp)
        pad = 127
    assert torch.equal(full[:m, :k], sf_lin)
    assert bool((full[m:] == pad).all()) and bool((full[:, k:] == pad).all())


# --------------------------------------------------------------------------------------------------
# Round trip: dequantize(quantize(y)) against y, per format.


def _half_gap(q_abs):
    """Half the distance between neighbouring E2M1 values around |q| (the nearest-rounding bound)."""
    return torch.where(q_abs < 2, 0.25, torch.where(q_abs < 4, 0.5, 1.0))


@pytest.mark.parametrize("rule,block_size", [("e4m3", 16), ("ue8m0", 32), ("aiter", 32)])
def test_round_trip_bounds(rule, block_size):
    """Bounds, per element with scale s (``sf/gs`` for e4m3, ``2^(byte-127)`` otherwise):
    ue8m0: no clipping (s >= amax/6), so |y - dq| <= s * halfgap(|y|/s);
    e4m3: s can be up to 2^-4 below amax/6 (e4m3 rounding), clipping |y|/s <= 6.375 at 6, still within
    s * halfgap (the top half gap is 1); aiter: |y|/s < 7, clipped at 6, so |y - dq| <= s * 1."""
    x = torch.randn(64, 512, device=DEVICE).to(torch.bfloat16)
    w = (torch.rand(512, device=DEVICE) + 0.5).to(torch.bfloat16)
    y, _ = ref.rmsnorm_fp32_ref(x.cpu(), w.cpu())
    gs = torch.tensor([448 * 6 / float(y.abs().max())]) if rule == "e4m3" else None
    q, sf, _ = run_kernel(x, rule, block_size, "linear", weight=w, gs=None if gs is None else gs.to(DEVICE))
    dq = ref.fp4_dequantize_ref(q.cpu(), sf.cpu(), block_size, rule, gs)
    s = ref.fp4_dequantize_ref(torch.full_like(q.cpu(), 0x22), sf.cpu(), block_size, rule, gs)  # code 2 = 1.0
    err = (y - dq).abs()
    bound = s * (1.0 if rule == "aiter" else _half_gap(y.abs() / s))
    assert bool((err <= bound * (1 + 1e-6)).all()), f"max err/bound {float((err / bound).max())}"
    rel = float((y - dq).norm() / y.norm())
    assert rel < 0.15, f"relative RMS error {rel}"  # E2M1 with block scales: ~0.1 on normal data


# --------------------------------------------------------------------------------------------------
# Bad inputs: a clear error naming the argument, nothing written.


def test_errors():
    x = torch.randn(4, 128, device=DEVICE).to(torch.bfloat16)
    w = torch.ones(128, device=DEVICE, dtype=torch.bfloat16)
    y_given = torch.full((4, 64), 0xEE, dtype=torch.uint8, device=DEVICE)
    cases = [
        (ValueError, "divisible", lambda: api.rmsnorm_fp4quant(torch.randn(2, 72, device=DEVICE).bfloat16(),
                                                             torch.ones(72, device=DEVICE).bfloat16(), block_size=16)),
        (ValueError, "at least 64", lambda: api.rmsnorm_fp4quant(x[:, :32], w[:32])),
        (TypeError, "input", lambda: api.rmsnorm_fp4quant(x.float(), w)),
        (ValueError, "weight", lambda: api.rmsnorm_fp4quant(x, w[:64])),
        (TypeError, "weight", lambda: api.rmsnorm_fp4quant(x, w.half())),
        (TypeError, "global_scale", lambda: api.rmsnorm_fp4quant(x, w, global_scale=torch.ones(1, device=DEVICE).half())),
        (ValueError, "global_scale", lambda: api.rmsnorm_fp4quant(x, w, global_scale=torch.ones(2, device=DEVICE))),
        (ValueError, "block_size", lambda: api.rmsnorm_fp4quant(x, w, block_size=64)),
        (ValueError, "scale_format", lambda: api.rmsnorm_fp4quant(x, w, scale_format="e8m0")),
        (ValueError, "y_fp4", lambda: api.rmsnorm_fp4quant(x, w, y_fp4=torch.empty(4, 32, dtype=torch.uint8,
                                                                                   device=DEVICE))),
        (TypeError, "y_fp4", lambda: api.rmsnorm_fp4quant(x, w, y_fp4=torch.empty(4, 64, dtype=torch.float16,
                                                                                  device=DEVICE))),
        (TypeError, "block_scale", lambda: api.rmsnorm_fp4quant(x, w, y_fp4=y_given, block_scale=torch.empty(
            4, 8, dtype=torch.float16, device=DEVICE))),
        (ValueError, "block_scale", lambda: api.rmsnorm_fp4quant(x, w, y_fp4=y_given, block_scale=torch.empty(
            4, 4, dtype=torch.float8_e4m3fn, device=DEVICE))),
        (ValueError, "residual", lambda: api.add_rmsnorm_fp4quant(x, torch.randn(4, 64, device=DEVICE).bfloat16(), w)),
        (TypeError, "residual", lambda: api.add_rmsnorm_fp4quant(x, x.half(), w)),
        (ValueError, "is_sf_8x4_layout", lambda: api.fp4_quantize(x, is_sf_8x4_layout=True)),
        (ValueError, "divisible", lambda: api.mxfp4_quantize(torch.randn(2, 48, device=DEVICE))),
        (TypeError, "x", lambda: api.mxfp4_quantize(torch.ones(2, 64, dtype=torch.int32, device=DEVICE))),
        (ValueError, "residual", lambda: api.rmsnorm_mxfp4_quant(x, w, residual=x[:2])),
    ]
    for exc, word, fn in cases:
        with pytest.raises(exc, match=word):
            fn()
    assert bool((y_given == 0xEE).all()), "a failed call wrote into y_fp4"


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x, w = torch.randn(0, 128, device=DEVICE).to(torch.bfloat16), torch.ones(128, device=DEVICE, dtype=torch.bfloat16)
    y, sf = api.rmsnorm_fp4quant(x, w, is_sf_swizzled_layout=True, backend=backend)
    q, sf2, res = api.rmsnorm_mxfp4_quant(x, w, shuffle=True, backend=backend)
    assert y.shape == (0, 64) and sf.shape == (0,) and q.shape == (0, 64) and sf2.shape == (0, 8) and res is None


def test_failed_add_leaves_residual():
    x = torch.randn(4, 128, device=DEVICE).to(torch.bfloat16)
    r = torch.randn(4, 128, device=DEVICE).to(torch.bfloat16)
    keep = r.clone()
    with pytest.raises(TypeError, match="weight"):
        api.add_rmsnorm_fp4quant(x, r, torch.ones(128, device=DEVICE))  # fp32 weight for bf16 input
    assert torch.equal(r, keep)


def test_torch_compile_fullgraph():
    """Through the custom ops: the same bytes, and the in-place residual update survives tracing."""
    x, r = (torch.randn(4, 128, device=DEVICE).to(torch.bfloat16) for _ in range(2))
    w = torch.ones(128, device=DEVICE, dtype=torch.bfloat16)

    def f(x, w, r):
        y, s = api.add_rmsnorm_fp4quant(x, r, w, block_size=32)
        q, sf, ro = api.rmsnorm_mxfp4_quant(x, w, residual=r)
        return y.view(torch.uint8), s, q, sf, ro

    r_eager, r_compiled = r.clone(), r.clone()
    eager = f(x, w, r_eager)
    compiled = torch.compile(f, fullgraph=True)(x, w, r_compiled)
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled)) and torch.equal(r_eager, r_compiled)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs a GPU")
def test_graph_capture():
    x = torch.randn(16, 4096, device="cuda").to(torch.bfloat16)
    w = torch.ones(4096, device="cuda", dtype=torch.bfloat16)
    gs = torch.tensor([100.0], device="cuda")
    y_fp4, sf = api.rmsnorm_fp4quant(x, w, global_scale=gs, is_sf_swizzled_layout=True)  # compile first
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        api.rmsnorm_fp4quant(x, w, y_fp4, sf, gs, is_sf_swizzled_layout=True)
    y_ref, sf_ref = y_fp4.clone(), sf.clone()
    y_fp4.view(torch.uint8).fill_(0xEE)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(y_fp4.view(torch.uint8), y_ref.view(torch.uint8)) and torch.equal(sf.view(torch.uint8),
                                                                                       sf_ref.view(torch.uint8))


# --------------------------------------------------------------------------------------------------
# Benchmark.


def _bench_cases(quick):
    rows = (1, 1024, 8192) if quick else (1, 16, 64, 1024, 8192)
    shapes = [(m, 4096) for m in rows] + [(8192, 7168)]
    formats = [("nvfp4", 16, False), ("nvfp4-swz", 16, True), ("mxfp4-aiter", 32, False)]
    if quick:
        formats = formats[::2]
    return [(m, h, f, res) for m, h in shapes for f in formats for res in (False, True)]


def _bench_case(m, h, name, block_size, swizzled, residual, copy_bw, flashinfer):
    """One table row: our fused call (eager and graph), the unfused sequence, FlashInfer's plain RMSNorm."""
    from aiter_ext.core.bench import time_us

    x = torch.randn(m, h, device="cuda").to(torch.bfloat16)
    w = (torch.rand(h, device="cuda") + 0.5).to(torch.bfloat16)
    r = torch.randn(m, h, device="cuda").to(torch.bfloat16) if residual else None
    gs = torch.tensor([100.0], device="cuda")
    rule, layout = ("aiter", "linear") if name == "mxfp4-aiter" else ("e4m3", "swizzled" if swizzled else "linear")

    def fused():
        if rule == "aiter":
            return api.rmsnorm_mxfp4_quant(x, w, 1e-6, r)
        if residual:  # the residual grows by x per call: harmless for timing
            return api.add_rmsnorm_fp4quant(x, r, w, global_scale=gs, block_size=16, is_sf_swizzled_layout=swizzled)
        return api.rmsnorm_fp4quant(x, w, global_scale=gs, block_size=16, is_sf_swizzled_layout=swizzled)

    def unfused():
        hsum = x.float() if r is None else x.float() + r.float()
        y = (hsum * torch.rsqrt(hsum.pow(2).mean(-1, keepdim=True) + 1e-6) * w.float()).to(torch.bfloat16)
        return api.mxfp4_quantize(y) if rule == "aiter" else api.fp4_quantize(y, gs, 16, False, swizzled)

    if m == 1024 and not residual:  # correctness of our side on one case per format, before timing
        y, _ = ref.rmsnorm_fp32_ref(x.cpu(), w.cpu())
        q, sf = fused()[:2]
        sf = sf.view(torch.uint8)
        assert_codes_match(q.view(torch.uint8).cpu(), (sf.reshape(-1) if swizzled else sf).cpu(), y, rule,
                           block_size, layout, None if rule == "aiter" else gs.cpu())
    nbytes = 2 * m * h + m * h // 2 + m * h // block_size + 2 * h + (4 * m * h if residual else 0)
    us, graph_us = time_us(fused), time_us(fused, graph=True)
    row = {"op": name + ("+res" if residual else ""), "shape": f"{m}x{h}", "dtype": "bf16", "us": us,
           "graph_us": graph_us, "bytes": nbytes, "GB/s": nbytes / graph_us / 1e3,
           "% copy": 100 * nbytes / graph_us / 1e3 / copy_bw, "unfused_us": time_us(unfused)}
    if flashinfer is not None:
        out = torch.empty_like(x)
        torch.testing.assert_close(flashinfer.norm.rmsnorm(x, w).float(), ref.rmsnorm_fp32_ref(x, w)[0],
                                   atol=2e-2, rtol=2e-2)  # FlashInfer's side, checked once per case
        r_fi = r.clone() if residual else None

        def fi():
            if residual:
                return flashinfer.norm.fused_add_rmsnorm(x, r_fi, w)
            return flashinfer.norm.rmsnorm(x, w, out=out)

        row["fi_rmsnorm_us"], row["fi_rmsnorm_graph_us"] = time_us(fi), time_us(fi, graph=True)
        row["fi/ours"] = row["fi_rmsnorm_graph_us"] / graph_us
    return row


def benchmark(quick: bool) -> None:
    from aiter_ext.core.bench import benchmark_setup, copy_bandwidth_gbs, git_commit, markdown_table, warm_up_gpu

    ok, flashinfer = benchmark_setup()
    if not ok:
        return
    warm_up_gpu()
    copy_bw = copy_bandwidth_gbs()
    print(f"# norm_fp4 on {torch.cuda.get_device_name()} at {git_commit()}; copy bandwidth {copy_bw:.0f} GB/s")
    print("# FlashInfer's fused FP4 kernels need SM100: its columns time flashinfer.norm.rmsnorm (or "
          "fused_add_rmsnorm) of the same shape, which writes bf16 (more bytes); 'unfused' is torch RMSNorm "
          "then our standalone quantizer; GB/s and % copy from graph_us")
    table = [_bench_case(m, h, name, block_size, swizzled, residual, copy_bw, flashinfer)
             for m, h, (name, block_size, swizzled), residual in _bench_cases(quick)]
    print(markdown_table(table))


def sweep(small: bool = False) -> None:
    """Graph-replay time of other tiles (rows per program x warps) beside the default, at the large shapes
    without a residual (where the default reached only 30-40% of the copy bandwidth on the H200), or with
    ``small`` the warp counts at 1 to 1024 rows. Every tile's bytes must equal the default tile's (same
    arithmetic, up to the order of the sum of squares), or the sweep stops."""
    from aiter_ext.core.bench import benchmark_setup, copy_bandwidth_gbs, git_commit, markdown_table, time_us
    from aiter_ext.ops.norm_fp4 import kernels

    if not benchmark_setup(skip_flashinfer=True)[0]:
        return
    copy_bw = copy_bandwidth_gbs()
    print(f"# norm_fp4 tile sweep on {torch.cuda.get_device_name()} at {git_commit()}; copy bandwidth {copy_bw:.0f} GB/s")
    rows = []
    shapes = [(m, 4096) for m in (1, 16, 64, 256, 1024)] if small else [(8192, 4096), (8192, 7168)]
    tiles = ([{"num_warps": nw} for nw in (2, 4, 8, 16)] if small
             else [{"ROWS": r, "num_warps": nw} for r in (1, 2, 4) for nw in (2, 4, 8, 16)])
    for m, h in shapes:
        x = torch.randn(m, h, device="cuda").to(torch.bfloat16)
        w = (torch.rand(h, device="cuda") + 0.5).to(torch.bfloat16)
        gs = torch.tensor([100.0], device="cuda")
        for rule, qb in (("e4m3", 16), ("aiter", 32)):
            q = torch.empty(m, h // 2, dtype=torch.uint8, device="cuda")
            sf = torch.empty(m, h // qb, dtype=torch.uint8, device="cuda")
            nbytes = 2 * m * h + m * h // 2 + m * h // qb + 2 * h
            expected = None
            for cfg in [None] + tiles:
                def run(cfg=cfg):
                    kernels.launch(x, None, w, gs, q, sf, None, 1e-6, True, qb, rule, "linear", cfg)
                run()
                got = torch.cat([q.reshape(-1), sf.reshape(-1)])
                if expected is None:
                    expected = got.clone()
                # another warp count sums the squares in another order: rstd may move by an ulp, and
                # codes on a rounding boundary with it; more than a few per million is a bug
                differ = float((got != expected).float().mean())
                assert differ < 1e-5, f"tile {cfg}: {differ:.2e} of the bytes differ from the default's"
                us = time_us(run, graph=True)
                rows.append({"rule": rule, "shape": f"{m}x{h}", "tile": "default" if cfg is None else str(cfg),
                             "graph_us": us, "bytes_differ": differ, "% copy": 100 * nbytes / us / 1e3 / copy_bw})
                print(rows[-1], flush=True)  # as it goes: a run cut short by a time limit still says something
    print(markdown_table(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and formats")
    parser.add_argument("--sweep", action="store_true", help="time other tiles beside the default (no FlashInfer)")
    parser.add_argument("--small", action="store_true", help="with --sweep: warp counts at 1 to 1024 rows")
    args = parser.parse_args()
    sweep(args.small) if args.sweep else benchmark(args.quick)
