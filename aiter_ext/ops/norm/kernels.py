"""Triton kernel for the RMSNorm family. Private: called only through ``backends.py``.

One kernel, four public ops: ``GEMMA`` multiplies by ``(1 + w)``, ``FUSED_ADD`` adds the residual first
(storing the rounded sum back into it and normalising the unrounded fp32 sum). A "row" is one
``[hidden]`` vector: row ``r`` of a ``[B, heads, D]`` input is ``(r // heads, r % heads)``, so QK-norm and
plain ``[B, H]`` inputs (``heads = 1``, which Triton specialises away) share one code path. Only the last
dimension must be contiguous; the leading strides are free and the row offsets are computed in int64
(FlashInfer's tests use row strides above 2^31).

Two tilings, chosen by :func:`launch_config`:

- *resident*: the whole (padded) row sits in registers; one program normalises ``BLOCK_R`` rows, read
  once and written once. Several rows per program keep short rows (QK-norm's 64-512) from wasting a
  program on a few hundred bytes.
- *chunked* (``BLOCK_H < hidden``): rows too long for registers are read twice in ``BLOCK_H``-wide
  chunks, the first pass for the sum of squares, the second to scale and write. The second read mostly
  hits L2 (one 32768-wide bf16 row is 64 KiB). The fused form recomputes ``x + residual`` in the second
  pass rather than re-reading the residual it wrote: that would be the rounded sum.

``EVEN`` (no ragged rows or columns) drops every mask: on AMD a masked load is an exec-mask branch.
"""

from __future__ import annotations

import functools

# Triton itself is imported only when a kernel needs it (core/lazy_triton.py: not for a code object's launch)
from aiter_ext.core.lazy_triton import tl, triton

from aiter_ext.core.aot import KernelSpec, register_aot_specs
from aiter_ext.core.launch import cdiv, next_pow2
from aiter_ext.core.thin import thin

#: Widest row kept whole in registers (elements of the padded row). 16384 fp32 values over 16 warps is
#: 32 per lane on NVIDIA, 16 on AMD (64-lane waves); wider rows take the chunked path.
MAX_RESIDENT_BLOCK = 16384
#: Chunk width of the chunked path: 8192 elements over 16 warps, 16 values per lane (8 on AMD).
CHUNK_BLOCK = 8192
#: Elements one program handles when rows are short: below this, several rows share a program.
ROW_TILE_ELEMENTS = 4096
#: Rows per program shrink until there are this many programs, when the rows allow it (an H200 has 132
#: SMs, MI300X 304 CUs: a few programs per compute unit keep the memory system busy).
MIN_PROGRAMS = 512
#: Values per lane one warp/wave is given before another is added: two 16-byte vectors of 16-bit data.
VALUES_PER_LANE = 16
MAX_WARPS = 16  # 1024 threads on AMD (64-lane waves), 512 on NVIDIA


def _prev_pow2(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def _num_warps(block_r: int, block_h: int, lanes: int) -> int:
    return min(MAX_WARPS, max(1, (block_r * block_h) // (lanes * VALUES_PER_LANE)))


def _lanes(arch: str) -> int:
    return 64 if arch.startswith("gfx") else 32


@functools.lru_cache(maxsize=4096)
def launch_config(rows: int, hidden: int, arch: str) -> dict:
    """Tile and warps for ``rows`` rows of ``hidden`` elements on ``arch`` (``gfx*`` = AMD, else NVIDIA/CPU).

    Why: the op is memory-bound, so a program should move a few KiB (not one short row) and each lane
    should hold about ``VALUES_PER_LANE`` values, enough 16-byte accesses in flight without pressure on
    registers. Rows up to ``MAX_RESIDENT_BLOCK`` are held whole (read once); longer rows are chunked.
    Short rows are packed ``ROW_TILE_ELEMENTS // BLOCK_H`` to a program, but never so many that fewer
    than ``MIN_PROGRAMS`` programs remain. Warps scale with the tile; an AMD wave has 64 lanes, so it
    needs half the waves for the same values per lane.
    """
    padded = max(16, next_pow2(hidden))
    if padded <= MAX_RESIDENT_BLOCK:
        block_h = padded
        block_r = min(max(1, ROW_TILE_ELEMENTS // block_h), _prev_pow2(rows // MIN_PROGRAMS))
    else:
        block_h, block_r = CHUNK_BLOCK, 1
    return {"BLOCK_R": block_r, "BLOCK_H": block_h, "num_warps": _num_warps(block_r, block_h, _lanes(arch))}


@triton.jit
def _row_offsets(rows, num_heads, stride_b, stride_h):
    """int64 element offset of each row: row ``r`` is (batch ``r // num_heads``, head ``r % num_heads``)."""
    batch = rows // num_heads
    head = rows - batch * num_heads
    return batch.to(tl.int64) * stride_b + head.to(tl.int64) * stride_h


@triton.jit
def _load_f32(ptrs, mask, EVEN: tl.constexpr):
    if EVEN:
        return tl.load(ptrs).to(tl.float32)
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store(ptrs, value, mask, EVEN: tl.constexpr):
    if EVEN:
        tl.store(ptrs, value.to(ptrs.dtype.element_ty))
    else:
        tl.store(ptrs, value.to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _load_rows(x, residual, x_off, r_off, cols, mask, FUSED_ADD: tl.constexpr, EVEN: tl.constexpr):
    """The fp32 rows to normalise: ``x`` or, fused, ``x + residual`` (never rounded here)."""
    v = _load_f32(x + x_off[:, None] + cols[None, :], mask, EVEN)
    if FUSED_ADD:
        v += _load_f32(residual + r_off[:, None] + cols[None, :], mask, EVEN)
    return v


@triton.jit
def _load_weight(weight, cols, col_mask, GEMMA: tl.constexpr, EVEN: tl.constexpr):
    w = _load_f32(weight + cols, col_mask, EVEN)
    if GEMMA:
        w = w + 1.0  # in fp32: 1 + w in 16 bits would round
    return w


@triton.jit
def _scale_and_store(v, rstd, w, out, residual, o_off, r_off, cols, mask,
                     FUSED_ADD: tl.constexpr, EVEN: tl.constexpr):
    """Write ``cast(v)`` to the residual (fused) and ``cast(v * rstd * w)`` to ``out``."""
    if FUSED_ADD:
        _store(residual + r_off[:, None] + cols[None, :], v, mask, EVEN)
    _store(out + o_off[:, None] + cols[None, :], (v * rstd[:, None]) * w[None, :], mask, EVEN)


@thin
@triton.jit
def rmsnorm_kernel(
    x, residual, weight, out,
    num_rows, num_heads, hidden,
    stride_xb, stride_xh, stride_rb, stride_rh, stride_ob, stride_oh,  # in elements; the last dim is packed
    eps,
    GEMMA: tl.constexpr, FUSED_ADD: tl.constexpr, CHUNKED: tl.constexpr, EVEN: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """``out = x * rsqrt(mean(x^2) + eps) * w`` over rows (``(1 + w)`` with GEMMA).

    FUSED_ADD: ``x`` becomes ``x + residual`` in fp32, ``residual`` receives its rounding, and the
    launcher passes ``out = x`` (FlashInfer writes the result over the input). Every element of a row
    is read before any of it is written, so ``out`` may alias ``x``.
    """
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_H)
    x_off = _row_offsets(rows, num_heads, stride_xb, stride_xh)
    r_off = _row_offsets(rows, num_heads, stride_rb, stride_rh)
    o_off = _row_offsets(rows, num_heads, stride_ob, stride_oh)
    row_ok = rows < num_rows

    if CHUNKED:
        sum_sq = tl.zeros([BLOCK_R, BLOCK_H], tl.float32)
        for start in range(0, hidden, BLOCK_H):
            c = start + cols
            mask = row_ok[:, None] & (c < hidden)[None, :]
            v = _load_rows(x, residual, x_off, r_off, c, mask, FUSED_ADD, EVEN)
            sum_sq += v * v
        rstd = tl.math.rsqrt(tl.sum(sum_sq, axis=1) / hidden + eps)
        for start in range(0, hidden, BLOCK_H):
            c = start + cols
            col_mask = c < hidden
            mask = row_ok[:, None] & col_mask[None, :]
            v = _load_rows(x, residual, x_off, r_off, c, mask, FUSED_ADD, EVEN)
            w = _load_weight(weight, c, col_mask, GEMMA, EVEN)
            _scale_and_store(v, rstd, w, out, residual, o_off, r_off, c, mask, FUSED_ADD, EVEN)
    else:
        col_mask = cols < hidden
        mask = row_ok[:, None] & col_mask[None, :]
        v = _load_rows(x, residual, x_off, r_off, cols, mask, FUSED_ADD, EVEN)
        # The weight is loaded before the reduction so that its latency overlaps the row's.
        w = _load_weight(weight, cols, col_mask, GEMMA, EVEN)
        rstd = tl.math.rsqrt(tl.sum(v * v, axis=1) / hidden + eps)
        _scale_and_store(v, rstd, w, out, residual, o_off, r_off, cols, mask, FUSED_ADD, EVEN)


def _row_strides(t) -> tuple[int, int]:
    """(batch stride, head stride) of a ``[B, H]`` (head stride 0) or ``[B, heads, D]`` tensor."""
    return (t.stride(0), t.stride(1)) if t.dim() == 3 else (t.stride(0), 0)


def launch(input, residual, weight, out, eps: float, gemma: bool, config: dict, arch: str) -> None:
    """Normalise ``input``'s rows into ``out``; with ``residual``, the fused add (``out`` must be ``input``).

    ``config`` (a tuned row, or a test forcing the chunked path) overrides :func:`launch_config`'s keys.
    """
    hidden = input.shape[-1]
    num_heads = input.shape[1] if input.dim() == 3 else 1
    num_rows = input.shape[0] * num_heads
    if num_rows == 0:
        return
    cfg = {**launch_config(num_rows, hidden, arch), **config}
    block_r, block_h = cfg["BLOCK_R"], cfg["BLOCK_H"]
    fused = residual is not None
    res = residual if fused else input  # an unused pointer when not fused
    rmsnorm_kernel[(cdiv(num_rows, block_r),)](
        input, res, weight, out, num_rows, num_heads, hidden,
        *_row_strides(input), *_row_strides(res), *_row_strides(out), eps,
        GEMMA=gemma, FUSED_ADD=fused, CHUNKED=block_h < hidden,
        EVEN=num_rows % block_r == 0 and hidden % block_h == 0,
        BLOCK_R=block_r, BLOCK_H=block_h, num_warps=cfg["num_warps"],
    )


# --------------------------------------------------------------------------------------------------
# What `aiter-ext aot --check` compiles for gfx942/gfx950: every tile launch_config can pick on AMD
# (each padded width from 16 to MAX_RESIDENT_BLOCK with every power-of-two BLOCK_R up to its row tile,
# and the chunked tile). Each tile in three forms: plain and unmasked (aligned rows), fused with masks
# on aligned rows (a ragged row count or a hidden size such as 3584), and fused with nothing aligned
# (hidden 111: no 16-byte vectors). The fused add is the heavier body; a 16-bit dtype stands for both
# (same registers). The widest tiles, where registers could run out, also get fp32 and GEMMA.


def _aot_tiles(arch: str) -> list[tuple[int, dict]]:
    """``(a hidden size that selects it, config)`` for every tile launch_config can return on ``arch``."""
    tiles = []
    block_h = 16
    while block_h <= MAX_RESIDENT_BLOCK:
        block_r = 1
        while block_r <= max(1, ROW_TILE_ELEMENTS // block_h):
            tiles.append((block_h, {"BLOCK_R": block_r, "BLOCK_H": block_h,
                                    "num_warps": _num_warps(block_r, block_h, _lanes(arch))}))
            block_r *= 2
        block_h *= 2
    tiles.append((4 * MAX_RESIDENT_BLOCK, launch_config(1, 4 * MAX_RESIDENT_BLOCK, arch)))
    return tiles


def _tuned_tiles(arch: str) -> list[tuple[int, dict]]:
    """``(hidden, config)`` of every Triton row of the tuned CSV measured on ``arch``, as the call it serves
    launches it (the row's keys over the heuristic's): a tuned tile needs its object as much as a default."""
    from aiter_ext.core.tuned import measured_configs

    return [(int(row["hidden"]), {**launch_config(int(row["num_rows"]), int(row["hidden"]), arch), **config})
            for row, config in measured_configs("rmsnorm", arch)]


def aot_specs(arch: str = "gfx942"):
    """The specs for ``arch``: AMD's tiles for gfx*, an NVIDIA GPU's (32-lane warps) for sm_XY, and the tiles
    of the tuned rows measured on ``arch``."""
    pointers = ("x", "residual", "weight", "out")
    ints = ("num_rows", "num_heads", "hidden", "stride_xb", "stride_xh", "stride_rb", "stride_rh",
            "stride_ob", "stride_oh")
    aligned_ints = ("hidden",) + ints[3:]
    seen = set()
    for hidden, cfg in _aot_tiles(arch) + _tuned_tiles(arch):
        tile = (cfg["BLOCK_R"], cfg["BLOCK_H"], cfg["num_warps"], cfg["BLOCK_H"] < hidden)
        if tile in seen:  # a tuned tile the defaults already hold
            continue
        seen.add(tile)
        chunked = cfg["BLOCK_H"] < hidden
        # (dtype, fused, gemma, even, aligned parameters, label): every call form of the 16-bit dtypes with
        # aligned tensors (rmsnorm, fused_add_rmsnorm, gemma_rmsnorm, gemma_fused_add_rmsnorm; a shape the tile
        # divides or not, bf16), so that a serving engine's calls find an object; unaligned and fp32 forms sampled
        forms = [(dtype, fused, gemma, even, pointers + aligned_ints, "even" if even else "masked")
                 for dtype in ("bf16", "fp16") for fused in (False, True) for gemma in (False, True)
                 for even in ((True, False) if dtype == "bf16" else (True,))]
        forms += [("bf16", True, False, False, (), "ragged")]
        if chunked or cfg["BLOCK_R"] * cfg["BLOCK_H"] >= 8192:
            forms += [("fp32", True, False, False, pointers + aligned_ints, "masked"),
                      ("fp32", False, True, True, pointers + aligned_ints, "even")]
        for dtype, fused, gemma, even, aligned, label in forms:
            sig = {**{p: f"*{dtype}" for p in pointers}, **{n: "i32" for n in ints}, "eps": "fp32"}
            tag = (f"{dtype}-r{cfg['BLOCK_R']}b{cfg['BLOCK_H']}w{cfg['num_warps']}"
                   f"{'-chunked' if chunked else ''}-{label}")
            yield KernelSpec(f"{'gemma_' if gemma else ''}{'fused_add_' if fused else ''}rmsnorm[{tag}]",
                             rmsnorm_kernel, sig,
                             {"GEMMA": gemma, "FUSED_ADD": fused, "CHUNKED": chunked, "EVEN": even,
                              "BLOCK_R": cfg["BLOCK_R"], "BLOCK_H": cfg["BLOCK_H"]},
                             {"num_warps": cfg["num_warps"]}, divisible_by_16=aligned)


register_aot_specs("rmsnorm", aot_specs)
