"""Triton kernels that spread each row over many programs: min-p sampling from probabilities and
sampling from logits (draws that need no rejection rounds), and softmax.

One program per row walks 0.5 MB at vocabulary 128256: at batch 1 or 32 that leaves most of the GPU
idle. Here a row is cut into ``BLOCK``-wide chunks, and a draw takes two launches:

- ``chunk_stats_kernel`` (grid: row tiles x chunks) reduces each chunk to the numbers a draw needs:
  its maximum (probabilities), or its largest logit, the sum of ``exp2((x - max) * scale)`` and the
  first index of that logit (logits; ``scale`` = log2(e) / temperature). For min-p it runs twice: the chunk maxima, then the mass at or above
  ``min_p * max`` of the row (each program takes the row maximum from the chunk maxima).
- ``chunk_draw_kernel`` (grid: row tiles) draws ``u`` in ``[0, total)``, picks the chunk whose
  running mass passes ``u`` from the per-chunk numbers, and scans only that chunk.

So every chunk of every row is in flight together. ``softmax_chunk_kernel``
is softmax's second pass: each chunk is normalised by the row's maximum and sum, both taken from the
per-chunk numbers.

Sampling from logits draws by inverse CDF over ``exp(x - max)``: one uniform per row rather than a
Gumbel variate per token. NaN logits count as ``-inf`` and NaN probabilities as 0: never drawn.
"""

from __future__ import annotations

# Triton itself is imported only when a kernel needs it (core/lazy_triton.py: not for a code object's launch)
from aiter_ext.core.lazy_triton import tl, triton

from aiter_ext.core.launch import cdiv, next_pow2
from aiter_ext.core.aot import KernelSpec, register_aot_specs
from aiter_ext.core.thin import thin

from .kernels import (
    PER_ROW, SCALAR, _row_param, load_chunk, min_p_of, pick_chunk, pick_in_chunk, program_rows, tile_rows,
)

# What chunk_stats_kernel computes per chunk.
MAX, MASS_ABOVE_MIN_P, LOGITS = 1, 2, 3
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def logit_scale(temp_ptr, temp_value, rows, TEMP: tl.constexpr):
    """Per row: the factor that turns logits into base-2 exponents of ``softmax(x / T)``, and whether
    the row is greedy (``T == 0``: its scale keeps the logits' order)."""
    t = _row_param(temp_ptr, temp_value, rows, TEMP)
    greedy = t == 0.0
    return (1.0 / tl.where(greedy, 1.0, t)) * LOG2E, greedy


@triton.jit
def logits_chunk(row_ptr, start, cols, vocab):
    """A chunk of logits, ``-inf`` past the vocabulary and in place of NaN. Kept unscaled: every
    exponent below is ``(x - max) * scale``. Written as ``x * scale - max * scale``, the compiler
    fuses it into one FMA whose unrounded product no longer cancels the rounded maximum; for a
    logit of 1e30 that difference is ~1e23, and exp2 of it is 0 or inf."""
    x, idx = load_chunk(row_ptr, start, cols, vocab, -float("inf"))
    return tl.where(x == x, x, -float("inf")), idx


@triton.jit
def _row_stats(stat_ptr, rows, num_chunks, fill, NCHUNKS: tl.constexpr):
    """``[ROWS, NCHUNKS]`` per-chunk numbers of the rows, ``fill`` past the last chunk (clamped load)."""
    ch = tl.arange(0, NCHUNKS)
    values = tl.load(stat_ptr + rows[:, None] * num_chunks + tl.minimum(ch, num_chunks - 1)[None, :])
    return tl.where((ch < num_chunks)[None, :], values, fill), ch


@triton.jit
def _logit_totals(stat_max, stat_sum, rows, num_chunks, scale, NCHUNKS: tl.constexpr):
    """Combine the chunks of each row: the row's largest logit, each chunk's weight in units of
    ``exp2(that logit * scale)`` and their total."""
    chunk_max, ch = _row_stats(stat_max, rows, num_chunks, -float("inf"), NCHUNKS)
    chunk_sum, ch = _row_stats(stat_sum, rows, num_chunks, 0.0, NCHUNKS)
    top = tl.max(chunk_max, axis=1)
    top_safe = tl.where(top == -float("inf"), 0.0, top)
    weight = chunk_sum * tl.exp2((chunk_max - top_safe[:, None]) * scale[:, None])
    return top, top_safe, chunk_max, weight, ch


@thin
@triton.jit
def chunk_stats_kernel(x_ptr, stat_a, stat_b, stat_arg, param_ptr, param_value, num_rows, vocab, stride_row,
                       num_chunks, KIND: tl.constexpr, PARAM: tl.constexpr, ROWS: tl.constexpr,
                       BLOCK: tl.constexpr, NCHUNKS: tl.constexpr):
    """Pass A. ``stat_a``/``stat_b``/``stat_arg`` are ``[rows, num_chunks]``:
    MAX: stat_a = the chunk's maximum. MASS_ABOVE_MIN_P (after MAX):
    stat_b = its mass at or above ``min_p * row max``. LOGITS (``param`` is the temperature):
    stat_a = the largest logit, stat_b = the sum of ``exp2((x - that logit) * scale)``, stat_arg =
    the first index of that logit."""
    r_ok, rows = tile_rows(num_rows, ROWS)
    chunk = tl.program_id(1)
    row_ptr = x_ptr + rows * stride_row
    cols = tl.arange(0, BLOCK)
    slot = rows * num_chunks + chunk
    if KIND == 3:
        scale, greedy = logit_scale(param_ptr, param_value, rows, PARAM)
        x, idx = logits_chunk(row_ptr, chunk * BLOCK, cols, vocab)
        top = tl.max(x, axis=1)
        top_safe = tl.where(top == -float("inf"), 0.0, top)
        arg = tl.min(tl.where(x == top[:, None], idx[None, :], vocab), axis=1)
        tl.store(stat_a + slot, top, mask=r_ok)
        tl.store(stat_b + slot, tl.sum(tl.exp2((x - top_safe[:, None]) * scale[:, None]), axis=1), mask=r_ok)
        tl.store(stat_arg + slot, arg, mask=r_ok)
    else:
        x, idx = load_chunk(row_ptr, chunk * BLOCK, cols, vocab, 0.0)
        x = tl.where(x > 0.0, x, 0.0)  # NaN and negative entries weigh nothing
        if KIND == 1:
            tl.store(stat_a + slot, tl.max(x, axis=1), mask=r_ok)
        else:
            chunk_max, ch = _row_stats(stat_a, rows, num_chunks, 0.0, NCHUNKS)
            threshold = min_p_of(param_ptr, param_value, rows, PARAM) * tl.max(chunk_max, axis=1)
            tl.store(stat_b + slot, tl.sum(tl.where(x >= threshold[:, None], x, 0.0), axis=1), mask=r_ok)


@thin
@triton.jit
def chunk_draw_kernel(x_ptr, out, valid, indices, stat_a, stat_b, min_p_ptr, min_p_value, seed_ptr, offset_ptr,
                      num_out, num_src, vocab, stride_row, num_chunks, HAS_INDICES: tl.constexpr, KIND: tl.constexpr,
                      MIN_P: tl.constexpr, SEED_PER_ROW: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                      NCHUNKS: tl.constexpr):
    """Pass B: one token per output row, by inverse CDF, from the chunk numbers of its source row.
    The Philox counter of output row r is ``offset + r``. A row with nothing to draw (no positive
    mass, no finite logit, a source row outside the input) gives token 0, invalid.

    Both steps pick only entries of positive weight (kernels.inverse_cdf_pick): a chunk with mass,
    then a token with mass inside it. The two sums that meet here (the chunk weights of pass A and
    this chunk's prefix sums) are rounded differently, so ``u_in`` may fall just outside the chunk's
    prefix sums: below them the first token of mass is taken, above them the last."""
    r, r_ok, r_safe, src, src_ok = program_rows(indices, num_out, num_src, HAS_INDICES, ROWS)
    if KIND == 3:
        scale = tl.full([ROWS], LOG2E, tl.float32)  # temperature 1
        top, top_safe, chunk_max, weight, ch = _logit_totals(stat_a, stat_b, src, num_chunks, scale, NCHUNKS)
        lower = tl.zeros([ROWS], tl.float32)
    else:
        weight, ch = _row_stats(stat_b, src, num_chunks, 0.0, NCHUNKS)
        chunk_max, ch = _row_stats(stat_a, src, num_chunks, 0.0, NCHUNKS)
        # the same float as pass A computed, so the chunk masses and this scan keep the same tokens
        lower = min_p_of(min_p_ptr, min_p_value, src, MIN_P) * tl.max(chunk_max, axis=1)
    total = tl.sum(weight, axis=1)
    seed_index = r_safe if SEED_PER_ROW else tl.zeros([ROWS], tl.int32)
    u = tl.rand(tl.load(seed_ptr + seed_index), tl.load(offset_ptr + seed_index) + r_safe) * total

    chunk, u_in, _ = pick_chunk(weight, ch, u, NCHUNKS)

    idx = (chunk * BLOCK)[:, None] + tl.arange(0, BLOCK)[None, :]
    row_ptr = x_ptr + src * stride_row
    x = tl.load(row_ptr[:, None] + tl.minimum(idx, vocab - 1)).to(tl.float32)
    in_vocab = idx < vocab
    if KIND == 3:
        # weights relative to this chunk's maximum; u_in taken into the same units
        this_max = tl.max(tl.where(ch[None, :] == chunk[:, None], chunk_max, -float("inf")), axis=1)
        this_max = tl.where(this_max == -float("inf"), top_safe, this_max)
        w = tl.where(in_vocab & (x == x), tl.exp2((x - this_max[:, None]) * LOG2E), 0.0)
        u_in = u_in * tl.exp2((top_safe - this_max) * LOG2E)
    else:
        w = tl.where(in_vocab & (x >= lower[:, None]) & (x > 0.0), x, 0.0)
    token = pick_in_chunk(w, idx, u_in, vocab)
    ok = (total > 0.0) & src_ok
    tl.store(out + r, tl.where(ok, token, 0).to(out.dtype.element_ty), mask=r_ok)
    tl.store(valid + r, ok.to(tl.int8), mask=r_ok)


@thin
@triton.jit
def softmax_chunk_kernel(logits, out, stat_a, stat_b, stat_arg, temp_ptr, temp_value, num_rows, vocab, stride_in,
                         stride_out, num_chunks, TEMP: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                         NCHUNKS: tl.constexpr):
    """Softmax's second pass (after chunk_stats_kernel with LOGITS): writes one chunk of
    ``softmax(x / T)``; a greedy row (``T == 0``) gets one-hot at its first maximum, a row with no
    finite logit gets zeros."""
    r_ok, rows = tile_rows(num_rows, ROWS)
    chunk = tl.program_id(1)
    scale, greedy = logit_scale(temp_ptr, temp_value, rows, TEMP)
    top, top_safe, chunk_max, weight, ch = _logit_totals(stat_a, stat_b, rows, num_chunks, scale, NCHUNKS)
    total = tl.sum(weight, axis=1)
    inv_total = tl.where(total > 0.0, 1.0 / tl.where(total > 0.0, total, 1.0), 0.0)
    chunk_arg, ch = _row_stats(stat_arg, rows, num_chunks, vocab, NCHUNKS)
    best = tl.min(tl.where(chunk_max == top[:, None], chunk_arg, vocab), axis=1)

    x, idx = logits_chunk(logits + rows * stride_in, chunk * BLOCK, tl.arange(0, BLOCK), vocab)
    p = tl.exp2((x - top_safe[:, None]) * scale[:, None]) * inv_total[:, None]
    one_hot = tl.where((idx[None, :] == best[:, None]) & (top[:, None] > -float("inf")), 1.0, 0.0)
    p = tl.where(greedy[:, None], one_hot, p)
    tl.store(out + rows[:, None] * stride_out + idx[None, :], p, mask=r_ok[:, None] & (idx < vocab)[None, :])


# Chunk width on the GPU: 4096 fp32 (16 KB) per program, so 128256 is 32 chunks, 201088 is 50.
GPU_BLOCK = 4096
# Which calls take the chunked path on a GPU. From the H200 (op_tests/test_sampling.py and --sweep,
# at ea0ad6d/a548a50): the row kernel (kernels.py, with its sum-first scan) beat this path for plain
# sampling at every shape measured, and for min-p at batch 1 x 128256 and 32 x 32000; this path won
# min-p at 256 x 128256 (102 us against 117), sampling from logits at vocabularies 128256 and 201088
# (1.4-2.9x FlashInfer) but not at 32000 (0.4x), and softmax at every shape but 256 x 32000.
CHUNKED_MIN_P_ROWS, CHUNKED_MIN_VOCAB = 128, 65536
MIN_P_BLOCK = 2048  # min-p at 256 x 128256: 102 us in 2048-wide chunks, 123 in 4096


def chunked_config(vocab: int, rows: int, arch: str, interpreted: bool = False, op: str = "softmax", block: int = 0,
                   num_warps: int = 4):
    """The launch of the chunked path for ``op`` ("min_p", "logits" or "softmax"), or None where one
    program per row is better. Under the CPU interpreter every vocabulary above one chunk takes it
    (chunks are small there, and tiles hold many rows, since the cost is per program), so CI runs
    this path. ``block`` and ``num_warps`` override the defaults (sweeps)."""
    block = block or (256 if interpreted else MIN_P_BLOCK if op == "min_p" else GPU_BLOCK)
    if vocab <= block:
        return None
    if not interpreted and op != "softmax":
        if vocab < CHUNKED_MIN_VOCAB or (op == "min_p" and rows < CHUNKED_MIN_P_ROWS):
            return None
    num_chunks = cdiv(vocab, block)
    tile_rows = min(256, next_pow2(max(rows, 1))) if interpreted else 1
    return {"ROWS": tile_rows, "BLOCK": block, "NCHUNKS": next_pow2(num_chunks),
            "num_chunks": num_chunks, "num_warps": num_warps}


def aot_specs():
    def launch(op):
        cfg = chunked_config(128256, 256, "gfx942", op=op)
        return {"ROWS": cfg["ROWS"], "BLOCK": cfg["BLOCK"], "NCHUNKS": cfg["NCHUNKS"]}, {"num_warps": cfg["num_warps"]}
    ints = {"num_rows": "i32", "vocab": "i32", "stride_row": "i32", "num_chunks": "i32"}
    # min-p's two first passes: no arg-max (stat_arg is stat_a), the row maximum (no parameter: stat_a stands in),
    # then the mass above min-p per row or scalar (the scalar's pointer: stat_a)
    sig = {"x_ptr": "*fp32", "stat_a": "*fp32", "stat_b": "*fp32", "stat_arg": "*fp32", "param_ptr": "*fp32",
           "param_value": "fp32", **ints}
    shape, opts = launch("min_p")
    for kind, param, name in ((MAX, SCALAR, "max"), (MASS_ABOVE_MIN_P, PER_ROW, "min_p"),
                              (MASS_ABOVE_MIN_P, SCALAR, "min_p-scalar")):
        yield KernelSpec(f"chunk_stats[{name}-fp32-block{shape['BLOCK']}]", chunk_stats_kernel, sig,
                         {"KIND": kind, "PARAM": param, **shape}, opts, divisible_by_16=("x_ptr",))
    for dtype in ("fp32", "bf16", "fp16"):  # a softmax's temperature per row or scalar; a draw's is 1 (scalar)
        for param in (PER_ROW, SCALAR):
            yield logits_stats_spec(dtype, chunked_config(128256, 256, "gfx942", op="logits"), param=param)
    for min_p in (PER_ROW, SCALAR):
        yield chunk_draw_spec(MASS_ABOVE_MIN_P, "fp32", chunked_config(128256, 256, "gfx942", op="min_p"), min_p)
    for dtype in ("fp32", "bf16", "fp16"):
        yield chunk_draw_spec(LOGITS, dtype, chunked_config(128256, 256, "gfx942", op="logits"))
    # softmax's own second pass is listed under softmax (logits_kernels.softmax_specs)


def softmax_chunk_spec(dtype: str, cfg: dict, suffix: str = "", temp: int = PER_ROW) -> KernelSpec:
    """Chunked softmax's second pass (the first is chunk_stats of LOGITS) at ``cfg`` (chunked_config's), its
    temperature ``temp`` per row or scalar (whose pointer is stat_a, never read)."""
    shape = {"ROWS": cfg["ROWS"], "BLOCK": cfg["BLOCK"], "NCHUNKS": cfg["NCHUNKS"]}
    sig = {"logits": f"*{dtype}", "out": "*fp32", "stat_a": "*fp32", "stat_b": "*fp32", "stat_arg": "*i32",
           "temp_ptr": "*fp32", "temp_value": "fp32", "num_rows": "i32", "vocab": "i32", "stride_in": "i32",
           "stride_out": "i32", "num_chunks": "i32"}
    label = "-temp1" if temp == SCALAR else ""
    return KernelSpec(f"softmax_chunk[{dtype}-block{shape['BLOCK']}{label}{suffix}]", softmax_chunk_kernel, sig,
                      {"TEMP": temp, **shape}, {"num_warps": cfg["num_warps"]}, divisible_by_16=("logits", "out"))


def chunk_draw_spec(kind: int, dtype: str, cfg: dict, min_p: int = SCALAR, suffix: str = "") -> KernelSpec:
    """chunk_draw of ``kind`` (MASS_ABOVE_MIN_P with ``min_p`` scalar or per row; LOGITS, which passes no min-p:
    SCALAR) at ``cfg`` (chunked_config's): the second pass of chunked.draw_by_chunks."""
    shape = {"ROWS": cfg["ROWS"], "BLOCK": cfg["BLOCK"], "NCHUNKS": cfg["NCHUNKS"]}
    sig = {"x_ptr": f"*{dtype}", "out": "*i32", "valid": "*i8", "indices": "*i32", "stat_a": "*fp32",
           "stat_b": "*fp32", "min_p_ptr": "*fp32", "min_p_value": "fp32", "seed_ptr": "*i64",
           "offset_ptr": "*i64", "num_out": "i32", "num_src": "i32", "vocab": "i32", "stride_row": "i32",
           "num_chunks": "i32"}
    consts = {"HAS_INDICES": False, "KIND": kind, "MIN_P": min_p, "SEED_PER_ROW": False, **shape}
    name = "logits" if kind == LOGITS else "min_p" if min_p == PER_ROW else "min_p-scalar"
    return KernelSpec(f"chunk_draw[{name}-{dtype}-block{shape['BLOCK']}{suffix}]", chunk_draw_kernel, sig, consts,
                      {"num_warps": cfg["num_warps"]}, divisible_by_16=("x_ptr",))


def logits_stats_spec(dtype: str, cfg: dict, suffix: str = "", param: int = PER_ROW) -> KernelSpec:
    """chunk_stats of LOGITS at ``cfg`` (chunked_config's), its temperature ``param`` (PER_ROW: softmax's per-row
    temperature; SCALAR: a draw from logits, at temperature 1): the first pass of a chunked softmax or draw."""
    shape = {"ROWS": cfg["ROWS"], "BLOCK": cfg["BLOCK"], "NCHUNKS": cfg["NCHUNKS"]}
    sig = {"x_ptr": f"*{dtype}", "stat_a": "*fp32", "stat_b": "*fp32", "stat_arg": "*i32", "param_ptr": "*fp32",
           "param_value": "fp32", "num_rows": "i32", "vocab": "i32", "stride_row": "i32", "num_chunks": "i32"}
    temp = "-temp1" if param == SCALAR else ""
    return KernelSpec(f"chunk_stats[logits-{dtype}-block{shape['BLOCK']}{temp}{suffix}]", chunk_stats_kernel, sig,
                      {"KIND": LOGITS, "PARAM": param, **shape}, {"num_warps": cfg["num_warps"]},
                      divisible_by_16=("x_ptr",))


register_aot_specs("sampling", aot_specs)
