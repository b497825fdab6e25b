"""Triton kernel for top-k/top-p renormalisation and top-k logit masking: exact thresholds, no sort.

Per row it finds the threshold ``v*`` and keeps the entries ``>= v*``:
- top-k: the k-th largest value (ties may keep more than k);
- top-p: the smallest value whose strictly-larger mass is below ``top_p`` (the row maximum is always kept).

The search is a bisection on the value that snaps to entries of the row. Each pass over the row,
at a pivot ``mid``, yields:
- the count (or mass) of entries at or above (strictly above) ``mid``;
- the nearest entries on either side of ``mid``.
Each pass moves a bound to an entry of the row, so the search is exact, handles ties, and ends when
the bounds meet: about log2(range / spacing) passes. A final pass writes the output: renormalised
probabilities, or logits with the dropped entries at -inf.
"""

from __future__ import annotations

# Triton itself is imported only when a kernel needs it (core/lazy_triton.py: not for a code object's launch)
from aiter_ext.core.lazy_triton import tl, triton

from aiter_ext.core.aot import KernelSpec, register_aot_specs
from aiter_ext.core.thin import thin

from .kernels import PER_ROW, SCALAR, load_chunk, tile_rows, top_k_of, top_p_of

TOP_K_RENORM, TOP_P_RENORM, TOP_K_MASK = 0, 1, 2
BIG = tl.constexpr(3.0e38)


@thin
@triton.jit
def renorm_kernel(x_ptr, out_ptr, param_ptr, param_value, num_rows, vocab, stride_in, stride_out,
                  MODE: tl.constexpr, PARAM: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    r_ok, r_safe = tile_rows(num_rows, ROWS)
    row_ptr = x_ptr + r_safe * stride_in
    cols = tl.arange(0, BLOCK)
    # per-row values out of range are read as the samplers read them (k <= 0 or NaN p: no filter)
    if MODE == 1:
        param = top_p_of(param_ptr, param_value, r_safe, PARAM)
    else:
        param = top_k_of(param_ptr, param_value, r_safe, PARAM)

    # the row's smallest finite entry and its largest entry (entries past the vocabulary never count)
    lo = tl.full([ROWS], BIG, tl.float32)
    hi = tl.full([ROWS], -BIG, tl.float32)
    for start in range(0, vocab, BLOCK):
        x, idx = load_chunk(row_ptr, start, cols, vocab, -float("inf"))
        lo = tl.minimum(lo, tl.min(tl.where(x > -BIG, x, BIG), axis=1))
        hi = tl.maximum(hi, tl.max(x, axis=1))
    if MODE == 1:
        # top-p. First: if even the smallest entry is kept, everything is.
        above_lo = tl.zeros([ROWS], tl.float32)
        for start in range(0, vocab, BLOCK):
            x, idx = load_chunk(row_ptr, start, cols, vocab, 0.0)
            above_lo += tl.sum(tl.where(x > lo[:, None], x, 0.0), axis=1)
        done = above_lo < param
        # Invariants: every entry <= lb is dropped; ub is a kept entry (the maximum always is).
        lb = lo
        ub = tl.where(done, lo, hi)
        while tl.min(done.to(tl.int32), axis=0) == 0:
            mid = lb + (ub - lb) * 0.5
            mid = tl.where(mid <= lb, ub, mid)  # lb and ub are adjacent floats
            above = tl.zeros([ROWS], tl.float32)
            below_max = tl.full([ROWS], -BIG, tl.float32)
            above_min = tl.full([ROWS], BIG, tl.float32)
            for start in range(0, vocab, BLOCK):
                x, idx = load_chunk(row_ptr, start, cols, vocab, -float("inf"))
                gt = x > mid[:, None]
                above += tl.sum(tl.where(gt, x, 0.0), axis=1)
                below_max = tl.maximum(below_max, tl.max(tl.where(gt, -BIG, x), axis=1))
                above_min = tl.minimum(above_min, tl.min(tl.where(gt, x, BIG), axis=1))
            # below_max (the largest entry <= mid) has exactly `above` as its strictly-larger mass
            kept = above < param
            finished = (kept & (mid >= ub)) | (~kept & (above_min >= ub))
            ub = tl.where(~done & kept, below_max, ub)
            lb = tl.where(~done & ~kept, mid, lb)
            done = done | finished
        threshold = ub
    else:
        # top-k (on probabilities or logits): lo is an entry with >= k entries at or above it
        k = param
        lo_k = lo
        ub = hi
        done = r_safe < 0  # all False
        while tl.min(done.to(tl.int32), axis=0) == 0:
            mid = lo_k + (ub - lo_k) * 0.5
            mid = tl.where(mid <= lo_k, ub, mid)
            count = tl.zeros([ROWS], tl.float32)
            at_or_above_min = tl.full([ROWS], BIG, tl.float32)
            below_max = tl.full([ROWS], -BIG, tl.float32)
            for start in range(0, vocab, BLOCK):
                x, idx = load_chunk(row_ptr, start, cols, vocab, -float("inf"))
                ge = x >= mid[:, None]
                count += tl.sum(ge.to(tl.float32), axis=1)
                at_or_above_min = tl.minimum(at_or_above_min, tl.min(tl.where(ge, x, BIG), axis=1))
                below_max = tl.maximum(below_max, tl.max(tl.where(ge, -BIG, x), axis=1))
            enough = count >= k
            lo_k = tl.where(~done & enough, at_or_above_min, lo_k)
            ub = tl.where(~done & ~enough, below_max, ub)
            done = done | (lo_k >= ub)
        threshold = lo_k

    out_row = out_ptr + r_safe * stride_out
    if MODE == 2:
        for start in range(0, vocab, BLOCK):
            x, idx = load_chunk(row_ptr, start, cols, vocab, -float("inf"))
            y = tl.where(x >= threshold[:, None], x, -float("inf"))
            tl.store(out_row[:, None] + idx[None, :], y.to(out_ptr.dtype.element_ty),
                     mask=r_ok[:, None] & (idx < vocab)[None, :])
    else:
        kept_mass = tl.zeros([ROWS], tl.float32)
        for start in range(0, vocab, BLOCK):
            x, idx = load_chunk(row_ptr, start, cols, vocab, 0.0)
            kept_mass += tl.sum(tl.where(x >= threshold[:, None], x, 0.0), axis=1)
        scale = 1.0 / tl.where(kept_mass > 0.0, kept_mass, 1.0)
        for start in range(0, vocab, BLOCK):
            x, idx = load_chunk(row_ptr, start, cols, vocab, 0.0)
            y = tl.where(x >= threshold[:, None], x * scale[:, None], 0.0)
            tl.store(out_row[:, None] + idx[None, :], y.to(out_ptr.dtype.element_ty),
                     mask=r_ok[:, None] & (idx < vocab)[None, :])


def _tiles(arch: str):
    """``(dtype, launch config, name suffix)``: the defaults (vocabularies 1024 and 128256, every dtype), then the
    tile of each tuned row measured on ``arch`` (a tuned tile needs its code object as much as a default)."""
    from aiter_ext.core.tuned import measured_configs

    from .logits_kernels import launch_config

    for vocab in (1024, 128256):
        for dtype in ("fp32", "bf16", "fp16"):  # dtypes are kept: the output has the input's
            yield dtype, launch_config(vocab, 256, "gfx942"), ""
    for row, config in measured_configs("renorm", arch):
        cfg = launch_config(int(row["vocab"]), int(row["rows"]), arch, False, config.get("BLOCK", 0),
                            config.get("num_warps", 0))
        yield row["dtype"], cfg, f"-r{cfg['ROWS']}w{cfg['num_warps']}"


def aot_specs(arch: str = "gfx942"):
    """Each mode at each tile, its threshold per row or scalar (a scalar's pointer is x: Threshold.pointer's
    stand-in, never read)."""
    seen = set()
    for dtype, cfg, suffix in _tiles(arch):
        for mode, name in ((TOP_K_RENORM, "top_k_renorm"), (TOP_P_RENORM, "top_p_renorm"), (TOP_K_MASK, "top_k_mask")):
            key = (dtype, mode, cfg["ROWS"], cfg["BLOCK"], cfg["num_warps"])
            if key in seen:
                continue
            seen.add(key)
            # top-p renorm writes fp32 whatever it reads (FlashInfer's .float() first)
            out = "fp32" if mode == TOP_P_RENORM else dtype
            for param, per_row in ((PER_ROW, "*i32" if mode != TOP_P_RENORM else "*fp32"), (SCALAR, f"*{dtype}")):
                sig = {"x_ptr": f"*{dtype}", "out_ptr": f"*{out}", "param_ptr": per_row, "param_value": "fp32",
                       "num_rows": "i32", "vocab": "i32", "stride_in": "i32", "stride_out": "i32"}
                label = "" if param == PER_ROW else "-scalar"
                yield KernelSpec(f"renorm[{name}{label}-{dtype}-block{cfg['BLOCK']}{suffix}]", renorm_kernel, sig,
                                 {"MODE": mode, "PARAM": param, "ROWS": cfg["ROWS"], "BLOCK": cfg["BLOCK"]},
                                 {"num_warps": cfg["num_warps"]}, divisible_by_16=("x_ptr", "out_ptr", "param_ptr"))


register_aot_specs("renorm", aot_specs)
