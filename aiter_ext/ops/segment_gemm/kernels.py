"""The segment GEMM kernel: one program per (row tile, column tile) of the segments' output.

Segment bounds live on the device (a serving engine's ``seg_indptr`` and ``weight_indices`` are device
tensors, and a CUDA graph must not read them back), so the host sizes the grid by a bound: at most
``cdiv(num_rows, BLOCK_M) + batch`` row tiles (each segment adds at most one partial tile). Program p
finds its tile's segment from the running sum of the segments' tile counts, read in chunks of
``SEG_CHUNK`` (vectors, no serial walk), and programs past the real tile count exit at once.

Why not a persistent grid walking the segments: that was the first form (until this was measured), and its
K loop, nested two dynamic loops deep, lost Triton's software pipelining. On an H100 a rank-16 shrink of x
[4096, 4096] in 8 segments took 149.6 us that way and 22.4 us with the K loop at the top level, as here.
"""

from __future__ import annotations

import torch
# Triton itself is imported only when a kernel needs it (core/lazy_triton.py: not for a code object's launch)
from aiter_ext.core.lazy_triton import tl, triton

from aiter_ext.core.aot import KernelSpec, register_aot_specs
from aiter_ext.core.launch import cdiv, next_pow2
from aiter_ext.core.thin import thin


@thin
@triton.jit
def segment_gemm_kernel(x, w, y, seg_indptr, weight_indices, row_index, scale, batch, num_rows, num_weights,
                        ranks, scales, x_slice,
                        D_IN: tl.constexpr, D_OUT: tl.constexpr, Y_STRIDE: tl.constexpr, W_COL_MAJOR: tl.constexpr,
                        HAS_INDICES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, ROW_INDICES: tl.constexpr = False, SKIP_NEGATIVE: tl.constexpr = False,
                        ACCUMULATE: tl.constexpr = False, SCALE: tl.constexpr = False, SEG_CHUNK: tl.constexpr = 64,
                        SPLIT_K: tl.constexpr = 1, SLICES: tl.constexpr = 1, PARTIALS: tl.constexpr = False,
                        SUM_PARTIALS: tl.constexpr = 0, SEG_LENS: tl.constexpr = False, X_STRIDE: tl.constexpr = 0,
                        W_STRIDE: tl.constexpr = 0, ADAPTER_RANKS: tl.constexpr = False, RANK_K: tl.constexpr = False):
    """x ``[num_rows, D_IN]`` (rows ``X_STRIDE`` apart), weights ``[num_weights, D_OUT, D_IN]`` (W_COL_MAJOR) or
    ``[num_weights, D_IN, D_OUT]`` (``W_STRIDE`` apart, each contiguous); y rows of ``Y_STRIDE`` elements
    (D_OUT of them written). The sizes are constexpr
    on purpose: a model has a few, and scalar arguments spilled SGPRs on gfx942; as constants they also
    turn every stride into an immediate and drop the K masks when BLOCK_K divides D_IN.

    The LoRA forms (lora.py): ``ROW_INDICES``: segment positions index ``row_index`` (vLLM's tokens sorted by
    adapter), whose values are the x and y rows; ``SKIP_NEGATIVE``: a segment whose weight index is -1
    (no adapter) has no tiles; ``ACCUMULATE``: y += the product; ``SCALE``: the product times ``scale``.

    ``SPLIT_K`` > 1: program axis 2 splits D_IN, and each split adds its partial product into y with fp32
    atomics (y is fp32 and holds what the sum adds to: zeros for a plain product, as LoRA shrink's buffer).
    A skinny product (a LoRA shrink: rank 16 out of 4096) has few row tiles; the splits fill the GPU.
    A 16-bit y (FlashInfer's form) takes two launches over one workspace instead: ``PARTIALS``, where split
    s stores its fp32 product in slab s of y ``[SPLIT_K, num_rows, D_OUT]``; then ``SUM_PARTIALS`` = the
    split count, where x is those slabs and each program sums its tile's rows of them (no K loop) and
    writes y as a one-split launch would. Both launches map tiles to rows alike, so the second reads
    exactly what the first wrote, and nothing needs zeroing.

    ``X_STRIDE`` / ``W_STRIDE``: x's row stride and the elements from one weight to the next (launch() passes
    D_IN and D_IN * D_OUT unless x or the weights are slices of wider tensors).

    SGLang's LoRA forms (per-adapter tables, indexed by the weight index): ``ADAPTER_RANKS``: a segment whose
    adapter's rank (``ranks``) is 0 has no work; ``RANK_K``: K runs over the adapter's rank only, x's columns
    start at ``x_slice`` times that rank (slice j of a stacked LoRA-A output, packed by rank), and the
    product is scaled by the adapter's ``scales`` entry.

    ``SEG_LENS``: ``seg_indptr`` holds the segments' lengths (FlashInfer's ``seg_lens``), summed here as the
    search walks them, so a call given lengths launches no cumulative sum of its own.

    ``SLICES`` > 1 (LoRA shrink of fused QKV or gate/up: the same x against several weights of one shape):
    ``w`` is an int64 table of the slices' weight addresses (x's dtype), y holds the slices' outputs one
    after another (``num_rows`` rows each), and program axis 2 runs slice by split: one launch for all."""
    tile = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < D_OUT
    # this tile's segment: the one whose tiles [before, before + tiles) hold `tile`
    lane = tl.arange(0, SEG_CHUNK)
    numbered = tile * 0  # tiles of the chunks before this one (an i32, as the loop carries it)
    seg = tile * 0 - 1
    first = tile * 0  # this segment's first tile number
    seg_start = tile.to(tl.int64) * 0  # the hit segment's rows [seg_start, seg_end)
    seg_end = seg_start
    ends = seg_start  # SEG_LENS: rows of the chunks before this one
    for c in range(0, batch, SEG_CHUNK):
        s = c + lane
        ok = s < batch
        if SEG_LENS:
            length = tl.maximum(tl.load(seg_indptr + s, mask=ok, other=0).to(tl.int64), 0)
            end = ends + tl.cumsum(length, 0)
            start = end - length
            ends += tl.sum(length, 0)
        else:
            start = tl.maximum(tl.load(seg_indptr + s, mask=ok, other=0).to(tl.int64), 0)
            end = tl.maximum(tl.load(seg_indptr + s + 1, mask=ok, other=0).to(tl.int64), start)
        # a segment starts and ends inside x whatever the device tables say (rows past num_rows are never read)
        start = tl.minimum(start, num_rows)
        end = tl.minimum(end, num_rows)
        tiles = tl.where(ok, tl.cdiv(end - start, BLOCK_M), 0).to(tl.int32)
        if SKIP_NEGATIVE:
            tiles = tl.where(tl.load(weight_indices + s, mask=ok, other=0) < 0, 0, tiles)
        after = numbered + tl.cumsum(tiles, 0)
        hit = (after - tiles <= tile) & (tile < after)  # at most one lane, in at most one chunk
        seg += tl.sum(tl.where(hit, s + 1, 0), 0)
        first += tl.sum(tl.where(hit, after - tiles, 0), 0)
        seg_start += tl.sum(tl.where(hit, start, 0), 0)
        seg_end += tl.sum(tl.where(hit, end, 0), 0)
        numbered += tl.sum(tiles, 0)
    if seg < 0:  # past the last real tile
        return
    start = seg_start
    end = seg_end
    index = seg
    if HAS_INDICES:
        index = tl.load(weight_indices + seg).to(tl.int32)
    # device indices are clamped into the weights (api.py checks host ones and says so)
    index = tl.minimum(tl.maximum(index, 0), num_weights - 1)
    k_end = D_IN  # K's extent for this segment (RANK_K: the adapter's rank)
    x_first = 0  # x's first column (RANK_K: x_slice ranks in)
    if ADAPTER_RANKS:
        rank = tl.minimum(tl.load(ranks + index), D_IN)
        if rank <= 0:
            return
        if RANK_K:
            k_end = rank
            x_first = x_slice * rank
            scale = tl.load(scales + index)
    z = tl.program_id(2)
    if SLICES > 1:  # this slice's weights and output
        w = tl.load(w + z // SPLIT_K).to(tl.pointer_type(x.dtype.element_ty))
        y += (z // SPLIT_K).to(tl.int64) * num_rows * Y_STRIDE
    w_seg = w + index.to(tl.int64) * W_STRIDE
    x_row = x + x_first
    if W_COL_MAJOR:  # element (k, n) of a weight
        stride_k: tl.constexpr = 1
        stride_n: tl.constexpr = D_IN
    else:
        stride_k: tl.constexpr = D_OUT
        stride_n: tl.constexpr = 1
    rows = start + (tile - first) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < end
    if ROW_INDICES:  # device values: kept inside x and y
        rows = tl.load(row_index + rows, mask=row_ok, other=0).to(tl.int64)
        rows = tl.minimum(tl.maximum(rows, 0), num_rows - 1)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    if SUM_PARTIALS > 0:  # x: the PARTIALS launch's slabs
        slab = tl.full([], 0, tl.int64) + num_rows
        for s in tl.static_range(SUM_PARTIALS):
            acc += tl.load(x + (s * slab + rows[:, None]) * D_OUT + cols[None, :],
                           mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    else:
        K_SPAN: tl.constexpr = D_IN // SPLIT_K  # launch() checks that the splits are whole K steps
        k_first = (z % SPLIT_K) * K_SPAN
        for k0 in range(k_first, k_first + K_SPAN, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            if D_IN % BLOCK_K == 0 and not RANK_K:
                x_tile = tl.load(x_row + rows[:, None] * X_STRIDE + ks[None, :], mask=row_ok[:, None], other=0.0)
                w_tile = tl.load(w_seg + ks[:, None] * stride_k + cols[None, :] * stride_n, mask=col_ok[None, :],
                                 other=0.0)
            else:
                k_ok = ks < k_end
                x_tile = tl.load(x_row + rows[:, None] * X_STRIDE + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                                 other=0.0)
                w_tile = tl.load(w_seg + ks[:, None] * stride_k + cols[None, :] * stride_n,
                                 mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            acc += tl.dot(x_tile.to(w_tile.dtype), w_tile)  # LoRA expand: fp32 x, 16-bit weights
    if PARTIALS:  # this split's slab, summed by the SUM_PARTIALS launch
        y_tile = y + ((z % SPLIT_K).to(tl.int64) * num_rows + rows[:, None]) * Y_STRIDE + cols[None, :]
        tl.store(y_tile, acc, mask=row_ok[:, None] & col_ok[None, :])
        return
    if SCALE or RANK_K:
        acc *= scale
    y_tile = y + rows[:, None] * Y_STRIDE + cols[None, :]
    if SPLIT_K > 1:
        tl.atomic_add(y_tile, acc, mask=row_ok[:, None] & col_ok[None, :], sem="relaxed")
    else:
        if ACCUMULATE:
            acc += tl.load(y_tile, mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        tl.store(y_tile, acc.to(y.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def default_config(d_in: int, d_out: int) -> dict:
    """Untuned (no GPU run yet): 64-row tiles, column tiles of d_out up to 128 (a LoRA rank fits one),
    K steps of 64 (of d_in when smaller); 8 warps for 128-wide tiles (gfx942: 118 VGPRs and 4 waves, where 4 warps took 182
    and 2)."""
    block_n = min(128, max(16, next_pow2(d_out)))
    block_k = min(64, max(16, next_pow2(d_in)))  # a LoRA expand's K is its rank
    return {"BLOCK_M": 64, "BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": 8 if block_n >= 128 else 4}


def split_k(num_rows: int, d_in: int, d_out: int, config: dict, cu_num: int, *, slabs: bool = False) -> int:
    """K splits (SPLIT_K) for a product of few output tiles: a rank-16 shrink of a few thousand tokens is a
    handful of row tiles, each reading the whole hidden size in turn, on a GPU of 100-300 compute units.
    Split until the tiles times the splits reach two programs per compute unit, each split keeping at
    least 4 K steps, in powers of two up to 16 (the row tiles counted as whole tiles of the rows: segments'
    partial tiles are not known on the host). ``slabs`` (a 16-bit output: the
    splits go through fp32 slabs, written and read again) also keeps the slabs' traffic within 1/8 of
    x's: a rank-64 shrink split 8 ways moved 16 MB of slabs beside 33.5 MB of x and lost to no split on an
    H100. A config's own SPLIT_K (a tuned row) wins where d_in holds it in whole K steps (else 1)."""
    cfg = {**default_config(d_in, d_out), **config}
    if "SPLIT_K" in config:
        return int(config["SPLIT_K"]) if d_in % (int(config["SPLIT_K"]) * cfg["BLOCK_K"]) == 0 else 1
    tiles = cdiv(num_rows, cfg["BLOCK_M"]) * cdiv(d_out, cfg["BLOCK_N"])
    split = 1
    while split < 16 and tiles * split < 2 * cu_num and d_in % (2 * split * cfg["BLOCK_K"] * 4) == 0 and \
            (not slabs or 32 * 2 * split * d_out <= d_in):
        split *= 2
    return split


def partials_bytes(split: int, num_rows: int, d_out: int) -> int:
    """Workspace that a 16-bit output split ``split`` ways needs: one fp32 slab of the output per split."""
    return split * num_rows * d_out * 4 if split > 1 else 0


def launch(x, weights, y, seg_indptr, weight_indices, batch: int, weight_column_major: bool, config: dict, *,
           row_index=None, skip_negative: bool = False, accumulate: bool = False,
           scale: float | None = None, weight_table=None, workspace=None, seg_lens: bool = False,
           ranks=None, scales=None, x_slice: int | None = None) -> None:
    """``y`` may be a column slice of a wider row-major tensor (LoRA expand's output slices); ``x`` and the
    weights may be slices too (rows of a wider x, SGLang's QKV LoRA-B slices), their innermost dimension
    contiguous.
    ``weight_table`` (SLICES): int64 addresses of several weights shaped as ``weights`` (which gives the
    shape), and y ``[slices, rows, d_out]`` contiguous. A config's SPLIT_K > 1 adds into an fp32 y with
    atomics, or, for a 16-bit y, goes through ``workspace`` (bytes, at least ``partials_bytes``).
    ``seg_lens``: ``seg_indptr`` holds the segments' lengths instead (SEG_LENS). ``ranks`` (per weight):
    rank-0 weights' segments do nothing (ADAPTER_RANKS); with ``scales`` and ``x_slice`` too, K runs over
    the rank, from x's column ``x_slice * rank``, scaled per weight (RANK_K)."""
    d_in = weights.shape[2] if weight_column_major else weights.shape[1]
    d_out = y.shape[-1]
    inner = (d_in, 1) if weight_column_major else (d_out, 1)
    if x.stride(-1) != 1 or tuple(weights.stride()[1:]) != inner:
        raise ValueError(f"x and each weight must be contiguous in their rows (x strides {x.stride()}, weights "
                         f"{weights.stride()})")
    slices = 1 if weight_table is None else weight_table.shape[0]
    if slices > 1 and (y.dim() != 3 or y.shape[0] != slices or not y.is_contiguous()):
        raise ValueError(f"a weight table of {slices} slices needs y [slices, rows, d_out] contiguous, got "
                         f"{tuple(y.shape)}")
    cfg = {**default_config(d_in, d_out), **(config or {})}
    split = cfg.get("SPLIT_K", 1)
    if split > 1 and d_in % (split * cfg["BLOCK_K"]):
        raise ValueError(f"SPLIT_K={split} needs d_in ({d_in}) in whole K steps of {cfg['BLOCK_K']} per split")
    if x_slice is not None and (ranks is None or scales is None):
        raise ValueError("x_slice (RANK_K) needs the per-weight ranks and scales")
    partials = split > 1 and y.dtype != torch.float32
    if partials and (slices > 1 or workspace is None or workspace.numel() < partials_bytes(split, x.shape[0], d_out)):
        raise ValueError(f"SPLIT_K={split} into a {y.dtype} y needs one slice and a workspace of "
                         f"{partials_bytes(split, x.shape[0], d_out)} bytes")
    grid = (cdiv(x.shape[0], cfg["BLOCK_M"]) + batch,  # every segment adds at most one partial tile
            cdiv(d_out, cfg["BLOCK_N"]), slices * split)
    args = dict(seg_indptr=seg_indptr, weight_indices=weight_indices if weight_indices is not None else seg_indptr,
                row_index=row_index if row_index is not None else seg_indptr, scale=float(scale or 1.0),
                batch=batch, num_rows=x.shape[0], num_weights=weights.shape[0],
                ranks=ranks if ranks is not None else seg_indptr, scales=scales if scales is not None else seg_indptr,
                x_slice=x_slice or 0)
    flags = dict(D_IN=d_in, D_OUT=d_out, W_COL_MAJOR=weight_column_major, HAS_INDICES=weight_indices is not None,
                 BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
                 ROW_INDICES=row_index is not None, SKIP_NEGATIVE=skip_negative, SEG_LENS=seg_lens,
                 X_STRIDE=x.stride(0), W_STRIDE=weights.stride(0), ADAPTER_RANKS=ranks is not None,
                 RANK_K=x_slice is not None,
                 num_warps=cfg["num_warps"])
    w = weights if slices == 1 else weight_table
    if not partials:
        segment_gemm_kernel[grid](x, w, y, **args, Y_STRIDE=y.stride(-2), ACCUMULATE=accumulate,
                                  SCALE=scale is not None, SPLIT_K=split, SLICES=slices, **flags)
        return
    slabs = workspace[:partials_bytes(split, x.shape[0], d_out)].view(torch.float32).view(split, x.shape[0], d_out)
    segment_gemm_kernel[grid](x, w, slabs, **args, Y_STRIDE=d_out, SPLIT_K=split, PARTIALS=True, **flags)
    segment_gemm_kernel[grid[:2] + (1,)](slabs, w, y, **args, Y_STRIDE=y.stride(-2), ACCUMULATE=accumulate,
                                         SCALE=scale is not None, SUM_PARTIALS=split, **flags)


def _spec(name: str, d_in: int, d_out: int, cfg: dict, types: dict, flags: dict, label: str = "default"):
    """One compile-check entry: the kernel's every constexpr at its default unless ``flags`` sets it."""
    consts = {"D_IN": d_in, "D_OUT": d_out, "Y_STRIDE": d_out, "W_COL_MAJOR": True, "HAS_INDICES": True,
              "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"], "ROW_INDICES": False,
              "SKIP_NEGATIVE": False, "ACCUMULATE": False, "SCALE": False, "SEG_CHUNK": 64, "SPLIT_K": 1,
              "SLICES": 1, "PARTIALS": False, "SUM_PARTIALS": 0, "SEG_LENS": False, "X_STRIDE": d_in,
              "W_STRIDE": d_in * d_out, "ADAPTER_RANKS": False, "RANK_K": False, **flags}
    signature = {"x": "*bf16", "w": "*bf16", "y": "*bf16", "seg_indptr": "*i64", "weight_indices": "*i64",
                 "row_index": "*i64", "scale": "fp32", "batch": "i32", "num_rows": "i32", "num_weights": "i32",
                 "ranks": "*i32", "scales": "*fp32", "x_slice": "i32", **types}
    # an optional table a launch leaves out is seg_indptr (launch_segment_gemm's stand-in, never read)
    for pointer, used in (("weight_indices", consts["HAS_INDICES"]), ("row_index", consts["ROW_INDICES"]),
                          ("ranks", consts["ADAPTER_RANKS"]), ("scales", consts["RANK_K"])):
        if not used and pointer not in types:
            signature[pointer] = signature["seg_indptr"]
    return KernelSpec(f"segment_gemm[{name}-{d_in}x{d_out}-m{cfg['BLOCK_M']}n{cfg['BLOCK_N']}k{cfg['BLOCK_K']}"
                      f"w{cfg['num_warps']}]", segment_gemm_kernel, signature, consts, {"num_warps": cfg["num_warps"]},
                      config_label=label, uses_dot=not consts["SUM_PARTIALS"],  # the slabs' sum has no dot
                      divisible_by_16=("x", "w", "y", "seg_indptr", "weight_indices", "row_index", "ranks", "scales"))


def aot_specs():
    """Llama-3.1-8B LoRA shapes: a rank-16 shrink (4096 -> 16) and its expand (16 -> 4096), both weight
    layouts, and a square 4096 segment GEMM; the tuning candidates; the LoRA forms."""
    for dtype in ("bf16", "fp16"):
        for d_in, d_out in ((4096, 16), (16, 4096), (4096, 4096)):
            for col_major in (False, True):
                # weight_indices with seg_indptr or seg_lens (punica's LoRA), and seg_lens alone (FlashInfer's
                # SegmentGEMMWrapper.run without weight_indices)
                for indices, lens, form in ((True, False, ""), (True, True, "-seglens"), (False, True, "-seglens-noidx")):
                    yield _spec(f"{dtype}{'-colmajor' if col_major else ''}{form}", d_in, d_out,
                                default_config(d_in, d_out), {"x": f"*{dtype}", "w": f"*{dtype}", "y": f"*{dtype}"},
                                {"W_COL_MAJOR": col_major, "HAS_INDICES": indices, "SEG_LENS": lens})
    # every tuning candidate (backends.TRITON_TUNE_CONFIGS) at a shrink, an expand and a square shape, and at
    # the shrink its two K-split launches into a 16-bit output (fp32 slabs, then their sum)
    from .backends import TRITON_TUNE_CONFIGS

    for cfg in TRITON_TUNE_CONFIGS:
        label = f"m{cfg['BLOCK_M']}n{cfg['BLOCK_N']}k{cfg['BLOCK_K']}w{cfg['num_warps']}s{cfg.get('SPLIT_K', 'auto')}"
        for d_in, d_out in ((4096, 16), (16, 4096), (4096, 4096)):
            yield _spec("bf16-colmajor", d_in, d_out, cfg, {}, {}, label)
        split = cfg.get("SPLIT_K", 4)
        if split > 1:
            yield _spec(f"bf16-split{split}-partials", 4096, 16, cfg, {"y": "*fp32"},
                        {"SPLIT_K": split, "PARTIALS": True}, label)
            yield _spec(f"bf16-split{split}-sum", 4096, 16, cfg, {"x": "*fp32"}, {"SUM_PARTIALS": split}, label)
    # the untuned shrink's splits as split_k picks them on 100-300 compute units, given seg_indptr or
    # seg_lens (SEG_LENS)
    for split in (8, 16):
        cfg = default_config(4096, 16)
        for lens in (False, True):
            form = "-seglens" if lens else ""
            yield _spec(f"bf16-split{split}{form}-partials", 4096, 16, cfg, {"y": "*fp32"},
                        {"SPLIT_K": split, "PARTIALS": True, "SEG_LENS": lens})
            yield _spec(f"bf16-split{split}{form}-sum", 4096, 16, cfg, {"x": "*fp32"},
                        {"SUM_PARTIALS": split, "SEG_LENS": lens})
    # vLLM-style LoRA (lora.py): rank-16 shrink of 4096 into an fp32 buffer, scaled, and the expand of it
    # into a fused-QKV output (6144 wide: q 4096, k and v 1024) at the q slice, accumulated (the shrink also
    # split over K, as split_k picks for few tokens, and over 3 QKV slices in one launch: w is then the
    # int64 table of the slices' weight addresses). vLLM's metadata tables are int32 and reach the kernel
    # as they are.
    shrink = {"SCALE": True, "ACCUMULATE": False}
    lora = {"seg_indptr": "*i32", "weight_indices": "*i32", "row_index": "*i32"}
    for name, d_in, d_out, y_stride, x_dtype, y_dtype, flags in (
            ("shrink", 4096, 16, 16, "bf16", "fp32", shrink),
            ("shrink-split4", 4096, 16, 16, "bf16", "fp32", {**shrink, "SPLIT_K": 4}),
            ("shrink-split16", 4096, 16, 16, "bf16", "fp32", {**shrink, "SPLIT_K": 16}),
            ("shrink-3slices-split16", 4096, 16, 16, "bf16", "fp32", {**shrink, "SPLIT_K": 16, "SLICES": 3}),
            ("expand", 16, 4096, 6144, "fp32", "bf16", {"SCALE": False, "ACCUMULATE": True})):
        types = {**lora, "x": f"*{x_dtype}", "y": f"*{y_dtype}",
                 "w": "*i64" if flags.get("SLICES", 1) > 1 else "*bf16"}
        yield _spec(f"lora-{name}", d_in, d_out, default_config(d_in, d_out), types,
                    {"Y_STRIDE": y_stride, "ROW_INDICES": True, "SKIP_NEGATIVE": True, **flags})
    # SGLang's LoRA forms (integrations/sglang/lora.py), Llama-3.1-8B QKV at max rank 16: the stacked A
    # (3 x 16 rows) over tokens gathered by its permutation, skipping rank-0 adapters; then B's q slice (4096
    # of the 6144 fused outputs) over the adapter's rank of A's output, scaled, added into the base output
    sglang = {"seg_indptr": "*i32", "weight_indices": "*i32", "row_index": "*i32"}
    yield _spec("sglang-a", 4096, 48, default_config(4096, 48), sglang, {"ROW_INDICES": True, "ADAPTER_RANKS": True})
    yield _spec("sglang-b", 16, 4096, default_config(16, 4096), sglang,
                {"ROW_INDICES": True, "ADAPTER_RANKS": True, "RANK_K": True, "ACCUMULATE": True, "X_STRIDE": 48,
                 "W_STRIDE": 6144 * 16, "Y_STRIDE": 6144})


register_aot_specs("segment_gemm", aot_specs)
