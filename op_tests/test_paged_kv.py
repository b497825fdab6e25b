"""The paged KV cache layer: append_paged_kv_cache, get_seq_lens, get_batch_indices_positions,
block_table_to_csr, check_paged_kv_indices, unpack_paged_kv_cache / PagedKVLayout.

Appends run on every backend that can run here, for NHD and HND, 5-D and tuple caches, page sizes
1, 16 and 5, fp16/bf16/fp8, into caches filled with random bits (NaN and inf patterns included), and
are compared bit for bit: with the reference, and with an independent oracle that says which
(page, slot) each token lands in and that every other bit of the cache is unchanged.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import DEVICE, grid  # noqa: E402

from aiter_ext.core.backend import BackendUnavailableError  # noqa: E402
from aiter_ext.ops.paged_kv import (  # noqa: E402
    PagedKVLayout, append_paged_kv_cache, block_table_to_csr, check_paged_kv_indices,
    get_batch_indices_positions, get_seq_lens, unpack_paged_kv_cache,
)
from aiter_ext.ops.paged_kv import api  # noqa: E402
from aiter_ext.ops.paged_kv.backends import BATCH_INDICES_POSITIONS, PAGED_KV_APPEND  # noqa: E402
from aiter_ext.ops.paged_kv.reference import (  # noqa: E402
    append_paged_kv_cache_ref, block_table_to_csr_ref, get_batch_indices_positions_ref, get_seq_lens_ref,
)

I32 = torch.int32
DTYPES = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16"),
          pytest.param(torch.float8_e4m3fn, id="fp8e4m3fn")]
LAYOUTS = ["NHD", "HND"]
FORMS = ["5d", "tuple"]


def backend_params(op, names=("torch", "triton")):
    """One pytest param per backend; those that cannot run here are skipped, saying why."""
    params = []
    for name in names:
        ok, reason = op.usable(name, {"device": DEVICE.type})
        marks = () if ok else pytest.mark.skip(reason=f"{name} cannot run here: {reason}")
        params.append(pytest.param(name, id=name, marks=marks))
    return params


def i32(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=I32, device=DEVICE)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits, so comparisons are exact (NaN payloads included)."""
    return t.view({1: torch.uint8, 2: torch.int16}[t.element_size()])


def random_bits(shape, dtype) -> torch.Tensor:
    """Random bit patterns of ``dtype``: every value, NaN and inf included."""
    if torch.empty((), dtype=dtype).element_size() == 1:
        return torch.randint(0, 256, shape, dtype=torch.uint8, device=DEVICE).view(dtype)
    return torch.randint(-2**15, 2**15, shape, dtype=torch.int16, device=DEVICE).view(dtype)


def make_cache(form, layout, num_pages, page_size, heads, head_dim, dtype):
    if layout == "NHD":
        inner = (page_size, heads, head_dim)
    else:
        inner = (heads, page_size, head_dim)
    if form == "5d":
        return random_bits((num_pages, 2, *inner), dtype)
    return random_bits((num_pages, *inner), dtype), random_bits((num_pages, *inner), dtype)


def clone_cache(cache):
    return cache.clone() if isinstance(cache, torch.Tensor) else tuple(c.clone() for c in cache)


def cache_bits(cache, layout):
    """K and V bits indexed ``[page, slot, head, :]``."""
    k, v = unpack_paged_kv_cache(cache, layout)
    if layout == "HND":
        k, v = k.transpose(1, 2), v.transpose(1, 2)
    return bits(k), bits(v)


def make_batch(page_size, prior_lens, append_lens, num_pages, index_dtype=I32):
    """CSR page table after appending ``append_lens`` tokens to requests of ``prior_lens`` tokens, with
    pages drawn at random from a pool of ``num_pages`` (so unused pages lie between used ones)."""
    seq_lens = [p + a for p, a in zip(prior_lens, append_lens)]
    pages = [-(-s // page_size) for s in seq_lens]
    assert sum(pages) <= num_pages
    pool = torch.randperm(num_pages)[:sum(pages)].tolist()
    indptr = [0]
    for n in pages:
        indptr.append(indptr[-1] + n)
    last = [0 if s == 0 else s - page_size * (n - 1) for s, n in zip(seq_lens, pages)]
    append_indptr = [0]
    for a in append_lens:
        append_indptr.append(append_indptr[-1] + a)
    t = lambda x: torch.tensor(x, dtype=index_dtype, device=DEVICE)  # noqa: E731
    return {"kv_indptr": t(indptr), "kv_indices": t(pool), "kv_last_page_len": t(last),
            "append_indptr": t(append_indptr), "seq_lens": t(seq_lens), "nnz": append_indptr[-1]}


def expected_slots(batch, page_size):
    """(token, page, slot) of every appended token, computed here from the definition."""
    indptr, indices = batch["kv_indptr"].tolist(), batch["kv_indices"].tolist()
    append_indptr, seq_lens = batch["append_indptr"].tolist(), batch["seq_lens"].tolist()
    out = []
    for b in range(len(seq_lens)):
        n = append_indptr[b + 1] - append_indptr[b]
        for j in range(n):
            pos = seq_lens[b] - n + j
            out.append((append_indptr[b] + j, indices[indptr[b] + pos // page_size], pos % page_size))
    return out


def check_append(cache, before, layout, slots, k_app, v_app):
    """Each token's rows are where ``slots`` says; every other bit of the cache is unchanged."""
    k_new, v_new = cache_bits(cache, layout)
    k_old, v_old = cache_bits(before, layout)
    written = torch.zeros(k_new.shape[:2], dtype=torch.bool, device=DEVICE)
    for tok, page, slot in slots:
        assert torch.equal(k_new[page, slot], bits(k_app[tok])), f"K of token {tok} (page {page}, slot {slot})"
        assert torch.equal(v_new[page, slot], bits(v_app[tok])), f"V of token {tok} (page {page}, slot {slot})"
        written[page, slot] = True
    assert torch.equal(k_new[~written], k_old[~written]), "K bits outside the appended slots changed"
    assert torch.equal(v_new[~written], v_old[~written]), "V bits outside the appended slots changed"


# (prior lengths, appended lengths) per request, per page size. Covers: prefill into an empty
# request, decode (1 token), appends that cross one or more page boundaries, a request at a page
# boundary that opens a new page, last pages left partly full, and a request that appends nothing.
BATCHES = {
    16: ([0, 14, 16, 30, 5, 0, 40], [21, 5, 1, 1, 0, 16, 35]),
    1: ([0, 3, 4, 7, 1, 0, 10], [5, 1, 1, 2, 0, 4, 8]),
    5: ([3, 4, 5, 9, 2, 0, 7], [4, 3, 1, 1, 0, 5, 8]),  # 4+3 crosses a page; 5+1 opens one
}


@pytest.mark.parametrize("backend", backend_params(PAGED_KV_APPEND))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("page_size", [1, 16, 5])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("heads,head_dim", grid([(2, 64)], [(2, 64), (8, 128), (4, 256)]))
def test_append(backend, dtype, page_size, form, layout, heads, head_dim):
    prior, app = BATCHES[page_size]
    num_pages = sum(-(-(p + a) // page_size) for p, a in zip(prior, app)) + 7
    batch = make_batch(page_size, prior, app, num_pages)
    nnz = batch["nnz"]
    cache = make_cache(form, layout, num_pages, page_size, heads, head_dim, dtype)
    k_app, v_app = random_bits((nnz, heads, head_dim), dtype), random_bits((nnz, heads, head_dim), dtype)
    b_idx, pos = get_batch_indices_positions(batch["append_indptr"], batch["seq_lens"], nnz)
    args = (batch["kv_indices"], batch["kv_indptr"], batch["kv_last_page_len"])

    before, expected = clone_cache(cache), clone_cache(cache)
    append_paged_kv_cache_ref(k_app, v_app, b_idx, pos, expected, *args, kv_layout=layout)
    append_paged_kv_cache(k_app, v_app, b_idx, pos, cache, *args, kv_layout=layout, backend=backend)

    for got, want in zip(cache_bits(cache, layout), cache_bits(expected, layout)):
        assert torch.equal(got, want), "cache differs from the reference"
    check_append(cache, before, layout, expected_slots(batch, page_size), k_app, v_app)


@pytest.mark.parametrize("backend", backend_params(PAGED_KV_APPEND))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_append_fp8_e4m3fnuz_and_strided_inputs(backend, layout):
    """gfx942's fp8 (e4m3fnuz), int64 page tables, K/V slices of a fused QKV tensor, and a cache whose
    K and V are views of vLLM's [2, num_blocks, ...] tensor (non-default strides)."""
    dtype, page_size, heads, head_dim = torch.float8_e4m3fnuz, 16, 2, 64
    batch = make_batch(page_size, [3, 17, 0], [20, 1, 9], 12, index_dtype=torch.int64)
    nnz = batch["nnz"]
    qkv = random_bits((nnz, 4 * heads, head_dim), dtype)  # 2 q heads per kv head, then k, then v
    k_app, v_app = qkv[:, 2 * heads:3 * heads], qkv[:, 3 * heads:]
    inner = (page_size, heads, head_dim) if layout == "NHD" else (heads, page_size, head_dim)
    vllm = random_bits((2, 12, *inner), dtype)
    cache = (vllm[0], vllm[1])
    before = clone_cache(cache)
    b_idx, pos = get_batch_indices_positions(batch["append_indptr"], batch["seq_lens"], nnz)
    append_paged_kv_cache(k_app, v_app, b_idx.long(), pos.long(), cache, batch["kv_indices"], batch["kv_indptr"],
                          batch["kv_last_page_len"], layout, backend=backend)
    check_append(cache, before, layout, expected_slots(batch, page_size), k_app, v_app)


@pytest.mark.parametrize("backend", backend_params(PAGED_KV_APPEND))
def test_append_skips_padding_and_out_of_range_tokens(backend):
    """Tokens with batch index -1 (get_batch_indices_positions' padding), a position past the request's
    pages, a batch index past the batch, or a page id outside the cache are not written; a position
    past kv_last_page_len but inside the request's last page is (FlashInfer does not read it)."""
    page_size, heads, head_dim, dtype = 4, 2, 64, torch.float16
    batch = make_batch(page_size, [2, 5], [3, 2], 6)  # lengths 5 and 7: 2 pages each
    kv_indptr, kv_indices, kv_last_page_len = batch["kv_indptr"], batch["kv_indices"].clone(), batch["kv_last_page_len"]
    b_idx, pos = get_batch_indices_positions(batch["append_indptr"], batch["seq_lens"], 10)  # 5 padding tokens
    assert b_idx[5:].tolist() == [-1] * 5 and pos[5:].tolist() == [-1] * 5
    b_idx[6], pos[6] = 0, 8          # past request 0's two pages
    b_idx[7], pos[7] = 2, 0          # no request 2
    b_idx[8], pos[8] = 1, 0          # request 1's first page, whose id is made out of range below
    b_idx[9], pos[9] = 0, 6          # past request 0's length 5, inside its second page: written
    kv_indices[int(kv_indptr[1])] = 6
    cache = make_cache("5d", "NHD", 6, page_size, heads, head_dim, dtype)
    before = cache.clone()
    k_app, v_app = random_bits((10, heads, head_dim), dtype), random_bits((10, heads, head_dim), dtype)
    append_paged_kv_cache(k_app, v_app, b_idx, pos, cache, kv_indices, kv_indptr, kv_last_page_len, backend=backend)
    expected = before.clone()
    append_paged_kv_cache_ref(k_app, v_app, b_idx, pos, expected, kv_indices, kv_indptr, kv_last_page_len)
    assert torch.equal(bits(cache), bits(expected))
    slots = expected_slots({**batch, "kv_indices": kv_indices}, page_size)  # all 5 appended tokens land...
    slots.append((9, int(kv_indices[1]), 2))  # ...and token 9 at position 6: page 1 of request 0, slot 2
    check_append(cache, before, "NHD", slots, k_app, v_app)


@pytest.mark.parametrize("backend", [p for p in backend_params(PAGED_KV_APPEND) if p.id == "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn], ids=["bf16", "fp8e4m3fn"])
def test_append_large_tile(backend, dtype, monkeypatch):
    """The tile large appends use (CI shapes are small enough for the decode tile): forced on a batch
    whose row count is not a multiple of it."""
    from aiter_ext.ops.paged_kv import kernels

    monkeypatch.setattr(kernels, "SMALL_ROWS", 0)
    page_size, heads, head_dim = 16, 3, 64
    batch = make_batch(page_size, [5, 0, 31], [40, 29, 2], 12)
    nnz = batch["nnz"]
    cache = make_cache("tuple", "HND", 12, page_size, heads, head_dim, dtype)
    before = clone_cache(cache)
    k_app, v_app = random_bits((nnz, heads, head_dim), dtype), random_bits((nnz, heads, head_dim), dtype)
    b_idx, pos = get_batch_indices_positions(batch["append_indptr"], batch["seq_lens"], nnz)
    assert kernels.default_config(head_dim, k_app.element_size(), nnz * heads)["BLOCK_R"] > kernels.SMALL_BLOCK_R
    append_paged_kv_cache(k_app, v_app, b_idx, pos, cache, batch["kv_indices"], batch["kv_indptr"],
                          batch["kv_last_page_len"], "HND", backend=backend)
    check_append(cache, before, "HND", expected_slots(batch, page_size), k_app, v_app)


def test_append_nothing():
    cache = make_cache("5d", "HND", 3, 16, 2, 64, torch.bfloat16)
    before = cache.clone()
    empty = torch.empty(0, 2, 64, dtype=torch.bfloat16, device=DEVICE)
    none = torch.empty(0, dtype=I32, device=DEVICE)
    append_paged_kv_cache(empty, empty, none, none, cache, i32(0, 1), i32(0, 2), i32(16), "HND")
    assert torch.equal(bits(cache), bits(before))


def test_append_torch_compile_fullgraph():
    page_size, heads, head_dim, dtype = 5, 2, 64, torch.float16
    batch = make_batch(page_size, [4, 0], [3, 6], 8)
    nnz = batch["nnz"]
    k_app, v_app = torch.randn(2, nnz, heads, head_dim, device=DEVICE).to(dtype)
    args = (batch["kv_indices"], batch["kv_indptr"], batch["kv_last_page_len"])

    def step(k_app, v_app, append_indptr, kv_indptr, kv_last_page_len, kv_indices, cache):
        seq_lens = get_seq_lens(kv_indptr, kv_last_page_len, page_size)
        b_idx, pos = get_batch_indices_positions(append_indptr, seq_lens, nnz)
        append_paged_kv_cache(k_app, v_app, b_idx, pos, cache, kv_indices, kv_indptr, kv_last_page_len)
        return seq_lens

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for form in FORMS:
        cache = make_cache(form, "NHD", 8, page_size, heads, head_dim, dtype)
        expected = clone_cache(cache)
        b_idx, pos = get_batch_indices_positions_ref(batch["append_indptr"], batch["seq_lens"], nnz)
        append_paged_kv_cache_ref(k_app, v_app, b_idx, pos, expected, *args)
        seq_lens = compiled(k_app, v_app, batch["append_indptr"], batch["kv_indptr"], batch["kv_last_page_len"],
                            batch["kv_indices"], cache)
        assert torch.equal(seq_lens, batch["seq_lens"])
        for got, want in zip(cache_bits(cache, "NHD"), cache_bits(expected, "NHD")):
            assert torch.equal(got, want), form


@pytest.mark.skipif(not torch.cuda.is_available(), reason="graph capture needs a GPU")
def test_append_cuda_graph_capture():
    page_size, heads, head_dim, dtype = 16, 8, 128, torch.bfloat16
    batch = make_batch(page_size, [100, 7, 0], [1, 1, 1], 20)
    nnz = batch["nnz"]
    cache = make_cache("5d", "HND", 20, page_size, heads, head_dim, dtype)
    k_app, v_app = torch.randn(2, nnz, heads, head_dim, device=DEVICE).to(dtype)
    expected = cache.clone()
    b_idx, pos = get_batch_indices_positions_ref(batch["append_indptr"], batch["seq_lens"], nnz)
    append_paged_kv_cache_ref(k_app, v_app, b_idx, pos, expected, batch["kv_indices"], batch["kv_indptr"],
                              batch["kv_last_page_len"], "HND")

    def step():
        seq_lens = get_seq_lens(batch["kv_indptr"], batch["kv_last_page_len"], page_size)
        b, p = get_batch_indices_positions(batch["append_indptr"], seq_lens, nnz, backend="triton")
        append_paged_kv_cache(k_app, v_app, b, p, cache, batch["kv_indices"], batch["kv_indptr"],
                              batch["kv_last_page_len"], "HND", backend="triton")

    step()  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    cache.copy_(random_bits(cache.shape, dtype))
    before = cache.clone()
    expected = before.clone()
    append_paged_kv_cache_ref(k_app, v_app, b_idx, pos, expected, batch["kv_indices"], batch["kv_indptr"],
                              batch["kv_last_page_len"], "HND")
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(bits(cache), bits(expected))


# --------------------------------------------------------------------------------------------------
# get_seq_lens, get_batch_indices_positions


def test_get_seq_lens_hand_case():
    # pages 3, 1, 0, 2 with last pages of 13, 16, -, 1 tokens
    seq_lens = get_seq_lens(i32(0, 3, 4, 4, 6), i32(13, 16, 0, 1), 16)
    assert seq_lens.dtype == I32 and seq_lens.tolist() == [45, 16, 0, 17]
    assert get_seq_lens(i32(0, 2), i32(1), 1).tolist() == [2]
    assert get_seq_lens(i32(0), torch.empty(0, dtype=I32, device=DEVICE), 16).tolist() == []


@pytest.mark.parametrize("page_size", [1, 5, 16])
def test_get_seq_lens_random(page_size):
    lens = torch.randint(0, 100, (33,)).tolist()
    lens[3] = 0
    batch = make_batch(page_size, [0] * 33, lens, 2000 // page_size + 40, index_dtype=torch.int64)
    got = get_seq_lens(batch["kv_indptr"], batch["kv_last_page_len"], page_size)
    assert got.dtype == I32
    assert torch.equal(got, get_seq_lens_ref(batch["kv_indptr"], batch["kv_last_page_len"], page_size))
    assert got.tolist() == lens


@pytest.mark.parametrize("backend", backend_params(BATCH_INDICES_POSITIONS))
def test_batch_indices_positions_hand_cases(backend):
    # request 1 appends nothing; request 0 appends to 5 earlier tokens; nnz pads by one
    b, pos = get_batch_indices_positions(i32(0, 2, 2, 5), i32(7, 3, 3), 6, backend=backend)
    assert b.dtype == pos.dtype == I32
    assert b.tolist() == [0, 0, 2, 2, 2, -1] and pos.tolist() == [5, 6, 0, 1, 2, -1]
    # decode: one token per request; the first and the last requests of the batch append nothing
    b, pos = get_batch_indices_positions(i32(0, 0, 1, 2, 3, 3), torch.tensor([4, 9, 1, 30, 8], device=DEVICE), 3,
                                         backend=backend)
    assert b.tolist() == [1, 2, 3] and pos.tolist() == [8, 0, 29]
    b, pos = get_batch_indices_positions(i32(0), torch.empty(0, dtype=I32, device=DEVICE), 2, backend=backend)
    assert b.tolist() == [-1, -1] and pos.tolist() == [-1, -1]
    b, pos = get_batch_indices_positions(i32(0, 0), i32(3), 0, backend=backend)
    assert b.shape == pos.shape == (0,)


@pytest.mark.parametrize("backend", backend_params(BATCH_INDICES_POSITIONS))
@pytest.mark.parametrize("batch_size", grid([1, 7, 100], [1, 7, 100, 1000]))
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
def test_batch_indices_positions_random(backend, batch_size, index_dtype):
    append = torch.randint(0, 40, (batch_size,))
    append[torch.rand(batch_size) < 0.2] = 0  # some requests append nothing
    prior = torch.randint(0, 1000, (batch_size,))
    append_indptr = torch.cat([torch.zeros(1, dtype=torch.int64), append.cumsum(0)]).to(index_dtype).to(DEVICE)
    seq_lens = (prior + append).to(index_dtype).to(DEVICE)
    nnz = int(append.sum()) + 3  # padded past the last token
    b, pos = get_batch_indices_positions(append_indptr, seq_lens, nnz, backend=backend)
    b_ref, pos_ref = get_batch_indices_positions_ref(append_indptr, seq_lens, nnz)
    assert torch.equal(b, b_ref) and torch.equal(pos, pos_ref)
    assert b[-3:].tolist() == [-1] * 3


# --------------------------------------------------------------------------------------------------
# block_table_to_csr


def test_block_table_to_csr_hand_case():
    page_size = 4
    block_table = i32([7, 2, 9, -1], [5, -1, -1, -1], [3, 8, 1, 6], [4, 0, -1, -1]).view(4, 4)
    seq_lens = i32(9, 0, 16, 5)  # 3 pages (last has 1), none, 4 full pages, 2 pages (last has 1)
    indptr, indices, last = block_table_to_csr(block_table, seq_lens, page_size)
    assert indptr.dtype == indices.dtype == last.dtype == I32 and indptr.device == block_table.device
    assert indptr.tolist() == [0, 3, 3, 7, 9]
    assert indices.tolist() == [7, 2, 9, 3, 8, 1, 6, 4, 0]
    assert last.tolist() == [1, 0, 4, 1]
    assert torch.equal(get_seq_lens(indptr, last, page_size), seq_lens)
    check_paged_kv_indices(indptr, indices, last, page_size, num_pages=10)


@pytest.mark.parametrize("page_size", [1, 5, 16])
def test_block_table_to_csr_random(page_size):
    num_reqs, max_blocks = 25, 12
    block_table = torch.randint(0, 500, (num_reqs, max_blocks), dtype=I32, device=DEVICE)
    seq_lens = torch.randint(0, max_blocks * page_size + 1, (num_reqs,), dtype=I32, device=DEVICE)
    seq_lens[:3] = torch.tensor([0, page_size, max_blocks * page_size])
    pages = (seq_lens + page_size - 1) // page_size
    block_table[torch.arange(max_blocks, device=DEVICE)[None, :] >= pages[:, None]] = -1  # vLLM's padding
    got = block_table_to_csr(block_table, seq_lens, page_size)
    for g, w in zip(got, block_table_to_csr_ref(block_table, seq_lens, page_size)):
        assert torch.equal(g, w)
    assert torch.equal(get_seq_lens(got[0], got[2], page_size), seq_lens)
    check_paged_kv_indices(*got, page_size, num_pages=500)


# --------------------------------------------------------------------------------------------------
# unpack_paged_kv_cache / PagedKVLayout


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("form", FORMS)
def test_unpack_returns_views_and_layout_strides(form, layout):
    pages, page_size, heads, head_dim = 6, 5, 3, 64
    cache = make_cache(form, layout, pages, page_size, heads, head_dim, torch.bfloat16)
    k, v = unpack_paged_kv_cache(cache, layout)
    if form == "5d":
        assert k.data_ptr() == cache.data_ptr() and v.data_ptr() == cache[:, 1].data_ptr()
        assert k._base is cache and v._base is cache
    else:
        assert k.data_ptr() == cache[0].data_ptr() and v.data_ptr() == cache[1].data_ptr()
    k[2].fill_(0)  # a write through the view reaches the cache
    assert not (cache[2, 0] if form == "5d" else cache[0][2]).float().abs().sum()

    lay = PagedKVLayout.from_cache(cache, layout)
    assert (lay.num_pages, lay.page_size, lay.num_kv_heads, lay.head_dim) == (pages, page_size, heads, head_dim)
    assert lay.dtype == torch.bfloat16 and lay.kv_layout == layout
    hash(lay)  # usable as a plan key
    # The strides address cache[page, slot, head, :] in the underlying storage, in either layout.
    for t, strides in ((k, lay.k_strides), (v, lay.v_strides)):
        nhd = t if layout == "NHD" else t.transpose(1, 2)
        rebuilt = torch.as_strided(t, (pages, page_size, heads, head_dim), (*strides, 1), t.storage_offset())
        assert torch.equal(bits(rebuilt), bits(nhd))
    if form == "5d" and layout == "NHD":
        assert lay.k_strides == (2 * page_size * heads * head_dim, heads * head_dim, head_dim)
    if form == "5d" and layout == "HND":
        assert lay.k_strides == (2 * heads * page_size * head_dim, head_dim, page_size * head_dim)


# --------------------------------------------------------------------------------------------------
# Validation: each error names the argument.


def _good_append_args():
    batch = make_batch(4, [1, 2], [2, 3], 6)
    cache = make_cache("5d", "NHD", 6, 4, 2, 64, torch.float16)
    k_app, v_app = torch.randn(2, 5, 2, 64, device=DEVICE).half()
    b_idx, pos = get_batch_indices_positions_ref(batch["append_indptr"], batch["seq_lens"], 5)
    return dict(append_key=k_app, append_value=v_app, batch_indices=b_idx, positions=pos, paged_kv_cache=cache,
                kv_indices=batch["kv_indices"], kv_indptr=batch["kv_indptr"],
                kv_last_page_len=batch["kv_last_page_len"], kv_layout="NHD")


@pytest.mark.parametrize("case,exc,match", [
    ("layout nhd", ValueError, "kv_layout must be 'NHD' or 'HND', got 'nhd'"),
    ("layout None", ValueError, "kv_layout must be 'NHD' or 'HND'"),
    ("5d dim1 = 3", ValueError, "paged_kv_cache must be a 5-D tensor"),
    ("4d tensor", ValueError, "paged_kv_cache must be a 5-D tensor"),
    ("tuple of 3", ValueError, "paged_kv_cache as a tuple must hold two tensors"),
    ("tuple 3-D", ValueError, r"paged_kv_cache\[0\] \(k_cache\) must have 4 dimensions"),
    ("tuple shapes", ValueError, r"paged_kv_cache\[1\] \(v_cache\) must have shape"),
    ("tuple dtypes", TypeError, r"paged_kv_cache\[1\] \(v_cache\) is bf16 but paged_kv_cache\[0\] \(k_cache\) is fp16"),
    ("cache fp32", TypeError, r"paged_kv_cache\[:, 0\] \(K\) must be fp16, bf16"),
    ("cache list of arrays", TypeError, "paged_kv_cache must be a 5-D torch.Tensor or a"),
    ("head_dim not packed", ValueError, r"paged_kv_cache\[0\] \(k_cache\) must have a packed head_dim"),
    ("append_key dtype", TypeError, "append_key is bf16 but paged_kv_cache is fp16"),
    ("append_key heads", ValueError, "append_key must have shape"),
    ("append_value shape", ValueError, "append_value must have shape"),
    ("append_value dtype", TypeError, "append_value must be fp16"),
    ("append_key head_dim stride", ValueError, "append_key must have a packed head_dim"),
    ("positions length", ValueError, "positions must have shape"),
    ("batch_indices float", TypeError, "batch_indices must be int32, int64"),
    ("kv_indptr 2-D", ValueError, "kv_indptr must have 1 dimensions"),
    ("kv_last_page_len length", ValueError, "kv_last_page_len must have shape"),
    ("device", ValueError, "kv_indices is on meta"),
    ("backend", BackendUnavailableError, "'nope' was requested"),
])
def test_append_bad_input_raises_and_writes_nothing(case, exc, match):
    a = _good_append_args()
    cache = a["paged_kv_cache"]
    before = cache.clone()
    kwargs = {}
    if case == "layout nhd":
        a["kv_layout"] = "nhd"
    elif case == "layout None":
        a["kv_layout"] = None
    elif case == "5d dim1 = 3":
        a["paged_kv_cache"] = torch.cat([cache, cache[:, :1]], 1)
    elif case == "4d tensor":
        a["paged_kv_cache"] = cache[:, 0]
    elif case == "tuple of 3":
        a["paged_kv_cache"] = (cache[:, 0], cache[:, 1], cache[:, 1])
    elif case == "tuple 3-D":
        a["paged_kv_cache"] = (cache[:, 0, 0], cache[:, 1, 0])
    elif case == "tuple shapes":
        a["paged_kv_cache"] = (cache[:, 0], cache[:5, 1])
    elif case == "tuple dtypes":
        a["paged_kv_cache"] = (cache[:, 0], cache[:, 1].bfloat16())
    elif case == "cache fp32":
        a["paged_kv_cache"] = cache.float()
    elif case == "cache list of arrays":
        a["paged_kv_cache"] = "cache"
    elif case == "head_dim not packed":
        k = cache[:, 0].transpose(-1, -2).contiguous().transpose(-1, -2)
        a["paged_kv_cache"] = (k, cache[:, 1])
    elif case == "append_key dtype":
        a["append_key"] = a["append_key"].bfloat16()
    elif case == "append_key heads":
        a["append_key"] = a["append_key"][:, :1]
    elif case == "append_value shape":
        a["append_value"] = a["append_value"][:4]
    elif case == "append_value dtype":
        a["append_value"] = a["append_value"].bfloat16()
    elif case == "append_key head_dim stride":
        a["append_key"] = a["append_key"].transpose(0, 2).contiguous().transpose(0, 2)
    elif case == "positions length":
        a["positions"] = a["positions"][:4]
    elif case == "batch_indices float":
        a["batch_indices"] = a["batch_indices"].float()
    elif case == "kv_indptr 2-D":
        a["kv_indptr"] = a["kv_indptr"][None]
    elif case == "kv_last_page_len length":
        a["kv_last_page_len"] = a["kv_last_page_len"][:1]
    elif case == "device":
        a["kv_indices"] = a["kv_indices"].to("meta")
    elif case == "backend":
        kwargs["backend"] = "nope"
    with pytest.raises(exc, match=match):
        append_paged_kv_cache(**a, **kwargs)
    assert torch.equal(bits(cache), bits(before))


@pytest.mark.parametrize("indptr,indices,last,match", [
    ([1, 3, 4], [0, 1, 2], [2, 1], r"kv_indptr must start at 0, got kv_indptr\[0\] = 1"),
    ([0, 3, 2, 4], [0, 1, 2, 3], [1, 1, 1], r"kv_indptr must be nondecreasing, but kv_indptr\[2\] = 2 < kv_indptr\[1\] = 3"),
    ([0, 2, 4], [0, 1, 2], [1, 1], r"kv_indptr\[-1\] = 4 must equal len\(kv_indices\) = 3"),
    ([0, 2, 3], [0, 8, 2], [1, 1], r"kv_indices\[1\] = 8 is out of range \[0, num_pages=8\)"),
    ([0, 2, 3], [0, 1, -1], [1, 1], r"kv_indices\[2\] = -1 is out of range"),
    ([0, 2, 3], [0, 1, 2], [4, 0], r"kv_last_page_len\[1\] = 0 must be in \[1, page_size=4\] for a request with pages"),
    ([0, 2, 3], [0, 1, 2], [5, 1], r"kv_last_page_len\[0\] = 5 must be in \[1, page_size=4\]"),
    ([0, 2, 2], [0, 1], [4, 3], r"kv_last_page_len\[1\] = 3 must be 0 for a request with no pages"),
    ([0, 2, 3], [0, 1, 2], [1], r"kv_last_page_len must have shape \(2,\)"),
])
def test_check_paged_kv_indices_errors(indptr, indices, last, match):
    with pytest.raises(ValueError, match=match):
        check_paged_kv_indices(i32(*indptr), i32(*indices), i32(*last), page_size=4, num_pages=8)


def test_check_paged_kv_indices_types_and_good_tables():
    with pytest.raises(TypeError, match="kv_indptr must be int32, int64"):
        check_paged_kv_indices(torch.tensor([0.0, 1.0]), i32(0), i32(1), 4, 8)
    with pytest.raises(TypeError, match="page_size must be an int"):
        check_paged_kv_indices(i32(0, 1), i32(0), i32(1), 4.0, 8)
    with pytest.raises(ValueError, match="num_pages must be >= 0"):
        check_paged_kv_indices(i32(0, 1), i32(0), i32(1), 4, -1)
    check_paged_kv_indices(i32(0), i32(), i32(), 4, 8)  # an empty batch
    check_paged_kv_indices(i32(0, 0, 2).long(), i32(7, 0).long(), i32(0, 4).long(), 4, 8)  # int64, zero-length request


@pytest.mark.parametrize("case,exc,match", [
    ("too long", ValueError, r"seq_lens\[1\] = 13 needs more than the 3 pages block_table has"),
    ("negative", ValueError, r"seq_lens\[0\] = -1 must be >= 0"),
    ("padding inside", ValueError, r"block_table\[1, 2\] = -1 is a negative page id inside request 1"),
    ("rows", ValueError, "seq_lens must have shape"),
    ("dtype", TypeError, "block_table must be int32, int64"),
    ("page_size", ValueError, "page_size must be >= 1"),
])
def test_block_table_to_csr_errors(case, exc, match):
    block_table, seq_lens, page_size = i32([1, 2, 3], [4, 5, -1]).view(2, 3), i32(3, 8), 4
    if case == "too long":
        seq_lens = i32(3, 13)
    elif case == "negative":
        seq_lens = i32(-1, 8)
    elif case == "padding inside":
        seq_lens = i32(3, 9)
    elif case == "rows":
        seq_lens = i32(3)
    elif case == "dtype":
        block_table = block_table.float()
    elif case == "page_size":
        page_size = 0
    with pytest.raises(exc, match=match):
        block_table_to_csr(block_table, seq_lens, page_size)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: get_seq_lens(i32(0, 1), i32(1), 0), ValueError, "page_size must be >= 1"),
    (lambda: get_seq_lens(i32(0, 1), i32(1, 1), 4), ValueError, "kv_last_page_len must have shape"),
    (lambda: get_seq_lens(i32(), i32(), 4), ValueError, "kv_indptr must have batch_size \\+ 1 >= 1 entries"),
    (lambda: get_batch_indices_positions(i32(0, 1), i32(1), -1), ValueError, "nnz must be >= 0"),
    (lambda: get_batch_indices_positions(i32(0, 1), i32(1), 1.0), TypeError, "nnz must be an int"),
    (lambda: get_batch_indices_positions(i32(0, 1), i32(1, 2), 1), ValueError, "seq_lens must have shape"),
    (lambda: get_batch_indices_positions(i32(0, 1).float(), i32(1), 1), TypeError, "append_indptr must be int32"),
])
def test_helper_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_api_module_exports():
    import aiter_ext.ops.paged_kv as pkv

    for name in pkv.__all__:
        assert getattr(pkv, name) is getattr(api, name)


# --------------------------------------------------------------------------------------------------
# Benchmark CLI: python op_tests/test_paged_kv.py [--batch ...] [--append-len ...] [--graph]


def _bench_rows(batch_size, append_len, heads, head_dim, page_size, layout, dtype, fi, copy_gbs, graph):
    """Time append_paged_kv_cache (and get_batch_indices_positions) for requests of 1000 earlier
    tokens each appending ``append_len``; FlashInfer's output is checked bit for bit against ours."""
    from aiter_ext.core.bench import copy_time_us, time_us

    batch = make_batch(page_size, [1000] * batch_size, [append_len] * batch_size,
                       batch_size * (-(-(1000 + append_len) // page_size)) + 1)
    nnz = batch["nnz"]
    num_pages = batch["kv_indices"].shape[0] + 1
    cache = make_cache("5d", layout, num_pages, page_size, heads, head_dim, dtype)
    k_app, v_app = random_bits((nnz, heads, head_dim), dtype), random_bits((nnz, heads, head_dim), dtype)
    b_idx, pos = get_batch_indices_positions(batch["append_indptr"], batch["seq_lens"], nnz)
    args = (k_app, v_app, b_idx, pos, cache, batch["kv_indices"], batch["kv_indptr"], batch["kv_last_page_len"],
            layout)
    expected = cache.clone()
    append_paged_kv_cache_ref(*args[:4], expected, *args[5:])
    nbytes = 4 * k_app.numel() * k_app.element_size()  # K and V read once and written once
    fi_us = fi_graph_us = fi_match = None
    if fi is not None:
        theirs = cache.clone()
        fi.append_paged_kv_cache(*args[:4], theirs, *args[5:])
        fi_match = torch.equal(bits(theirs), bits(expected))
        fi_us = time_us(lambda: fi.append_paged_kv_cache(*args))
        fi_graph_us = time_us(lambda: fi.append_paged_kv_cache(*args), graph=True) if graph else None
    rows = []
    for backend in ("triton",):
        out = cache.clone()
        append_paged_kv_cache(*args[:4], out, *args[5:], backend=backend)
        assert torch.equal(bits(out), bits(expected)), f"{backend}: append differs from the reference"
        us = time_us(lambda: append_paged_kv_cache(*args, backend=backend))
        g_us = time_us(lambda: append_paged_kv_cache(*args, backend=backend), graph=True) if graph else None
        idx_us = time_us(lambda: get_batch_indices_positions(batch["append_indptr"], batch["seq_lens"], nnz,
                                                             backend=backend), graph=graph)
        best = g_us or us
        gbs = nbytes / best / 1e3
        rows.append({"batch": batch_size, "append_len": append_len, "nnz": nnz, "heads": heads, "head_dim": head_dim,
                     "page_size": page_size, "layout": layout, "dtype": str(dtype).replace("torch.", ""),
                     "backend": backend, "us": us, "graph_us": g_us, "GB/s": gbs, "%copy_bw": 100 * gbs / copy_gbs,
                     "%same_size_copy": 100 * copy_time_us(nbytes) / best,
                     "flashinfer_us": fi_us, "fi_graph_us": fi_graph_us,
                     "vs_flashinfer": (fi_graph_us or fi_us) / best if fi_us else None, "fi_identical": fi_match,
                     "indices_us": idx_us})
    return rows


def bench_main(argv=None) -> int:
    import argparse

    from aiter_ext.core.arch import device_info
    from aiter_ext.core.bench import benchmark_setup, copy_bandwidth_gbs, git_commit, markdown_table, warm_up_gpu

    parser = argparse.ArgumentParser(description="append_paged_kv_cache benchmark (beside FlashInfer when installed)")
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 64, 256])
    parser.add_argument("--append-len", type=int, nargs="*", default=[1, 512],
                        help="tokens each request appends (1 = decode); cases above 64K tokens are skipped")
    parser.add_argument("--heads", type=int, nargs="*", default=[8])
    parser.add_argument("--head-dim", type=int, nargs="*", default=[128])
    parser.add_argument("--page-size", type=int, nargs="*", default=[16])
    parser.add_argument("--layout", nargs="*", default=["NHD", "HND"], choices=["NHD", "HND"])
    parser.add_argument("--dtype", nargs="*", default=["bf16"], choices=["bf16", "fp16", "fp8"])
    parser.add_argument("--no-flashinfer", action="store_true")
    parser.add_argument("--graph", action="store_true", help="also time CUDA-graph replays (no launch overhead)")
    args = parser.parse_args(argv)
    ok, fi = benchmark_setup(args.no_flashinfer)
    if not ok:
        return 2
    warm_up_gpu()
    info = device_info()
    copy_gbs = copy_bandwidth_gbs()
    print(f"device {info.name} ({info.arch}, {info.cu_num} CUs), commit {git_commit()}, "
          f"FlashInfer {getattr(fi, '__version__', 'absent')}, measured copy bandwidth {copy_gbs:.0f} GB/s")
    print("us: median of triton.testing.do_bench (L2 cleared before each call), public API call; graph_us: "
          "CUDA-graph replays (no launch overhead); GB/s counts K and V read once and written once")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.float8_e4m3fn}
    rows = []
    for dt in args.dtype:
        for layout in args.layout:
            for ps in args.page_size:
                for h in args.heads:
                    for d in args.head_dim:
                        for b in args.batch:
                            for n in args.append_len:
                                if b * n <= 65536:
                                    rows += _bench_rows(b, n, h, d, ps, layout, dtypes[dt], fi, copy_gbs, args.graph)
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(bench_main())
