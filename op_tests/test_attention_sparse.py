"""Block-sparse attention (issue 16): FlashInfer 0.7.2's BlockSparseAttentionWrapper against dense fp32
attention over the original K/V with the BSR blocks expanded into a mask (reference.bsr_dense_mask), on
random BSR matrices with an empty block row and a short last one; FlashInfer's test grid for R and C
(trimmed on the interpreter); masks inside blocks, packed or not; its argument forms and refusals."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import DEVICE  # noqa: E402

import aiter_ext  # noqa: E402
from aiter_ext.core.testing import assert_close  # noqa: E402
from aiter_ext.ops.attention.reference import bsr_dense_mask, single_attention_ref  # noqa: E402

DTYPE = torch.float16 if DEVICE.type == "cpu" else torch.bfloat16
HQ, HKV, D = 4, 2, 64
ON_GPU = DEVICE.type == "cuda"


def _workspace():
    return torch.empty(32 << 20, dtype=torch.uint8, device=DEVICE)


def _bsr(M, N, R, C, density, seed):
    """A random BSR (int32 on the host): block row 1 empty when there are several."""
    gen = torch.Generator().manual_seed(seed)
    MB, NB = -(-M // R), N // C
    dense = torch.rand(MB, NB, generator=gen) < density
    if MB > 1:
        dense[1] = False
    dense[0, 0] = True
    indptr = torch.zeros(MB + 1, dtype=torch.int32)
    indptr[1:] = dense.sum(1).cumsum(0)
    indices = dense.nonzero()[:, 1].to(torch.int32)
    return indptr, indices


def _qkv(M, N, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(M, HQ, D, generator=gen).to(DTYPE).to(DEVICE)
    k = torch.randn(N, HKV, D, generator=gen).to(DTYPE).to(DEVICE)
    v = torch.randn(N, HKV, D, generator=gen).to(DTYPE).to(DEVICE)
    return q, k, v


def _dense_ref(q, k, v, indptr, indices, M, N, R, C, mask=None, causal=False):
    """The fp32 reference: dense attention with the listed blocks (and their mask bits) visible; its output,
    LSE and the visibility matrix."""
    visible = bsr_dense_mask(indptr, indices, M, N, R, C, mask.cpu() if mask is not None else None, causal)
    out, lse = single_attention_ref(q, k, v, custom_mask=visible.to(DEVICE))
    return out, lse, visible


GRID = [(M, N, R, C) for M, N in ((70, 64),) for R, C in ((1, 16), (4, 16), (16, 1), (16, 4))] if not ON_GPU else \
    [(M, N, R, C) for M, N in ((256, 256), (1000, 4096)) for R in (1, 4, 16) for C in (1, 4, 16)]


@pytest.mark.parametrize("M,N,R,C", GRID)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_block_sparse_matches_dense_attention(M, N, R, C, causal, with_mask):
    indptr, indices = _bsr(M, N, R, C, 0.4, seed=M + N + R * 7 + C)
    q, k, v = _qkv(M, N, seed=R + C)
    mask = None
    if with_mask:
        gen = torch.Generator().manual_seed(5)
        mask = (torch.rand(indices.numel(), R, C, generator=gen) < 0.7).to(DEVICE)
    w = aiter_ext.BlockSparseAttentionWrapper(_workspace())
    w.plan(indptr, indices, M, N, R, C, HQ, HKV, D, mask=mask, causal=causal, q_data_type=DTYPE, o_data_type=DTYPE)
    out = torch.full_like(q, float("nan"))
    lse = torch.full((M, HQ), float("nan"), device=DEVICE)
    o, s = w.run(q, k, v, out=out, lse=lse, return_lse=True)
    assert o is out and s is lse
    ref, ref_lse, visible = _dense_ref(q, k, v, indptr, indices, M, N, R, C, mask, causal)
    assert_close(out, ref, DTYPE, name="block-sparse output")
    seen = visible.any(1).to(DEVICE)
    assert torch.equal(out[~seen].float(), torch.zeros_like(out[~seen].float())), "rows with no key give 0"
    assert torch.allclose(lse[seen], ref_lse[seen], atol=2e-2), "block-sparse LSE"
    assert bool(torch.isinf(lse[~seen]).all() and (lse[~seen] < 0).all())


@pytest.mark.parametrize("causal", [False, True])
def test_wide_block_rows_take_the_dense_tiles(causal, monkeypatch):
    """On NVIDIA, block rows of >= 128 packed rows plan the dense prefill's 128 x 64 tiles (sparse.py); the
    result is the same attention. R = 64 here (64 x 2 heads per KV head); an arch of sm_90 as the GPU's."""
    from aiter_ext.core import arch
    from aiter_ext.ops.attention import sparse

    info = arch.device_info()
    monkeypatch.setattr(arch, "device_info", lambda: arch.DeviceInfo("sm_90", info.cu_num, info.platform, info.name))
    M, N, R, C = 150, 128, 64, 32
    assert sparse.block_row_config(R, HQ // HKV) == sparse.WIDE_BLOCK_ROW_TILES
    assert sparse.block_row_config(32, HQ // HKV) is None  # 64 packed rows: the engine's default
    indptr, indices = _bsr(M, N, R, C, 0.6, seed=12)
    q, k, v = _qkv(M, N, seed=13)
    w = aiter_ext.BlockSparseAttentionWrapper(_workspace())
    w.plan(indptr, indices, M, N, R, C, HQ, HKV, D, causal=causal, q_data_type=DTYPE, o_data_type=DTYPE)
    assert w._paged._require_plan().work.block_m == 128
    out = w.run(q, k, v, out=torch.full_like(q, float("nan")))
    assert_close(out, _dense_ref(q, k, v, indptr, indices, M, N, R, C, None, causal)[0], DTYPE, name="128-row tiles")


def test_a_fully_masked_row_gives_zero():
    """A row whose listed blocks' mask bits are all off sees nothing: output 0, LSE -inf (the rest exact)."""
    M, N, R, C = 16, 32, 4, 16
    indptr, indices = _bsr(M, N, R, C, 0.7, seed=8)
    q, k, v = _qkv(M, N, seed=9)
    mask = torch.rand(indices.numel(), R, C, generator=torch.Generator().manual_seed(10)) < 0.6
    mask[indptr[0]:indptr[1], 2] = False  # row 2 of block row 0: every bit off
    w = aiter_ext.BlockSparseAttentionWrapper(_workspace())
    w.plan(indptr, indices, M, N, R, C, HQ, HKV, D, mask=mask.to(DEVICE), q_data_type=DTYPE, o_data_type=DTYPE)
    out, lse = w.run(q, k, v, out=torch.full_like(q, float("nan")), return_lse=True)
    assert torch.equal(out[2].float(), torch.zeros(HQ, D, device=DEVICE)) and bool(torch.isinf(lse[2]).all())
    assert_close(out, _dense_ref(q, k, v, indptr, indices, M, N, R, C, mask)[0], DTYPE, name="the others")


def test_packed_mask_and_legacy_forms():
    M, N, R, C = 40, 64, 8, 16
    indptr, indices = _bsr(M, N, R, C, 0.5, seed=1)
    q, k, v = _qkv(M, N, seed=2)
    mask = torch.rand(indices.numel(), R, C, generator=torch.Generator().manual_seed(3)) < 0.6
    w = aiter_ext.BlockSparseAttentionWrapper(_workspace(), backend="fa2")  # FlashInfer's backend names serve
    w.plan(indptr, indices, M, N, R, C, HQ, HKV, D, mask=mask.to(DEVICE), q_data_type=DTYPE, o_data_type=DTYPE)
    want = w.run(q, k, v)
    from aiter_ext.ops.attention.sparse import bsr_mask_to_requests

    flat = bsr_mask_to_requests(mask, indptr.tolist(), M, R)
    lens = [min(R, M - i * R) * (int(indptr[i + 1]) - int(indptr[i])) * C for i in range(len(indptr) - 1)]
    seg = torch.zeros(len(lens) + 1, dtype=torch.int64)
    seg[1:] = torch.tensor(lens).cumsum(0)
    packed, _ = aiter_ext.segment_packbits(flat, seg, bitorder="little")
    p = aiter_ext.BlockSparseAttentionWrapper(_workspace())
    p.begin_forward(indptr, indices, M, N, R, C, HQ, HKV, D, packed_mask=packed.to(DEVICE), q_data_type=DTYPE,
                    o_data_type=DTYPE)
    assert torch.equal(p.run(q, k, v), want), "packed_mask gives mask's result"
    out, lse = p.run_return_lse(q, k, v)
    assert torch.equal(out, want) and lse.shape == (M, HQ)
    assert torch.equal(p.forward(q, k, v), want)


def test_output_dtype_is_o_data_type():
    """FlashInfer writes o_data_type (default float16, whatever q's dtype)."""
    M, N, R, C = 16, 32, 4, 16
    indptr, indices = _bsr(M, N, R, C, 0.6, seed=4)
    q, k, v = _qkv(M, N, seed=5)
    w = aiter_ext.BlockSparseAttentionWrapper(_workspace())
    w.plan(indptr, indices, M, N, R, C, HQ, HKV, D, q_data_type=DTYPE, o_data_type=torch.float32)
    out = w.run(q, k, v)
    assert out.dtype == torch.float32
    ref = _dense_ref(q, k, v, indptr, indices, M, N, R, C)[0]
    assert_close(out, ref, DTYPE, name="fp32 output")
    given = torch.full((M, HQ, D), float("nan"), device=DEVICE)
    assert w.run(q, k, v, out=given) is given and torch.equal(given, out)
    w.plan(indptr, indices, M, N, R, C, HQ, HKV, D, q_data_type=DTYPE)
    assert w.run(q, k, v).dtype == torch.float16


def test_bad_arguments_name_themselves():
    M, N, R, C = 16, 32, 4, 16
    indptr, indices = _bsr(M, N, R, C, 0.6, seed=6)
    q, k, v = _qkv(M, N, seed=7)
    w = aiter_ext.BlockSparseAttentionWrapper(_workspace())
    with pytest.raises(RuntimeError, match="before plan"):
        w.run(q, k, v)
    with pytest.raises(ValueError, match="backend='cake'"):
        aiter_ext.BlockSparseAttentionWrapper(_workspace(), backend="cake")
    with pytest.raises(ValueError, match="block_mask"):
        w.plan(indptr, indices, M, N, R, C, HQ, HKV, D, block_mask=torch.ones(HKV, 4, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="kv_splits"):
        w.plan(indptr, indices, M, N, R, C, HQ, HKV, D, kv_splits="auto")
    with pytest.raises(ValueError, match="indices must lie"):
        w.plan(indptr, indices + 2, M, N, R, C, HQ, HKV, D)
    with pytest.raises(ValueError, match="block rows"):
        w.plan(indptr, indices, M + R, N, R, C, HQ, HKV, D)
    with pytest.raises(ValueError, match="multiple of C"):
        w.plan(indptr, indices, M, N + 1, R, C, HQ, HKV, D)
    with pytest.raises(ValueError, match="mask must be"):
        w.plan(indptr, indices, M, N, R, C, HQ, HKV, D, mask=torch.ones(indices.numel(), R, C + 1, dtype=torch.bool))
    w.plan(indptr, indices, M, N, R, C, HQ, HKV, D, q_data_type=DTYPE, o_data_type=DTYPE)
    with pytest.raises(ValueError, match="k must have N=32"):
        w.run(q, k[:16], v)
    with pytest.raises(ValueError, match="scale_q"):
        w.run(q, k, v, scale_q=torch.ones(HQ))
    out = torch.full_like(q, 7.0)
    with pytest.raises(TypeError):
        w.run(q.float(), k, v, out=out)  # q's dtype is not plan()'s
    assert bool((out == 7.0).all()), "nothing written on a failed call"


# --------------------------------------------------------------------------------------------------
# VariableBlockSparseAttentionWrapper: a block mask per KV head, variable block sizes, head-major tensors


def _variable_dense_mask(block_mask_map, row_sz, col_sz, h, causal):
    """KV head h's dense [qo_len, kv_len] visibility (causal: bottom-right within each row's gathered keys)."""
    row_start = torch.cumsum(row_sz[h], 0) - row_sz[h]
    col_start = torch.cumsum(col_sz[h], 0) - col_sz[h]
    visible = torch.zeros(int(row_sz[h].sum()), int(col_sz[h].sum()), dtype=torch.bool)
    for i in range(row_sz.shape[1]):
        rows = int(row_sz[h, i])
        picked = [c for c in range(col_sz.shape[1]) if block_mask_map[h, i, c]]
        total = sum(int(col_sz[h, c]) for c in picked)
        g0 = 0
        for c in picked:
            width = int(col_sz[h, c])
            block = torch.ones(rows, width, dtype=torch.bool)
            if causal:
                g = g0 + torch.arange(width)
                block &= g[None, :] <= torch.arange(rows)[:, None] + total - rows
            r0, c0 = int(row_start[i]), int(col_start[c])
            visible[r0:r0 + rows, c0:c0 + width] = block
            g0 += width
    return visible


@pytest.mark.parametrize("causal", [False, True])
def test_variable_block_sparse_matches_dense_attention(causal):
    gen = torch.Generator().manual_seed(11)
    MB, NB = 4, 5
    # each KV head its own row and column sizes (summing to the same lengths) and its own mask; one empty row
    row_sz = torch.stack([torch.tensor([5, 9, 3, 7]), torch.tensor([8, 8, 4, 4])]).to(torch.int32)
    col_sz = torch.stack([torch.tensor([16, 8, 3, 13, 8]), torch.tensor([8, 8, 8, 8, 16])]).to(torch.int32)
    block_mask_map = torch.rand(HKV, MB, NB, generator=gen) < 0.5
    block_mask_map[0, 2] = False
    block_mask_map[1, :, 0] = True
    qo_len, kv_len = int(row_sz[0].sum()), int(col_sz[0].sum())
    q = torch.randn(HQ, qo_len, D, generator=gen).to(DTYPE).to(DEVICE)
    k = torch.randn(HKV, kv_len, D, generator=gen).to(DTYPE).to(DEVICE)
    v = torch.randn(HKV, kv_len, D, generator=gen).to(DTYPE).to(DEVICE)
    w = aiter_ext.VariableBlockSparseAttentionWrapper(_workspace())
    w.plan(block_mask_map.to(DEVICE), row_sz.to(DEVICE), col_sz.to(DEVICE), HQ, HKV, D, causal=causal,
           q_data_type=DTYPE)
    out = torch.full_like(q, float("nan"))
    o, lse = w.run(q, k, v, out=out, return_lse=True)
    assert o is out and out.shape == (HQ, qo_len, D) and lse.shape == (HQ, qo_len)
    group = HQ // HKV
    for h in range(HKV):
        visible = _variable_dense_mask(block_mask_map, row_sz, col_sz, h, causal).to(DEVICE)
        q_h = q[h * group:(h + 1) * group].transpose(0, 1)  # [qo_len, group, D]
        ref, ref_lse = single_attention_ref(q_h, k[h][:, None], v[h][:, None], custom_mask=visible)
        assert_close(out[h * group:(h + 1) * group].transpose(0, 1), ref, DTYPE, name=f"KV head {h}")
        seen = visible.any(1)
        got_lse = lse[h * group:(h + 1) * group].transpose(0, 1)
        assert torch.allclose(got_lse[seen], ref_lse[seen], atol=2e-2), f"KV head {h} LSE"
        assert bool(torch.isinf(got_lse[~seen]).all()), "a row with no block: LSE -inf"
    assert torch.equal(w.forward(q, k, v), out)


def test_variable_block_sparse_refusals():
    w = aiter_ext.VariableBlockSparseAttentionWrapper(_workspace())
    m = torch.ones(HKV, 2, 2, dtype=torch.bool)
    sizes = torch.full((HKV, 2), 8, dtype=torch.int32)
    with pytest.raises(ValueError, match="block_row_sz must be non-negative and sum"):
        w.plan(m, torch.tensor([[8, 8], [8, 9]], dtype=torch.int32), sizes, HQ, HKV, D)
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        w.plan(m, sizes, sizes, HQ * 3, 3, D)
    w.plan(m, sizes, sizes, HQ, HKV, D, q_data_type=DTYPE)
    q, k = torch.randn(HQ, 16, D).to(DTYPE).to(DEVICE), torch.randn(HKV, 16, D).to(DTYPE).to(DEVICE)
    with pytest.raises(ValueError, match="q must be"):
        w.run(q[:, :8], k, k)
    with pytest.raises(ValueError, match="k must be"):
        w.run(q, k[:, :8], k)
