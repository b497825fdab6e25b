"""Triton kernel for rotary position embedding (RoPE). Private: called only through ``backends.py``.

One kernel serves every FlashInfer variant through ``tl.constexpr`` flags:

- ``POS_FROM_INDPTR``: a token's position is ``offsets[b] + t - indptr[b]``, its segment ``b`` found by a
  binary search over ``indptr`` inside the kernel (no host work, so the call stays graph-capturable);
  otherwise positions are read from ``pos_ids``.
- ``LLAMA31``: Llama 3.1 frequency scaling (the smooth band); otherwise ``rope_scale`` divides every
  frequency.
- ``COS_SIN_CACHE``: cos/sin are read from a precomputed fp32 ``[max_pos, rotary_dim]`` cache instead of
  being computed.
- ``INTERLEAVE``: GPT-J pairs ``(x[2i], x[2i+1])``; otherwise NeoX halves ``(x[i], x[i + r/2])``.
- ``COPY_PASS``: copy the dims past ``rotary_dim`` (out-of-place calls; in place they are left alone).

A program owns ``BLOCK_T`` tokens x ``BLOCK_H`` heads of either q or k (grid axis 1 enumerates q head
blocks first, then k head blocks). It computes cos/sin once per (token, pair) in fp32 and reuses them
for all its heads (an unrolled loop over 2-D tiles), so the transcendental work is per token and head
block, not per element. The head dim and rotary dim are constexprs (one compile per model shape, as
FlashInfer's templates), which removes the column masks in the common power-of-two case and lets loads
vectorize to 16 bytes (sm_90 PTX for the 8 x 16 x 128 bf16 tile: all q/k accesses are ld/st.v4, 56
registers, no shared memory; gfx942/gfx950: at most 66 VGPRs, no LDS, no scratch).
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace

# Triton itself is imported only when a kernel needs it (core/lazy_triton.py: not for a code object's launch)
from aiter_ext.core.lazy_triton import tl, triton

from aiter_ext.core.aot import KernelSpec, register_aot_specs
from aiter_ext.core.env import interpreted as env_interpreted
from aiter_ext.core.launch import cdiv, next_pow2
from aiter_ext.core.thin import thin


@triton.jit
def _rotate_heads(src, dst, stride_src_t, stride_src_h, stride_dst_t, stride_dst_h,
                  tokens, token_ok, head0, num_heads, cos, sin,
                  HEAD_DIM: tl.constexpr, ROTARY_DIM: tl.constexpr, INTERLEAVE: tl.constexpr,
                  COPY_PASS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr):
    """Rotate heads ``head0 .. head0 + BLOCK_H`` of ``BLOCK_T`` tokens by ``cos``/``sin [BLOCK_T, BLOCK_HALF]``.

    In place (``dst`` = ``src``) is safe: an element is written only by the program that read it, from
    values computed from that read (any move between warps would go through shared memory behind a
    barrier), and no program reads another's elements.
    The head loop is unrolled over 2-D ``[tokens, pairs]`` tiles that share the layout of ``cos``/``sin``:
    a 3-D ``[tokens, heads, pairs]`` tile would make every thread recompute cos/sin for the heads it
    holds, one sin+cos per element, which costs as much ALU time as the whole stream takes.
    """
    HALF: tl.constexpr = ROTARY_DIM // 2
    out_ty = dst.dtype.element_ty
    if INTERLEAVE:
        cols = tl.arange(0, 2 * BLOCK_HALF)[None, :]
        col_ok = cols < ROTARY_DIM
    else:
        cols = tl.arange(0, BLOCK_HALF)[None, :]
        col_ok = cols < HALF
    if COPY_PASS:
        pcols = tl.arange(0, BLOCK_PASS)[None, :]
    # Heads left in this block, as a vector: the interpreter (Triton 3.9) mis-types a mask built from
    # a scalar comparison and a vector.
    heads_left = tl.zeros([BLOCK_T], tl.int32) + (num_heads - head0)
    for i in tl.static_range(BLOCK_H):
        head = head0 + i
        row_ok = (token_ok & (heads_left > i))[:, None]
        src_row = src + tokens[:, None] * stride_src_t + head * stride_src_h
        dst_row = dst + tokens[:, None] * stride_dst_t + head * stride_dst_h
        mask = row_ok
        if (INTERLEAVE and 2 * BLOCK_HALF != ROTARY_DIM) or (not INTERLEAVE and BLOCK_HALF != HALF):
            mask = mask & col_ok
        if INTERLEAVE:
            # The rotary span loads whole (contiguous, vectorizable) and splits into even/odd lanes in
            # registers, rather than two stride-2 gathers.
            x = tl.load(src_row + cols, mask=mask, other=0.0).to(tl.float32)
            x_even, x_odd = tl.split(tl.reshape(x, [BLOCK_T, BLOCK_HALF, 2]))
            out = tl.join(x_even * cos - x_odd * sin, x_odd * cos + x_even * sin)
            tl.store(dst_row + cols, tl.reshape(out, [BLOCK_T, 2 * BLOCK_HALF]).to(out_ty), mask=mask)
        else:
            x1 = tl.load(src_row + cols, mask=mask, other=0.0).to(tl.float32)
            x2 = tl.load(src_row + HALF + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(dst_row + cols, (x1 * cos - x2 * sin).to(out_ty), mask=mask)
            tl.store(dst_row + HALF + cols, (x2 * cos + x1 * sin).to(out_ty), mask=mask)
        if COPY_PASS:
            pmask = row_ok
            if BLOCK_PASS != HEAD_DIM - ROTARY_DIM:
                pmask = pmask & (pcols < HEAD_DIM - ROTARY_DIM)
            xp = tl.load(src_row + ROTARY_DIM + pcols, mask=pmask)
            tl.store(dst_row + ROTARY_DIM + pcols, xp, mask=pmask)


# Sizes that change from call to call are not specialized (Triton would otherwise compile separate
# variants for 1 and for multiples of 16), so decode and prefill share one compiled kernel per shape.
@thin
@triton.jit(do_not_specialize=["num_tokens", "batch_size", "search_steps", "max_position"])
def rope_kernel(
    q, k, q_out, k_out, pos_ids, indptr, offsets, cos_sin_cache,
    num_tokens, num_q_heads, num_k_heads, batch_size, search_steps, max_position,
    stride_q_t, stride_q_h, stride_k_t, stride_k_h,
    stride_qo_t, stride_qo_h, stride_ko_t, stride_ko_h, stride_cache,
    freq_exponent, rcp_scale, smooth_a, smooth_b,
    HEAD_DIM: tl.constexpr, ROTARY_DIM: tl.constexpr, INTERLEAVE: tl.constexpr,
    LLAMA31: tl.constexpr, COS_SIN_CACHE: tl.constexpr, POS_FROM_INDPTR: tl.constexpr,
    COPY_PASS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr,
):
    """q_out, k_out = rope(q, k) at each token's position (see the module docstring for the flags).

    ``freq_exponent = -2 log2(theta) / rotary_dim``, so pair ``i`` has ``freq = 2^(i * freq_exponent)
    = theta^(-2i/rotary_dim)``. ``smooth_a``/``smooth_b`` are Llama 3.1's band:
    ``smooth = clamp(freq * smooth_a + smooth_b, 0, 1)``.
    """
    HALF: tl.constexpr = ROTARY_DIM // 2
    pid_t = tl.program_id(0)
    pid_h = tl.program_id(1)
    tokens = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    token_ok = tokens < num_tokens

    if POS_FROM_INDPTR:
        # Segment of each token: the first b with indptr[b + 1] > t (empty segments are skipped).
        # ``search_steps`` = bit length of batch_size halves [lo, hi) down to one candidate.
        lo = tl.zeros([BLOCK_T], tl.int32)
        hi = tl.zeros([BLOCK_T], tl.int32) + batch_size
        for _ in range(search_steps):
            open_ = lo < hi
            mid = (lo + hi) // 2
            end = tl.load(indptr + mid + 1, mask=token_ok & open_, other=0)
            right = open_ & (end <= tokens)
            lo = tl.where(right, mid + 1, lo)
            hi = tl.where(open_ & ~right, mid, hi)
        seg = tl.minimum(lo, batch_size - 1)  # a token past indptr[-1] (malformed) stays in bounds
        start = tl.load(indptr + seg, mask=token_ok, other=0)
        offset = tl.load(offsets + seg, mask=token_ok, other=0)
        pos = offset + (tokens - start)
    else:
        pos = tl.load(pos_ids + tokens, mask=token_ok, other=0)

    pair = tl.arange(0, BLOCK_HALF)
    if COS_SIN_CACHE:
        # Rows past the cache are clamped so that a bad position cannot read outside it.
        row = tl.minimum(tl.maximum(pos, 0), max_position - 1).to(tl.int64)
        cache_row = cos_sin_cache + row[:, None] * stride_cache + pair[None, :]
        cmask = token_ok[:, None]
        if BLOCK_HALF != HALF:
            cmask = cmask & (pair < HALF)[None, :]
        cos = tl.load(cache_row, mask=cmask, other=1.0)
        sin = tl.load(cache_row + HALF, mask=cmask, other=0.0)
    else:
        freq = tl.exp2(pair.to(tl.float32) * freq_exponent)
        if LLAMA31:
            smooth = tl.minimum(tl.maximum(freq * smooth_a + smooth_b, 0.0), 1.0)
            freq = (1.0 - smooth) * (freq * rcp_scale) + smooth * freq
        else:
            freq = freq * rcp_scale
        angle = pos.to(tl.float32)[:, None] * freq[None, :]
        cos = tl.cos(angle)
        sin = tl.sin(angle)

    tokens64 = tokens.to(tl.int64)  # element offsets of large batches overflow int32
    num_q_blocks = tl.cdiv(num_q_heads, BLOCK_H)
    if pid_h < num_q_blocks:
        _rotate_heads(q, q_out, stride_q_t, stride_q_h, stride_qo_t, stride_qo_h, tokens64, token_ok,
                      pid_h * BLOCK_H, num_q_heads, cos, sin, HEAD_DIM, ROTARY_DIM, INTERLEAVE, COPY_PASS,
                      BLOCK_T, BLOCK_H, BLOCK_HALF, BLOCK_PASS)
    else:
        _rotate_heads(k, k_out, stride_k_t, stride_k_h, stride_ko_t, stride_ko_h, tokens64, token_ok,
                      (pid_h - num_q_blocks) * BLOCK_H, num_k_heads, cos, sin, HEAD_DIM, ROTARY_DIM,
                      INTERLEAVE, COPY_PASS, BLOCK_T, BLOCK_H, BLOCK_HALF, BLOCK_PASS)


# --------------------------------------------------------------------------------------------------
# Launch.

#: Pairs (tokens x rotary pairs) of one head's 2-D tile on a GPU: 1024 over 4 warps is 8 per thread,
#: one 16-byte bf16 access per thread per half of the rotary span.
GPU_TILE_PAIRS = 1024
#: Pairs a program handles over all its heads: 16 KiB of bf16 read at head_dim 128 with 8 heads, and
#: 8192 tokens x 40 heads still give ~2500 programs to fill the chip.
GPU_PROGRAM_PAIRS = 8192
#: Largest 2-D tile (tokens grow this far when a program has fewer than 8 heads): cos, sin and both
#: halves stay under ~64 fp32 registers per thread.
GPU_MAX_TILE_PAIRS = 2048
#: Under the CPU interpreter the cost is per program and per numpy op, not per element: larger tiles.
INTERPRETER_TILE_PAIRS = 16384
MAX_BLOCK_H = 8
#: Below this many tokens a program takes one head (see launch_config).
SMALL_CALL_TOKENS = 1024
#: Pairs of the one-head decode tile: 4 tokens at head_dim 128. cos/sin are computed for every row of
#: the tile, masked or not (sm_90 PTX: ~300 lines an angle, libdevice's precise sin and cos), so a
#: 16-token tile made each thread of a 1-token call compute 8 angles for 1 real token.
GPU_DECODE_TILE_PAIRS = 256
#: Calls of at most this many tokens take the decode tile; up to SMALL_CALL_TOKENS, one head per
#: program with GPU_TILE_PAIRS (16-byte accesses: a 4-token tile over 4 warps gives each thread 4 bytes).
DECODE_TOKENS = 64


@functools.lru_cache(maxsize=4096)  # a dictionary lookup on the hot path
def launch_config(num_tokens: int, num_q_heads: int, num_k_heads: int, rotary_dim: int,
                  interpreted: bool = False, head_dim: int | None = None) -> dict:
    """Tile for one call: ``BLOCK_H`` heads x ``BLOCK_T`` tokens per program, and warps.

    Why this shape: RoPE is a pure stream (every byte read once, written once), so a program should
    move a few KiB with 16-byte accesses, and cos/sin (computed per token) should be shared by as many
    heads as possible. Heads come first: up to 8, a power of two no larger than the smaller head count,
    so that blocks of both q (e.g. 32) and k (e.g. 8) heads are full and none straddles q and k. Tokens
    then give each head's tile ``GPU_TILE_PAIRS`` pairs (more when there are fewer heads, up to
    ``GPU_MAX_TILE_PAIRS``), counting the pass-through span of a partial rotary too (with rotary_dim 2 of
    head_dim 80 the copied span, not the one rotated pair, sets the tile: sized by the pair alone, a
    2048 x 128 copy tile took the GPU compiler minutes).

    Small calls (fewer than ``SMALL_CALL_TOKENS`` tokens, decode) take one head per program instead.
    The head loop is unrolled, but a head's loads are not hoisted above the previous head's stores (q
    may alias q_out), so a program of 8 heads waits for 8 memory round trips in a row: on the H200 at
    1 token that was 4.3 us against FlashInfer's 2.0 (graph replays, wip-issue5). With one head per
    program the round trips overlap across programs (4.3 -> 2.4 us). Up to ``DECODE_TOKENS`` its tile
    is 4 tokens rather than 16 at head_dim 128 (``GPU_DECODE_TILE_PAIRS``: cos/sin are computed for
    masked rows too): 1.81 us at 1 token against FlashInfer's 2.05 (H200, 19c2975). Large calls have enough programs in flight to
    hide them (1.06x FlashInfer at 8192 tokens with 8 heads per program). Three tiles per model shape,
    one compile per size class (decode, small, large). The same rule holds on AMD (the compile check covers the
    tiles it picks at the head dims ``aot_specs`` lists); no per-arch tile is measured yet.
    """
    block_half = next_pow2(max(rotary_dim // 2, 1))
    block_pass = next_pow2(max((head_dim or rotary_dim) - rotary_dim, 1))
    widest = max(block_half, block_pass)  # widest 2-D tile a head's loop body holds, in pairs / elements
    block_h = min(MAX_BLOCK_H, next_pow2(max(1, min(num_q_heads, num_k_heads))))
    if interpreted:  # the interpreter pays for masked rows too
        block_t = max(1, INTERPRETER_TILE_PAIRS // widest)
        block_t = min(block_t, next_pow2(max(num_tokens, 1)))
    else:
        if num_tokens < SMALL_CALL_TOKENS:
            block_h = 1
        if num_tokens <= DECODE_TOKENS:
            pairs = GPU_DECODE_TILE_PAIRS
        elif num_tokens < SMALL_CALL_TOKENS:
            pairs = GPU_TILE_PAIRS
        else:
            pairs = min(GPU_MAX_TILE_PAIRS, max(GPU_TILE_PAIRS, GPU_PROGRAM_PAIRS // block_h))
        block_t = max(1, pairs // widest)
    return {"BLOCK_T": block_t, "BLOCK_H": block_h, "num_warps": 4}


@functools.lru_cache(maxsize=256)  # per call otherwise; a model has one set
def rope_scalars(rotary_dim: int, rope_scale: float, rope_theta: float, llama31) -> tuple[float, float, float, float]:
    """``(freq_exponent, rcp_scale, smooth_a, smooth_b)`` for the kernel; ``llama31`` is
    ``(low_freq_factor, high_freq_factor, old_context_len)`` or None. Computed in float64 here."""
    freq_exponent = -2.0 * math.log2(rope_theta) / rotary_dim
    smooth_a = smooth_b = 0.0
    if llama31 is not None:
        low, high, old_context_len = llama31
        smooth_a = old_context_len / (2.0 * math.pi * (high - low))
        smooth_b = -low / (high - low)
    return freq_exponent, 1.0 / rope_scale, smooth_a, smooth_b


def launch_rope(q, k, q_out, k_out, *, pos_ids, indptr, offsets, cos_sin_cache, rotary_dim: int,
                interleave: bool, rope_scale: float, rope_theta: float, llama31, config: dict) -> None:
    """``q [T, Hq, D]``, ``k [T, Hk, D]`` (last dim contiguous, other strides free) into ``q_out``/``k_out``
    (which may be ``q``/``k`` themselves). Positions from ``pos_ids [T]`` or ``indptr``/``offsets``."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_k_heads = k.shape[1]
    if num_tokens == 0:
        return
    interpreted = env_interpreted()
    cfg = {**launch_config(num_tokens, num_q_heads, num_k_heads, rotary_dim, interpreted, head_dim),
           **config}
    block_h = cfg["BLOCK_H"]
    grid = (cdiv(num_tokens, cfg["BLOCK_T"]), cdiv(num_q_heads, block_h) + cdiv(num_k_heads, block_h))
    freq_exponent, rcp_scale, smooth_a, smooth_b = (0.0, 1.0, 0.0, 0.0) if cos_sin_cache is not None else \
        rope_scalars(rotary_dim, rope_scale, rope_theta, llama31)
    from_indptr = indptr is not None
    batch_size = indptr.shape[0] - 1 if from_indptr else 0
    copy_pass = rotary_dim < head_dim and q_out.data_ptr() != q.data_ptr()
    dummy = q  # stands in for pointers a flag leaves unused
    rope_kernel[grid](
        q, k, q_out, k_out,
        pos_ids if pos_ids is not None else dummy, indptr if from_indptr else dummy,
        offsets if from_indptr else dummy, cos_sin_cache if cos_sin_cache is not None else dummy,
        num_tokens, num_q_heads, num_k_heads, batch_size, max(batch_size, 1).bit_length(),
        cos_sin_cache.shape[0] if cos_sin_cache is not None else 1,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
        cos_sin_cache.stride(0) if cos_sin_cache is not None else 0,
        freq_exponent, rcp_scale, smooth_a, smooth_b,
        HEAD_DIM=head_dim, ROTARY_DIM=rotary_dim, INTERLEAVE=interleave, LLAMA31=llama31 is not None,
        COS_SIN_CACHE=cos_sin_cache is not None, POS_FROM_INDPTR=from_indptr, COPY_PASS=copy_pass,
        BLOCK_T=cfg["BLOCK_T"], BLOCK_H=block_h, BLOCK_HALF=next_pow2(rotary_dim // 2),
        BLOCK_PASS=next_pow2(max(head_dim - rotary_dim, 1)),
        num_warps=cfg["num_warps"],
    )


# --------------------------------------------------------------------------------------------------
# What `aiter-ext aot --check` compiles for gfx942/gfx950: the tile ``launch_config`` picks, at the
# head dims we serve, for every flag combination in bf16; fp16 once per head dim (same code, 2-byte
# loads); every head block size (1, 2, 4, 8: MQA to GQA) at head_dim 128; partial rotary with the
# pass-through copy; and the decode tile (one head per program) of each.

AOT_HEAD_DIMS = (64, 128, 256)
#: (name, LLAMA31, COS_SIN_CACHE, POS_FROM_INDPTR)
AOT_VARIANTS = (
    ("rope", False, False, True), ("rope_pos_ids", False, False, False), ("llama31", True, False, True),
    ("llama31_pos_ids", True, False, False), ("cos_sin_cache", False, True, False),
)


def _spec(dtype, head_dim, rotary_dim, variant, interleave, copy_pass, block_h, num_tokens=8192, heads=None,
          config=None):
    """One variant at the tile launch_config picks for ``num_tokens`` tokens of ``heads`` (q, k) heads, with a
    tuned row's ``config`` over it."""
    name, llama31, cache, from_indptr = variant
    heads = heads or ((32, 8) if block_h == 8 or num_tokens < SMALL_CALL_TOKENS else (block_h, block_h))
    cfg = {**launch_config(num_tokens, *heads, rotary_dim, head_dim=head_dim), **(config or {})}
    assert cfg["BLOCK_H"] == block_h
    ptr = f"*{dtype}"
    sig = {"q": ptr, "k": ptr, "q_out": ptr, "k_out": ptr, "pos_ids": ptr if from_indptr else "*i64",
           "indptr": "*i32" if from_indptr else ptr, "offsets": "*i32" if from_indptr else ptr,
           "cos_sin_cache": "*fp32" if cache else ptr}
    sig.update({n: "i32" for n in ("num_tokens", "num_q_heads", "num_k_heads", "batch_size", "search_steps",
                                   "max_position", "stride_q_t", "stride_q_h", "stride_k_t", "stride_k_h",
                                   "stride_qo_t", "stride_qo_h", "stride_ko_t", "stride_ko_h", "stride_cache")})
    sig.update({n: "fp32" for n in ("freq_exponent", "rcp_scale", "smooth_a", "smooth_b")})
    consts = {"HEAD_DIM": head_dim, "ROTARY_DIM": rotary_dim, "INTERLEAVE": interleave, "LLAMA31": llama31,
              "COS_SIN_CACHE": cache, "POS_FROM_INDPTR": from_indptr, "COPY_PASS": copy_pass,
              "BLOCK_T": cfg["BLOCK_T"], "BLOCK_H": block_h, "BLOCK_HALF": next_pow2(rotary_dim // 2),
              "BLOCK_PASS": next_pow2(max(head_dim - rotary_dim, 1))}
    aligned = tuple(n for n, t in sig.items() if t.startswith("*") or n.startswith("stride"))
    tag = (f"{name}{'-interleave' if interleave else ''}{'-pass' if copy_pass else ''}-{dtype}-d{head_dim}"
           f"-r{rotary_dim}-t{cfg['BLOCK_T']}h{block_h}w{cfg['num_warps']}")
    return KernelSpec(f"rope[{tag}]", rope_kernel, sig, consts, {"num_warps": cfg["num_warps"]},
                      divisible_by_16=aligned)


def _tuned_specs(arch: str):
    """Every variant, plain and interleaved, at the tile of each Triton row of the tuned CSV measured on ``arch``
    (a row serves every RoPE form at its head count and dim)."""
    from aiter_ext.core.tuned import measured_configs

    for row, config in measured_configs("rope", arch):
        # {}: the heuristic's tile, which the defaults hold. A row names the whole tile (TRITON_TUNE_CONFIGS):
        # one naming part of it would leave the rest to the q/k split of heads, which the row does not keep.
        if not {"BLOCK_T", "BLOCK_H", "num_warps"} <= set(config):
            continue
        head_dim, block_h = int(row["head_dim"]), config["BLOCK_H"]
        for variant in AOT_VARIANTS:
            for interleave in (False, True):
                yield _spec(row["dtype"], head_dim, head_dim, variant, interleave, False, block_h,
                            int(row["num_tokens"]), (block_h, block_h), config)


def _with_int32_positions(spec: KernelSpec) -> KernelSpec:
    """``spec`` for positions given as int32 (FlashInfer's pos_ids may be int32 or int64; the kernel reads either)."""
    return replace(spec, name=spec.name[:-1] + "-pos32]", signature={**spec.signature, "pos_ids": "*i32"})


def aot_specs(arch: str = "gfx942"):
    """The default tiles (the same on every arch: no per-arch tile is measured yet), and those of the tuned rows
    measured on ``arch``; each variant that reads position ids, for int64 and int32 ids."""
    seen = set()
    for spec in (*_default_specs(), *_tuned_specs(arch)):
        for form in (spec, _with_int32_positions(spec)) if spec.signature["pos_ids"] == "*i64" else (spec,):
            if form.name not in seen:
                seen.add(form.name)
                yield form


def _default_specs():
    for head_dim in AOT_HEAD_DIMS:
        for variant in AOT_VARIANTS:
            for interleave in (False, True):
                yield _spec("bf16", head_dim, head_dim, variant, interleave, False, 8)
                yield _spec("bf16", head_dim, head_dim, variant, interleave, False, 1, num_tokens=1)  # decode
                yield _spec("bf16", head_dim, head_dim, variant, interleave, False, 1, num_tokens=512)
        yield _spec("fp16", head_dim, head_dim, AOT_VARIANTS[2], False, False, 8)
    for block_h in (1, 2, 4):
        for interleave in (False, True):
            yield _spec("bf16", 128, 128, AOT_VARIANTS[2], interleave, False, block_h)
    for variant in (AOT_VARIANTS[2], AOT_VARIANTS[4]):
        for interleave in (False, True):
            yield _spec("bf16", 128, 64, variant, interleave, True, 8)
            yield _spec("bf16", 128, 64, variant, interleave, True, 1, num_tokens=1)
            yield _spec("bf16", 128, 64, variant, interleave, True, 1, num_tokens=512)


register_aot_specs("rope", aot_specs)
