"""Test helpers for attention: random paged KV caches with shuffled page tables."""

from __future__ import annotations

import torch

from conftest import DEVICE


def i32(values) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.int32)


def indptr_of(lengths) -> torch.Tensor:
    out = [0]
    for n in lengths:
        out.append(out[-1] + int(n))
    return i32(out)


def random_paged_kv(kv_lens, num_kv_heads, head_dim, page_size, dtype, layout="NHD", spare_pages=3):
    """A 5-D cache of random values and a CSR page table over shuffled page ids (never 0..n in order,
    so a kernel that ignores kv_indices fails). Returns (cache, kv_indptr, kv_indices, kv_last_page_len),
    the page table on the CPU as plan() receives it."""
    pages_per_req = [(n + page_size - 1) // page_size for n in kv_lens]
    total = sum(pages_per_req) + spare_pages
    ids = torch.randperm(total)[: sum(pages_per_req)].to(torch.int32)
    shape = (total, 2, page_size, num_kv_heads, head_dim) if layout == "NHD" else \
        (total, 2, num_kv_heads, page_size, head_dim)
    cache = torch.randn(shape, device=DEVICE).to(dtype)
    last = [(n - (p - 1) * page_size) if p else 0 for n, p in zip(kv_lens, pages_per_req)]
    return cache, indptr_of(pages_per_req), ids, i32(last)


def kv_of(cache, layout="NHD"):
    """The 4-D K and V views of a 5-D cache."""
    return cache[:, 0], cache[:, 1]
