"""The paged KV cache layer: FlashInfer's CSR page table, its storage layouts and its helpers.

- Storage: :func:`unpack_paged_kv_cache` and :class:`PagedKVLayout`, which every attention op uses to
  read a cache given as one 5-D tensor or a ``(k_cache, v_cache)`` tuple, in ``NHD`` or ``HND``.
- Writes: :func:`append_paged_kv_cache`, with :func:`get_batch_indices_positions` and
  :func:`get_seq_lens` to build its arguments (device ops, no host sync, graph-capturable).
- Planning (host side, may synchronize): :func:`block_table_to_csr` (vLLM's block table to the CSR
  form) and :func:`check_paged_kv_indices` (the validation ``plan()`` functions run).

Layering as in merge_state: the public functions validate and allocate; the functions that write
into given tensors dispatch to a backend and are registered as torch custom ops, which
``torch.compile`` traces through (eager calls skip that layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from aiter_ext.core.checks import check_indptr_values, check_same_device, check_shape, check_tensor, dtype_name
from aiter_ext.core.custom_ops import mutating_ops

from .backends import BATCH_INDICES_POSITIONS, PAGED_KV_APPEND

KV_LAYOUTS = ("NHD", "HND")
#: Cache dtypes: fp8 is e4m3fn on gfx950 and NVIDIA, e4m3fnuz on gfx942; both are accepted everywhere.
KV_CACHE_DTYPES = (torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e4m3fnuz)
INDEX_DTYPES = (torch.int32, torch.int64)

PagedKVCache = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------------------------------
# Storage layout.


def check_kv_layout(kv_layout) -> None:
    """Raise ``ValueError`` unless ``kv_layout`` is ``"NHD"`` or ``"HND"``."""
    if not isinstance(kv_layout, str) or kv_layout not in KV_LAYOUTS:
        raise ValueError(f"kv_layout must be 'NHD' or 'HND', got {kv_layout!r}")


def unpack_paged_kv_cache(paged_kv_cache: PagedKVCache, kv_layout: str = "NHD") -> tuple[torch.Tensor, torch.Tensor]:
    r"""The K and V caches of a paged KV cache, as 4-D views (never copies).

    Parameters
    ----------
    paged_kv_cache : torch.Tensor or tuple of two torch.Tensor
        One 5-D tensor ``[max_num_pages, 2, page_size, num_kv_heads, head_dim]`` (``NHD``) or
        ``[max_num_pages, 2, num_kv_heads, page_size, head_dim]`` (``HND``), index 0 of dim 1 being K;
        or a tuple ``(k_cache, v_cache)`` of 4-D tensors ``[max_num_pages, page_size, num_kv_heads,
        head_dim]`` (``NHD``) / ``[max_num_pages, num_kv_heads, page_size, head_dim]`` (``HND``).
        fp16, bf16, fp8 e4m3fn or e4m3fnuz; K and V of one shape, dtype and device. ``head_dim`` must
        be packed (stride 1); the other strides are free (e.g. vLLM's ``[2, num_blocks, ...]`` cache).
    kv_layout : str
        ``"NHD"`` (default) or ``"HND"``.

    Returns
    -------
    (k_cache, v_cache) : the two 4-D caches in ``kv_layout``, views of ``paged_kv_cache``'s storage.

    Examples
    --------
    >>> import torch, aiter_ext.ops.paged_kv as pkv
    >>> cache = torch.zeros(10, 2, 16, 4, 64, dtype=torch.float16)
    >>> k, v = pkv.unpack_paged_kv_cache(cache, "NHD")
    >>> k.shape, k.data_ptr() == cache.data_ptr(), v.data_ptr() == cache[:, 1].data_ptr()
    (torch.Size([10, 16, 4, 64]), True, True)
    """
    check_kv_layout(kv_layout)
    if isinstance(paged_kv_cache, torch.Tensor):
        if paged_kv_cache.dim() != 5 or paged_kv_cache.shape[1] != 2:
            raise ValueError("paged_kv_cache must be a 5-D tensor [max_num_pages, 2, page_size, num_kv_heads, "
                             "head_dim] (NHD) / [max_num_pages, 2, num_kv_heads, page_size, head_dim] (HND) or a "
                             f"(k_cache, v_cache) tuple of 4-D tensors; got a tensor of shape {tuple(paged_kv_cache.shape)}")
        k, v = paged_kv_cache[:, 0], paged_kv_cache[:, 1]
        k_name, v_name = "paged_kv_cache[:, 0] (K)", "paged_kv_cache[:, 1] (V)"
    elif isinstance(paged_kv_cache, (tuple, list)):
        if len(paged_kv_cache) != 2:
            raise ValueError(f"paged_kv_cache as a tuple must hold two tensors (k_cache, v_cache), got {len(paged_kv_cache)}")
        k, v = paged_kv_cache
        k_name, v_name = "paged_kv_cache[0] (k_cache)", "paged_kv_cache[1] (v_cache)"
        check_tensor(k_name, k, ndim=4)
        check_tensor(v_name, v, ndim=4)
    else:
        raise TypeError("paged_kv_cache must be a 5-D torch.Tensor or a (k_cache, v_cache) tuple, "
                        f"got {type(paged_kv_cache).__name__}")
    check_tensor(k_name, k, dtypes=KV_CACHE_DTYPES)
    if v.dtype != k.dtype:
        raise TypeError(f"{v_name} is {dtype_name(v.dtype)} but {k_name} is {dtype_name(k.dtype)}; they must match")
    check_shape(v_name, v, k.shape, f"the shape of {k_name}")
    check_same_device([(k_name, k), (v_name, v)])
    for name, t in ((k_name, k), (v_name, v)):
        if t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(f"{name} must have a packed head_dim (last stride 1), got strides {tuple(t.stride())}")
    return k, v


@dataclass(frozen=True)
class PagedKVLayout:
    """Sizes and element strides of a paged KV cache, for kernels that address ``cache[page, slot, head, :]``.

    The strides are in elements and mean the same in both layouts: ``k_stride_slot`` steps one token
    within a page, ``k_stride_head`` one KV head, whether the cache is ``NHD`` or ``HND`` (and likewise
    for V, whose strides may differ from K's in a tuple cache). ``head_dim`` is packed. The fields are
    plain ints, so a layout is hashable: a ``plan()`` can key on it.
    """

    kv_layout: str
    num_pages: int
    page_size: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    k_stride_page: int
    k_stride_slot: int
    k_stride_head: int
    v_stride_page: int
    v_stride_slot: int
    v_stride_head: int

    @property
    def k_strides(self) -> tuple[int, int, int]:
        """``(page, slot, head)`` strides of K, in elements."""
        return self.k_stride_page, self.k_stride_slot, self.k_stride_head

    @property
    def v_strides(self) -> tuple[int, int, int]:
        """``(page, slot, head)`` strides of V, in elements."""
        return self.v_stride_page, self.v_stride_slot, self.v_stride_head

    @classmethod
    def from_cache(cls, paged_kv_cache: PagedKVCache, kv_layout: str = "NHD") -> "PagedKVLayout":
        """Validate ``paged_kv_cache`` (as :func:`unpack_paged_kv_cache` does) and describe it.

        Examples
        --------
        >>> import torch, aiter_ext.ops.paged_kv as pkv
        >>> lay = pkv.PagedKVLayout.from_cache(torch.zeros(10, 2, 8, 16, 64, dtype=torch.bfloat16), "HND")
        >>> lay.page_size, lay.num_kv_heads, lay.head_dim, lay.k_strides
        (16, 8, 64, (16384, 64, 1024))
        """
        return cls.from_views(*unpack_paged_kv_cache(paged_kv_cache, kv_layout), kv_layout)

    @classmethod
    def from_views(cls, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_layout: str) -> "PagedKVLayout":
        """Describe the two 4-D caches :func:`unpack_paged_kv_cache` returned (not re-validated)."""
        slot, head = (1, 2) if kv_layout == "NHD" else (2, 1)  # the dims of slots and heads
        k, v = k_cache, v_cache
        return cls(kv_layout, k.shape[0], k.shape[slot], k.shape[head], k.shape[3], k.dtype,
                   k.stride(0), k.stride(slot), k.stride(head), v.stride(0), v.stride(slot), v.stride(head))


# --------------------------------------------------------------------------------------------------
# Shared argument checks (metadata only: no device reads).


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_indptr(name: str, indptr) -> int:
    """1-D int32/int64 with at least one entry; returns the batch size."""
    check_tensor(name, indptr, ndim=1, dtypes=INDEX_DTYPES)
    if indptr.shape[0] < 1:
        raise ValueError(f"{name} must have batch_size + 1 >= 1 entries, got an empty tensor")
    return indptr.shape[0] - 1


def _check_per_request(name: str, t, batch_size: int, indptr_name: str) -> None:
    check_tensor(name, t, ndim=1, dtypes=INDEX_DTYPES)
    check_shape(name, t, (batch_size,), f"[batch_size], batch_size = len({indptr_name}) - 1")


# --------------------------------------------------------------------------------------------------
# Sequence lengths and append coordinates (device ops).


def get_seq_lens(kv_indptr: torch.Tensor, kv_last_page_len: torch.Tensor, page_size: int) -> torch.Tensor:
    r"""KV length of each request from its page count and last-page length.

    ``seq_lens[b] = page_size * (num_pages_b - 1) + kv_last_page_len[b]``, with
    ``num_pages_b = kv_indptr[b+1] - kv_indptr[b]``; 0 for a request with no pages.

    Parameters
    ----------
    kv_indptr : torch.Tensor
        ``[batch_size + 1]`` int32/int64.
    kv_last_page_len : torch.Tensor
        ``[batch_size]`` int32/int64.
    page_size : int
        Tokens per page (>= 1).

    Returns
    -------
    seq_lens : torch.Tensor
        ``[batch_size]`` int32, on the inputs' device.

    Note
    ----
    A few elementwise torch ops: no host sync, graph-capturable. FlashInfer clamps
    ``num_pages - 1`` at 0, so a request with no pages gets its ``kv_last_page_len`` there; here it
    gets 0 (the two agree on vLLM's convention, ``last_page_len = 0`` for such a request, and
    :func:`check_paged_kv_indices` rejects anything else).

    Examples
    --------
    >>> import torch, aiter_ext.ops.paged_kv as pkv
    >>> pkv.get_seq_lens(torch.tensor([0, 3, 4, 4], dtype=torch.int32), torch.tensor([5, 16, 0], dtype=torch.int32), 16)
    tensor([37, 16,  0], dtype=torch.int32)
    """
    batch_size = _check_indptr("kv_indptr", kv_indptr)
    _check_per_request("kv_last_page_len", kv_last_page_len, batch_size, "kv_indptr")
    _check_int("page_size", page_size, 1)
    check_same_device([("kv_indptr", kv_indptr), ("kv_last_page_len", kv_last_page_len)])
    num_pages = kv_indptr[1:] - kv_indptr[:-1]
    seq_lens = (num_pages - 1) * page_size + kv_last_page_len
    return torch.where(num_pages > 0, seq_lens, torch.zeros_like(seq_lens)).to(torch.int32)


def _batch_indices_positions_out(append_indptr: torch.Tensor, seq_lens: torch.Tensor, batch_indices: torch.Tensor,
                                 positions: torch.Tensor, backend: Optional[str]) -> None:
    call = {"nnz": batch_indices.shape[0], "batch_size": append_indptr.shape[0] - 1,
            "device": batch_indices.device.type}
    choice = BATCH_INDICES_POSITIONS.select(call, backend)
    choice.impl.fn(choice.config, append_indptr, seq_lens, batch_indices, positions)


def get_batch_indices_positions(append_indptr: torch.Tensor, seq_lens: torch.Tensor, nnz: int,
                                *, backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Request index and position of every appended token (CSR to COO for a ragged batch).

    Token ``i`` of the appended batch belongs to the request ``b`` with
    ``append_indptr[b] <= i < append_indptr[b+1]``; its position in that request is
    ``seq_lens[b] - (append_indptr[b+1] - append_indptr[b]) + (i - append_indptr[b])``: ``seq_lens``
    are the lengths *after* appending, so the new tokens are the last ones.

    Parameters
    ----------
    append_indptr : torch.Tensor
        ``[batch_size + 1]`` int32/int64, nondecreasing from 0: request ``b`` appends tokens
        ``append_indptr[b]:append_indptr[b+1]`` (possibly none).
    seq_lens : torch.Tensor
        ``[batch_size]`` int32/int64, each request's KV length including the appended tokens (e.g.
        from :func:`get_seq_lens`).
    nnz : int
        Number of appended tokens, ``append_indptr[-1]``, passed by the caller so that nothing is read
        back from the device. A larger ``nnz`` pads: tokens ``i >= append_indptr[-1]`` get batch index
        -1 and position -1, which :func:`append_paged_kv_cache` skips.
    backend : str, optional
        ``"triton"`` or ``"torch"``; ``None``/``"auto"`` selects.

    Returns
    -------
    batch_indices, positions : torch.Tensor
        ``[nnz]`` int32 each, on ``append_indptr``'s device.

    Note
    ----
    No host sync (a Triton kernel: each token binary-searches ``append_indptr``); graph-capturable
    for a fixed ``nnz``. FlashInfer leaves padding entries uninitialized; here they are -1.

    Examples
    --------
    >>> import torch, aiter_ext.ops.paged_kv as pkv
    >>> append_indptr = torch.tensor([0, 2, 2, 5], dtype=torch.int32)  # request 1 appends nothing
    >>> seq_lens = torch.tensor([7, 3, 3], dtype=torch.int32)
    >>> b, pos = pkv.get_batch_indices_positions(append_indptr, seq_lens, 6)
    >>> b.tolist(), pos.tolist()
    ([0, 0, 2, 2, 2, -1], [5, 6, 0, 1, 2, -1])
    """
    batch_size = _check_indptr("append_indptr", append_indptr)
    _check_per_request("seq_lens", seq_lens, batch_size, "append_indptr")
    _check_int("nnz", nnz, 0)
    check_same_device([("append_indptr", append_indptr), ("seq_lens", seq_lens)])
    batch_indices = torch.empty(nnz, dtype=torch.int32, device=append_indptr.device)
    positions = torch.empty(nnz, dtype=torch.int32, device=append_indptr.device)
    _call(_batch_indices_positions_out, append_indptr, seq_lens, batch_indices, positions, backend)
    return batch_indices, positions


# --------------------------------------------------------------------------------------------------
# Appending.


def _append_out(append_key: torch.Tensor, append_value: torch.Tensor, batch_indices: torch.Tensor,
                positions: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_indices: torch.Tensor,
                kv_indptr: torch.Tensor, kv_last_page_len: torch.Tensor, kv_layout: str,
                backend: Optional[str]) -> None:
    layout = PagedKVLayout.from_views(k_cache, v_cache, kv_layout)
    call = {"num_tokens": append_key.shape[0], "num_kv_heads": layout.num_kv_heads, "head_dim": layout.head_dim,
            "dtype": dtype_name(layout.dtype), "device": append_key.device.type, "kv_layout": kv_layout}
    choice = PAGED_KV_APPEND.select(call, backend)
    choice.impl.fn(choice.config, append_key, append_value, batch_indices, positions, k_cache, v_cache,
                   kv_indices, kv_indptr, kv_last_page_len, layout)


def append_paged_kv_cache(append_key: torch.Tensor, append_value: torch.Tensor, batch_indices: torch.Tensor,
                          positions: torch.Tensor, paged_kv_cache: PagedKVCache, kv_indices: torch.Tensor,
                          kv_indptr: torch.Tensor, kv_last_page_len: torch.Tensor, kv_layout: str = "NHD",
                          *, backend: Optional[str] = None) -> None:
    r"""Write a ragged batch of new keys and values into their pages of a paged KV cache.

    Token ``i`` goes to request ``b = batch_indices[i]`` at position ``p = positions[i]``: page
    ``kv_indices[kv_indptr[b] + p // page_size]``, slot ``p % page_size``, all heads. The pages must
    already be allocated: ``kv_indptr``, ``kv_indices`` and ``kv_last_page_len`` describe the cache
    *after* the append. Nothing else in the cache changes. The values are copied bit for bit: for an
    fp8 cache, ``append_key``/``append_value`` are fp8 already (quantize first).

    Parameters
    ----------
    append_key, append_value : torch.Tensor
        ``[nnz, num_kv_heads, head_dim]``, the cache's dtype; head_dim packed, token and head strides
        free (e.g. slices of a fused QKV output).
    batch_indices, positions : torch.Tensor
        ``[nnz]`` int32/int64, from :func:`get_batch_indices_positions`.
    paged_kv_cache : torch.Tensor or tuple of two torch.Tensor
        5-D or ``(k_cache, v_cache)``, as in :func:`unpack_paged_kv_cache`; fp16, bf16, fp8 e4m3fn or
        e4m3fnuz.
    kv_indices : torch.Tensor
        ``[kv_indptr[-1]]`` int32/int64 page ids.
    kv_indptr : torch.Tensor
        ``[batch_size + 1]`` int32/int64.
    kv_last_page_len : torch.Tensor
        ``[batch_size]`` int32/int64.
    kv_layout : str
        ``"NHD"`` (default) or ``"HND"``.
    backend : str, optional
        ``"triton"`` or ``"torch"``; ``None``/``"auto"`` selects.

    Note
    ----
    Mutates ``paged_kv_cache`` (both K and V, in place, whatever their strides). No host sync,
    graph-capturable. Index values are not checked here (that would synchronize; see
    :func:`check_paged_kv_indices`); instead a token is skipped, never written out of bounds, when its
    batch index is negative (padding) or past the batch, its position is negative or past its
    request's pages, its page-table entry lies past the end of ``kv_indices`` (``kv_indptr`` values
    beyond ``len(kv_indices)``), or its page id is outside the cache. FlashInfer writes such tokens anyway (into
    the next request's pages, or out of bounds). As in FlashInfer, ``kv_last_page_len`` is validated
    but not read: a position past it, inside the request's last page, is written.

    Examples
    --------
    >>> import torch, aiter_ext.ops.paged_kv as pkv
    >>> from aiter_ext.ops.paged_kv.reference import append_paged_kv_cache_ref
    >>> cache = torch.randn(6, 2, 4, 2, 64).half()           # 6 pages of 4 tokens, NHD
    >>> kv_indptr = torch.tensor([0, 2, 3], dtype=torch.int32)
    >>> kv_indices = torch.tensor([5, 1, 3], dtype=torch.int32)
    >>> kv_last_page_len = torch.tensor([3, 2], dtype=torch.int32)  # lengths 7 and 2 after appending
    >>> append_indptr = torch.tensor([0, 3, 4], dtype=torch.int32)  # 3 new tokens, then 1
    >>> seq_lens = pkv.get_seq_lens(kv_indptr, kv_last_page_len, 4)
    >>> b, pos = pkv.get_batch_indices_positions(append_indptr, seq_lens, 4)
    >>> k, v = torch.randn(2, 4, 2, 64).half()
    >>> expected = cache.clone()
    >>> append_paged_kv_cache_ref(k, v, b, pos, expected, kv_indices, kv_indptr, kv_last_page_len)
    >>> pkv.append_paged_kv_cache(k, v, b, pos, cache, kv_indices, kv_indptr, kv_last_page_len)
    >>> # token 0 is position 4 of request 0: page kv_indices[0 + 4 // 4] = 1, slot 0, K
    >>> torch.equal(cache, expected), torch.equal(cache[1, 0, 0], k[0])
    (True, True)
    """
    k_cache, v_cache = unpack_paged_kv_cache(paged_kv_cache, kv_layout)
    num_kv_heads, head_dim = k_cache.shape[2 if kv_layout == "NHD" else 1], k_cache.shape[3]
    check_tensor("append_key", append_key, ndim=3)
    if append_key.dtype != k_cache.dtype:
        raise TypeError(f"append_key is {dtype_name(append_key.dtype)} but paged_kv_cache is "
                        f"{dtype_name(k_cache.dtype)}; appending copies without converting (quantize first)")
    nnz = append_key.shape[0]
    check_shape("append_key", append_key, (nnz, num_kv_heads, head_dim),
                "[nnz, num_kv_heads, head_dim] of paged_kv_cache")
    check_tensor("append_value", append_value, ndim=3, dtypes=(k_cache.dtype,))
    check_shape("append_value", append_value, append_key.shape, "the shape of append_key")
    for name, t in (("append_key", append_key), ("append_value", append_value)):
        if head_dim > 1 and t.stride(-1) != 1:
            raise ValueError(f"{name} must have a packed head_dim (last stride 1), got strides {tuple(t.stride())}")
    for name, t in (("batch_indices", batch_indices), ("positions", positions)):
        check_tensor(name, t, ndim=1, dtypes=INDEX_DTYPES)
        check_shape(name, t, (nnz,), "[nnz], nnz = append_key.shape[0]")
    batch_size = _check_indptr("kv_indptr", kv_indptr)
    check_tensor("kv_indices", kv_indices, ndim=1, dtypes=INDEX_DTYPES)
    _check_per_request("kv_last_page_len", kv_last_page_len, batch_size, "kv_indptr")
    check_same_device([("paged_kv_cache", k_cache), ("append_key", append_key), ("append_value", append_value),
                       ("batch_indices", batch_indices), ("positions", positions), ("kv_indices", kv_indices),
                       ("kv_indptr", kv_indptr), ("kv_last_page_len", kv_last_page_len)])
    if nnz == 0:
        return
    _call(_append_out, append_key, append_value, batch_indices, positions, k_cache, v_cache, kv_indices,
          kv_indptr, kv_last_page_len, kv_layout, backend)


# The out-writing functions as torch custom ops, so torch.compile(fullgraph=True) traces through them.
# They only write into their mutated arguments, so the fake implementations do nothing.
_call = mutating_ops({
    _append_out: ("append_paged_kv_cache", ("k_cache", "v_cache")),
    _batch_indices_positions_out: ("get_batch_indices_positions_out", ("batch_indices", "positions")),
})


# --------------------------------------------------------------------------------------------------
# Planning helpers (host side: these read index values and may synchronize).


def block_table_to_csr(block_table: torch.Tensor, seq_lens: torch.Tensor, page_size: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Convert vLLM's dense block table to FlashInfer's CSR page table.

    Request ``i`` has ``pages_i = ceil(seq_lens[i] / page_size)`` pages, ``block_table[i, :pages_i]``;
    the rest of its row is padding and is never read. ``kv_last_page_len`` is
    ``seq_lens % page_size``, or ``page_size`` where that is 0 and ``seq_lens > 0``. A request of length 0
    gets no pages and ``kv_last_page_len = 0`` (outside FlashInfer's stated ``[1, page_size]``; the
    kernels of aiter_ext accept it).

    Parameters
    ----------
    block_table : torch.Tensor
        ``[num_reqs, max_blocks_per_req]`` int32 (int64 accepted), physical page ids in order.
        Slice vLLM's persistent ``[max_num_reqs, ...]`` buffer to the live requests first.
    seq_lens : torch.Tensor
        ``[num_reqs]`` int32/int64, each request's full KV length including new tokens.
    page_size : int
        vLLM's ``block_size``.

    Returns
    -------
    kv_indptr : ``[num_reqs + 1]`` int32; kv_indices : ``[kv_indptr[-1]]`` int32;
    kv_last_page_len : ``[num_reqs]`` int32; all on ``block_table``'s device.

    Note
    ----
    A planning-time helper: the size of ``kv_indices`` depends on the data, so this reads
    ``seq_lens`` back to the host (a device sync on a GPU) and cannot be captured in a graph. Raises
    ``ValueError`` when a request needs more pages than ``block_table`` has columns, a length is
    negative, or a page id in use is negative (vLLM's padding value showing up inside a request).

    Examples
    --------
    >>> import torch, aiter_ext.ops.paged_kv as pkv
    >>> bt = torch.tensor([[7, 2, 9], [5, -1, -1], [3, -1, -1]], dtype=torch.int32)
    >>> indptr, indices, last = pkv.block_table_to_csr(bt, torch.tensor([9, 0, 4], dtype=torch.int32), 4)
    >>> indptr.tolist(), indices.tolist(), last.tolist()
    ([0, 3, 3, 4], [7, 2, 9, 3], [1, 0, 4])
    """
    check_tensor("block_table", block_table, ndim=2, dtypes=INDEX_DTYPES)
    check_tensor("seq_lens", seq_lens, ndim=1, dtypes=INDEX_DTYPES)
    check_shape("seq_lens", seq_lens, block_table.shape[:1], "[num_reqs], num_reqs = block_table.shape[0]")
    _check_int("page_size", page_size, 1)
    check_same_device([("block_table", block_table), ("seq_lens", seq_lens)])
    device, max_blocks = block_table.device, block_table.shape[1]
    lens = seq_lens.to(torch.int64)
    _raise_at("seq_lens", lens < 0, lens, "must be >= 0")
    pages = (lens + page_size - 1) // page_size
    _raise_at("seq_lens", pages > max_blocks, lens,
              f"needs more than the {max_blocks} pages block_table has per request (page_size {page_size})")
    used = torch.arange(max_blocks, device=device)[None, :] < pages[:, None]
    bad = used & (block_table < 0)
    if bool(bad.any()):
        i, j = (int(x) for x in torch.nonzero(bad)[0])
        raise ValueError(f"block_table[{i}, {j}] = {int(block_table[i, j])} is a negative page id inside request "
                         f"{i}, whose seq_lens[{i}] = {int(lens[i])} needs {int(pages[i])} pages")
    kv_indices = block_table[used].to(torch.int32)  # row-major: each request's pages in order
    kv_indptr = torch.zeros(block_table.shape[0] + 1, dtype=torch.int32, device=device)
    kv_indptr[1:] = torch.cumsum(pages, 0)
    last = lens - (pages - 1).clamp(min=0) * page_size
    kv_last_page_len = torch.where(pages > 0, last, torch.zeros_like(last)).to(torch.int32)
    return kv_indptr, kv_indices, kv_last_page_len


def check_paged_kv_indices(kv_indptr: torch.Tensor, kv_indices: torch.Tensor, kv_last_page_len: torch.Tensor,
                           page_size: int, num_pages: Optional[int]) -> None:
    r"""Validate a CSR page table; raise ``ValueError``/``TypeError`` naming the argument and the first
    offending position.

    Checks: ``kv_indptr`` is 1-D int32 (int64 accepted), starts at 0, is nondecreasing and ends at
    ``len(kv_indices)``; every page id is in ``[0, num_pages)`` (``>= 0`` when ``num_pages`` is None: a
    ``plan()`` that does not see the cache checks the upper bound in ``run()``); ``kv_last_page_len`` is in
    ``[1, page_size]`` for a request with pages and 0 for a request without (vLLM's zero-length
    request). An empty batch (``kv_indptr = [0]``) is valid here; an op that cannot serve one says so.

    Parameters
    ----------
    kv_indptr : torch.Tensor
        ``[batch_size + 1]`` int32/int64.
    kv_indices : torch.Tensor
        ``[kv_indptr[-1]]`` int32/int64.
    kv_last_page_len : torch.Tensor
        ``[batch_size]`` int32/int64.
    page_size : int
        Tokens per page.
    num_pages : int or None
        Pages in the cache (``PagedKVLayout.num_pages``), or None when the cache is not known yet.

    Note
    ----
    Host side: reads the three tensors back (a device sync on a GPU). ``plan()`` functions call it;
    ``run()`` and :func:`append_paged_kv_cache` never do.

    Examples
    --------
    >>> import torch, aiter_ext.ops.paged_kv as pkv
    >>> i32 = lambda *x: torch.tensor(x, dtype=torch.int32)
    >>> pkv.check_paged_kv_indices(i32(0, 2, 2), i32(4, 0), i32(16, 0), page_size=16, num_pages=5)
    >>> pkv.check_paged_kv_indices(i32(0, 2, 1), i32(4, 0), i32(16, 0), page_size=16, num_pages=5)
    Traceback (most recent call last):
    ...
    ValueError: kv_indptr must be nondecreasing, but kv_indptr[2] = 1 < kv_indptr[1] = 2
    """
    batch_size = _check_indptr("kv_indptr", kv_indptr)
    check_tensor("kv_indices", kv_indices, ndim=1, dtypes=INDEX_DTYPES)
    _check_per_request("kv_last_page_len", kv_last_page_len, batch_size, "kv_indptr")
    _check_int("page_size", page_size, 1)
    if num_pages is not None:
        _check_int("num_pages", num_pages, 0)
    check_same_device([("kv_indptr", kv_indptr), ("kv_indices", kv_indices), ("kv_last_page_len", kv_last_page_len)])
    indptr, indices, last = (t.to("cpu", torch.int64) for t in (kv_indptr, kv_indices, kv_last_page_len))
    check_indptr_values("kv_indptr", indptr, indices.shape[0], "len(kv_indices)")
    if num_pages is None:
        _raise_at("kv_indices", indices < 0, indices, "is negative: page ids must be >= 0")
    else:
        _raise_at("kv_indices", (indices < 0) | (indices >= num_pages), indices,
                  f"is out of range [0, num_pages={num_pages})")
    has_pages = indptr[1:] > indptr[:-1]
    _raise_at("kv_last_page_len", has_pages & ((last < 1) | (last > page_size)), last,
              f"must be in [1, page_size={page_size}] for a request with pages")
    _raise_at("kv_last_page_len", ~has_pages & (last != 0), last, "must be 0 for a request with no pages")


def _raise_at(name: str, bad: torch.Tensor, values: torch.Tensor, what: str) -> None:
    """``ValueError`` at the first True of ``bad`` (1-D), quoting ``values`` there."""
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise ValueError(f"{name}[{i}] = {int(values[i])} {what}")
