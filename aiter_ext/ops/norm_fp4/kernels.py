"""Triton kernel for RMSNorm fused with FP4 quantization. Private: called only through ``backends.py``.

One kernel, flags as constexprs: ``NORM`` (RMSNorm first, or a plain quantizer), ``HAS_RESIDUAL``
(normalise ``x + residual`` and write that sum), ``SCALE_RULE`` (NVFP4 e4m3, FlashInfer's ue8m0, or
AITER's e8m0 rule, which also picks the E2M1 rounding) and ``LAYOUT`` (linear, FlashInfer's 128x4
swizzle, AITER's e8m0 shuffle). One program owns ``ROWS`` whole rows (the RMS needs the full row), so
x is read once and every output is written once. The scale layouts that pad rows get extra programs
that only write pad bytes, so every byte of a padded scale buffer is defined.

The kernel works on pairs of elements, the two that share an output byte: ``WORDS`` loads each pair
as one 32-bit word (64-bit for fp32) and splits it with shifts, so the even and odd elements arrive
in the register layout their packed byte leaves from, with no reshape, no layout conversion and half
the bf16 unpacking work. Without a residual the kernel is ALU-bound: every operation per
element counts (see ``_e2m1_codes``).

Rounding is done on the fp32 bits and in the fp32 adder, never with float casts the backends lower
differently (gfx942 has no OCP e4m3): E2M1 codes as ``_e2m1_codes`` says, e4m3 scales from the fp32 bits
with round-half-even.
"""

from __future__ import annotations

import functools
import itertools
import struct

# Triton itself is imported only when a kernel needs it (core/lazy_triton.py: not for a code object's launch)
from aiter_ext.core.lazy_triton import tl, triton

from aiter_ext.core.aot import KernelSpec, register_aot_specs
from aiter_ext.core.env import interpreted as env_interpreted
from aiter_ext.core.launch import cdiv, next_pow2
from aiter_ext.core.thin import thin

from .layout import scale_padding

SCALE_E4M3, SCALE_UE8M0, SCALE_AITER = 0, 1, 2
LAYOUT_LINEAR, LAYOUT_SWIZZLED, LAYOUT_SHUFFLED = 0, 1, 2
SCALE_RULE_CODES = {"e4m3": SCALE_E4M3, "ue8m0": SCALE_UE8M0, "aiter": SCALE_AITER}
LAYOUT_CODES = {"linear": LAYOUT_LINEAR, "swizzled": LAYOUT_SWIZZLED, "shuffled": LAYOUT_SHUFFLED}
#: fp32(1/6): the scale is ``amax * (1/6)`` as FlashInfer computes it (a multiply, not a divide).
RCP6 = tl.constexpr(struct.unpack("f", struct.pack("f", 1.0 / 6.0))[0])
#: Elements one program handles on a GPU; 16x more under the interpreter, where cost is per program.
TILE_ELEMENTS = 4096
INTERPRETED_TILE_ELEMENTS = 65536
#: Largest hidden size the Triton backend takes (one row per program must fit in registers).
MAX_HIDDEN = 16384
#: From this many (padded) rows a call takes the tile with more elements per thread.
LARGE_CALL_ROWS = 4096


@triton.jit
def _to_dtype_rne(x, dtype: tl.constexpr):
    """``x`` in ``dtype``, rounded to nearest-even. For bf16 the rounding is done on the fp32 bits
    first: the Triton interpreter truncates fp32 -> bf16 casts (GPUs round to nearest-even)."""
    if dtype == tl.bfloat16:
        b = x.to(tl.int32, bitcast=True)
        x = ((b + 0x7FFF + ((b >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _pow2(e):
    """2^e in fp32 for int32 ``e`` in [-127, 127], exactly (2^-127 is half of 2^-126)."""
    normal = ((tl.maximum(e, -126) + 127) << 23).to(tl.float32, bitcast=True)
    return tl.where(e < -126, normal * 0.5, normal)


@triton.jit
def _e4m3_byte(v):
    """The e4m3 byte nearest to ``v`` in [0, 448], ties to even (normal: keep 3 mantissa bits of the
    fp32; subnormal: multiples of 2^-9)."""
    b = v.to(tl.int32, bitcast=True)
    e = b >> 23
    r = b + 0x7FFFF + ((b >> 20) & 1)
    normal = (((r >> 23) - 120) << 3) | ((r >> 20) & 7)
    shift = tl.minimum(141 - e, 31)  # >= 21 where it is used (e < 121)
    mant = (b & 0x7FFFFF) | 0x800000
    q = mant >> shift
    rem = mant - (q << shift)
    half = 1 << tl.maximum(shift - 1, 0)
    up = (rem > half) | ((rem == half) & ((q & 1) == 1))
    sub = tl.where(b == 0, 0, q + up.to(tl.int32))
    return tl.where(e >= 121, normal, sub)


@triton.jit
def _e4m3_value(byte):
    exp = byte >> 3
    man = byte & 7
    normal = (((exp + 120) << 23) | (man << 20)).to(tl.float32, bitcast=True)
    return tl.where(exp > 0, normal, man.to(tl.float32) * 0.001953125)


@triton.jit
def _e2m1_codes(q, TIES_AWAY: tl.constexpr):
    """E2M1 nibbles of fp32 ``q``: the magnitude rounded onto {0, .5, 1, 1.5, 2, 3, 4, 6} (a tie goes to
    the even code, or away from zero with TIES_AWAY), saturating at 6; the sign in bit 3.

    From 1 up the grid is fp32 with one mantissa bit, so rounding is one integer add on the bits (half
    the dropped range, plus the kept bit for ties-to-even) and the code is exponent and bit minus 252
    (1.0 = exponent 127, bit 0 -> code 2). Below 1 the grid is the multiples of 0.5 and the code is
    round(2m): adding 1.5 * 2^23 rounds 2m to an integer in the fp32 adder, ties to even, and leaves
    it in the low mantissa bits (2m is exact, so this is the only rounding). Ties away from zero differ
    from that only at m = 0.25. Checked against the comparison form on every non-negative fp32 for
    both tie rules. About 8-10 operations an element; the kernel is ALU-bound without a residual.
    NaN is unspecified (GPUs' min() takes the 6)."""
    m = tl.minimum(tl.abs(q), 6.0)
    bits = m.to(tl.int32, bitcast=True)
    if TIES_AWAY:
        rounded = bits + 0x200000
    else:
        rounded = bits + 0x1FFFFF + ((bits >> 22) & 1)
    big = (rounded >> 22) - 252
    small = (m * 2.0 + 12582912.0).to(tl.int32, bitcast=True) - 0x4B400000
    if TIES_AWAY:
        small += (m == 0.25).to(tl.int32)
    sign = (q.to(tl.int32, bitcast=True) >> 28) & 8
    return tl.where(m >= 1.0, big, small) | sign


@triton.jit
def _load_pairs(ptr, rows, stride, pairs, mask, WORDS: tl.constexpr):
    """Elements ``2p`` and ``2p + 1`` of rows ``rows [R, 1]`` (int64; ``stride`` elements apart), pairs
    ``pairs [1, P]``, as fp32 ``(even, odd)``. WORDS: one load per pair (the launcher checked that the
    pointer and stride allow it); otherwise one per element."""
    dtype: tl.constexpr = ptr.dtype.element_ty
    if not WORDS:
        offs = rows * stride + 2 * pairs
        even = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
        return even, tl.load(ptr + offs + 1, mask=mask, other=0.0).to(tl.float32)
    offs = rows * (stride // 2) + pairs
    if dtype == tl.float32:
        w = tl.load(ptr.to(tl.pointer_type(tl.int64)) + offs, mask=mask, other=0)
        return w.to(tl.int32).to(tl.float32, bitcast=True), (w >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    w = tl.load(ptr.to(tl.pointer_type(tl.int32)) + offs, mask=mask, other=0)
    if dtype == tl.bfloat16:  # a bf16 is the top half of its fp32
        return (w << 16).to(tl.float32, bitcast=True), (w & -65536).to(tl.float32, bitcast=True)
    even = w.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return even, (w >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _store_pairs(ptr, rows, stride, pairs, mask, even, odd, WORDS: tl.constexpr):
    """Store fp32 ``even``/``odd`` as elements ``2p``/``2p + 1`` (addressed as in ``_load_pairs``) in
    ``ptr``'s dtype, rounded to nearest-even."""
    dtype: tl.constexpr = ptr.dtype.element_ty
    even = _to_dtype_rne(even, dtype)
    odd = _to_dtype_rne(odd, dtype)
    if not WORDS:
        tl.store(ptr + rows * stride + 2 * pairs, even, mask=mask)
        tl.store(ptr + rows * stride + 2 * pairs + 1, odd, mask=mask)
        return
    offs = rows * (stride // 2) + pairs
    if dtype == tl.float32:
        lo = even.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
        hi = odd.to(tl.int32, bitcast=True).to(tl.int64) << 32
        tl.store(ptr.to(tl.pointer_type(tl.int64)) + offs, lo | hi, mask=mask)
    else:
        lo = even.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        hi = odd.to(tl.int16, bitcast=True).to(tl.int32) << 16
        tl.store(ptr.to(tl.pointer_type(tl.int32)) + offs, lo | hi, mask=mask)


@triton.jit
def _block_scales(amax, gs_ptr, SCALE_RULE: tl.constexpr):
    """Per block: (stored scale byte, fp32 factor that maps y onto the E2M1 grid)."""
    if SCALE_RULE == 0:  # NVFP4: e4m3(min(gs * amax / 6, 448)); factor 1 / (sf * (1 / gs))
        gs = tl.load(gs_ptr)
        byte = _e4m3_byte(tl.minimum(gs * (amax * RCP6), 448.0))
        sf = _e4m3_value(byte)
        safe = tl.where(sf == 0.0, 1.0, sf)
        factor = tl.where(sf == 0.0, 0.0, tl.math.div_rn(tl.full(sf.shape, 1.0, tl.float32),
                                                         safe * tl.math.div_rn(1.0, gs)))
    elif SCALE_RULE == 1:  # FlashInfer MXFP4: 2^ceil(log2(amax / 6)) from the bits, at most 2^127
        b = (amax * RCP6).to(tl.int32, bitcast=True)
        byte = tl.minimum(((b + 0x7FFFFF) & 0x7F800000) >> 23, 254)
        factor = _pow2(127 - byte)
    else:  # AITER MXFP4: amax rounded up at its 3rd mantissa bit, floor(log2) - 2, clamped
        b = amax.to(tl.int32, bitcast=True)
        e = tl.minimum(tl.maximum((((b + 0x200000) & 0x7F800000) >> 23) - 129, -127), 127)
        byte = e + 127
        factor = _pow2(-e)
    return byte, factor


@triton.jit
def _store_scales(sf_ptr, rows, blocks, byte, n_rows, n_blocks, stride_sf, pad_rows, pad_blocks,
                  LAYOUT: tl.constexpr):
    """Store scale bytes ``[R, NB]`` of rows ``rows`` in the layout; pad positions get the pad byte."""
    r = rows[:, None]
    k = blocks[None, :]
    valid = (r < n_rows) & (k < n_blocks)
    if LAYOUT == 0:
        tl.store(sf_ptr + r.to(tl.int64) * stride_sf + k, byte.to(tl.uint8), mask=valid)
    elif LAYOUT == 1:  # FlashInfer 128x4 tiles: [m_tile][k_tile][row % 32][(row % 128) // 32][k % 4]
        off = ((r // 128).to(tl.int64) * (pad_blocks * 128) + (k // 4) * 512 + (r % 32) * 16
               + ((r % 128) // 32) * 4 + k % 4)
        tl.store(sf_ptr + off, tl.where(valid, byte, 0).to(tl.uint8), mask=(r < pad_rows) & (k < pad_blocks))
    else:  # AITER e8m0_shuffle: view(sm//32, 2, 16, sn//8, 2, 4).permute(0, 3, 5, 2, 4, 1)
        off = ((r // 32).to(tl.int64) * (32 * pad_blocks) + (k // 8) * 256 + (k % 4) * 64 + (r % 16) * 4
               + ((k % 8) // 4) * 2 + (r % 32) // 16)
        tl.store(sf_ptr + off, tl.where(valid, byte, 127).to(tl.uint8), mask=(r < pad_rows) & (k < pad_blocks))


@thin
@triton.jit
def norm_fp4_quant_kernel(
    x_ptr, res_ptr, w_ptr, gs_ptr, q_ptr, sf_ptr, res_out_ptr,
    n_rows, n_cols, stride_x, stride_res, stride_q, stride_sf, stride_res_out,
    pad_rows, pad_blocks, eps,
    NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr, SCALE_RULE: tl.constexpr, LAYOUT: tl.constexpr,
    QBLOCK: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, WORDS: tl.constexpr,
):
    """codes/scales of FP4(RMSNorm(x [+ res]) or x); with HAS_RESIDUAL also res_out = x + res.
    Row strides are in elements (even where WORDS)."""
    NB: tl.constexpr = BLOCK_N // QBLOCK
    PAIRS: tl.constexpr = BLOCK_N // 2
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    blocks = tl.arange(0, NB)
    n_blocks = n_cols // QBLOCK
    if tl.program_id(0) * ROWS >= n_rows:  # only pad rows of a padded scale layout here
        _store_scales(sf_ptr, rows, blocks, tl.zeros([ROWS, NB], tl.int32), n_rows, n_blocks, stride_sf,
                      pad_rows, pad_blocks, LAYOUT)
        return
    pairs = tl.arange(0, PAIRS)
    row_ok = rows < n_rows
    col_ok = (pairs < n_cols // 2)[None, :]
    ok = row_ok[:, None] & col_ok
    rows64 = rows.to(tl.int64)[:, None]
    even, odd = _load_pairs(x_ptr, rows64, stride_x, pairs[None, :], ok, WORDS)
    if HAS_RESIDUAL:
        r_even, r_odd = _load_pairs(res_ptr, rows64, stride_res, pairs[None, :], ok, WORDS)
        even += r_even
        odd += r_odd
        _store_pairs(res_out_ptr, rows64, stride_res_out, pairs[None, :], ok, even, odd, WORDS)
    if NORM:  # (x * rsqrt(mean(x^2) + eps)) * w in fp32, the order of AITER's fused kernel
        rstd = tl.math.rsqrt(tl.sum(even * even + odd * odd, axis=1) / n_cols + eps)[:, None]
        w_even, w_odd = _load_pairs(w_ptr, 0, 0, pairs[None, :], col_ok, WORDS)
        even = (even * rstd) * w_even
        odd = (odd * rstd) * w_odd

    # Blocks of QBLOCK elements are QBLOCK / 2 consecutive pairs.
    even = tl.reshape(even, [ROWS, NB, QBLOCK // 2])
    odd = tl.reshape(odd, [ROWS, NB, QBLOCK // 2])
    amax = tl.max(tl.maximum(tl.abs(even), tl.abs(odd)), axis=2)
    byte, factor = _block_scales(amax, gs_ptr, SCALE_RULE)
    ties_away: tl.constexpr = SCALE_RULE == 2
    codes = (_e2m1_codes(even * factor[:, :, None], ties_away)
             | (_e2m1_codes(odd * factor[:, :, None], ties_away) << 4))
    tl.store(q_ptr + rows64 * stride_q + pairs[None, :], tl.reshape(codes, [ROWS, PAIRS]).to(tl.uint8), mask=ok)
    _store_scales(sf_ptr, rows, blocks, byte, n_rows, n_blocks, stride_sf, pad_rows, pad_blocks, LAYOUT)


# --------------------------------------------------------------------------------------------------
# Launch.


def block_n(hidden: int, block_size: int, pad_blocks: int) -> int:
    """Columns per tile: the hidden size, and enough scale blocks to cover the padded scale columns."""
    return max(next_pow2(hidden), block_size * next_pow2(pad_blocks), 2 * block_size)


@functools.lru_cache(maxsize=4096)  # a dictionary lookup on the hot path
def launch_config(hidden: int, block_size: int, pad_blocks: int, pad_rows: int, interpreted: bool) -> dict:
    bn = block_n(hidden, block_size, pad_blocks)
    elements = INTERPRETED_TILE_ELEMENTS if interpreted else TILE_ELEMENTS
    rows = max(1, elements // bn)
    if interpreted:  # fewer, fuller programs; on a GPU the tile stays fixed, so aot_specs() lists them all
        rows = min(rows, next_pow2(max(pad_rows, 1)))
    tile = rows * bn
    # Elements a thread: 32 at large calls (the per-thread fixed work spread over more elements: fewest
    # operations per element, and the kernel is ALU-bound); 16 below LARGE_CALL_ROWS, where more threads
    # a row shorten the latency chain. H200 sweeps (op_tests/test_norm_fp4.py --sweep [--small]): 8192 x
    # 4096 AITER MXFP4 33.1 us with 4 warps against 37.2 with 8; 1 to 1024 rows 2-17% faster with 8.
    per_thread = 32 if pad_rows >= LARGE_CALL_ROWS else 16
    # At hidden 16384 in fp32 (16 warps, one row a program) the gfx942 compile check reports 64 KiB of
    # LDS, the whole of a CU's: one workgroup per CU. Its 16 waves are still 4 per SIMD (59-60 VGPRs),
    # the same occupancy the smaller tiles reach, so the row is kept whole rather than split.
    warps = max(1, min(16, tile // (32 * per_thread)))
    return {"ROWS": rows, "BLOCK_N": bn, "num_warps": warps}


def launch(x, residual, weight, global_scale, q, sf, res_out, eps: float, norm: bool, block_size: int,
           scale_rule: str, layout: str, config: dict | None = None) -> None:
    """``x [M, N]`` (inner dim packed); ``q`` uint8 ``[M, N/2]``; ``sf`` uint8 (layout's shape);
    ``res_out`` ``[M, N]`` or None. ``global_scale`` fp32 ``[1]`` (read only for e4m3)."""
    n_rows, n_cols = x.shape
    pad_rows, pad_blocks = scale_padding(n_rows, n_cols // block_size, layout)
    if pad_rows == 0:
        return
    interpreted = env_interpreted()
    cfg = {**launch_config(n_cols, block_size, pad_blocks, pad_rows, interpreted), **(config or {})}
    grid = (cdiv(pad_rows, cfg["ROWS"]),)
    has_res = residual is not None
    pair_bytes = 2 * x.element_size()
    words = all(t is None or (t.data_ptr() % pair_bytes == 0 and (t.dim() == 1 or t.stride(0) % 2 == 0))
                for t in (x, residual, res_out, weight if norm else None))
    # only NVFP4 (e4m3) reads the global scale: the other rules get x in its place whatever the caller gave, so that
    # their launches have one signature (the one their code objects are built for)
    gs = global_scale if scale_rule == "e4m3" and global_scale is not None else x
    norm_fp4_quant_kernel[grid](
        x, residual if has_res else x, weight if norm else x, gs,
        q, sf, res_out if has_res else x,
        n_rows, n_cols, x.stride(0), residual.stride(0) if has_res else 0, q.stride(0),
        sf.stride(0) if layout == "linear" else 0, res_out.stride(0) if has_res else 0,
        pad_rows, pad_blocks, eps,
        NORM=norm, HAS_RESIDUAL=has_res, SCALE_RULE=SCALE_RULE_CODES[scale_rule], LAYOUT=LAYOUT_CODES[layout],
        QBLOCK=block_size, ROWS=cfg["ROWS"], BLOCK_N=cfg["BLOCK_N"], WORDS=words,
        num_warps=cfg["num_warps"],
    )


# --------------------------------------------------------------------------------------------------
# What `aiter-ext aot --check` compiles for gfx942/gfx950: the launcher's tile for every hidden size
# bucket it can pick, for each format x layout x input dtype, fused with and without a residual; the
# standalone quantizer at the smallest and largest tiles.

AOT_HIDDEN = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
AOT_FORMATS = (("e4m3", 16, "linear"), ("e4m3", 16, "swizzled"), ("ue8m0", 32, "linear"),
               ("ue8m0", 32, "swizzled"), ("aiter", 32, "linear"), ("aiter", 32, "shuffled"))


def _aot_dtypes(rule: str) -> tuple[str, ...]:
    """Input dtypes the public functions accept for a rule: fp16/bf16, and fp32 for AITER's functions."""
    return ("bf16", "fp16", "fp32") if rule == "aiter" else ("bf16", "fp16")


def aot_specs(arch: str = "gfx942"):
    """The heuristic's tiles (the same on every arch: no per-arch tile is measured yet), and those of the tuned
    rows measured on ``arch``."""
    seen = set()
    yield from _default_specs(seen)
    yield from _tuned_specs(arch, seen)


def _tuned_specs(arch: str, seen: set):
    """Every format, layout and form at the tile of each Triton row of the tuned CSV measured on ``arch`` (a row
    serves every public function at its width and dtype)."""
    from aiter_ext.core.tuned import measured_configs

    for row, config in measured_configs("norm_fp4", arch):
        if not config:
            continue  # {}: the heuristic's tile, which the defaults hold
        hidden, tokens = int(row["hidden"]), int(row["num_tokens"])
        for rule, qb, layout in AOT_FORMATS:
            pad_rows, pad_blocks = scale_padding(tokens, hidden // qb, layout)
            cfg = {**launch_config(hidden, qb, pad_blocks, pad_rows, interpreted=False), **config}
            for norm, res in ((True, True), (True, False), (False, False)):
                key = (rule, qb, layout, row["dtype"], norm, res, cfg["ROWS"], cfg["BLOCK_N"], cfg["num_warps"])
                if key not in seen:
                    seen.add(key)
                    yield _spec(rule, qb, layout, row["dtype"], norm, res, hidden, cfg)


def _default_specs(seen: set):
    for hidden in AOT_HIDDEN:
        for rule, qb, layout in AOT_FORMATS:
            pad_blocks = scale_padding(1, hidden // qb, layout)[1]
            for pad_rows, dtype in itertools.product((1, LARGE_CALL_ROWS), _aot_dtypes(rule)):
                cfg = launch_config(hidden, qb, pad_blocks, pad_rows, interpreted=False)
                for norm, res in ((True, True), (True, False), (False, False)):
                    if not norm and hidden not in (64, MAX_HIDDEN):
                        continue
                    key = (rule, qb, layout, dtype, norm, res, cfg["ROWS"], cfg["BLOCK_N"], cfg["num_warps"])
                    if key in seen:
                        continue
                    seen.add(key)
                    yield _spec(rule, qb, layout, dtype, norm, res, hidden, cfg)
    # Element-wise loads for odd row strides or misaligned pointers (rare): one tile per format.
    for rule, qb, layout in AOT_FORMATS[::2]:
        cfg = launch_config(4096, qb, 4096 // qb, LARGE_CALL_ROWS, interpreted=False)
        yield _spec(rule, qb, layout, "bf16", True, True, 4096, cfg, words=False)


def _spec(rule, qb, layout, dtype, norm, res, hidden, cfg, words=True) -> KernelSpec:
    gs = "*fp32" if rule == "e4m3" else f"*{dtype}"  # launch's stand-in x where the rule reads no global scale
    sig = {"x_ptr": f"*{dtype}", "res_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "gs_ptr": gs, "q_ptr": "*u8",
           "sf_ptr": "*u8", "res_out_ptr": f"*{dtype}", "n_rows": "i32", "n_cols": "i32", "stride_x": "i32",
           "stride_res": "i32", "stride_q": "i32", "stride_sf": "i32", "stride_res_out": "i32",
           "pad_rows": "i32", "pad_blocks": "i32", "eps": "fp32"}
    flags = ("norm" if norm else "quant") + ("+res" if res else "")
    flags += "" if words else "+elementwise"
    tag = f"{rule}-{layout}-{dtype}-{flags}-h{hidden}-r{cfg['ROWS']}b{cfg['BLOCK_N']}w{cfg['num_warps']}"
    return KernelSpec(f"norm_fp4_quant[{tag}]", norm_fp4_quant_kernel, sig,
                      {"NORM": norm, "HAS_RESIDUAL": res, "SCALE_RULE": SCALE_RULE_CODES[rule],
                       "LAYOUT": LAYOUT_CODES[layout], "QBLOCK": qb, "ROWS": cfg["ROWS"], "BLOCK_N": cfg["BLOCK_N"],
                       "WORDS": words},
                      {"num_warps": cfg["num_warps"]},
                      divisible_by_16=("x_ptr", "res_ptr", "w_ptr", "q_ptr", "sf_ptr", "res_out_ptr", "n_cols",
                                       "stride_q") + (("stride_x", "stride_res", "stride_res_out") if words else ()))


register_aot_specs("norm_fp4", aot_specs)
