"""Triton kernels for attention-state merging. Private: called only through ``backends.py``.

Both kernels view states as rows: row ``r`` is (token ``r // H``, head ``r % H``) holding ``D`` values
and one fp32 LSE. One program merges a tile of ``BLOCK_R`` rows x ``BLOCK_D`` columns, so that it
moves several KiB: one program per (token, head) moves 0.5 KiB and was seen to stall at about 12%
of bandwidth on MI350X (vllm#56954).

Only the token stride is free; heads and head_dim must be packed (the API checks this), which keeps
the address arithmetic to one multiply-add per row.
"""

from __future__ import annotations

# Triton itself is imported only when a kernel needs it (core/lazy_triton.py: not for a code object's launch)
from aiter_ext.core.lazy_triton import tl, triton

from aiter_ext.core.launch import cdiv, next_pow2
from aiter_ext.core.aot import KernelSpec, register_aot_specs
from aiter_ext.core.thin import thin

#: Elements one program handles by default (rows x padded head_dim); tuned rows may override it. The
#: tuner on an H200 picked 2048 for most shapes (4096 was 9% slower at [4096, 32, 128] bf16).
DEFAULT_TILE_ELEMENTS = 2048
#: Fixed state counts up to this are unrolled, so that every state's loads are in flight at once.
MAX_UNROLLED_STATES = 8
#: Largest tile of the several-states kernel: 8 unrolled states of a 64 x 256 tile spilled 13 VGPRs
#: on gfx942 (aiter-ext aot --check); 8192 elements do not.
MAX_MANY_TILE_ELEMENTS = 8192


def many_block_r(block_r: int, block_d: int) -> int:
    """Rows per program of the several-states kernel for a configured ``block_r``."""
    return max(1, min(block_r, MAX_MANY_TILE_ELEMENTS // block_d))


@triton.jit
def _merge_step(m, denom, acc, s_i, v_i):
    """Fold one state (``s_i [R]``, ``v_i [R, D]`` fp32) into the running (max, weight sum, weighted v).

    Empty states (``s_i = -inf``) weigh 0. ``m_safe`` keeps ``-inf - -inf`` out of the exponent while
    every state so far was empty.
    """
    m_new = tl.maximum(m, s_i)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    rescale = tl.exp2(m - m_safe)
    w = tl.exp2(s_i - m_safe)
    # An empty state contributes nothing, whatever its v holds (NaN from an earlier 0/0 included).
    acc = acc * rescale[:, None] + tl.where(w[:, None] > 0.0, w[:, None] * v_i, 0.0)
    denom = denom * rescale + w
    return m_new, denom, acc


@triton.jit
def _merge_finish(m, denom, acc):
    """(v, s) from the running sums; all-empty rows give v = 0 and s = -inf."""
    empty = denom == 0.0
    safe_denom = tl.where(empty, 1.0, denom)
    v = acc / safe_denom[:, None]
    s = tl.where(empty, float("-inf"), m + tl.log2(safe_denom))
    return v, s


@triton.jit
def _load_and_merge(m, denom, acc, v_row, s_row, i, count, stride_v_state, stride_s_state, col_ok):
    """Load state ``i`` of each row (nothing past its count or outside ``v``) and fold it in."""
    ok = i < count  # count is clamped to the rows of v, so this also keeps reads inside v
    s_i = tl.load(s_row + i * stride_s_state, mask=ok, other=float("-inf"))
    v_i = tl.load(v_row + i * stride_v_state, mask=ok[:, None] & col_ok, other=0.0).to(tl.float32)
    return _merge_step(m, denom, acc, s_i, v_i)


@thin
@triton.jit
def merge_pair_kernel(
    v_a, s_a, v_b, s_b, v_out, s_out, mask,
    num_rows, num_heads, head_dim,
    stride_va, stride_sa, stride_vb, stride_sb, stride_vo, stride_so,  # token strides, in elements
    HAS_MASK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """(v_out, s_out) = merge((v_a, s_a), (v_b, s_b)); with HAS_MASK, tokens whose mask byte is 0 are
    not written at all (merge_state_in_place passes v_out = v_a)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < num_rows
    tok = (rows // num_heads).to(tl.int64)
    head = rows % num_heads
    if HAS_MASK:
        row_ok = row_ok & (tl.load(mask + tok, mask=row_ok, other=0) != 0)
    tile_ok = row_ok[:, None] & (cols < head_dim)[None, :]
    inner = head[:, None] * head_dim + cols[None, :]

    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    denom = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    sa = tl.load(s_a + tok * stride_sa + head, mask=row_ok, other=float("-inf"))
    va = tl.load(v_a + tok[:, None] * stride_va + inner, mask=tile_ok, other=0.0).to(tl.float32)
    m, denom, acc = _merge_step(m, denom, acc, sa, va)
    sb = tl.load(s_b + tok * stride_sb + head, mask=row_ok, other=float("-inf"))
    vb = tl.load(v_b + tok[:, None] * stride_vb + inner, mask=tile_ok, other=0.0).to(tl.float32)
    m, denom, acc = _merge_step(m, denom, acc, sb, vb)
    v, s = _merge_finish(m, denom, acc)

    tl.store(v_out + tok[:, None] * stride_vo + inner, v.to(v_out.dtype.element_ty), mask=tile_ok)
    tl.store(s_out + tok * stride_so + head, s, mask=row_ok)


@thin
@triton.jit
def merge_many_kernel(
    v, s, indptr, v_out, s_out,
    num_rows, num_heads, head_dim, num_states, total_states,
    stride_v_tok, stride_v_state, stride_s_tok, stride_s_state, stride_vo, stride_so,
    VARLEN: tl.constexpr, UNROLLED_STATES: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Merge several states per output token.

    Fixed count (``VARLEN=False``, merge_states): state ``i`` of token ``t`` is ``v[t, i]``.
    Variable count (``VARLEN=True``): token ``t`` merges rows ``indptr[t] .. indptr[t+1]`` of a packed
    ``v [total_states, H, D]``. Segments are clamped to ``[0, total_states)`` and negative counts read
    nothing, so a malformed device-side ``indptr`` cannot make the kernel read outside ``v``.
    """
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < num_rows
    tok = (rows // num_heads).to(tl.int64)
    head = rows % num_heads
    col_ok = (cols < head_dim)[None, :]
    inner = head[:, None] * head_dim + cols[None, :]
    if VARLEN:
        first = tl.load(indptr + tok, mask=row_ok, other=0).to(tl.int64)
        last = tl.load(indptr + tok + 1, mask=row_ok, other=0).to(tl.int64)
        # Clamp the segment to rows that exist, so a malformed indptr neither reads outside v nor
        # makes the loop run past total_states iterations.
        first = tl.minimum(tl.maximum(first, 0), total_states)
        count = tl.where(row_ok, tl.maximum(tl.minimum(last, total_states) - first, 0), 0)
        v_row = v + first[:, None] * stride_v_state + inner
        s_row = s + first * stride_s_state + head
        loop_states = tl.max(count, axis=0)
    else:
        count = tl.where(row_ok, num_states, 0).to(tl.int64)
        v_row = v + tok[:, None] * stride_v_tok + inner
        s_row = s + tok * stride_s_tok + head
        loop_states = num_states

    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    denom = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    if UNROLLED_STATES > 0:  # a small fixed count: unrolled, so all loads are issued before the math
        for i in tl.static_range(UNROLLED_STATES):
            m, denom, acc = _load_and_merge(m, denom, acc, v_row, s_row, i, count,
                                            stride_v_state, stride_s_state, col_ok)
    else:
        for i in range(0, loop_states):
            m, denom, acc = _load_and_merge(m, denom, acc, v_row, s_row, i, count,
                                            stride_v_state, stride_s_state, col_ok)
    v_m, s_m = _merge_finish(m, denom, acc)

    tl.store(v_out + tok[:, None] * stride_vo + inner, v_m.to(v_out.dtype.element_ty), mask=row_ok[:, None] & col_ok)
    tl.store(s_out + tok * stride_so + head, s_m, mask=row_ok)


def default_config(head_dim: int) -> dict:
    """Heuristic tile: ``DEFAULT_TILE_ELEMENTS`` per program, 4 warps."""
    block_d = next_pow2(head_dim)
    return {"BLOCK_R": max(1, DEFAULT_TILE_ELEMENTS // block_d), "num_warps": 4}


def launch_pair(v_a, s_a, v_b, s_b, v_out, s_out, mask, config: dict) -> None:
    num_tokens, num_heads, head_dim = v_a.shape
    num_rows = num_tokens * num_heads
    if num_rows == 0:
        return
    cfg = {**default_config(head_dim), **config}
    grid = (cdiv(num_rows, cfg["BLOCK_R"]),)
    merge_pair_kernel[grid](
        v_a, s_a, v_b, s_b, v_out, s_out, mask if mask is not None else s_a,
        num_rows, num_heads, head_dim,
        v_a.stride(0), s_a.stride(0), v_b.stride(0), s_b.stride(0), v_out.stride(0), s_out.stride(0),
        HAS_MASK=mask is not None, BLOCK_R=cfg["BLOCK_R"], BLOCK_D=next_pow2(head_dim),
        num_warps=cfg["num_warps"],
    )


def launch_many(v, s, indptr, v_out, s_out, config: dict) -> None:
    """``indptr is None``: ``v [N, S, H, D]``; otherwise ``v [total, H, D]`` with ``indptr [N + 1]``."""
    num_tokens, num_heads, head_dim = v_out.shape
    num_rows = num_tokens * num_heads
    if num_rows == 0:
        return
    varlen = indptr is not None
    cfg = {**default_config(head_dim), **config}
    block_d = next_pow2(head_dim)
    block_r = many_block_r(cfg["BLOCK_R"], block_d)
    grid = (cdiv(num_rows, block_r),)
    if varlen:
        num_states, total = 0, v.shape[0]
        strides = (0, v.stride(0), 0, s.stride(0))
    else:
        num_states, total = v.shape[1], v.shape[0] * v.shape[1]
        strides = (v.stride(0), v.stride(1), s.stride(0), s.stride(1))
    merge_many_kernel[grid](
        v, s, indptr if varlen else s, v_out, s_out,
        num_rows, num_heads, head_dim, num_states, total,
        *strides, v_out.stride(0), s_out.stride(0),
        VARLEN=varlen, UNROLLED_STATES=num_states if 0 < num_states <= MAX_UNROLLED_STATES else 0,
        BLOCK_R=block_r, BLOCK_D=block_d,
        num_warps=cfg["num_warps"],
    )


# --------------------------------------------------------------------------------------------------
# What `aiter-ext aot --check` compiles for gfx942/gfx950: every kernel, in each dtype and head dim we
# serve, with the default tile and every tile the tuned CSV and the tuner use.

AOT_HEAD_DIMS = (64, 128, 256, 512)
AOT_DTYPES = ("fp16", "bf16", "fp32")


def _aot_configs(dtype: str, head_dim: int) -> list[tuple[str, dict]]:
    """The default tile for every (dtype, head_dim); for bf16 also every tile the tuner tries at the
    head dims it tunes, and every tile a tuned row names at that row's head dim. (A tile's register
    and LDS cost depends on its element count and head dim, barely on the 2-byte dtype.)"""
    from .backends import TRITON_TUNE_CONFIGS, TUNED_HEAD_DIMS, tuned_triton_configs

    configs = [("default", default_config(head_dim))]
    if dtype == "bf16" and head_dim in TUNED_HEAD_DIMS:
        configs += [(f"tune{i}", c) for i, c in enumerate(TRITON_TUNE_CONFIGS)]
    if dtype == "bf16":
        configs += [(f"tuned:{label}", c) for label, d, c in tuned_triton_configs() if d == head_dim]
    seen, unique = set(), []
    for label, cfg in configs:
        key = tuple(sorted(cfg.items()))
        if key not in seen:
            seen.add(key)
            unique.append((label, cfg))
    return unique


#: Why a tuner candidate may compile to one wave per SIMD on gfx942/gfx950 (the unrolled 8-state body of
#: merge_many with 32-64 rows of d128-d256 over 4 warps: ~274 VGPRs): the tuner times every candidate on
#: the GPU it tunes for and writes a row only for the fastest, so a slow tile is never chosen, and the
#: default tiles stay at 2+ waves. No tuned row exists for an AMD arch (none can be measured here).
CANDIDATE_REASON = "a tuner candidate: chosen only where measured fastest on that GPU; the default tile is not low"


def _aligned(signature: dict) -> tuple[str, ...]:
    """What the launcher sees for torch-allocated tensors and the head dims we serve: aligned
    pointers, and strides and head_dim that are multiples of 16 elements."""
    return tuple(n for n, t in signature.items() if t.startswith("*") or n.startswith("stride") or n == "head_dim")


def aot_specs():
    from .backends import tuned_many_configs

    ints = {n: "i32" for n in ("num_rows", "num_heads", "head_dim")}
    for dtype in AOT_DTYPES:
        for head_dim in AOT_HEAD_DIMS:
            block_d = next_pow2(head_dim)
            for label, cfg in _aot_configs(dtype, head_dim):
                opts = {"num_warps": cfg["num_warps"]}
                tag = f"{dtype}-d{head_dim}-r{cfg['BLOCK_R']}w{cfg['num_warps']}"
                for has_mask in (False, True):
                    sig = {"v_a": f"*{dtype}", "s_a": "*fp32", "v_b": f"*{dtype}", "s_b": "*fp32",
                           "v_out": f"*{dtype}", "s_out": "*fp32",
                           # without a mask the launcher passes s_a in its place
                           "mask": "*u8" if has_mask else "*fp32", **ints,
                           **{n: "i32" for n in ("stride_va", "stride_sa", "stride_vb", "stride_sb",
                                                 "stride_vo", "stride_so")}}
                    yield KernelSpec(f"merge_pair{'_masked' if has_mask else ''}[{tag}]", merge_pair_kernel, sig,
                                     {"HAS_MASK": has_mask, "BLOCK_R": cfg["BLOCK_R"], "BLOCK_D": block_d},
                                     opts, config_label=label, divisible_by_16=_aligned(sig))
                # merge_states: the default tile in every form it launches (fp32 partial states into a 16-bit
                # output too: split attention's and cascade's merge); a tuner candidate at the largest unrolled
                # body and by indptr only (what the compile check needs of it)
                every_count = range(MAX_UNROLLED_STATES + 1) if label == "default" else (MAX_UNROLLED_STATES,)
                partials = [(True, 0, "fp32")] if label == "default" and dtype != "fp32" else []
                yield from _many_specs(dtype, head_dim, cfg, label, _many_forms(dtype, every_count) + partials)
    # merge_states' tuned tiles (any arch's rows, as the pair's above), in the forms a row serves: the calls of its
    # dtype (an fp32 row's also split attention's fp32 partials into a 16-bit output)
    for label, dtype, head_dim, cfg in tuned_many_configs():
        cfg, label = {**default_config(head_dim), **cfg}, f"tuned:{label}"
        yield from _many_specs(dtype, head_dim, cfg, label, _many_forms(dtype, range(MAX_UNROLLED_STATES + 1)))
        for out_dtype in (("bf16", "fp16") if dtype == "fp32" else ()):
            yield from _many_specs(out_dtype, head_dim, cfg, label, [(True, 0, "fp32")])


def _many_forms(dtype: str, counts) -> list[tuple[bool, int, str]]:
    """``(varlen, unrolled states, v dtype)``: each fixed count of states in ``counts`` (0: the loop), then by
    ``indptr``, the states in ``dtype``."""
    return [(False, unrolled, dtype) for unrolled in counts] + [(True, 0, dtype)]


def _many_specs(dtype: str, head_dim: int, cfg: dict, label: str, forms):
    """merge_many_kernel's specs at one tile, ``dtype`` the output's, one per form of ``forms`` (_many_forms)."""
    block_d, block_r = next_pow2(head_dim), many_block_r(cfg["BLOCK_R"], next_pow2(head_dim))
    ints = {n: "i32" for n in ("num_rows", "num_heads", "head_dim")}
    for varlen, unrolled, v_dtype in forms:
        # without indptr (a fixed count of states) the launcher passes s in its place
        sig = {"v": f"*{v_dtype}", "s": "*fp32", "indptr": "*i32" if varlen else "*fp32",
               "v_out": f"*{dtype}", "s_out": "*fp32", **ints, "num_states": "i32", "total_states": "i32",
               **{n: "i32" for n in ("stride_v_tok", "stride_v_state", "stride_s_tok",
                                     "stride_s_state", "stride_vo", "stride_so")}}
        kind = "varlen" if varlen else f"many{unrolled}" if unrolled != MAX_UNROLLED_STATES else "many"
        kind += "-fp32-partials" if v_dtype != dtype else ""
        yield KernelSpec(f"merge_{kind}[{dtype}-d{head_dim}-r{block_r}w{cfg['num_warps']}]", merge_many_kernel, sig,
                         {"VARLEN": varlen, "UNROLLED_STATES": unrolled, "BLOCK_R": block_r, "BLOCK_D": block_d},
                         {"num_warps": cfg["num_warps"]}, config_label=label, divisible_by_16=_aligned(sig),
                         low_occupancy_reason=CANDIDATE_REASON if label != "default" else "")


register_aot_specs("merge_state", aot_specs)
