"""Inputs that once reached memory outside their tensors (issue 13), for attention and the paged KV
cache; the sampling cases are in test_sampling.py. Each tensor is a view inside a larger buffer whose
guard values past its end would show a read (they change the result) or a write (they change)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import DEVICE  # noqa: E402

import aiter_ext  # noqa: E402
from aiter_ext.ops.paged_kv.backends import PAGED_KV_APPEND  # noqa: E402
from test_paged_kv import backend_params  # noqa: E402

I32 = torch.int32


def _workspace(dtype=torch.uint8):
    return torch.empty(1 << 20, dtype=dtype, device=DEVICE)


def test_single_prefill_refuses_v_shorter_than_k():
    q = torch.randn(4, 4, 64, device=DEVICE).half()
    buffer = torch.full((10, 2, 64), 1e4, device=DEVICE).half()  # guard rows past v
    k, v = torch.randn(9, 2, 64, device=DEVICE).half(), buffer[:8]
    with pytest.raises(ValueError, match=r"k and v must hold the same tokens"):
        aiter_ext.single_prefill_with_kv_cache(q, k, v)
    with pytest.raises(ValueError, match=r"k and v must hold the same tokens"):
        aiter_ext.single_decode_with_kv_cache(q[0], k, v)


def test_ragged_run_refuses_fewer_kv_rows_than_planned():
    w = aiter_ext.BatchPrefillWithRaggedKVCacheWrapper(_workspace())
    w.plan(torch.tensor([0, 3], dtype=I32), torch.tensor([0, 9], dtype=I32), 4, 2, 64, q_data_type=torch.float16)
    q = torch.randn(3, 4, 64, device=DEVICE).half()
    k = torch.randn(4, 2, 64, device=DEVICE).half()
    with pytest.raises(ValueError, match=r"k must be \[kv_indptr\[-1\] = 9, 2, 64\] as planned, got shape \(4, 2, 64\)"):
        w.run(q, k, k.clone())
    big = torch.randn(9, 2, 64, device=DEVICE).half()
    with pytest.raises(ValueError, match=r"v must be \[kv_indptr\[-1\] = 9"):
        w.run(q, big, k)
    assert torch.isfinite(w.run(q, big, big.clone())).all()  # as planned: runs


@pytest.mark.parametrize("backend", backend_params(PAGED_KV_APPEND))
def test_append_never_reads_past_kv_indices(backend):
    """kv_indptr[-1] = 5 with 3 entries in kv_indices: the tokens whose entries lie past the end are
    dropped. The entries past the view hold page 0 (the guard), which must stay untouched."""
    pages, page_size, heads, dim = 4, 2, 1, 16
    cache = torch.randn(pages, 2, page_size, heads, dim, device=DEVICE).half()
    before = cache.clone()
    buffer = torch.tensor([3, 1, 2, 0, 0, 0], dtype=I32, device=DEVICE)
    kv_indices = buffer[:3]  # guards: buffer[3:] = page 0
    kv_indptr = torch.tensor([0, 5], dtype=I32, device=DEVICE)
    last = torch.tensor([2], dtype=I32, device=DEVICE)
    nnz = 10  # positions 0..9: page-table entries 0..4
    k, v = torch.randn(nnz, heads, dim, device=DEVICE).half(), torch.randn(nnz, heads, dim, device=DEVICE).half()
    aiter_ext.append_paged_kv_cache(k, v, torch.zeros(nnz, dtype=I32, device=DEVICE),
                                    torch.arange(nnz, dtype=I32, device=DEVICE), cache, kv_indices, kv_indptr, last,
                                    backend=backend)
    assert torch.equal(cache[0], before[0]), "page 0 (the guard past kv_indices) was written"
    for entry, page in enumerate((3, 1, 2)):
        assert torch.equal(cache[page, 0], k[2 * entry: 2 * entry + 2]), f"entry {entry} (page {page})"
        assert torch.equal(cache[page, 1], v[2 * entry: 2 * entry + 2])


def test_misspelt_and_unsupported_keywords():
    q = torch.randn(4, 4, 64, device=DEVICE).half()
    k, v = torch.randn(9, 2, 64, device=DEVICE).half(), torch.randn(9, 2, 64, device=DEVICE).half()
    with pytest.raises(TypeError, match="casual"):
        aiter_ext.single_prefill_with_kv_cache(q, k, v, casual=True)
    with pytest.raises(ValueError, match="scale_q"):
        aiter_ext.single_prefill_with_kv_cache(q, k, v, scale_q=torch.ones(4, device=DEVICE))
    out = aiter_ext.single_prefill_with_kv_cache(q, k, v, causal=True, o_dtype=torch.float32)
    assert out.dtype == torch.float32
    i32 = lambda *x: torch.tensor(x, dtype=I32)  # noqa: E731
    for wrapper, args in ((aiter_ext.BatchPrefillWithRaggedKVCacheWrapper, (i32(0, 4), i32(0, 9), 4, 2, 64)),
                          (aiter_ext.BatchPrefillWithPagedKVCacheWrapper,
                           (i32(0, 4), i32(0, 3), i32(0, 1, 2), i32(1), 4, 2, 64, 4))):
        w = wrapper(_workspace(torch.int8))  # FlashInfer's users pass int8 workspaces too
        with pytest.raises(TypeError, match="casual"):
            w.plan(*args, casual=True)
        w.plan(*args, causal=True, fixed_split_size=4, disable_split_kv=True, o_data_type=torch.float16,
               q_data_type=torch.float16)  # FlashInfer's scheduling hints: accepted
        with pytest.raises(ValueError, match="prefix_len_ptr"):
            w.plan(*args, prefix_len_ptr=i32(0))
        with pytest.raises(ValueError, match="o_data_type"):
            w.plan(*args, o_data_type=torch.float32, q_data_type=torch.float16)


def test_negative_page_id_message_names_no_placeholder():
    w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(_workspace())
    with pytest.raises(ValueError) as info:
        w.plan(torch.tensor([0, 1], dtype=I32), torch.tensor([0, 2], dtype=I32), torch.tensor([0, -1], dtype=I32),
               torch.tensor([1], dtype=I32), 4, 2, 64, 4)
    assert "kv_indices[1] = -1 is negative" in str(info.value) and "4611686018427387904" not in str(info.value)
