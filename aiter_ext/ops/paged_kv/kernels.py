"""Triton kernels of the paged KV cache layer. Private: called only through ``backends.py``.

``append_paged_kv_kernel`` views the appended keys/values as rows: row ``r`` is (token ``r // H``,
head ``r % H``) holding ``D`` values. One program moves a tile of ``BLOCK_R`` rows x ``BLOCK_D``
columns of K and the same of V, so that each program moves several KiB (one program per token and
head would move a few hundred bytes; see the merge_state kernels for why that stalls). Every row
finds its page and slot from its token's batch index and position through the CSR page table.

The kernel moves bits: the launcher views caches and inputs as the integer type of their element
size, so fp16, bf16 and every fp8 variant (e4m3fn, e4m3fnuz, whichever the arch computes in) go
through the same code, without a conversion that could change a bit.

``batch_indices_positions_kernel`` finds each appended token's request by a binary search over
``append_indptr`` (a fixed number of steps computed from the batch size, a shape), so nothing is read
back on the host.
"""

from __future__ import annotations

# Triton itself is imported only when a kernel needs it (core/lazy_triton.py: not for a code object's launch)
from aiter_ext.core.lazy_triton import tl, triton

from aiter_ext.core.launch import cdiv, next_pow2
from aiter_ext.core.aot import KernelSpec, register_aot_specs
from aiter_ext.core.thin import thin

#: Default append tiles, from graph-replay timings on an H200 (Hkv 8, D 128, bf16 and fp8, BLOCK_R 2-64 x
#: 1/2/4 warps): appends of few rows are latency-bound and were fastest with 8 rows per program (1.75 us
#: against 2.06 us with 32-64 rows, for 64 decode tokens); large appends are bandwidth-bound and every
#: tile of 2-8 KiB was within 2% (16384 tokens: 36.3 us bf16, 18.9 us fp8, as fast as FlashInfer). So:
#: ``SMALL_BLOCK_R`` rows up to ``SMALL_ROWS`` rows in all, else ``DEFAULT_TILE_BYTES`` of K (and as many
#: of V) per program. A tuned config may override ``BLOCK_R``/``num_warps``.
SMALL_ROWS = 4096
SMALL_BLOCK_R = 8
DEFAULT_TILE_BYTES = 4096
#: Tokens per program of the batch-indices kernel.
INDICES_BLOCK = 1024

#: Integer type of each element size, for the bit-moving launcher.
_BITS_VIEW = {1: "int8", 2: "int16", 4: "int32"}


@thin
@triton.jit
def append_paged_kv_kernel(
    append_key, append_value, batch_indices, positions,
    k_cache, v_cache, kv_indices, kv_indptr,
    num_rows, num_kv_heads, head_dim, page_size, num_pages, batch_size, num_indices,
    stride_ak_tok, stride_ak_head, stride_av_tok, stride_av_head,  # in elements
    stride_k_page, stride_k_slot, stride_k_head,
    stride_v_page, stride_v_slot, stride_v_head,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Copy rows of append_key/append_value into ``cache[page, slot, head, :]``.

    A row is not written when its token's batch index is negative (padding) or not a request, its
    position is negative or past the request's pages, its page-table entry ``kv_indptr[b] + pos //
    page_size`` is outside ``kv_indices`` (``num_indices`` entries), or its page id is outside the cache: a
    malformed table then drops tokens instead of writing out of bounds or into another request's
    pages. ``kv_last_page_len`` is not read (as in FlashInfer): a position past it but inside the
    request's last page is written.
    """
    # Index math in int32 (tokens, positions and page-table offsets are far below 2^31); only the
    # element offsets, products with strides, are int64 (a cache may exceed 2^31 elements).
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    ok = rows < num_rows
    tok = rows // num_kv_heads
    head = rows % num_kv_heads

    b = tl.load(batch_indices + tok, mask=ok, other=-1).to(tl.int32)
    pos = tl.load(positions + tok, mask=ok, other=-1).to(tl.int32)
    ok = ok & (b >= 0) & (b < batch_size) & (pos >= 0)
    first = tl.load(kv_indptr + b, mask=ok, other=0).to(tl.int32)
    end = tl.load(kv_indptr + b + 1, mask=ok, other=0).to(tl.int32)
    page_in_req = pos // page_size
    entry = first + page_in_req  # kv_indptr's values are only known here: bound the entry by kv_indices
    ok = ok & (page_in_req < end - first) & (entry >= 0) & (entry < num_indices)
    page = tl.load(kv_indices + entry, mask=ok, other=0)
    ok = ok & (page >= 0) & (page < num_pages)
    page = page.to(tl.int64)
    slot = (pos % page_size).to(tl.int64)
    tok = tok.to(tl.int64)
    head = head.to(tl.int64)

    cols = tl.arange(0, BLOCK_D)
    mask = ok[:, None] & (cols < head_dim)[None, :]
    k = tl.load(append_key + (tok * stride_ak_tok + head * stride_ak_head)[:, None] + cols[None, :], mask=mask)
    v = tl.load(append_value + (tok * stride_av_tok + head * stride_av_head)[:, None] + cols[None, :], mask=mask)
    k_dst = k_cache + (page * stride_k_page + slot * stride_k_slot + head * stride_k_head)[:, None] + cols[None, :]
    v_dst = v_cache + (page * stride_v_page + slot * stride_v_slot + head * stride_v_head)[:, None] + cols[None, :]
    tl.store(k_dst, k, mask=mask)
    tl.store(v_dst, v, mask=mask)


@thin
@triton.jit
def batch_indices_positions_kernel(
    append_indptr, seq_lens, batch_indices, positions,
    nnz, batch_size, num_steps,
    BLOCK: tl.constexpr,
):
    """Token ``i`` belongs to the request ``b`` with ``indptr[b] <= i < indptr[b+1]``; its position is
    ``seq_lens[b] - indptr[b+1] + i``. Tokens outside ``[indptr[0], indptr[batch_size])`` get -1, -1."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_range = i < nnz
    start = tl.load(append_indptr)
    total = tl.load(append_indptr + batch_size)
    # The largest b in [0, batch_size) with indptr[b] <= i; with empty requests (equal indptr
    # entries) that is the last of them, the one that owns i. Once hi - lo <= 1, mid = lo: a no-op.
    lo = tl.zeros([BLOCK], dtype=tl.int32)
    hi = tl.zeros([BLOCK], dtype=tl.int32) + batch_size
    for _ in range(num_steps):
        mid = (lo + hi) // 2
        right = tl.load(append_indptr + mid, mask=in_range, other=0) <= i
        lo = tl.where(right, mid, lo)
        hi = tl.where(right, hi, mid)
    valid = in_range & (i >= start) & (i < total)
    end = tl.load(append_indptr + lo + 1, mask=valid, other=0)
    seq_len = tl.load(seq_lens + lo, mask=valid, other=0)
    pos = seq_len - end + i
    tl.store(batch_indices + i, tl.where(valid, lo, -1).to(tl.int32), mask=in_range)
    tl.store(positions + i, tl.where(valid, pos, -1).to(tl.int32), mask=in_range)


# --------------------------------------------------------------------------------------------------
# Launchers.


def default_config(head_dim: int, element_size: int, num_rows: int) -> dict:
    """Heuristic tile (see ``SMALL_ROWS``), 4 warps; ``num_rows`` = tokens x KV heads."""
    if num_rows <= SMALL_ROWS:
        return {"BLOCK_R": SMALL_BLOCK_R, "num_warps": 4}
    block_d = next_pow2(head_dim)
    return {"BLOCK_R": max(1, DEFAULT_TILE_BYTES // (block_d * element_size)), "num_warps": 4}


def _bits(t):
    import torch

    return t.view(getattr(torch, _BITS_VIEW[t.element_size()]))


def launch_append(append_key, append_value, batch_indices, positions, k_cache, v_cache, kv_indices,
                  kv_indptr, page_size: int, strides, config: dict) -> None:
    """``strides``: ``(k_page, k_slot, k_head, v_page, v_slot, v_head)`` in elements, which address
    ``cache[page, slot, head, :]`` in either layout; ``k_cache.shape[0]`` is the number of pages."""
    nnz, num_kv_heads, head_dim = append_key.shape
    num_rows = nnz * num_kv_heads
    if num_rows == 0:
        return
    cfg = {**default_config(head_dim, append_key.element_size(), num_rows), **config}
    grid = (cdiv(num_rows, cfg["BLOCK_R"]),)
    append_paged_kv_kernel[grid](
        _bits(append_key), _bits(append_value), batch_indices.contiguous(), positions.contiguous(),
        _bits(k_cache), _bits(v_cache), kv_indices.contiguous(), kv_indptr.contiguous(),
        num_rows, num_kv_heads, head_dim, page_size, k_cache.shape[0],
        kv_indptr.shape[0] - 1, kv_indices.shape[0],
        append_key.stride(0), append_key.stride(1), append_value.stride(0), append_value.stride(1),
        *strides,
        BLOCK_R=cfg["BLOCK_R"], BLOCK_D=next_pow2(head_dim), num_warps=cfg["num_warps"],
    )


def launch_batch_indices_positions(append_indptr, seq_lens, batch_indices, positions) -> None:
    nnz = batch_indices.shape[0]
    if nnz == 0:
        return
    batch_size = append_indptr.shape[0] - 1
    grid = (cdiv(nnz, INDICES_BLOCK),)
    batch_indices_positions_kernel[grid](
        append_indptr.contiguous(), seq_lens.contiguous(), batch_indices, positions,
        nnz, batch_size, max(batch_size, 1).bit_length(),
        BLOCK=INDICES_BLOCK, num_warps=4,
    )


# --------------------------------------------------------------------------------------------------
# What `aiter-ext aot --check` compiles for gfx942/gfx950. The append kernel moves bits, so fp16 and
# bf16 caches launch the same *i16 kernel and every fp8 cache the same *i8 one; int32 page tables, as
# get_batch_indices_positions and block_table_to_csr produce them.

AOT_HEAD_DIMS = (64, 128, 256)
#: (label, element type the launcher passes, element size)
AOT_ELEMENTS = (("fp16/bf16", "i16", 2), ("fp8", "i8", 1))


def _append_tiles(head_dim: int, size: int, arch: str) -> list[dict]:
    """The heuristic's two tiles (at most and past SMALL_ROWS rows) at this head dim and element size, then those
    of the tuned rows measured on ``arch`` for it (a tuned tile needs its code object as much as a default)."""
    from aiter_ext.core.tuned import measured_configs

    tiles = [default_config(head_dim, size, rows) for rows in (SMALL_ROWS, SMALL_ROWS + 1)]
    for row, config in measured_configs("paged_kv_append", arch):
        if int(row["head_dim"]) == head_dim and {"fp16": 2, "bf16": 2}.get(row["dtype"]) == size:
            tiles.append({**default_config(head_dim, size, int(row["num_tokens"]) * int(row["num_kv_heads"])),
                          **config})
    return list({(c["BLOCK_R"], c["num_warps"]): c for c in tiles}.values())


def aot_specs(arch: str = "gfx942"):
    ints = {n: "i32" for n in ("num_rows", "num_kv_heads", "head_dim", "page_size", "num_pages", "batch_size",
                               "num_indices",
                               "stride_ak_tok", "stride_ak_head", "stride_av_tok", "stride_av_head",
                               "stride_k_page", "stride_k_slot", "stride_k_head",
                               "stride_v_page", "stride_v_slot", "stride_v_head")}
    for label, elem, size in AOT_ELEMENTS:
        for head_dim in AOT_HEAD_DIMS:
            for cfg in _append_tiles(head_dim, size, arch):
                sig = {"append_key": f"*{elem}", "append_value": f"*{elem}", "batch_indices": "*i32",
                       "positions": "*i32", "k_cache": f"*{elem}", "v_cache": f"*{elem}", "kv_indices": "*i32",
                       "kv_indptr": "*i32", **ints}
                # What the launcher sees for torch-allocated tensors and the head dims we serve: aligned
                # pointers, and head_dim and every stride a multiple of 16 elements (they are multiples
                # of head_dim). page_size may be anything (5 is tested), so it is left out.
                aligned = tuple(n for n, t in sig.items()
                                if t.startswith("*") or n.startswith("stride") or n == "head_dim")
                yield KernelSpec(f"append_paged_kv[{elem}-d{head_dim}-r{cfg['BLOCK_R']}w{cfg['num_warps']}]",
                                 append_paged_kv_kernel, sig,
                                 {"BLOCK_R": cfg["BLOCK_R"], "BLOCK_D": next_pow2(head_dim)},
                                 {"num_warps": cfg["num_warps"]}, config_label=label, divisible_by_16=aligned)
    for seq_lens in ("i32", "i64"):
        sig = {"append_indptr": "*i32", "seq_lens": f"*{seq_lens}", "batch_indices": "*i32", "positions": "*i32",
               "nnz": "i32", "batch_size": "i32", "num_steps": "i32"}
        yield KernelSpec(f"batch_indices_positions[seq_lens {seq_lens}]", batch_indices_positions_kernel, sig,
                         {"BLOCK": INDICES_BLOCK}, {"num_warps": 4},
                         divisible_by_16=tuple(n for n, t in sig.items() if t.startswith("*")))


# under the dispatcher's names for the two ops these kernels serve (one name per op everywhere)
register_aot_specs("paged_kv_append", lambda arch: [s for s in aot_specs(arch) if s.fn is append_paged_kv_kernel])
register_aot_specs("batch_indices_positions",
                   lambda: [s for s in aot_specs() if s.fn is batch_indices_positions_kernel])
