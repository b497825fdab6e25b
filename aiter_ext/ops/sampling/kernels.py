"""Triton kernel for sampling from probability rows with top-k, top-p and min-p filters, no sort.

One program takes ``ROWS`` output rows (1 for large vocabularies; more for small ones, so that the
launch is not one tiny program per row) and walks the vocabulary in ``BLOCK``-wide chunks.

Rows must sum to 1 (FlashInfer's contract too), so plain, top-k and top-p sampling need no pass to
sum them. Passes over a row:
1. with min-p only: the maximum, then the mass of the tokens ``>= min_p * max``;
2. rounds of rejection sampling (FlashInfer samples this way too, with two pivots):
   - draw a token from the candidates by inverse CDF. The candidates are the tokens above the
     round's lower bound ``low`` and, with min-p, above its threshold. A ``while`` loop stops at
     the chunk where every row has found its token: half the row on average.
   - with top-k or top-p, check the token. Count the tokens strictly more probable, and their
     mass: FlashInfer's rules are "count < k" and "mass < top_p". If the token passes, the row is
     done; it is a draw from the kept set in proportion to the probabilities.
   - otherwise its value becomes the new ``low``. Every kept token is more probable than a rejected
     one, so the kept set stays inside the candidates, and the next round samples from fewer.

The row maximum always passes ("nothing more probable"), so the loop ends even for ``k <= 0`` or
``top_p <= 0``; such thresholds keep only the maximum (and its ties).

Randomness: Philox (``tl.rand``) keyed by the seed, with the counter built from ``offset`` + output row
and the round. A fixed seed/offset reproduces the same tokens. Graph replays read fresh seeds from
the device.

A row with no candidate of positive mass (all zeros, or NaN: NaN entries are never candidates) gives
token 0 and is marked invalid (FlashInfer's ``valid=False``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from aiter_ext.core.aot import KernelSpec, register_aot_specs

# How a threshold arrives: absent, one scalar for every row, or a tensor with one value per source row.
NONE, SCALAR, PER_ROW = 0, 1, 2
ROUND_BITS = tl.constexpr(20)  # the Philox counter is (offset + row) << ROUND_BITS | round


@triton.jit
def program_rows(indices, num_out, HAS_INDICES: tl.constexpr, ROWS: tl.constexpr):
    """This program's output rows ``r``, which are real (``r_ok``), ``r`` clamped into range (rows past
    the end redo the last row; nothing of theirs is stored), and the source row each one samples."""
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    r_safe = tl.minimum(r, num_out - 1)
    if HAS_INDICES:
        src = tl.load(indices + r_safe).to(tl.int64)
    else:
        src = r_safe.to(tl.int64)
    return r, r < num_out, r_safe, src


@triton.jit
def _row_param(ptr, value, src, MODE: tl.constexpr):
    if MODE == 2:
        return tl.load(ptr + src).to(tl.float32)
    return tl.zeros(src.shape, tl.float32) + value


@triton.jit
def load_chunk(row_ptr, start, cols, vocab, fill):
    """One [ROWS, BLOCK] chunk of the rows as fp32, ``fill`` past the vocabulary. The load itself is
    unmasked (the column is clamped): on AMD every masked load is an exec-mask branch and its saved
    masks ran the kernels out of SGPRs. Shared by every sampling kernel."""
    idx = start + cols
    x = tl.load(row_ptr[:, None] + tl.minimum(idx, vocab - 1)[None, :]).to(tl.float32)
    return tl.where((idx < vocab)[None, :], x, fill), idx


@triton.jit
def filtered_sampling_kernel(
    probs, out, valid, indices, top_k_ptr, top_p_ptr, min_p_ptr, seed_ptr, offset_ptr,
    top_k_value, top_p_value, min_p_value, num_out, vocab, stride_row,
    HAS_INDICES: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr, MIN_P: tl.constexpr,
    SEED_PER_ROW: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    r, r_ok, r_safe, src = program_rows(indices, num_out, HAS_INDICES, ROWS)
    row_ptr = probs + src * stride_row
    cols = tl.arange(0, BLOCK)

    threshold = tl.zeros([ROWS], tl.float32)
    mass = tl.full([ROWS], 1.0, tl.float32)  # rows sum to 1 (FlashInfer's contract): no pass to sum them
    if MIN_P != 0:
        # min-p is relative to the row maximum: one pass for the maximum, one for the kept mass
        row_max = tl.zeros([ROWS], tl.float32)
        for start in range(0, vocab, BLOCK):
            x, idx = load_chunk(row_ptr, start, cols, vocab, 0.0)
            row_max = tl.maximum(row_max, tl.max(x, axis=1))
        threshold = _row_param(min_p_ptr, min_p_value, src, MIN_P) * row_max
        mass = tl.zeros([ROWS], tl.float32)
        for start in range(0, vocab, BLOCK):
            x, idx = load_chunk(row_ptr, start, cols, vocab, 0.0)
            mass += tl.sum(tl.where(x >= threshold[:, None], x, 0.0), axis=1)
    if TOP_K != 0:
        top_k = _row_param(top_k_ptr, top_k_value, src, TOP_K)
    if TOP_P != 0:
        top_p = _row_param(top_p_ptr, top_p_value, src, TOP_P)

    done = r < 0
    ok = r >= 0
    token = tl.zeros([ROWS], tl.int32)
    # Candidates are the x >= lower: min-p's threshold, raised past each rejected token's value.
    lower = threshold
    seed_index = r_safe if SEED_PER_ROW else tl.zeros([ROWS], tl.int32)
    seed = tl.load(seed_ptr + seed_index)
    counter = (tl.load(offset_ptr + seed_index) + r_safe) << ROUND_BITS
    rnd = 0
    while tl.min(done.to(tl.int32), axis=0) == 0:
        u = tl.rand(seed, counter + rnd) * mass
        # Inverse CDF over the candidates. The first index whose running sum passes u always carries
        # positive weight. The scan stops once every pending row has its token: half a row on
        # average. A `while` loop is not software-pipelined, yet on the H200 it beat a full-row,
        # pipelined `for` scan by 5-10% (op_tests/test_sampling.py --sweep at 6ed973d).
        found = tl.where(done, 0, -1)
        last_candidate = tl.full([ROWS], -1, tl.int32)
        running = tl.zeros([ROWS], tl.float32)
        start = 0
        while (start < vocab) & (tl.min(found, axis=0) < 0):
            found, last_candidate, running = _scan_chunk(row_ptr, start, cols, vocab, lower, u, found,
                                                         last_candidate, running)
            start += BLOCK
        if rnd == 0:
            # No candidate with positive mass (a zero or NaN row, or min-p over one): token 0, invalid.
            ok = (found >= 0) | (last_candidate >= 0)
            done = ~ok
        # rounding can leave u just above the scanned mass: then the last candidate is the draw
        pick = tl.maximum(tl.where(found >= 0, found, last_candidate), 0)
        accept = ~done & ok
        if (TOP_K != 0) | (TOP_P != 0):
            pivot = tl.load(row_ptr + pick)
            above = tl.zeros([ROWS], tl.int32)
            above_mass = tl.zeros([ROWS], tl.float32)
            for s in range(0, vocab, BLOCK):
                x, idx = load_chunk(row_ptr, s, cols, vocab, 0.0)
                x_above = tl.where(x > pivot[:, None], x, 0.0)
                above += tl.sum((x_above > 0.0).to(tl.int32), axis=1)
                above_mass += tl.sum(x_above, axis=1)
            passes = above == 0  # the maximum is always kept
            if (TOP_K != 0) & (TOP_P != 0):  # joint: both filters on the original distribution
                passes = passes | ((above.to(tl.float32) < top_k) & (above_mass < top_p))
            elif TOP_K != 0:
                passes = passes | (above.to(tl.float32) < top_k)
            else:
                passes = passes | (above_mass < top_p)
            accept = accept & passes
            reject = (~done) & (~passes)
            # next round: only tokens strictly more probable than the rejected one (the next float up)
            lower = tl.where(reject, tl.maximum(lower, _next_float_up(pivot)), lower)
            mass = tl.where(reject, above_mass, mass)
        token = tl.where(accept, pick, token)
        done = done | accept
        rnd += 1
    tl.store(out + r, token.to(out.dtype.element_ty), mask=r_ok)
    tl.store(valid + r, ok.to(tl.int8), mask=r_ok)


@triton.jit
def _scan_chunk(row_ptr, start, cols, vocab, lower, u, found, last_candidate, running):
    """One chunk of the inverse-CDF scan: rows still looking take the first index whose running sum
    of candidate mass passes ``u``."""
    x, idx = load_chunk(row_ptr, start, cols, vocab, 0.0)
    xc = tl.where(x >= lower[:, None], x, 0.0)
    cdf = tl.cumsum(xc, axis=1) + running[:, None]
    first = tl.min(tl.where(cdf > u[:, None], idx[None, :], vocab), axis=1)
    found = tl.where((found < 0) & (first < vocab), first, found)
    last_candidate = tl.maximum(last_candidate, tl.max(tl.where(xc > 0.0, idx[None, :], -1), axis=1))
    return found, last_candidate, running + tl.sum(xc, axis=1)


@triton.jit
def _next_float_up(x):
    """The smallest float32 above ``x`` for ``x >= 0`` (probabilities): one ulp up, by the bits."""
    return (x.to(tl.int32, bitcast=True) + 1).to(tl.float32, bitcast=True)


def launch_config(vocab: int, num_out: int, arch: str, interpreted: bool = False) -> dict:
    """Tile: one row per program once a row fills a wide chunk; several rows per program for small
    vocabularies, except on AMD (below).

    From a sweep on an H200 (op_tests/test_sampling.py --sweep, V 128256, batches 1/32/256):
    8192-wide chunks and the early-exit scan were best for every filter; 8 warps at batch 1 and 32,
    and 4 at batch 256.

    Under the CPU interpreter the cost is per program, not per element, so tiles are 16x larger there.
    It is the same kernel with fewer programs, which lets the statistical tests draw ~10^5 tokens."""
    elements = 8192 * (16 if interpreted else 1)
    block = min(8192, max(16, triton.next_power_of_2(vocab)))
    rows = max(1, min(elements // block, triton.next_power_of_2(max(num_out, 1))))
    if arch.startswith("gfx") and not interpreted:
        # AMD (compile check, Triton 3.9): 2-D tiles, and 8192-wide chunks (16 values per lane), spilled
        # SGPRs in the filtered variants; one row of 4096-wide chunks over 8 waves compiles clean.
        block = min(block, 4096)
        return {"ROWS": 1, "BLOCK": block, "num_warps": 8 if block >= 4096 else 4}
    if rows * block < 4096:
        warps = 4
    else:
        warps = 8 if num_out < 128 else 4
    return {"ROWS": rows, "BLOCK": block, "num_warps": warps}


def aot_specs():
    pointers = ("probs", "out", "valid", "indices", "top_k_ptr", "top_p_ptr", "min_p_ptr", "seed_ptr", "offset_ptr")
    filters = {"plain": (NONE, NONE, NONE), "top_k": (PER_ROW, NONE, NONE), "top_p": (NONE, PER_ROW, NONE),
               "min_p": (NONE, NONE, PER_ROW), "joint": (PER_ROW, PER_ROW, NONE)}
    for vocab in (16, 1024, 128256):
        cfg = launch_config(vocab, 256, "gfx942")
        for name, (top_k, top_p, min_p) in filters.items():
            sig = {p: "*fp32" for p in pointers}
            sig.update(out="*i32", valid="*i8", indices="*i32", seed_ptr="*i64", offset_ptr="*i64",
                       top_k_value="fp32", top_p_value="fp32", min_p_value="fp32", num_out="i32", vocab="i32",
                       stride_row="i64")
            consts = {"HAS_INDICES": False, "TOP_K": top_k, "TOP_P": top_p, "MIN_P": min_p, "SEED_PER_ROW": False,
                      "ROWS": cfg["ROWS"], "BLOCK": cfg["BLOCK"]}
            yield KernelSpec(f"filtered_sampling[{name}-rows{cfg['ROWS']}-block{cfg['BLOCK']}-w{cfg['num_warps']}]",
                             filtered_sampling_kernel, sig, consts, {"num_warps": cfg["num_warps"]},
                             divisible_by_16=pointers)


register_aot_specs("sampling", aot_specs)
