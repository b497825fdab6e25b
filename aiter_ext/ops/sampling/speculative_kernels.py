"""Triton kernel of chain speculative sampling (the algorithm: speculative.py)."""

from __future__ import annotations

import triton
import triton.language as tl

from aiter_ext.core.aot import KernelSpec, register_aot_specs

from .kernels import ROUND_BITS



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
    # tested, with their own uniforms, for the accepted counter.
    pos = num_draft
    passed_after = 0
    for i in range(0, num_draft):
        d = tl.load(ids + i).to(tl.int64)
        q = tl.load(q_row + i * vocab + d)
        p = tl.load(p_row + i * vocab + d)
        u = tl.rand(seed, counter + i)
        ok = u * q < p
        passed_after += tl.where(ok & (i > pos), 1, 0)
        pos = tl.where((~ok) & (pos == num_draft), i, pos)
        tl.store(out_row + i, tl.where(i < pos, d, -1).to(tl.int32))

    # The drawn token: from relu(p - q) at pos, or from p at pos == num_draft (the bonus token).
    cols = tl.arange(0, BLOCK)
    p_pos = p_row + pos.to(tl.int64) * vocab
    q_pos = q_row + tl.minimum(pos, num_draft - 1).to(tl.int64) * vocab
    use_q = pos < num_draft
    mass = tl.zeros([BLOCK], tl.float32)
    for start in range(0, vocab, BLOCK):
        w = _residual(p_pos, q_pos, start + cols, vocab, use_q)
        mass += w
    total = tl.sum(mass, axis=0)
    # relu(p - q) can sum to ~0 only through rounding (a rejection means p < q somewhere, hence
    # p > q elsewhere); then the target itself is drawn from.
    use_q = use_q & (total > 0.0)
    total = tl.where(use_q | (pos == num_draft), total, 1.0)
    u = tl.rand(seed, counter + num_draft) * total
    found = -1
    last = -1
    running = 0.0
    start = 0
    while (start < vocab) & (found < 0):
        w = _residual(p_pos, q_pos, start + cols, vocab, use_q)
        cdf = tl.cumsum(w, axis=0) + running
        first = tl.min(tl.where(cdf > u, start + cols, vocab), axis=0)
        found = tl.where(first < vocab, first, -1)
        last = tl.maximum(last, tl.max(tl.where(w > 0.0, start + cols, -1), axis=0))
        running += tl.sum(w, axis=0)
        start += BLOCK
    token = tl.maximum(tl.where(found >= 0, found, last), 0)
    tl.store(out_row + pos, token.to(tl.int32))
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
