"""Rejection rounds by chunks: top-k, top-p and joint sampling with every pass spread over many programs.

Why: at batch 256 the row kernel (kernels.py, one program per row) moved 1.5-1.9 TB/s on an H100, where
the chunked kernels (many small programs per row) moved 2.9 (docs/perf-notes.md): one program cannot keep
enough loads in flight. Top-p made 1.6 passes a row there and took 0.84x FlashInfer's time; top-k makes
4-5 rounds. Here the rounds, pivots, rules and uniforms are the row kernel's, but each pass is a launch:

- ``round_kernel`` (grid: output rows x chunks) is one round. Each program takes its chunk's part of the
  rule check: the count and mass strictly above the pending token's value (``pivot``) and above ``mid``,
  and the maximum (the first launch: each chunk's mass, round 0's candidates). The last of a row's
  programs to arrive judges the round from those numbers (kernels.judge_round) and draws the next round's
  token: the chunk from the per-chunk candidate masses (above the rejected pivot, or above ``mid`` after a
  jump: the check left both), then the token inside the chunk.

A call makes a fixed number of rounds this way (the launches must not depend on the data: graph
capture), rows already done leave each launch at once, and the last launch only judges. The row kernel then
resumes every row that is not done from its state (kernels.filtered_sampling_kernel's ``RESUME``), so the
draw is the row kernel's whatever the number of rounds. The state of a row lives in ``istate`` (int32
[rows, 4]: token, flags, the pending round, the pending token) and ``fstate`` (fp32 [rows, 8]: lower,
mass, high, pivot, mid); the per-chunk numbers in ``stats`` (fp32 [5, rows, chunks]); the arrival counters
in ``arrivals`` (int32 [rows], zeroed by the launcher, left at zero by each round).
"""

from __future__ import annotations

import itertools

# Triton itself is imported only when a kernel needs it (core/lazy_triton.py: not for a code object's launch)
from aiter_ext.core.lazy_triton import tl, triton

from aiter_ext.core.aot import KernelSpec, register_aot_specs
from aiter_ext.core.launch import cdiv, next_pow2
from aiter_ext.core.thin import thin

from .chunked_kernels import _row_stats
from .kernels import (  # the row state's layout, shared with the row kernel's RESUME
    DONE, FLAGS, FSTATE, HIGH, ISTATE, LOWER, MASS, MID, PER_ROW, PICK, PIVOT, ROUND, ROUND_BITS, TOKEN, VALID,
    judge_round, load_chunk, pick_chunk, pick_in_chunk, program_rows, top_k_of, top_p_of,
)

# stats planes
ABOVE, ABOVE_MASS, ABOVE_MID, ABOVE_MID_MASS, CHUNK_MAX = (tl.constexpr(i) for i in range(5))


@thin
@triton.jit
def round_kernel(probs, indices, top_k_ptr, top_p_ptr, seed_ptr, offset_ptr, top_k_value, top_p_value, istate, fstate,
                 stats, arrivals, num_out, num_src, vocab, stride_row, num_chunks, HAS_INDICES: tl.constexpr,
                 TOP_K: tl.constexpr, TOP_P: tl.constexpr, SEED_PER_ROW: tl.constexpr, FIRST: tl.constexpr,
                 DRAW: tl.constexpr, BLOCK: tl.constexpr, NCHUNKS: tl.constexpr, CHECK: tl.constexpr = True,
                 JUDGE: tl.constexpr = True):
    """One round, or half of one. ``CHECK`` (grid: output rows x chunks): each program leaves its chunk's
    numbers for the judge of the pending round. ``JUDGE``: the round is judged from all of them and, with
    ``DRAW``, the next round's token is drawn (_judge_and_draw): with ``CHECK``, by the last of a row's
    programs to arrive (``arrivals``, a per-row counter it resets; no program waits for another, so the
    grid need not be resident at once, unlike split_kernels.py); alone, by one program per row (grid:
    output rows x 1). Fused, a round is one launch, but every check program holds the judge's registers
    (gfx942: 82-97 VGPRs against 51); which is faster is for a GPU to say.

    The numbers, each a block reduction (a barrier), only those the judge reads:
    - ``FIRST``: the chunk's mass (round 0's candidate masses);
    - the mass strictly above ``pivot`` and, from round 1 (before, ``mid`` is the pivot), above ``mid``;
    - with top-k, the counts above both, and the chunk maximum in round 0 (the row maximum starts the
      judge's ``high``); with top-p alone, the maximum in every round, from which the judge tells whether
      anything lies above (its only use of the counts there)."""
    COUNTS: tl.constexpr = TOP_K != 0
    r, r_ok, r_safe, src, src_ok = program_rows(indices, num_out, num_src, HAS_INDICES, 1)
    chunk = tl.program_id(1)
    pending = r_ok
    pivot = tl.zeros([1], tl.float32)
    mid = pivot
    round0 = True
    if not FIRST:
        pending = r_ok & ((tl.load(istate + r_safe * ISTATE + FLAGS) & DONE) == 0)
        pivot = tl.load(fstate + r_safe * FSTATE + PIVOT)
        mid = tl.load(fstate + r_safe * FSTATE + MID)
        round0 = tl.sum(tl.load(istate + r_safe * ISTATE + ROUND), axis=0) == 0
    if not CHECK:
        _judge_and_draw(probs, src, src_ok, r_ok, r_safe, top_k_ptr, top_p_ptr, seed_ptr, offset_ptr, top_k_value,
                        top_p_value, istate, fstate, stats, num_out, vocab, stride_row, num_chunks, TOP_K, TOP_P,
                        SEED_PER_ROW, FIRST, DRAW, BLOCK, NCHUNKS)
    elif tl.max(pending.to(tl.int32), axis=0) > 0:  # a row already done leaves at once
        x, idx = load_chunk(probs + src * stride_row, chunk * BLOCK, tl.arange(0, BLOCK), vocab, 0.0)
        x = tl.where(x > 0.0, x, 0.0)  # NaN and negative entries weigh nothing, as in the row kernel's draw
        slot = r_safe.to(tl.int64) * num_chunks + chunk
        plane = num_out.to(tl.int64) * num_chunks
        if FIRST:
            tl.store(stats + ABOVE_MASS * plane + slot, tl.sum(x, axis=1), mask=r_ok)
        else:
            x_above = tl.where(x > pivot[:, None], x, 0.0)
            tl.store(stats + ABOVE_MASS * plane + slot, tl.sum(x_above, axis=1), mask=r_ok)
            if COUNTS:
                tl.store(stats + ABOVE * plane + slot, tl.sum((x_above > 0.0).to(tl.float32), axis=1), mask=r_ok)
            if round0:
                tl.store(stats + CHUNK_MAX * plane + slot, tl.max(x, axis=1), mask=r_ok)
            else:
                if not COUNTS:
                    tl.store(stats + CHUNK_MAX * plane + slot, tl.max(x, axis=1), mask=r_ok)
                x_above_mid = tl.where(x > mid[:, None], x, 0.0)
                tl.store(stats + ABOVE_MID_MASS * plane + slot, tl.sum(x_above_mid, axis=1), mask=r_ok)
                if COUNTS:
                    tl.store(stats + ABOVE_MID * plane + slot, tl.sum((x_above_mid > 0.0).to(tl.float32), axis=1),
                             mask=r_ok)
        if JUDGE:
            # Every thread's stores precede the release; the last arrival's acquire (and the barrier after
            # it, for its other threads) makes the row's other programs' numbers visible to it.
            tl.debug_barrier()
            row = tl.program_id(0)
            arrived = tl.atomic_add(arrivals + row, 1, sem="acq_rel", scope="gpu")
            tl.debug_barrier()
            if arrived == num_chunks - 1:
                tl.store(arrivals + row, 0)  # every program of the row has arrived: ready for the next round
                _judge_and_draw(probs, src, src_ok, r_ok, r_safe, top_k_ptr, top_p_ptr, seed_ptr, offset_ptr,
                                top_k_value, top_p_value, istate, fstate, stats, num_out, vocab, stride_row,
                                num_chunks, TOP_K, TOP_P, SEED_PER_ROW, FIRST, DRAW, BLOCK, NCHUNKS)


@triton.jit
def _judge_and_draw(probs, src, src_ok, r_ok, r_safe, top_k_ptr, top_p_ptr, seed_ptr, offset_ptr, top_k_value,
                    top_p_value, istate, fstate, stats, num_out, vocab, stride_row, num_chunks, TOP_K: tl.constexpr,
                    TOP_P: tl.constexpr, SEED_PER_ROW: tl.constexpr, FIRST: tl.constexpr, DRAW: tl.constexpr,
                    BLOCK: tl.constexpr, NCHUNKS: tl.constexpr):
    """Judge the pending round of one output row (not ``FIRST``) and, with ``DRAW``, draw the next one's
    token. A row whose first round has no candidate of positive mass is done: token 0, invalid."""
    plane = num_out.to(tl.int64) * num_chunks
    mass_above, ch = _row_stats(stats + ABOVE_MASS * plane, r_safe, num_chunks, 0.0, NCHUNKS)
    ist = istate + r_safe * ISTATE
    fst = fstate + r_safe * FSTATE
    if FIRST:
        token = tl.zeros([1], tl.int32)
        done = ~src_ok  # a source row outside the probabilities: token 0, invalid
        ok = src_ok
        rnd = tl.full([1], -1, tl.int32)
        pick = tl.zeros([1], tl.int32)
        lower = tl.zeros([1], tl.float32)
        mass = tl.full([1], 1.0, tl.float32)  # rows sum to 1, as in the row kernel's round 0
        high = tl.zeros([1], tl.float32)
        weights = mass_above
    else:
        token = tl.load(ist + TOKEN)
        flags = tl.load(ist + FLAGS)
        done = (flags & DONE) != 0
        ok = (flags & VALID) != 0
        rnd = tl.load(ist + ROUND)
        pick = tl.load(ist + PICK)
        lower = tl.load(fst + LOWER)
        mass = tl.load(fst + MASS)
        high = tl.load(fst + HIGH)
        pivot = tl.load(fst + PIVOT)
        mid = tl.load(fst + MID)
        row_max = tl.max(_row_stats(stats + CHUNK_MAX * plane, r_safe, num_chunks, 0.0, NCHUNKS)[0], axis=1)
        first_judged = tl.sum(rnd, axis=0) == 0
        if first_judged:  # round 0's check took nothing above mid (mid is the pivot there)
            mass_above_mid = mass_above
        else:
            mass_above_mid, _ = _row_stats(stats + ABOVE_MID_MASS * plane, r_safe, num_chunks, 0.0, NCHUNKS)
        if TOP_K != 0:
            above = tl.sum(_row_stats(stats + ABOVE * plane, r_safe, num_chunks, 0.0, NCHUNKS)[0], axis=1)
            if first_judged:
                above_mid = above
            else:
                above_mid = tl.sum(_row_stats(stats + ABOVE_MID * plane, r_safe, num_chunks, 0.0, NCHUNKS)[0], axis=1)
        else:  # top-p alone reads a count only as "is anything above": the row maximum says it
            above = (row_max > pivot).to(tl.float32)
            above_mid = (row_max > mid).to(tl.float32)
        top_k = top_k_of(top_k_ptr, top_k_value, src, TOP_K)
        top_p = top_p_of(top_p_ptr, top_p_value, src, TOP_P)
        passes, jump, lower, mass, high = judge_round(
            above.to(tl.int32), tl.sum(mass_above, axis=1), above_mid.to(tl.int32), tl.sum(mass_above_mid, axis=1),
            row_max, pivot, mid, done, lower, mass, high, rnd, top_k, top_p, TOP_K, TOP_P)
        accept = ~done & ok & passes
        token = tl.where(accept, pick, token)
        done = done | accept
        # the next round's candidates lie above the rejected value, or above mid after a jump
        weights = tl.where(jump[:, None], mass_above_mid, mass_above)
    if DRAW:
        rnd = rnd + 1
        seed_index = r_safe if SEED_PER_ROW else tl.zeros([1], tl.int32)
        counter = (tl.load(offset_ptr + seed_index) + r_safe) << ROUND_BITS  # the row kernel's counters
        u = tl.rand(tl.load(seed_ptr + seed_index), counter + rnd) * mass
        # the chunk, then the token (only entries of positive weight can be picked at either level)
        chunk, u_in, last_chunk = pick_chunk(weights, ch, u, NCHUNKS)
        if FIRST:
            ok = ok & (last_chunk >= 0)  # no candidate of positive mass: token 0, invalid
            done = done | ~ok
        x, idx = load_chunk(probs + src * stride_row, tl.max(chunk, axis=0) * BLOCK, tl.arange(0, BLOCK), vocab, 0.0)
        w = tl.where((x >= lower[:, None]) & (x > 0.0), x, 0.0)
        pick = tl.where(done, pick, pick_in_chunk(w, idx[None, :], u_in, vocab))
        pivot = tl.load(probs + src * stride_row + pick).to(tl.float32)
        mid = tl.where(rnd == 0, pivot, pivot + (high - pivot) * 0.5)
        tl.store(fst + PIVOT, pivot, mask=r_ok)
        tl.store(fst + MID, mid, mask=r_ok)
    tl.store(ist + TOKEN, token, mask=r_ok)
    tl.store(ist + FLAGS, tl.where(done, DONE, 0) | tl.where(ok, VALID, 0), mask=r_ok)
    tl.store(ist + ROUND, rnd, mask=r_ok)
    tl.store(ist + PICK, pick, mask=r_ok)
    tl.store(fst + LOWER, lower, mask=r_ok)
    tl.store(fst + MASS, mass, mask=r_ok)
    tl.store(fst + HIGH, high, mask=r_ok)


# The default route in CUDA graphs (launchers._rounds_route): top-p alone, from the batches the split kernel leaves (it
# takes 1-4 rows at vocabulary 128256) to ROUNDS_MAX_ROWS, vocabularies from ROUNDS_MIN_VOCAB, with
# ROUNDS_DRAWN rounds by chunks of GPU_BLOCK entries. H100, op_tests/test_sampling.py --sweep-rounds at
# 3717fd6 (graph replays, us; the row kernel, then 2 and 3 rounds of 2048-wide chunks, FlashInfer):
#   top-p 0.9, 32 x 128256: 74.2, 47.5, 49.7, FI 57.1;  32 x 201088: 108.8, 54.3, 39.7, FI 85.5
#   at 256 rows the row kernel won (143.7 against 172.0 at best; FI 121.3), and 4096-wide chunks lost at 32.
# --rounds-route at c55ee23 (graph; the route, the row kernel, FI): 8 x 128256 42.3, 56.7, 43.5; 64 x 128256
#   63.0, 81.0, 63.1; 64 x 201088 70.7, 141.5, 102.2; at 96 rows two rounds by chunks lost (102.6 against 94.2).
# Top-k (4-5 rounds) and joint keep the row kernel by default: at 32 x 128256 five rounds by chunks took
# 228.3 us against its 232.3. The same rule on AMD, where no GPU has timed either path. Eager calls keep the
# row kernel: eagerly the 9 launches made a call take 326-635 us (launchers._graph_timed).
GPU_BLOCK = 2048
ROUNDS_DRAWN = 3
ROUNDS_MAX_ROWS = 64
ROUNDS_MIN_VOCAB = 32768


def rounds_config(vocab: int, interpreted: bool = False, block: int = 0, rounds: int = 0,
                  num_warps: int = 0, fused: bool = False) -> dict:
    """The launch: ``rounds`` drawn by chunks before the row kernel resumes (default 2: top-p makes 1.1
    rounds on average; top-k 4-5); ``fused``: check and judge in one launch (round_kernel)."""
    block = block or (256 if interpreted else GPU_BLOCK)
    block = min(block, max(16, next_pow2(vocab)))
    num_chunks = cdiv(vocab, block)
    return {"BLOCK": block, "num_chunks": num_chunks, "NCHUNKS": next_pow2(num_chunks),
            "rounds": max(rounds or 2, 1), "num_warps": num_warps or 4, "fused": fused}


def aot_specs():
    cfg = rounds_config(128256)
    ints = {"num_out": "i32", "num_src": "i32", "vocab": "i32", "stride_row": "i32", "num_chunks": "i32"}
    sig = {"probs": "*fp32", "indices": "*i32", "top_k_ptr": "*i32", "top_p_ptr": "*fp32", "seed_ptr": "*i64",
           "offset_ptr": "*i64", "top_k_value": "fp32", "top_p_value": "fp32", "istate": "*i32", "fstate": "*fp32",
           "stats": "*fp32", "arrivals": "*i32", **ints}
    filters = {"top_k": (PER_ROW, 0), "top_p": (0, PER_ROW), "joint": (PER_ROW, PER_ROW)}
    for name, (top_k, top_p) in filters.items():
        steps = itertools.product(((True, True), (False, True), (False, False)), ((True, True), (True, False),
                                                                                 (False, True)))
        # a check alone does not depend on DRAW: its two forms (first, next) once
        for (first, draw), (check, judge) in [(fd, cj) for fd, cj in steps if cj[1] or fd[1]]:
            consts = {"HAS_INDICES": False, "TOP_K": top_k, "TOP_P": top_p, "SEED_PER_ROW": False, "FIRST": first,
                      "DRAW": draw, "BLOCK": cfg["BLOCK"], "NCHUNKS": cfg["NCHUNKS"], "CHECK": check, "JUDGE": judge}
            step = "first" if first else "draw" if draw else "judge"
            form = "fused" if check and judge else "check" if check else "judge-only"
            yield KernelSpec(f"round[{name}-{step}-{form}-block{cfg['BLOCK']}]", round_kernel, sig, consts,
                             {"num_warps": cfg["num_warps"]},
                             divisible_by_16=("probs", "istate", "fstate", "stats", "arrivals"))


register_aot_specs("sampling", aot_specs)
