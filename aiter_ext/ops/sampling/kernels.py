"""Triton kernel for sampling from probability rows with top-k, top-p and min-p filters, no sort.

One program takes ``ROWS`` output rows (1 for large vocabularies; more for small ones, so that the
launch is not one tiny program per row) and walks the vocabulary in ``BLOCK``-wide chunks.

Rows must sum to 1 (FlashInfer's contract too), so plain, top-k and top-p sampling need no pass to
sum them. Passes over a row:
1. with min-p only: the maximum, then the mass of the tokens ``>= min_p * max``;
2. rounds of rejection sampling (FlashInfer samples this way too, with two pivots):
   - draw a token from the candidates by inverse CDF. The candidates are the tokens at or above the
     round's lower bound ``lower`` (with min-p, its threshold). Each chunk is summed; only the chunk
     where the running mass passes ``u`` is prefix-summed, and a ``while`` loop stops there: half
     the row on average.
   - with top-k or top-p, check the token. One pass counts the tokens strictly more probable, and
     their mass: FlashInfer's rules are "count < k" and "mass < top_p". If the token passes, the row
     is done; it is a draw from the kept set in proportion to the probabilities.
   - otherwise the next round draws from the tokens strictly more probable than it: every kept token
     is more probable than a rejected one, so the kept set stays inside the candidates. The same
     pass also judges the midpoint between the token's value and ``high``, an upper bound on the
     smallest kept value (the row maximum at first). If the midpoint fails the rules too, the next
     round starts above it; if not, it becomes ``high``. So the bracket at least halves each round,
     as with FlashInfer's second pivot, rather than creeping up one drawn value at a time.

The row maximum always passes ("nothing more probable"), so the loop ends even for ``k <= 0`` or
``top_p <= 0``; such thresholds keep only the maximum (and its ties).

Randomness: Philox (``tl.rand``) keyed by the seed, with the counter built from ``offset`` + output row
and the round. A fixed seed/offset reproduces the same tokens. Graph replays read fresh seeds from
the device.

A row with no candidate of positive mass (all zeros, or NaN: NaN entries are never candidates) gives
token 0 and is marked invalid (FlashInfer's ``valid=False``).
"""

from __future__ import annotations

# Triton itself is imported only when a kernel needs it (core/lazy_triton.py: not for a code object's launch)
from aiter_ext.core.lazy_triton import tl, triton

from aiter_ext.core.launch import cdiv, next_pow2
from aiter_ext.core.aot import KernelSpec, register_aot_specs
from aiter_ext.core.thin import thin

from .inputs import Mode

# How a threshold arrives (inputs.Mode), as the plain ints the kernels' constexprs compare with.
NONE, SCALAR, PER_ROW = int(Mode.NONE), int(Mode.SCALAR), int(Mode.PER_ROW)
ROUND_BITS = tl.constexpr(20)  # the Philox counter is (offset + row) << ROUND_BITS | round
# A row's state between launches of the rounds path (rounds_kernels.py), which the row kernel's RESUME
# reads: ``istate`` int32 [rows, ISTATE] (token, flags, the round judged or drawn last, the pending
# token) and ``fstate`` fp32 [rows, FSTATE] (lower, mass, high, pivot, mid); flags: done, valid.
TOKEN, FLAGS, ROUND, PICK = (tl.constexpr(i) for i in range(4))
LOWER, MASS, HIGH, PIVOT, MID = (tl.constexpr(i) for i in range(5))
ISTATE, FSTATE = tl.constexpr(4), tl.constexpr(8)
DONE, VALID = tl.constexpr(1), tl.constexpr(2)


@triton.jit
def program_rows(indices, num_out, num_src, HAS_INDICES: tl.constexpr, ROWS: tl.constexpr):
    """This program's output rows ``r``, which are real (``r_ok``), ``r`` clamped into range (rows past
    the end redo the last row; nothing of theirs is stored), the source row each one samples, and
    whether that source row exists (``src_ok``). An ``indices`` entry outside ``[0, num_src)`` is
    only known here: it is clamped for the loads, and the caller stores token 0, invalid."""
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    r_safe = tl.minimum(r, num_out - 1)
    if HAS_INDICES:
        src = tl.load(indices + r_safe).to(tl.int64)
        src_ok = (src >= 0) & (src < num_src)
        src = tl.minimum(tl.maximum(src, 0), num_src - 1)
    else:
        src = r_safe.to(tl.int64)
        src_ok = r_safe >= 0
    return r, r < num_out, r_safe, src, src_ok


@triton.jit
def tile_rows(num_rows, ROWS: tl.constexpr):
    """This program's ``ROWS`` rows: which are real, and each clamped into range (as int64 for
    pointer arithmetic; stores are masked with the first)."""
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    return r < num_rows, tl.minimum(r, num_rows - 1).to(tl.int64)


@triton.jit
def _row_param(ptr, value, src, MODE: tl.constexpr):
    if MODE == 2:
        return tl.load(ptr + src).to(tl.float32)
    return tl.zeros(src.shape, tl.float32) + value


# Per-row threshold tensors are read only here, so out-of-range values are given a meaning here (the
# host checks scalars). Each is documented in api.py's module docstring.
@triton.jit
def top_k_of(ptr, value, src, MODE: tl.constexpr):
    """k as fp32 (exact for any count of entries). A tensor of any dtype is truncated toward zero, as
    FlashInfer's ``.int()``; ``k <= 0`` means no top-k filter (FlashInfer reads k unsigned, so its
    negative k keep everything too)."""
    if MODE == 2:
        k = tl.load(ptr + src).to(tl.int64).to(tl.float32)
    else:
        k = tl.zeros(src.shape, tl.float32) + value
    return tl.where(k > 0.0, k, float("inf"))


@triton.jit
def top_p_of(ptr, value, src, MODE: tl.constexpr):
    """p as fp32: ``p >= 1`` keeps every token, ``p <= 0`` only the maximum and its ties; NaN means no
    filter."""
    p = _row_param(ptr, value, src, MODE)
    return tl.where(p == p, p, float("inf"))


@triton.jit
def min_p_of(ptr, value, src, MODE: tl.constexpr):
    """min-p clamped into [0, 1]: above 1 keeps the maximum and its ties (as 1 does), below 0 or NaN
    keeps every token of positive mass (as 0 does)."""
    m = _row_param(ptr, value, src, MODE)
    return tl.where(m > 1.0, 1.0, tl.where(m >= 0.0, m, 0.0))


@triton.jit
def inverse_cdf_pick(w, idx, running, u, sentinel):
    """Inverse CDF over one ``[ROWS, BLOCK]`` chunk of weights ``w`` (``running``, ``u``: ``[ROWS, 1]``;
    ``idx``: the entries' indices): per row, the first index whose running mass passes ``u`` *among
    entries of positive weight* (``sentinel`` if none), and the last index of positive weight (-1).

    Why "of positive weight": a parallel prefix sum is not monotone bit for bit the way a sequential
    one is (neighbouring prefixes are summed in different orders), and the chunk's sum need not equal
    its last prefix. So ``cdf > u`` may first hold at an entry of weight 0, or never hold in the chunk
    whose sum passed ``u``. Requiring ``w > 0`` makes an excluded entry impossible by construction;
    the callers take the last positive entry when rounding leaves no hit."""
    positive = w > 0.0
    cdf = tl.cumsum(w, axis=1) + running
    first = tl.min(tl.where((cdf > u) & positive, idx, sentinel), axis=1)
    last = tl.max(tl.where(positive, idx, -1), axis=1)
    return first, last


@triton.jit
def pick_chunk(weights, ch, u, NCHUNKS: tl.constexpr):
    """The first level of a draw by chunks: per row, the chunk (of ``[ROWS, NCHUNKS]`` ``weights``, indices
    ``ch``) whose running weight passes ``u`` (``[ROWS]``), ``u`` taken into that chunk (``u_in``), and
    whether the row has any weight (``last_chunk >= 0``). Only a chunk of positive weight is chosen
    (inverse_cdf_pick); where ``u`` passes every prefix (rounding), the last such chunk."""
    chunk, last_chunk = inverse_cdf_pick(weights, ch[None, :], 0.0, u[:, None], NCHUNKS)
    chunk = tl.maximum(tl.where(chunk < NCHUNKS, chunk, last_chunk), 0)
    u_in = u - tl.sum(tl.where(ch[None, :] < chunk[:, None], weights, 0.0), axis=1)
    return chunk, u_in, last_chunk


@triton.jit
def pick_in_chunk(w, idx, u_in, vocab):
    """The second level: the token of the chosen chunk's weights ``w`` (``[ROWS, BLOCK]`` at indices
    ``idx``) where the running weight passes ``u_in``; the chunk sums and this chunk's prefix sums round
    apart, so where ``u_in`` passes them all, its last entry of positive weight (0 if none)."""
    token, last_token = inverse_cdf_pick(w, idx, 0.0, u_in[:, None], vocab)
    return tl.maximum(tl.where(token < vocab, token, last_token), 0)


@triton.jit
def load_chunk(row_ptr, start, cols, vocab, fill):
    """One [ROWS, BLOCK] chunk of the rows as fp32, ``fill`` past the vocabulary. The load itself is
    unmasked (the column is clamped): on AMD every masked load is an exec-mask branch and its saved
    masks ran the kernels out of SGPRs. Shared by every sampling kernel."""
    idx = start + cols
    x = tl.load(row_ptr[:, None] + tl.minimum(idx, vocab - 1)[None, :]).to(tl.float32)
    return tl.where((idx < vocab)[None, :], x, fill), idx


@triton.jit
def load_ahead(row_ptr, start, cols, vocab, x_next, PREFETCH: tl.constexpr):
    """The chunk at ``start`` of a pass (values and indices), and (``PREFETCH``) the loads of the chunk
    after it, issued now. The caller loads the first chunk before its loop and carries ``x_next``.

    Why: a loop over a row with reductions in it is not software-pipelined, so without this each
    chunk's loads wait for the previous chunk's reductions and then stall a full memory latency. Issued
    a chunk ahead, they are in flight while the current chunk is reduced. The load past the last chunk
    reads the row's last entry (load_chunk clamps), so nothing outside the row is touched."""
    if PREFETCH:
        x = x_next
        x_next, _ = load_chunk(row_ptr, start + cols.shape[0], cols, vocab, 0.0)
    else:
        x, _ = load_chunk(row_ptr, start, cols, vocab, 0.0)
    return x, start + cols, x_next


@triton.jit
def lane_zeros(ROWS: tl.constexpr, BLOCK: tl.constexpr, LANE_SUMS: tl.constexpr):
    """An accumulator for a pass over rows: one per lane (``[ROWS, BLOCK]``) with ``LANE_SUMS``, else
    one per row. Per-lane sums leave the pass with no cross-lane reduction (shared memory and a
    barrier on every chunk) until after its loop; they cost a register per lane and accumulator."""
    if LANE_SUMS:
        acc = tl.zeros([ROWS, BLOCK], tl.float32)
    else:
        acc = tl.zeros([ROWS], tl.float32)
    return acc


@triton.jit
def lane_add(acc, x, LANE_SUMS: tl.constexpr):
    """``acc`` (lane_zeros) plus the ``[ROWS, BLOCK]`` chunk ``x``."""
    if LANE_SUMS:
        acc = acc + x
    else:
        acc = acc + tl.sum(x, axis=1)
    return acc


@triton.jit
def lane_max(acc, x, LANE_SUMS: tl.constexpr):
    """``acc`` (lane_zeros) raised to the ``[ROWS, BLOCK]`` chunk ``x``'s maximum."""
    if LANE_SUMS:
        acc = tl.maximum(acc, x)
    else:
        acc = tl.maximum(acc, tl.max(x, axis=1))
    return acc


@triton.jit
def lane_total(acc, LANE_SUMS: tl.constexpr):
    """Per row, the sum of ``acc``'s lanes."""
    if LANE_SUMS:
        acc = tl.sum(acc, axis=1)
    return acc


@triton.jit
def lane_top(acc, LANE_SUMS: tl.constexpr):
    """Per row, the maximum of ``acc``'s lanes."""
    if LANE_SUMS:
        acc = tl.max(acc, axis=1)
    return acc


@thin
@triton.jit
def filtered_sampling_kernel(
    probs, out, valid, indices, top_k_ptr, top_p_ptr, min_p_ptr, seed_ptr, offset_ptr,
    top_k_value, top_p_value, min_p_value, num_out, num_src, vocab, stride_row, stats, istate, fstate,
    HAS_INDICES: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr, MIN_P: tl.constexpr,
    SEED_PER_ROW: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr, STATS: tl.constexpr = False,
    PREFETCH: tl.constexpr = False, LANE_SUMS: tl.constexpr = False, RESUME: tl.constexpr = False,
):
    """``STATS`` (benchmarks only): ``stats[r] = (rounds, chunks read)`` per output row, int32.
    ``PREFETCH``: every pass over a row loads its next chunk before reducing the current one (see
    load_ahead). ``LANE_SUMS``: the full passes (min-p's two, the rule checks) keep per-lane sums and
    reduce them once after their loop (lane_zeros). ``RESUME`` (one row per program, no min-p): each row
    starts from the state that rounds_kernels.py left in ``istate``/``fstate`` after judging its last
    round there: done rows only store their token, the others draw from the next round on."""
    r, r_ok, r_safe, src, src_ok = program_rows(indices, num_out, num_src, HAS_INDICES, ROWS)
    row_ptr = probs + src * stride_row
    cols = tl.arange(0, BLOCK)

    threshold = tl.zeros([ROWS], tl.float32)
    mass = tl.full([ROWS], 1.0, tl.float32)  # rows sum to 1 (FlashInfer's contract): no pass to sum them
    if MIN_P != 0:
        # min-p is relative to the row maximum: one pass for the maximum, one for the kept mass
        row_max = lane_zeros(ROWS, BLOCK, LANE_SUMS)
        x_next, _ = load_chunk(row_ptr, 0, cols, vocab, 0.0)
        for start in range(0, vocab, BLOCK):
            x, idx, x_next = load_ahead(row_ptr, start, cols, vocab, x_next, PREFETCH)
            row_max = lane_max(row_max, x, LANE_SUMS)
        threshold = min_p_of(min_p_ptr, min_p_value, src, MIN_P) * lane_top(row_max, LANE_SUMS)
        kept_mass = lane_zeros(ROWS, BLOCK, LANE_SUMS)
        x_next, _ = load_chunk(row_ptr, 0, cols, vocab, 0.0)
        for start in range(0, vocab, BLOCK):
            x, idx, x_next = load_ahead(row_ptr, start, cols, vocab, x_next, PREFETCH)
            kept_mass = lane_add(kept_mass, tl.where(x >= threshold[:, None], x, 0.0), LANE_SUMS)
        mass = lane_total(kept_mass, LANE_SUMS)
    top_k = top_k_of(top_k_ptr, top_k_value, src, TOP_K)  # absent filters read nothing
    top_p = top_p_of(top_p_ptr, top_p_value, src, TOP_P)

    done = ~src_ok  # a source row outside the probabilities: nothing is drawn (token 0, invalid)
    ok = src_ok
    token = tl.zeros([ROWS], tl.int32)
    # Candidates are the x >= lower of positive mass: min-p's threshold, raised past each rejected token.
    lower = threshold
    high = tl.zeros([ROWS], tl.float32)  # an upper bound on the kept set's smallest value, from round 1
    seed_index = r_safe if SEED_PER_ROW else tl.zeros([ROWS], tl.int32)
    seed = tl.load(seed_ptr + seed_index)
    counter = (tl.load(offset_ptr + seed_index) + r_safe) << ROUND_BITS
    rnd = 0
    chunks_read = vocab * 0
    if MIN_P != 0:
        chunks_read = 2 * tl.cdiv(vocab, BLOCK)
    if RESUME:  # the state rounds_kernels.py left after judging its last round (layout: TOKEN..., above)
        flags = tl.load(istate + r_safe * ISTATE + FLAGS)
        done = (flags & DONE) != 0
        ok = (flags & VALID) != 0
        token = tl.load(istate + r_safe * ISTATE + TOKEN)
        rnd = tl.sum(tl.load(istate + r_safe * ISTATE + ROUND), axis=0) + 1
        lower = tl.load(fstate + r_safe * FSTATE + LOWER)
        mass = tl.load(fstate + r_safe * FSTATE + MASS)
        high = tl.load(fstate + r_safe * FSTATE + HIGH)
    while tl.min(done.to(tl.int32), axis=0) == 0:
        u = tl.rand(seed, counter + rnd) * mass
        found, last_candidate, scanned = _draw_scan(row_ptr, cols, vocab, lower, u, done, BLOCK, PREFETCH)
        chunks_read += scanned
        # No candidate with positive mass in the first round (a zero or NaN row, or min-p over one):
        # token 0, invalid. (Branch-free: on AMD every branch holds its lane mask in SGPRs.)
        ok = tl.where(rnd == 0, ok & ((found >= 0) | (last_candidate >= 0)), ok)
        done = tl.where(rnd == 0, done | ~ok, done)
        # u past every prefix sum (rounding; the mass is taken as 1): the last candidate is the draw
        pick = tl.maximum(tl.where(found >= 0, found, last_candidate), 0)
        accept = ~done & ok
        if (TOP_K != 0) | (TOP_P != 0):
            # FlashInfer's rules, judged at the drawn token's value (pivot) and, from round 1, at the
            # midpoint between it and `high`: a failed midpoint moves every candidate above it.
            pivot = tl.load(row_ptr + pick).to(tl.float32)
            mid = tl.where(rnd == 0, pivot, pivot + (high - pivot) * 0.5)
            above, above_mass, above_mid, above_mid_mass, row_max = _count_above(row_ptr, cols, vocab, pivot, mid,
                                                                                        PREFETCH, LANE_SUMS)
            chunks_read += tl.cdiv(vocab, BLOCK)
            passes, jump, lower, mass, high = judge_round(above, above_mass, above_mid, above_mid_mass, row_max, pivot,
                                                          mid, done, lower, mass, high, rnd, top_k, top_p, TOP_K,
                                                          TOP_P)
            accept = accept & passes
        token = tl.where(accept, pick, token)
        done = done | accept
        rnd += 1
    tl.store(out + r, token.to(out.dtype.element_ty), mask=r_ok)
    tl.store(valid + r, ok.to(tl.int8), mask=r_ok)
    if STATS:
        tl.store(stats + 2 * r, tl.zeros([ROWS], tl.int32) + rnd, mask=r_ok)
        tl.store(stats + 2 * r + 1, tl.zeros([ROWS], tl.int32) + chunks_read, mask=r_ok)


@triton.jit
def judge_round(above, above_mass, above_mid, above_mid_mass, row_max, pivot, mid, done, lower, mass, high, rnd,
                top_k, top_p, TOP_K: tl.constexpr, TOP_P: tl.constexpr):
    """A round's decision from the rule check's totals (counts and masses strictly above the drawn value
    ``pivot`` and above ``mid``, the row maximum): whether the draw passes, whether the midpoint failed
    too (``jump``), and the next round's candidate bound ``lower``, candidate ``mass`` and ``high``.
    Shared by the row kernel and split_kernels.py."""
    passes = (above == 0) | _kept(above, above_mass, top_k, top_p, TOP_K, TOP_P)  # the maximum is always kept
    mid_passes = (above_mid == 0) | _kept(above_mid, above_mid_mass, top_k, top_p, TOP_K, TOP_P)
    reject = (~done) & (~passes)
    jump = reject & ~mid_passes
    # next round: only tokens strictly more probable than the rejected value (the next float up)
    lower = tl.where(reject, tl.maximum(lower, _next_float_up(tl.where(jump, mid, pivot))), lower)
    mass = tl.where(reject, tl.where(jump, above_mid_mass, above_mass), mass)
    high = tl.where(rnd == 0, row_max, tl.where(reject & mid_passes, mid, high))
    return passes, jump, lower, mass, high


@triton.jit
def _kept(above, above_mass, top_k, top_p, TOP_K: tl.constexpr, TOP_P: tl.constexpr):
    """FlashInfer's rules for a token with ``above`` strictly more probable tokens of mass
    ``above_mass``: count < k, mass < top_p, or both (joint: both on the original distribution)."""
    if (TOP_K != 0) & (TOP_P != 0):
        return (above.to(tl.float32) < top_k) & (above_mass < top_p)
    elif TOP_K != 0:
        return above.to(tl.float32) < top_k
    else:
        return above_mass < top_p


@triton.jit
def _count_above(row_ptr, cols, vocab, pivot, mid, PREFETCH: tl.constexpr, LANE_SUMS: tl.constexpr):
    """One pass over the rows: the count and mass of the entries strictly above ``pivot`` and above
    ``mid``, and the row maximum. Counts are summed as fp32 (exact below 2^24 entries). (One
    tl.reduce of the five with a combine function took the CPU interpreter from 0.1 to 9 s a call,
    as it combines element by element in Python.)"""
    ROWS: tl.constexpr = pivot.shape[0]
    BLOCK: tl.constexpr = cols.shape[0]
    above = lane_zeros(ROWS, BLOCK, LANE_SUMS)
    above_mass = lane_zeros(ROWS, BLOCK, LANE_SUMS)
    above_mid = lane_zeros(ROWS, BLOCK, LANE_SUMS)
    above_mid_mass = lane_zeros(ROWS, BLOCK, LANE_SUMS)
    row_max = lane_zeros(ROWS, BLOCK, LANE_SUMS)
    x_next, _ = load_chunk(row_ptr, 0, cols, vocab, 0.0)
    for s in range(0, vocab, BLOCK):
        x, idx, x_next = load_ahead(row_ptr, s, cols, vocab, x_next, PREFETCH)
        x_above = tl.where(x > pivot[:, None], x, 0.0)
        x_above_mid = tl.where(x > mid[:, None], x, 0.0)
        above = lane_add(above, (x_above > 0.0).to(tl.float32), LANE_SUMS)
        above_mass = lane_add(above_mass, x_above, LANE_SUMS)
        above_mid = lane_add(above_mid, (x_above_mid > 0.0).to(tl.float32), LANE_SUMS)
        above_mid_mass = lane_add(above_mid_mass, x_above_mid, LANE_SUMS)
        row_max = lane_max(row_max, x, LANE_SUMS)
    return (lane_total(above, LANE_SUMS).to(tl.int32), lane_total(above_mass, LANE_SUMS),
            lane_total(above_mid, LANE_SUMS).to(tl.int32), lane_total(above_mid_mass, LANE_SUMS),
            lane_top(row_max, LANE_SUMS))


@triton.jit
def _draw_scan(row_ptr, cols, vocab, lower, u, done, BLOCK: tl.constexpr, PREFETCH: tl.constexpr):
    """Inverse CDF over the candidates (``x >= lower``, ``x > 0``): the first candidate whose running
    mass passes ``u``, for the rows not ``done`` (-1 if rounding left u past the total), the last
    candidate of the rows (the draw in that case), and the number of chunks read. (Finding that index afterwards, by a load at
    a per-row chunk start, ran the AMD build out of SGPRs.)

    Most chunks need only their sum; the prefix sum runs on the chunk where a row's running mass
    passes ``u`` (inverse_cdf_pick: only a candidate can be picked there, and if the chunk's prefix
    sums never pass ``u`` although its sum did, its last candidate is the draw). The scan stops once
    every pending row has its token: half a row on average. A ``while`` loop is not software-
    pipelined (load_ahead issues the next chunk's loads by hand), yet on the H200 it beat a full-row,
    pipelined ``for`` scan by 5-10% (op_tests/test_sampling.py --sweep at 6ed973d)."""
    found = tl.where(done, 0, -1)
    # the last candidate per lane, reduced once after the loop (one reduction per chunk fewer)
    last_candidate = tl.full([u.shape[0], BLOCK], -1, tl.int32)
    running = tl.zeros(u.shape, tl.float32)
    start = 0
    x_next, _ = load_chunk(row_ptr, 0, cols, vocab, 0.0)
    while (start < vocab) & (tl.min(found, axis=0) < 0):
        x, idx, x_next = load_ahead(row_ptr, start, cols, vocab, x_next, PREFETCH)
        xc = tl.where(x >= lower[:, None], x, 0.0)
        chunk_mass = tl.sum(xc, axis=1)
        crossing = (found < 0) & (running + chunk_mass > u)
        if tl.max(crossing.to(tl.int32), axis=0) > 0:
            first, last_in_chunk = inverse_cdf_pick(xc, idx[None, :], running[:, None], u[:, None], vocab)
            found = tl.where(crossing, tl.where(first < vocab, first, last_in_chunk), found)
        last_candidate = tl.maximum(last_candidate, tl.where(xc > 0.0, idx[None, :], -1))
        running += chunk_mass
        start += BLOCK
    return found, tl.max(last_candidate, axis=1), start // BLOCK


@triton.jit
def _next_float_up(x):
    """The smallest float32 above ``x`` for ``x >= 0`` (probabilities): one ulp up, by the bits."""
    return (x.to(tl.int32, bitcast=True) + 1).to(tl.float32, bitcast=True)


def launch_config(vocab: int, num_out: int, arch: str, interpreted: bool = False, top_p_only: bool = False) -> dict:
    """Tile: one row per program once a row fills a wide chunk; several rows per program for small
    vocabularies, except on AMD (below).

    From a sweep on an H200 (op_tests/test_sampling.py --sweep, V 128256, batches 1/32/256):
    8192-wide chunks and the early-exit scan were best for every filter; 8 warps at batch 1 and 32,
    and 4 at batch 256. ``top_p_only`` (top-p without top-k or min-p) takes the tile a later H100 sweep
    chose for it (below).

    Under the CPU interpreter the cost is per program, not per element, so tiles are 16x larger there.
    It is the same kernel with fewer programs, which lets the statistical tests draw ~10^5 tokens."""
    elements = 8192 * (16 if interpreted else 1)
    block = min(8192, max(16, next_pow2(vocab)))
    rows = max(1, min(elements // block, next_pow2(max(num_out, 1))))
    if arch.startswith("gfx") and not interpreted:
        # AMD (compile check, Triton 3.9): 2-D tiles, and 8192-wide chunks (16 values per lane), spilled
        # SGPRs in the filtered variants; one row of 4096-wide chunks over 8 waves compiles clean.
        # Without load_ahead's prefetch: with it, top-k/top-p took 163 VGPRs (3 waves/SIMD) and spilled
        # 8-9 SGPRs on gfx942; without, 96-109 VGPRs, 4-5 waves, no spills.
        block = min(block, 4096)
        return {"ROWS": 1, "BLOCK": block, "num_warps": 8 if block >= 4096 else 4, "PREFETCH": False,
                "LANE_SUMS": False}
    if top_p_only and rows == 1 and block >= 4096:
        # H100, op_tests/test_sampling.py --sweep (graph replays of one fixed draw, V 128256): top-p alone
        # went from 43.6 to 26.0 us at batch 1 (4096-wide chunks, 8 warps, LANE_SUMS) and from 172 to 134 us
        # at batch 256 (16 warps, PREFETCH too). Averaged over draws in the benchmark, FI/ours rose from
        # 0.52 to 0.72 at batch 1 and from 0.68 to 0.85 at batch 256. Top-k (4-5 rounds) was slower with
        # either flag: it keeps the tile below.
        big = num_out >= 128
        return {"ROWS": 1, "BLOCK": 4096, "num_warps": 16 if big else 8, "PREFETCH": big, "LANE_SUMS": True}
    if rows * block < 4096:
        warps = 4
    else:
        warps = 8 if num_out < 128 else 4
    return {"ROWS": rows, "BLOCK": block, "num_warps": warps, "PREFETCH": False, "LANE_SUMS": False}


def resume_tile(block: int) -> dict:
    """The row kernel's tile where it resumes the rows the rounds path left (``RESUME``): the rounds' chunk
    width, at most 4096 (the AMD row kernel's widest that compiles clean)."""
    block = min(block, 4096)
    return {"ROWS": 1, "BLOCK": block, "num_warps": 8 if block >= 4096 else 4, "PREFETCH": False, "LANE_SUMS": False}


_SPEC_POINTERS = ("probs", "out", "valid", "indices", "top_k_ptr", "top_p_ptr", "min_p_ptr", "seed_ptr", "offset_ptr",
                  "istate", "fstate")


def _filtered_spec(name: str, modes: tuple[int, int, int], cfg: dict, resume: bool = False,
                   label: str = "", dtype: str = "fp32") -> KernelSpec:
    """The row kernel's compile for one filter (``modes``: TOP_K, TOP_P, MIN_P) and tile ``cfg``, probabilities of
    ``dtype``, no indices, one seed for all rows, its pointers typed as launchers.filtered_draw passes them: a
    threshold that is not per row, and ``fstate`` outside RESUME, point at ``probs`` (Threshold.pointer's stand-in);
    a per-row top-k is int32, top-p and min-p fp32."""
    top_k, top_p, min_p = modes
    sig = {p: "*fp32" for p in _SPEC_POINTERS}
    sig.update(probs=f"*{dtype}", out="*i32", valid="*i8", indices="*i32", seed_ptr="*i64",
               offset_ptr="*i64", top_k_value="fp32", top_p_value="fp32", min_p_value="fp32", num_out="i32",
               num_src="i32", vocab="i32", stride_row="i32", stats="*i32", istate="*i32")
    for pointer, mode, per_row in (("top_k_ptr", top_k, "*i32"), ("top_p_ptr", top_p, "*fp32"),
                                   ("min_p_ptr", min_p, "*fp32")):
        sig[pointer] = per_row if mode == PER_ROW or resume else f"*{dtype}"
    if not resume:  # (RESUME: the rounds path's own launch, rounds_draw in launchers.py; its specs as they were)
        sig["fstate"] = f"*{dtype}"
    consts = {"HAS_INDICES": False, "TOP_K": top_k, "TOP_P": top_p, "MIN_P": min_p, "SEED_PER_ROW": False,
              "STATS": False, "ROWS": cfg["ROWS"], "BLOCK": cfg["BLOCK"], "PREFETCH": cfg["PREFETCH"],
              "LANE_SUMS": cfg["LANE_SUMS"], "RESUME": resume}
    label += "-resume" if resume else ""
    return KernelSpec(f"filtered_sampling[{name}-rows{cfg['ROWS']}-block{cfg['BLOCK']}-w{cfg['num_warps']}{label}]",
                      filtered_sampling_kernel, sig, consts, {"num_warps": cfg["num_warps"]},
                      divisible_by_16=_SPEC_POINTERS)


def _tuned_specs(arch: str):
    """The row kernel's tile of every tuned ``sampling`` row measured on ``arch`` (backends.SAMPLING_TUNE_CONFIGS),
    for the row's filter with each threshold scalar or per row (a tuned tile needs its code object as much as a
    default). A row of the policy's own choice (``{}``) adds none."""
    from aiter_ext.core.tuned import measured_configs

    for row, config in measured_configs("sampling", arch):
        if "BLOCK" not in config:
            continue
        names = [n for n in ("top_k", "top_p", "min_p") if n in row["filter"]]
        top_p_only = names == ["top_p"]
        cfg = {**launch_config(int(row["vocab"]), int(row["rows"]), arch, False, top_p_only),
               **{k: config[k] for k in ("ROWS", "BLOCK", "num_warps") if k in config}}
        for mode in (SCALAR, PER_ROW):
            modes = tuple(mode if n in names else NONE for n in ("top_k", "top_p", "min_p"))
            yield _filtered_spec(row["filter"], modes, cfg, dtype=row["dtype"],
                                 label=f"-{row['dtype']}-tuned-{'scalar' if mode == SCALAR else 'per_row'}")
            if not names:
                break


def aot_specs(arch: str = "gfx942"):
    """The AMD compile check's row-kernel specs (the same for every arch: the AMD tiles), then the tiles of the
    tuned rows measured on ``arch``."""
    from .rounds_kernels import GPU_BLOCK  # late: rounds_kernels imports this module

    filters = {"plain": (NONE, NONE, NONE), "top_k": (PER_ROW, NONE, NONE), "top_p": (NONE, PER_ROW, NONE),
               "min_p": (NONE, NONE, PER_ROW), "joint": (PER_ROW, PER_ROW, NONE)}
    for vocab, resume in ((16, False), (1024, False), (128256, False), (128256, True)):
        cfg = resume_tile(GPU_BLOCK) if resume else launch_config(vocab, 256, "gfx942")
        for name, modes in filters.items():
            top_k, top_p, min_p = modes
            if resume and (min_p != NONE or (top_k == NONE and top_p == NONE)):
                continue  # RESUME: the rounds path's filters (rounds_kernels.py)
            yield _filtered_spec(name, modes, cfg, resume)
            if name != "plain" and not resume:  # the same thresholds given as scalars (FlashInfer's float/int forms)
                yield _filtered_spec(name, tuple(SCALAR if m == PER_ROW else m for m in modes), cfg,
                                     label="-scalar")
    yield from _tuned_specs(arch)


register_aot_specs("sampling", aot_specs)
