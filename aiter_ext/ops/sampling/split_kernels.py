"""Triton kernel for sampling from probabilities at small batch: each row split over several programs
that meet at barriers.

Why: at 1 to 32 rows, one program per row (kernels.py) leaves the GPU nearly idle. A pass over a
128256-entry row moved 17-28 GB/s there on an H100 against a 3 TB/s copy: each program waits a memory
latency per chunk. Here a row is cut into ``num_spans`` contiguous spans of ``span`` entries, one
program each (grid: rows x programs), and the programs of a row combine their spans' numbers through
global memory:

- every full pass of the row kernel (min-p's maximum, the candidates' mass, the rule check) becomes a
  pass over one span, a store of the span's sums into ``exchange``, and a barrier;
- the draw: every program reads the spans' candidate masses, finds the span where the running mass
  passes ``u`` (kernels.inverse_cdf_pick, so only a span with mass can be chosen), and the program that
  holds it scans it for the token, which it leaves in ``picks``;
- the rounds, rules and pivots are the row kernel's (kernels.py's docstring): the rule check also
  leaves each span's mass above the pivot and above the midpoint, which are the next round's candidate
  masses, so a round costs one span pass and two barriers.

Every program reads the same exchanged numbers and combines them with the same code, in the same
order, so all of a row's programs reach the same ``u``, span, token and decision without more
messages, and pass the same number of barriers.

``RESIDENT`` (a span is one chunk): the span is loaded once and kept in registers for every pass.

A barrier is a per-row arrival counter (``counters``, zeroed by the launcher): release-add one, then
spin on an acquire read until every program of the row has arrived. So every program of the grid must be
on the GPU at once: the launcher keeps rows x programs at or below the number of SMs/CUs.

Under the CPU interpreter programs run one after another, so a barrier that waits for another program
would never open. There one program takes all of its row's spans, as the ``LOCAL`` rows of a
``[LOCAL, BLOCK]`` tile, and the barrier is passed at once. The exchange through memory, the span
choice and the rounds are the same code; only the concurrency is the GPU's alone.
"""

from __future__ import annotations

# Triton itself is imported only when a kernel needs it (core/lazy_triton.py: not for a code object's launch)
from aiter_ext.core.lazy_triton import tl, triton

from aiter_ext.core.aot import KernelSpec, register_aot_specs
from aiter_ext.core.launch import cdiv, next_pow2
from aiter_ext.core.thin import thin

from .kernels import (
    NONE, PER_ROW, ROUND_BITS, inverse_cdf_pick, judge_round, min_p_of, program_rows, top_k_of, top_p_of,
)

# The per-span numbers in ``exchange`` ([rows, num_spans, FIELDS] fp32; two slots unused, so that a span's
# numbers are one power-of-two row: the rule check publishes and gathers all of them in one access each).
CAND, MAX, ABOVE, ABOVE_MASS, ABOVE_MID, ABOVE_MID_MASS = (tl.constexpr(i) for i in range(6))
FIELDS = tl.constexpr(8)


@triton.jit
def _barrier(counter, arrivals, programs):
    """Wait until all ``programs`` of this row have arrived here ``arrivals`` times; returns the next
    count. The first ``debug_barrier`` makes every thread's stores precede the release; the acquire read
    then makes the other programs' stores visible to this one."""
    tl.debug_barrier()
    tl.atomic_add(counter, 1, sem="release", scope="gpu")
    while tl.atomic_add(counter, 0, sem="acquire", scope="gpu") < arrivals * programs:
        pass
    tl.debug_barrier()
    return arrivals + 1


@triton.jit
def _span_chunk(row_ptr, span_start, c, cols, vocab, resident, RESIDENT: tl.constexpr):
    """Chunk ``c`` (an offset into each span) of this program's spans, ``[LOCAL, BLOCK]``, with NaN,
    negative entries and entries past the vocabulary as 0 (never candidates), and their indices."""
    idx = span_start[:, None] + c + cols[None, :]
    if RESIDENT:
        x = resident
    else:
        x = tl.load(row_ptr[:, None] + tl.minimum(idx, vocab - 1)).to(tl.float32)
        x = tl.where((idx < vocab) & (x > 0.0), x, 0.0)
    return x, idx


@triton.jit
def _publish(ex_row, field, span_id, span_ok, values):
    """This program's spans' number ``field`` (``[LOCAL]``)."""
    tl.store(ex_row + span_id * FIELDS + field, values, mask=span_ok)


@triton.jit
def _publish_check(ex_row, span_id, span_ok, above, above_mass, above_mid, above_mid_mass, span_max):
    """The rule check's five numbers of this program's spans, in one store."""
    f = tl.arange(0, FIELDS)[None, :]
    values = tl.where(f == ABOVE, above[:, None], tl.where(f == ABOVE_MASS, above_mass[:, None], tl.where(
        f == ABOVE_MID, above_mid[:, None], tl.where(f == ABOVE_MID_MASS, above_mid_mass[:, None], span_max[:, None]))))
    tl.store(ex_row + span_id[:, None] * FIELDS + f, values, mask=span_ok[:, None] & (f >= MAX) & (f <= ABOVE_MID_MASS))


@triton.jit
def _gather_check(ex_row, num_spans, NSPANS: tl.constexpr):
    """Every span's rule-check numbers combined: per field, the sum over spans (``[FIELDS]``), and the
    row maximum. Volatile, as _gather."""
    s = tl.arange(0, NSPANS)[:, None]
    f = tl.arange(0, FIELDS)[None, :]
    values = tl.load(ex_row + tl.minimum(s, num_spans - 1) * FIELDS + f, volatile=True)
    values = tl.where(s < num_spans, values, 0.0)
    return tl.sum(values, axis=0), tl.max(tl.max(tl.where(f == MAX, values, 0.0), axis=1), axis=0)


@triton.jit
def _field(totals, field):
    return tl.sum(tl.where(tl.arange(0, FIELDS) == field, totals, 0.0))


@triton.jit
def _gather(ex_row, field, num_spans, NSPANS: tl.constexpr):
    """Every span's number ``field`` (0 past the last span). Volatile: the values were written by
    other programs since this one last read these addresses."""
    s = tl.arange(0, NSPANS)
    values = tl.load(ex_row + tl.minimum(s, num_spans - 1) * FIELDS + field, volatile=True)
    return tl.where(s < num_spans, values, 0.0)


@triton.jit
def _scan_chunk(x, idx, vocab, lower, u_in, running, found, last):
    """One chunk of _scan_span: its candidates' inverse CDF from ``running``."""
    w = tl.where(x >= lower[:, None], x, 0.0)
    first, last_in_chunk = inverse_cdf_pick(w, idx[None, :], running[:, None], u_in[:, None], vocab)
    found = tl.where((found < 0) & (first < vocab), first, found)
    return found, tl.maximum(last, last_in_chunk), running + tl.sum(w, axis=1)


@triton.jit
def _scan_span(row_ptr, start, span, vocab, lower, u_in, x_local, RESIDENT: tl.constexpr, BLOCK: tl.constexpr):
    """Inverse CDF inside one span from ``start`` (``x_local``: its values when RESIDENT, one chunk): the
    first candidate (``x >= lower``, positive) whose running mass passes ``u_in``, else the span's last
    candidate (rounding: the spans' sums and this scan's prefix sums are summed in different orders)."""
    cols = tl.arange(0, BLOCK)
    found = tl.full([1], -1, tl.int32)
    last = tl.full([1], -1, tl.int32)
    running = tl.zeros([1], tl.float32)
    if RESIDENT:  # no loop: on gfx942 a loop here took the top-k variant from 27 to 47 spilled SGPRs
        found, last, running = _scan_chunk(x_local, start + cols, vocab, lower, u_in, running, found, last)
    else:
        for c in range(0, span, BLOCK):
            idx = start + c + cols
            x = tl.load(row_ptr[:, None] + tl.minimum(idx, vocab - 1)[None, :]).to(tl.float32)
            x = tl.where((idx < vocab)[None, :] & (x > 0.0), x, 0.0)
            found, last, running = _scan_chunk(x, idx, vocab, lower, u_in, running, found, last)
    return tl.where(found >= 0, found, last)


@thin
@triton.jit
def split_sampling_kernel(
    probs, out, valid, indices, top_k_ptr, top_p_ptr, min_p_ptr, seed_ptr, offset_ptr,
    top_k_value, top_p_value, min_p_value, num_out, num_src, vocab, stride_row,
    span, num_spans, exchange, picks, counters,
    HAS_INDICES: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr, MIN_P: tl.constexpr,
    SEED_PER_ROW: tl.constexpr, LOCAL: tl.constexpr, NSPANS: tl.constexpr, BLOCK: tl.constexpr,
    RESIDENT: tl.constexpr,
):
    """Grid ``(num_out, num_spans // LOCAL)``: output row, and which ``LOCAL`` spans of it. ``span`` is a
    multiple of ``BLOCK``; ``NSPANS`` the power of two at or above ``num_spans``. Outputs as
    kernels.filtered_sampling_kernel's (token 0 and invalid for a row with nothing to draw)."""
    row = tl.program_id(0)
    part = tl.program_id(1)
    programs = tl.num_programs(1)
    r, r_ok, r_safe, src, src_ok = program_rows(indices, num_out, num_src, HAS_INDICES, 1)
    row_ptr = probs + src * stride_row
    ex_row = exchange + row.to(tl.int64) * (FIELDS * num_spans)
    counter = counters + row
    pick_ptr = picks + row + tl.arange(0, 1)
    cols = tl.arange(0, BLOCK)
    span_id = part * LOCAL + tl.arange(0, LOCAL)
    span_ok = span_id < num_spans
    span_start = span_id * span
    arrivals = 1
    x_spans = tl.zeros([LOCAL, BLOCK], tl.float32)
    if RESIDENT:
        x_spans, _ = _span_chunk(row_ptr, span_start, 0, cols, vocab, x_spans, False)

    threshold = tl.zeros([1], tl.float32)
    if MIN_P != 0:
        # min-p is relative to the row maximum: the spans' maxima first
        span_max = tl.zeros([LOCAL], tl.float32)
        for c in range(0, span, BLOCK):
            x, idx = _span_chunk(row_ptr, span_start, c, cols, vocab, x_spans, RESIDENT)
            span_max = tl.maximum(span_max, tl.max(x, axis=1))
        _publish(ex_row, MAX, span_id, span_ok, span_max)
        arrivals = _barrier(counter, arrivals, programs)
        threshold = min_p_of(min_p_ptr, min_p_value, src, MIN_P) * tl.max(_gather(ex_row, MAX, num_spans, NSPANS))
    # round 0's candidates (x >= threshold, positive): their mass per span
    cand = tl.zeros([LOCAL], tl.float32)
    for c in range(0, span, BLOCK):
        x, idx = _span_chunk(row_ptr, span_start, c, cols, vocab, x_spans, RESIDENT)
        cand += tl.sum(tl.where(x >= threshold[:, None], x, 0.0), axis=1)
    _publish(ex_row, CAND, span_id, span_ok, cand)
    arrivals = _barrier(counter, arrivals, programs)

    # rows sum to 1 (FlashInfer's contract), so round 0 draws u in [0, 1) unless min-p removed mass
    mass = tl.full([1], 1.0, tl.float32)
    if MIN_P != 0:
        mass = mass * tl.sum(_gather(ex_row, CAND, num_spans, NSPANS))
    top_k = top_k_of(top_k_ptr, top_k_value, src, TOP_K)
    top_p = top_p_of(top_p_ptr, top_p_value, src, TOP_P)
    field = row * 0 + CAND  # where this round's candidate masses per span are (a tensor: it changes in the loop)
    lower = threshold
    high = tl.zeros([1], tl.float32)
    done = ~src_ok
    ok = src_ok
    token = tl.zeros([1], tl.int32)
    seed_index = r_safe if SEED_PER_ROW else tl.zeros([1], tl.int32)
    seed = tl.load(seed_ptr + seed_index)
    philox = (tl.load(offset_ptr + seed_index) + r_safe) << ROUND_BITS
    s_all = tl.arange(0, NSPANS)
    rnd = 0
    while tl.max(done.to(tl.int32), axis=0) == 0:
        weights = _gather(ex_row, field, num_spans, NSPANS)[None, :]
        u = tl.rand(seed, philox + rnd) * mass
        first, last = inverse_cdf_pick(weights, s_all[None, :], 0.0, u[:, None], NSPANS)
        # round 0 with no span of positive mass (a zero or NaN row, min-p over one): token 0, invalid
        ok = tl.where(rnd == 0, ok & (last >= 0), ok)
        done = tl.where(rnd == 0, done | ~ok, done)
        chosen = tl.maximum(tl.where(first < NSPANS, first, last), 0)
        u_in = u - tl.sum(tl.where(s_all[None, :] < chosen[:, None], weights, 0.0), axis=1)
        chosen_local = tl.sum(chosen) - part * LOCAL
        if (chosen_local >= 0) & (chosen_local < LOCAL):  # this program holds the chosen span
            x_local = tl.zeros([BLOCK], tl.float32)
            if RESIDENT:
                x_local = tl.sum(tl.where((tl.arange(0, LOCAL) == chosen_local)[:, None], x_spans, 0.0), axis=0)
            tl.store(pick_ptr, _scan_span(row_ptr, tl.sum(chosen) * span, span, vocab, lower, u_in,
                                          x_local[None, :], RESIDENT, BLOCK))
        arrivals = _barrier(counter, arrivals, programs)
        pick = tl.maximum(tl.load(pick_ptr, volatile=True), 0)
        accept = ~done & ok
        if (TOP_K != 0) | (TOP_P != 0):
            # the row kernel's rule check and second pivot (kernels.py), per span, then combined
            pivot = tl.load(row_ptr + pick).to(tl.float32)
            mid = tl.where(rnd == 0, pivot, pivot + (high - pivot) * 0.5)
            above = tl.zeros([LOCAL], tl.float32)
            above_mass = tl.zeros([LOCAL], tl.float32)
            above_mid = tl.zeros([LOCAL], tl.float32)
            above_mid_mass = tl.zeros([LOCAL], tl.float32)
            span_max = tl.zeros([LOCAL], tl.float32)
            for c in range(0, span, BLOCK):
                x, idx = _span_chunk(row_ptr, span_start, c, cols, vocab, x_spans, RESIDENT)
                x_above = tl.where(x > pivot[:, None], x, 0.0)
                x_above_mid = tl.where(x > mid[:, None], x, 0.0)
                above += tl.sum((x_above > 0.0).to(tl.float32), axis=1)
                above_mass += tl.sum(x_above, axis=1)
                above_mid += tl.sum((x_above_mid > 0.0).to(tl.float32), axis=1)
                above_mid_mass += tl.sum(x_above_mid, axis=1)
                span_max = tl.maximum(span_max, tl.max(x, axis=1))
            _publish_check(ex_row, span_id, span_ok, above, above_mass, above_mid, above_mid_mass, span_max)
            arrivals = _barrier(counter, arrivals, programs)
            totals, row_max = _gather_check(ex_row, num_spans, NSPANS)
            n_above = _field(totals, ABOVE).to(tl.int32)
            m_above = _field(totals, ABOVE_MASS)
            n_above_mid = _field(totals, ABOVE_MID).to(tl.int32)
            m_above_mid = _field(totals, ABOVE_MID_MASS)
            passes, jump, lower, mass, high = judge_round(n_above, m_above, n_above_mid, m_above_mid, row_max, pivot,
                                                          mid, done, lower, mass, high, rnd, top_k, top_p, TOP_K,
                                                          TOP_P)
            accept = accept & passes
            field = tl.sum(tl.where(jump, ABOVE_MID_MASS, ABOVE_MASS))
        token = tl.where(accept, pick, token)
        done = done | accept
        rnd += 1
    first_part = r_ok & (tl.zeros([1], tl.int32) + part == 0)  # one program writes the row's outputs
    tl.store(out + r, token.to(out.dtype.element_ty), mask=first_part)
    tl.store(valid + r, ok.to(tl.int8), mask=first_part)


# Under the interpreter, rows x spans within this many "CUs": rows <= 4 take the split kernel in CI.
INTERPRETER_PROGRAMS = 8
# Chunk width on the GPU: a span of one 4096-wide chunk is 16 values a thread over 8 warps.
GPU_BLOCK = 4096


def split_config(vocab: int, rows: int, arch: str, programs: int, interpreted: bool = False, block: int = 0,
                 num_warps: int = 0, full_passes: bool = True):
    """The launch of the split kernel at this shape, or None for one program per row.

    Programs per row: as many spans of ``block`` as the row has, within ``programs`` in all (the CU/SM
    count: every program of the grid must be resident at once, see the module docstring), and at least
    two. ``full_passes``: the call makes several full passes per row in the row kernel (top-k's rounds,
    min-p's maximum and mass); without them (plain, top-p alone: half a row and ~1.2 passes there),
    spans of several chunks lost to the row kernel on an H100 (bc05602, graph replays, 32 rows: plain
    31.6 against 26.1 us at vocabulary 128256, top-p 83.4 against 73.8), so only resident spans (one
    chunk each) are taken: at 1 row they won every filter (top-p 14.0 against 36.5 us).
    Under the interpreter: one program per row holding every span (LOCAL), small chunks, and a budget of
    INTERPRETER_PROGRAMS, so that CI runs the exchange and the span choice at small batch.
    Not on AMD yet: no AMD GPU has run it, a barrier that is wrong there hangs instead of being slow,
    and its top-k/top-p variants spill SGPRs on gfx942 (aot_specs, which compiles the others)."""
    block = block or (256 if interpreted else GPU_BLOCK)
    if arch.startswith("gfx") and not interpreted:
        return None
    per_row = min(cdiv(vocab, block), programs // max(rows, 1))
    if rows < 1 or per_row < 2:
        return None
    span = cdiv(cdiv(vocab, per_row), block) * block
    if span > block and not full_passes and not interpreted:
        return None
    num_spans = cdiv(vocab, span)
    local = next_pow2(num_spans) if interpreted else 1
    return {"BLOCK": block, "span": span, "num_spans": num_spans, "NSPANS": next_pow2(num_spans),
            "LOCAL": local, "programs": cdiv(num_spans, local), "RESIDENT": span == block,
            "num_warps": num_warps or (8 if block >= 4096 else 4)}


def aot_specs():
    pointers = ("probs", "out", "valid", "indices", "top_k_ptr", "top_p_ptr", "min_p_ptr", "seed_ptr", "offset_ptr",
                "exchange", "picks", "counters")
    # Only the variants without rejection rounds: with top-k/top-p the kernel spills SGPRs (to VGPR lanes,
    # no scratch) on gfx942 with Triton 3.9: 28 with resident spans, 43 with spans of several chunks, at
    # 125 VGPRs (the scan of the chosen span inside the round loop; packing the exchange did not help, a
    # branch-free scan made it worse). That, and no AMD GPU having run the barrier, is why split_config
    # keeps AMD on the row kernel.
    filters = {"plain": (NONE, NONE, NONE), "min_p": (NONE, NONE, PER_ROW)}
    # batch 1 (one resident chunk per span) and batch 32 (spans of several chunks) at vocabulary 128256
    for rows in (1, 32):
        # the launch an MI300X (304 CUs) would get, were AMD routed here (split_config returns None for gfx)
        cfg = split_config(128256, rows, "sm_90", 304)
        for name, (top_k, top_p, min_p) in filters.items():
            sig = {p: "*fp32" for p in pointers}
            sig.update(out="*i32", valid="*i8", indices="*i32", top_k_ptr="*i32", seed_ptr="*i64", offset_ptr="*i64",
                       picks="*i32", counters="*i32", top_k_value="fp32", top_p_value="fp32", min_p_value="fp32",
                       num_out="i32", num_src="i32", vocab="i32", stride_row="i32", span="i32", num_spans="i32")
            consts = {"HAS_INDICES": False, "TOP_K": top_k, "TOP_P": top_p, "MIN_P": min_p, "SEED_PER_ROW": False,
                      "LOCAL": cfg["LOCAL"], "NSPANS": cfg["NSPANS"], "BLOCK": cfg["BLOCK"],
                      "RESIDENT": cfg["RESIDENT"]}
            yield KernelSpec(f"split_sampling[{name}-spans{cfg['num_spans']}-block{cfg['BLOCK']}"
                             f"{'-resident' if cfg['RESIDENT'] else ''}-w{cfg['num_warps']}]",
                             split_sampling_kernel, sig, consts, {"num_warps": cfg["num_warps"]},
                             divisible_by_16=pointers)


register_aot_specs("sampling", aot_specs)
