"""Triton kernels of chain speculative sampling (the algorithm: speculative.py).

The costly part is the draw at the first rejected position: its weights relu(p - q) span two rows of
the vocabulary and must be summed before ``u`` can be placed. One program per request walking them
(twice: the sum, then the scan) leaves the GPU idle at small batch and moved 1.35 TB/s at 256 x 128256.
So, as in chunked_kernels.py, the draw takes two launches:

- ``speculative_chunk_stats_kernel`` (grid: requests x chunks): each program repeats the request's
  draft walk (a few scalar loads; the uniforms are the same Philox draws) to find the draw's
  position, then sums its chunk's weights and, for the rare fallback below, the target's mass;
- ``chain_speculative_kernel`` (grid: requests): the walk again, writing the accepted drafts and the
  counters, then the chunk whose running weight passes ``u`` and the token inside it.

A vocabulary of one chunk skips the first launch (``ONE_CHUNK``): the draw kernel sums the chunk itself.
"""

from __future__ import annotations

# Triton itself is imported only when a kernel needs it (core/lazy_triton.py: not for a code object's launch)
from aiter_ext.core.lazy_triton import tl, triton

from aiter_ext.core.aot import KernelSpec, register_aot_specs
from aiter_ext.core.launch import cdiv, next_pow2
from aiter_ext.core.thin import thin

from .chunked_kernels import _row_stats
from .kernels import ROUND_BITS, load_chunk, pick_chunk, pick_in_chunk


@triton.jit
def _request(draft_probs, draft_ids, target_probs, seed_ptr, offset_ptr, num_draft, vocab, b,
             SEED_PER_ROW: tl.constexpr):
    """Request ``b``'s Philox seed and counter base, and its draft rows, target rows and draft ids."""
    seed_index = b if SEED_PER_ROW else 0
    seed = tl.load(seed_ptr + seed_index)
    counter = (tl.load(offset_ptr + seed_index) + b).to(tl.int64) << ROUND_BITS
    q_row = draft_probs + b.to(tl.int64) * num_draft * vocab
    p_row = target_probs + b.to(tl.int64) * (num_draft + 1) * vocab
    ids = draft_ids + b.to(tl.int64) * num_draft
    return seed, counter, q_row, p_row, ids


@triton.jit
def _walk_drafts(q_row, p_row, ids, out_row, seed, counter, num_draft, vocab, WRITE: tl.constexpr):
    """The drafts' accept tests. Returns ``pos`` (the first rejected position, ``num_draft`` if none),
    ``use_q`` (whether the token at ``pos`` is drawn from relu(p - q): a real draft was rejected there;
    else from p: the bonus token, or a draft that was no token) and the later drafts that pass on their
    own (FlashInfer's accepted counter). ``WRITE``: store the accepted drafts, and -1 after them.

    A draft id outside [0, vocab) is only known here: it is read at a clamped index and rejected."""
    pos = num_draft
    passed_after = 0
    pos_draft_ok = num_draft > 0  # (true) replaced at the first rejection
    for i in range(0, num_draft):
        d = tl.load(ids + i).to(tl.int64)
        d_ok = (d >= 0) & (d < vocab)
        d_safe = tl.minimum(tl.maximum(d, 0), vocab - 1)
        q = tl.load(q_row + i * vocab + d_safe)
        p = tl.load(p_row + i * vocab + d_safe)
        ok = (tl.rand(seed, counter + i) * q < p) & d_ok
        passed_after += tl.where(ok & (i > pos), 1, 0)
        first_reject = (~ok) & (pos == num_draft)
        pos_draft_ok = tl.where(first_reject, d_ok, pos_draft_ok)
        pos = tl.where(first_reject, i, pos)
        if WRITE:
            tl.store(out_row + i, tl.where(i < pos, d, -1).to(tl.int32))
    return pos, (pos < num_draft) & pos_draft_ok, passed_after


@triton.jit
def _weights(p_pos, q_pos, start, cols, vocab, use_q):
    """One ``[1, BLOCK]`` chunk at ``start``: the draw's weights (relu(p - q) with ``use_q``, else p) and
    the target's p; 0 past the vocabulary."""
    p, idx = load_chunk(p_pos, start, cols, vocab, 0.0)
    if use_q:
        q, _ = load_chunk(q_pos, start, cols, vocab, 0.0)
        w = tl.maximum(p - q, 0.0)
    else:
        w = p
    return w, p, idx


@triton.jit
def _draw_rows(pos, num_draft, vocab, q_row, p_row):
    """``[1]``-shaped row pointers of the draw's target and draft rows (the draft row clamped; with no
    rejection it is never read)."""
    one = tl.zeros([1], tl.int64)
    return p_row + (pos.to(tl.int64) * vocab + one), q_row + (tl.minimum(pos, num_draft - 1).to(tl.int64) * vocab + one)


@thin
@triton.jit
def speculative_chunk_stats_kernel(draft_probs, draft_ids, target_probs, seed_ptr, offset_ptr, stat_w, stat_p,
                                   num_draft, vocab, num_chunks, SEED_PER_ROW: tl.constexpr, BLOCK: tl.constexpr):
    """Per request and chunk: ``stat_w`` = the chunk's draw weights, ``stat_p`` = its target mass at the
    draw's position (``[requests, num_chunks]`` each)."""
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    seed, counter, q_row, p_row, ids = _request(draft_probs, draft_ids, target_probs, seed_ptr, offset_ptr,
                                                num_draft, vocab, b, SEED_PER_ROW)
    pos, use_q, _ = _walk_drafts(q_row, p_row, ids, ids, seed, counter, num_draft, vocab, False)
    p_pos, q_pos = _draw_rows(pos, num_draft, vocab, q_row, p_row)
    w, p, _ = _weights(p_pos, q_pos, chunk * BLOCK, tl.arange(0, BLOCK), vocab, use_q)
    slot = b.to(tl.int64) * num_chunks + chunk + tl.arange(0, 1)
    tl.store(stat_w + slot, tl.sum(w, axis=1))
    tl.store(stat_p + slot, tl.sum(p, axis=1))


@thin
@triton.jit
def chain_speculative_kernel(draft_probs, draft_ids, target_probs, out, accepted, emitted, seed_ptr, offset_ptr,
                             stat_w, stat_p, num_draft, vocab, num_chunks, SEED_PER_ROW: tl.constexpr,
                             BLOCK: tl.constexpr, NCHUNKS: tl.constexpr, ONE_CHUNK: tl.constexpr):
    """One request: the accepted drafts, the drawn token at ``pos``, -1 after it, and the counters.
    Without ``ONE_CHUNK`` the chunk weights come from speculative_chunk_stats_kernel."""
    b = tl.program_id(0)
    seed, counter, q_row, p_row, ids = _request(draft_probs, draft_ids, target_probs, seed_ptr, offset_ptr,
                                                num_draft, vocab, b, SEED_PER_ROW)
    out_row = out + b.to(tl.int64) * (num_draft + 1)
    pos, use_q, passed_after = _walk_drafts(q_row, p_row, ids, out_row, seed, counter, num_draft, vocab, True)
    p_pos, q_pos = _draw_rows(pos, num_draft, vocab, q_row, p_row)
    cols = tl.arange(0, BLOCK)
    if ONE_CHUNK:
        w, p, idx = _weights(p_pos, q_pos, 0, cols, vocab, use_q)
        chunk_w = tl.sum(w, axis=1)[:, None]
        chunk_p = tl.sum(p, axis=1)[:, None]
        ch = tl.arange(0, 1)
    else:
        row = tl.zeros([1], tl.int64) + b
        chunk_w, ch = _row_stats(stat_w, row, num_chunks, 0.0, NCHUNKS)
        chunk_p, ch = _row_stats(stat_p, row, num_chunks, 0.0, NCHUNKS)
    # relu(p - q) sums to ~0 only through rounding (a rejection means p < q somewhere, hence p > q
    # elsewhere); then the target itself is drawn from.
    fallback = use_q & (tl.sum(chunk_w, axis=1) <= 0.0)
    chunk_w = tl.where(fallback[:, None], chunk_p, chunk_w)
    u = tl.rand(seed, counter + num_draft) * tl.sum(chunk_w, axis=1)
    # the chunk, then the token: only weight > 0 can be picked at either level (kernels.pick_chunk)
    chunk, u_in, _ = pick_chunk(chunk_w, ch, u, NCHUNKS)
    if not ONE_CHUNK:
        w, p, idx = _weights(p_pos, q_pos, tl.max(chunk, axis=0) * BLOCK, cols, vocab, use_q)
    token = pick_in_chunk(tl.where(fallback[:, None], p, w), idx[None, :], u_in, vocab)
    tl.store(out_row + pos + tl.arange(0, 1), token.to(tl.int32))
    if pos < num_draft:  # the last position, which the draft walk does not cover
        tl.store(out_row + num_draft, -1)
    tl.atomic_add(emitted + b, pos)  # one program per request: the adds never race; atomics keep them simple
    tl.atomic_add(accepted + b, pos + passed_after)


# Chunk widths on a GPU, from op_tests/test_sampling.py --spec's sweep (H100, graph replays of the launcher, 4
# drafts, vocabulary 128256): 4 warps won every shape; 1024-wide chunks at batch 1 (8.4 us against 14.6 at
# 2048), 2048 from batch 32 (23.8 against 24.4 us at 32; 104.7 against 133.5 at 256, and 42.1 against 46.9
# at 256 x 32000). A chunk of 2048 entries of p and q is 16 KB per program.
GPU_BLOCK, SMALL_BATCH_BLOCK, SMALL_BATCH = 2048, 1024, 32


def speculative_config(vocab: int, batch: int, interpreted: bool = False, block: int = 0, num_warps: int = 0) -> dict:
    """The launch at this shape. Under the CPU interpreter the cost is per program, so one chunk holds
    up to 16384 entries there (``block`` forces a width: tests, sweeps)."""
    block = block or (16384 if interpreted else SMALL_BATCH_BLOCK if batch < SMALL_BATCH else GPU_BLOCK)
    block = min(block, max(16, next_pow2(vocab)))
    num_chunks = cdiv(vocab, block)
    return {"BLOCK": block, "num_chunks": num_chunks, "NCHUNKS": next_pow2(num_chunks),
            "ONE_CHUNK": num_chunks == 1, "num_warps": num_warps or 4}


def _specs(cfg: dict, ids: str, label: str = ""):
    """The launches of one draw at ``cfg`` (speculative_config's), draft ids of type ``ids``: the chunk sums (where
    the vocabulary takes more than one chunk), then the walk."""
    # stat_p is the second plane of one [2, batch, chunks] workspace (launchers.chain_speculative): 16-byte aligned
    # only where batch x chunks is a multiple of 4, so no spec assumes it
    pointers = ("draft_probs", "draft_ids", "target_probs", "seed_ptr", "offset_ptr", "stat_w")
    base = {"draft_probs": "*fp32", "draft_ids": f"*{ids}", "target_probs": "*fp32", "seed_ptr": "*i64",
            "offset_ptr": "*i64", "stat_w": "*fp32", "stat_p": "*fp32", "num_draft": "i32", "vocab": "i32",
            "num_chunks": "i32"}
    options = {"num_warps": cfg["num_warps"]}
    if not cfg["ONE_CHUNK"]:
        yield KernelSpec(f"speculative_chunk_stats[ids {ids}-block{cfg['BLOCK']}{label}]",
                         speculative_chunk_stats_kernel, base, {"SEED_PER_ROW": False, "BLOCK": cfg["BLOCK"]}, options,
                         divisible_by_16=pointers)
    consts = {"SEED_PER_ROW": False, "BLOCK": cfg["BLOCK"], "NCHUNKS": cfg["NCHUNKS"], "ONE_CHUNK": cfg["ONE_CHUNK"]}
    yield KernelSpec(f"chain_speculative[ids {ids}-block{cfg['BLOCK']}-chunks{cfg['NCHUNKS']}{label}]",
                     chain_speculative_kernel, {**base, "out": "*i32", "accepted": "*i32", "emitted": "*i32"}, consts,
                     options, divisible_by_16=pointers + ("out", "accepted", "emitted"))


def aot_specs(arch: str = "gfx942"):
    """The default launches (vocabularies 1024 and 128256, batches 1 and 256), then each tuned row's measured on
    ``arch`` (backends.SPECULATIVE_TUNE_CONFIGS; a row of the policy's own choice adds none)."""
    from aiter_ext.core.tuned import measured_configs

    names = set()
    for ids in ("i32", "i64"):  # draft_token_ids may be int32 or int64
        for vocab, batch in ((1024, 256), (128256, 1), (128256, 256)):
            for spec in _specs(speculative_config(vocab, batch), ids):
                if spec.name not in names:  # batches 1 and 256 share the chunk sums' tile
                    names.add(spec.name)
                    yield spec
        for row, config in measured_configs("chain_speculative_sampling", arch):
            if "BLOCK" in config:
                cfg = speculative_config(int(row["vocab"]), int(row["rows"]), False, config["BLOCK"],
                                         config.get("num_warps", 0))
                yield from _specs(cfg, ids, f"-tuned-w{cfg['num_warps']}")


register_aot_specs("chain_speculative_sampling", aot_specs)
