"""PyTorch references for the paged KV cache layer (FlashInfer's CSR page table).

A request ``b`` owns pages ``kv_indices[kv_indptr[b]:kv_indptr[b+1]]``, in logical order; its last page
holds ``kv_last_page_len[b]`` tokens, so its length is ``page_size * (num_pages - 1) + last_page_len``
(0 for a request with no pages). Token ``pos`` of request ``b`` lives in page
``kv_indices[kv_indptr[b] + pos // page_size]``, slot ``pos % page_size``.

These functions are readable rather than fast: loops over requests and tokens. They are the oracle of
the tests and the ``torch`` backend. Nothing here computes in floating point: appending is a copy.
"""

from __future__ import annotations

import torch


def get_seq_lens_ref(kv_indptr: torch.Tensor, kv_last_page_len: torch.Tensor, page_size: int) -> torch.Tensor:
    """int32 ``[B]``: each request's KV length; 0 for a request with no pages."""
    indptr, last = kv_indptr.tolist(), kv_last_page_len.tolist()
    lens = []
    for b in range(len(indptr) - 1):
        num_pages = indptr[b + 1] - indptr[b]
        lens.append(page_size * (num_pages - 1) + last[b] if num_pages > 0 else 0)
    return torch.tensor(lens, dtype=torch.int32, device=kv_indptr.device)


def get_batch_indices_positions_ref(append_indptr: torch.Tensor, seq_lens: torch.Tensor, nnz: int
                                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 ``[nnz]`` each: the request of appended token ``i`` and its position in that request.

    ``seq_lens`` are the lengths after appending, so the ``n`` tokens appended to request ``b`` take
    positions ``seq_lens[b] - n, ..., seq_lens[b] - 1``. Tokens ``i >= append_indptr[-1]`` (padding up
    to ``nnz``) get batch index -1 and position -1.
    """
    indptr, lens = append_indptr.tolist(), seq_lens.tolist()
    batch_indices = [-1] * nnz
    positions = [-1] * nnz
    for b in range(len(indptr) - 1):
        n = indptr[b + 1] - indptr[b]
        for j in range(n):
            i = indptr[b] + j
            if 0 <= i < nnz:
                batch_indices[i] = b
                positions[i] = lens[b] - n + j
    device = append_indptr.device
    return (torch.tensor(batch_indices, dtype=torch.int32, device=device),
            torch.tensor(positions, dtype=torch.int32, device=device))


def _nhd_views(paged_kv_cache, kv_layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V as views indexed ``[page, slot, head, :]`` whatever the layout."""
    if isinstance(paged_kv_cache, torch.Tensor):
        k, v = paged_kv_cache[:, 0], paged_kv_cache[:, 1]
    else:
        k, v = paged_kv_cache
    if kv_layout == "HND":
        k, v = k.transpose(1, 2), v.transpose(1, 2)
    return k, v


def append_paged_kv_cache_ref(append_key, append_value, batch_indices, positions, paged_kv_cache,
                              kv_indices, kv_indptr, kv_last_page_len, kv_layout: str = "NHD") -> None:
    """Write each appended token's K and V rows into its page and slot (in place, a plain copy).

    A token is skipped, as the kernel skips it, when its batch index is negative or not a request,
    or its position is negative or past its request's pages, or its page-table entry lies outside
    ``kv_indices``, or its page id is outside the cache.
    ``kv_last_page_len`` is not read (FlashInfer's kernel does not read it either): the page table
    bounds a write, the length within the last page does not.
    """
    k_cache, v_cache = _nhd_views(paged_kv_cache, kv_layout)
    num_pages, page_size = k_cache.shape[0], k_cache.shape[1]
    indptr, indices = kv_indptr.tolist(), kv_indices.tolist()
    batch_size = len(indptr) - 1
    for i, (b, pos) in enumerate(zip(batch_indices.tolist(), positions.tolist())):
        if not 0 <= b < batch_size or pos < 0 or pos // page_size >= indptr[b + 1] - indptr[b]:
            continue
        entry = indptr[b] + pos // page_size
        if not 0 <= entry < len(indices):
            continue
        page = indices[entry]
        if not 0 <= page < num_pages:
            continue
        k_cache[page, pos % page_size] = append_key[i]
        v_cache[page, pos % page_size] = append_value[i]


def block_table_to_csr_ref(block_table: torch.Tensor, seq_lens: torch.Tensor, page_size: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """vLLM's block table to ``(kv_indptr, kv_indices, kv_last_page_len)``, int32, one request at a time."""
    indptr, indices, last = [0], [], []
    for b, seq_len in enumerate(seq_lens.tolist()):
        num_pages = -(-seq_len // page_size)
        indices += block_table[b, :num_pages].tolist()
        indptr.append(indptr[-1] + num_pages)
        last.append(0 if seq_len == 0 else seq_len - page_size * (num_pages - 1))
    device = block_table.device
    return tuple(torch.tensor(x, dtype=torch.int32, device=device) for x in (indptr, indices, last))
