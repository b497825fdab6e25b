"""Triton kernel of chain speculative sampling (the algorithm: speculative.py)."""

from __future__ import annotations

import triton
import triton.language as tl

from aiter_ext.core.aot import KernelSpec, register_aot_specs

from .kernels import ROUND_BITS, inverse_cdf_pick



@triton.jit
def chain_speculative_kernel(draft_probs, draft_ids, target_probs, out, accepted, emitted, seed_ptr, offset_ptr,
                             num_draft, vocab, SEED_PER_ROW: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    seed_index = b if SEED_PER_ROW else 0
    seed = tl.load(seed_ptr + seed_index)
    counter = (tl.load(offset_ptr + seed_index) + b).to(tl.int64) << ROUND_BITS
    q_row = draft_probs + b.to(tl.int64) * num_draft * vocab
    p_row = target_probs + b.to(tl.int64) * (num_draft + 1) * vocab
    ids = draft_ids + b.to(tl.int64) * num_draft
    out_row = out + b.to(tl.int64) * (num_draft + 1)

    # Walk the drafts: pos = first rejected position (num_draft if none); later drafts are still
    # tested, with their own uniforms, for the accepted counter. A draft id outside [0, vocab) is
    # only known here: it is read at a clamped index and always rejected.
    pos = num_draft
    passed_after = 0
    pos_draft_ok = num_draft > 0  # (true) whether the draft at pos is a real token (then the resample is from relu(p - q))
    for i in range(0, num_draft):
        d = tl.load(ids + i).to(tl.int64)
        d_ok = (d >= 0) & (d < vocab)
        d_safe = tl.minimum(tl.maximum(d, 0), vocab - 1)
        q = tl.load(q_row + i * vocab + d_safe)
        p = tl.load(p_row + i * vocab + d_safe)
        u = tl.rand(seed, counter + i)
        ok = (u * q < p) & d_ok
        passed_after += tl.where(ok & (i > pos), 1, 0)
        first_reject = (~ok) & (pos == num_draft)
        pos_draft_ok = tl.where(first_reject, d_ok, pos_draft_ok)
        pos = tl.where(first_reject, i, pos)
        tl.store(out_row + i, tl.where(i < pos, d, -1).to(tl.int32))

    # The drawn token: from relu(p - q) at pos, or from p at pos == num_draft (the bonus token) and
    # where the draft at pos was no token at all (then nothing was drawn from q there).
    cols = tl.arange(0, BLOCK)[None, :]
    p_pos = p_row + pos.to(tl.int64) * vocab
    q_pos = q_row + tl.minimum(pos, num_draft - 1).to(tl.int64) * vocab
    use_q = (pos < num_draft) & pos_draft_ok
    mass = tl.zeros([1, BLOCK], tl.float32)
    for start in range(0, vocab, BLOCK):
        mass += _residual(p_pos, q_pos, start + cols, vocab, use_q)
    total = tl.sum(mass, axis=1)
    # relu(p - q) can sum to ~0 only through rounding (a rejection means p < q somewhere, hence
    # p > q elsewhere); then the target itself is drawn from (its rows sum to 1).
    fallback = use_q & (total <= 0.0)
    use_q = use_q & ~fallback
    u = tl.rand(seed, counter + num_draft) * tl.where(fallback, 1.0, total)
    found = tl.full([1], -1, tl.int32)
    last = tl.full([1], -1, tl.int32)
    running = tl.zeros([1], tl.float32)
    start = 0
    while (start < vocab) & (tl.max(found, axis=0) < 0):
        w = _residual(p_pos, q_pos, start + cols, vocab, use_q)
        w_mass = tl.sum(w, axis=1)
        # only an entry of positive weight can be drawn (kernels.inverse_cdf_pick); where this
        # chunk's sum passes u but its prefix sums do not (rounding), its last such entry is
        first, last_here = inverse_cdf_pick(w, start + cols, running[:, None], u[:, None], vocab)
        crossing = running + w_mass > u
        found = tl.where(crossing, tl.where(first < vocab, first, last_here), found)
        last = tl.maximum(last, last_here)
        running += w_mass
        start += BLOCK
    token = tl.maximum(tl.where(found >= 0, found, last), 0)
    tl.store(out_row + pos + tl.arange(0, 1), token.to(tl.int32))
    if pos < num_draft:  # the last position, which the draft loop above does not cover
        tl.store(out_row + num_draft, -1)
    tl.atomic_add(emitted + b, pos)  # one program per row: the adds never race; atomics keep them simple
    tl.atomic_add(accepted + b, pos + passed_after)


@triton.jit
def _residual(p_pos, q_pos, idx, vocab, use_q):
    """The weights at ``idx``: relu(p - q) at a rejection, p for the bonus token; 0 past the vocabulary."""
    safe = tl.minimum(idx, vocab - 1)
    p = tl.load(p_pos + safe)
    q = tl.load(q_pos + safe)
    w = tl.where(use_q, tl.maximum(p - q, 0.0), p)
    return tl.where(idx < vocab, w, 0.0)


def aot_specs():
    for ids in ("i32", "i64"):  # draft_token_ids may be int32 or int64
        sig = {"draft_probs": "*fp32", "draft_ids": f"*{ids}", "target_probs": "*fp32", "out": "*i32",
               "accepted": "*i32", "emitted": "*i32", "seed_ptr": "*i64", "offset_ptr": "*i64", "num_draft": "i32",
               "vocab": "i32"}
        for block in (1024, 4096):
            yield KernelSpec(f"chain_speculative[ids {ids}-block{block}]", chain_speculative_kernel, sig,
                             {"SEED_PER_ROW": False, "BLOCK": block}, {"num_warps": 8 if block >= 4096 else 4},
                             divisible_by_16=tuple(k for k, v in sig.items() if v.startswith("*")))


register_aot_specs("sampling.speculative", aot_specs)
