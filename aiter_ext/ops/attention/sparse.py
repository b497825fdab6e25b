"""Block-sparse attention (issue 16): FlashInfer 0.7.2's ``BlockSparseAttentionWrapper`` on the attention engine.

A BSR matrix of ``R x C`` blocks (``indptr`` over the ``MB = ceil(M / R)`` block rows, ``indices`` the
block columns, ``N = NB * C``) is a paged prefill: block row i is a request of its ``R`` query rows
(the last may be shorter), and its listed block columns are its KV pages, page j being keys
``j*C .. j*C + C - 1`` of the contiguous K/V. So only listed blocks are read and computed, with the
engine's kernel, split-KV and custom masks as they are. This is what FlashInfer's fa2/fa3 backends do
too, so ``causal`` has their meaning: aligned bottom-right within each block row's gathered keys, not
global positions. A block row with no block gives zeros (and an LSE of -inf).

FlashInfer's other inputs (``block_mask``, ``kv_block_lens``, ``q2k_*``, ``kv_splits``, ``use_clc`` and
the Sage fp8 scales) belong to its VSA/cake backends; they are refused by name.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from aiter_ext.core.checks import check_tensor

from .engine import as_dtype, check_unsupported, host_int32
from .wrappers import BatchPrefillWithPagedKVCacheWrapper

#: FlashInfer's backend names that mean its paged-prefill kernels: aiter_ext's engine serves them
ENGINE_BACKENDS = {"auto": "auto", "fa2": "auto", "fa3": "auto", "triton": "triton", "torch": "torch"}
#: plan() keywords of FlashInfer's VSA/cake backends
VSA_ONLY = ("block_mask", "kv_block_lens", "q2k_indices", "q2k_num", "kv_splits", "use_clc", "q_scale", "k_scale",
            "v_scale")


def _engine_prefill(float_workspace_buffer, backend: str) -> BatchPrefillWithPagedKVCacheWrapper:
    """The paged prefill that a block-sparse wrapper plans: FlashInfer's fa2/fa3 names mean the engine."""
    if backend not in ENGINE_BACKENDS:
        raise ValueError(f"backend={backend!r} is not served: aiter_ext's block-sparse attention takes "
                         f"{sorted(ENGINE_BACKENDS)} (FlashInfer's VSA and cake backends have no counterpart)")
    return BatchPrefillWithPagedKVCacheWrapper(float_workspace_buffer, "NHD", backend=ENGINE_BACKENDS[backend])


def bsr_mask_to_requests(mask: torch.Tensor, indptr: list, M: int, R: int) -> torch.Tensor:
    """FlashInfer's BSR mask ``(nnz, R, C)`` as the engine's flattened per-request masks: block row i's
    ``[rows_i, n_i * C]`` (its blocks side by side; a short last row keeps its first rows), concatenated."""
    parts = []
    for i in range(len(indptr) - 1):
        blocks = mask[indptr[i]:indptr[i + 1]]  # [n_i, R, C]
        rows = min(R, M - i * R)
        parts.append(blocks[:, :rows].transpose(0, 1).reshape(-1))
    return torch.cat(parts) if parts else mask.reshape(-1)[:0]


#: NVIDIA tiles for block rows of at least 128 packed rows (R x query heads per KV head): the dense prefill's
#: 128 x 64 tiles. The engine's default sizes tiles by the longest request, and a block row is a short
#: request (R = 64 with 4 heads per KV head: 256 rows), so it took 64 x 32 tiles: on an H100 a 100%-dense
#: 64 x 64 BSR of 8192 x 8192 ran at 0.67x of the dense kernel's 128-row tiles (op_tests/bench_block_sparse.py).
#: AMD keeps the engine's compile-checked default (untimed there).
WIDE_BLOCK_ROW_TILES = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "prefetch_pages": True}


def block_row_config(rows_per_block_row: int, group: int) -> Optional[dict]:
    from aiter_ext.core.arch import device_info

    if device_info().arch.startswith("sm_") and rows_per_block_row * group >= WIDE_BLOCK_ROW_TILES["BLOCK_M"]:
        return dict(WIDE_BLOCK_ROW_TILES)
    return None


class BlockSparseAttentionWrapper:
    """FlashInfer 0.7.2's block-sparse attention: ``plan(indptr, indices, M, N, R, C, num_qo_heads,
    num_kv_heads, head_dim, mask=None, packed_mask=None, causal=False, ...)`` then ``run(q [M, Hq, D],
    k [N, Hkv, D], v [N, Hkv, D], return_lse=False)``. The output dtype is ``o_data_type`` (FlashInfer's
    default ``float16`` whatever q's dtype; pass ``o_data_type=torch.bfloat16`` for bf16 out)."""

    def __init__(self, float_workspace_buffer: torch.Tensor, backend: str = "auto"):
        self._paged = _engine_prefill(float_workspace_buffer, backend)
        self._shape = None  # (M, N, C, o dtype) from plan()
        self._tiles_from_shape = True  # plan() picks the tiles by R (block_row_config); False: _paged._config stays

    def reset_workspace_buffer(self, float_workspace_buffer, int_workspace_buffer=None) -> None:
        self._paged.reset_workspace_buffer(float_workspace_buffer, int_workspace_buffer)
        self._shape = None

    def plan(self, indptr, indices, M, N, R, C, num_qo_heads, num_kv_heads, head_dim, mask=None, packed_mask=None,
             causal=False, pos_encoding_mode="NONE", use_fp16_qk_reduction=False, logits_soft_cap=None, sm_scale=None,
             rope_scale=None, rope_theta=None, q_data_type="float16", kv_data_type=None, o_data_type="float16",
             non_blocking=True, block_mask=None, kv_block_lens=None, q2k_indices=None, q2k_num=None, kv_splits=None,
             use_clc=None, q_scale=None, k_scale=None, v_scale=None) -> None:
        given = {name: value for name, value in zip(VSA_ONLY, (block_mask, kv_block_lens, q2k_indices, q2k_num,
                                                               kv_splits, use_clc, q_scale, k_scale, v_scale))
                 if value is not None}
        if given:
            raise ValueError(f"{', '.join(given)}: FlashInfer's VSA/cake block-sparse inputs are not served; give "
                             f"the blocks as indptr/indices (BSR), or per-head masks to "
                             f"VariableBlockSparseAttentionWrapper")
        check_unsupported(pos_encoding_mode, use_fp16_qk_reduction, rope_scale, rope_theta)
        if indptr is None or indices is None:
            raise ValueError("indptr and indices (the BSR block rows and columns) are required")
        for name, value in (("R", R), ("C", C)):
            if int(value) <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        M, N, R, C = int(M), int(N), int(R), int(C)
        if M < 0 or N < 0 or N % C:
            raise ValueError(f"N ({N}) must be a non-negative multiple of C ({C}), and M ({M}) non-negative")
        rows = host_int32("indptr", indptr)
        if len(rows) - 1 != -(-M // R):
            raise ValueError(f"indptr has {len(rows) - 1} block rows; M={M} rows in blocks of R={R} make "
                             f"{-(-M // R)}")
        check_tensor("indices", indices, ndim=1, dtypes=(torch.int32, torch.int64))
        cols = indices.to("cpu", torch.int64)
        if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= N // C):
            raise ValueError(f"indices must lie in [0, N // C = {N // C}), got values in "
                             f"[{int(cols.min())}, {int(cols.max())}]")
        if mask is not None and packed_mask is None:
            check_tensor("mask", mask, ndim=3)
            if tuple(mask.shape[1:]) != (R, C) or mask.shape[0] != cols.numel():
                raise ValueError(f"mask must be (nnz={cols.numel()}, R={R}, C={C}), got {tuple(mask.shape)}")
            mask = bsr_mask_to_requests(mask.bool(), rows, M, R)
        qo_indptr = torch.tensor([min(i * R, M) for i in range(len(rows))], dtype=torch.int32)
        # every listed block is whole; an empty block row has no page (our page table wants 0 there)
        last = torch.tensor([C if rows[i + 1] > rows[i] else 0 for i in range(len(rows) - 1)], dtype=torch.int32)
        if self._tiles_from_shape:  # an experiment's explicit config (self._paged._config) stays
            self._paged._config = block_row_config(min(R, M), num_qo_heads // max(1, num_kv_heads))
        self._paged.plan(qo_indptr, torch.tensor(rows, dtype=torch.int32), cols.to(torch.int32), last, num_qo_heads,
                         num_kv_heads, head_dim, C, custom_mask=mask if packed_mask is None else None,
                         packed_custom_mask=packed_mask, causal=causal, pos_encoding_mode=pos_encoding_mode,
                         sm_scale=sm_scale, logits_soft_cap=logits_soft_cap, rope_scale=rope_scale,
                         rope_theta=rope_theta, q_data_type=q_data_type, kv_data_type=kv_data_type)
        self._shape = (M, N, C, as_dtype(o_data_type, "o_data_type"))

    begin_forward = plan

    def run(self, q, k, v, scale_q=None, scale_k=None, scale_v=None, out=None, lse=None, return_lse=False,
            enable_pdl=None):
        if self._shape is None:
            raise RuntimeError("BlockSparseAttentionWrapper.run() called before plan()")
        for name, value in (("scale_q", scale_q), ("scale_k", scale_k), ("scale_v", scale_v)):
            if value is not None:
                raise ValueError(f"{name}: FlashInfer's per-head fp8 scales (its fa3 fp8 path) are not served")
        M, N, C, o_dtype = self._shape
        check_tensor("k", k, ndim=3)
        check_tensor("v", v, ndim=3)
        for name, t in (("k", k), ("v", v)):
            if t.shape[0] != N:
                raise ValueError(f"{name} must have N={N} rows (plan()), got {t.shape[0]}")
        if out is not None:
            check_tensor("out", out, ndim=3, dtypes=(o_dtype,))
        pages = (k.reshape(N // C, C, *k.shape[1:]), v.reshape(N // C, C, *v.shape[1:]))
        same_dtype = o_dtype == q.dtype
        result = self._paged.run(q, pages, out=out if same_dtype else None, lse=lse, return_lse=return_lse)
        o = result[0] if return_lse else result
        if not same_dtype:  # FlashInfer's o_data_type: the kernel's output converted (a fixed-size copy)
            o = out.copy_(o) if out is not None else o.to(o_dtype)
        return (o, result[1]) if return_lse else o

    run_return_lse = functools.partialmethod(run, return_lse=True)

    def forward(self, q, k, v, scale_q=None, scale_k=None, scale_v=None, pos_encoding_mode="NONE",
                use_fp16_qk_reduction=False, logits_soft_cap=None, sm_scale=None, rope_scale=None, rope_theta=None):
        """FlashInfer's deprecated form: its arguments replace plan()'s and stay."""
        from .wrappers import _forward_overrides

        plan = self._paged._require_plan()
        _forward_overrides(self._paged, plan.causal, pos_encoding_mode, use_fp16_qk_reduction, -1, logits_soft_cap,
                           sm_scale, rope_scale, rope_theta)
        return self.run(q, k, v, scale_q, scale_k, scale_v)


def expanded_key_indices(block_mask_map: torch.Tensor, block_col_sz: torch.Tensor) -> tuple:
    """Host: for each (KV head h, block row i), in that order, the key rows it reads, as indices into the
    heads' keys laid end to end (head h's key j at ``h * kv_len + j``): the selected column blocks of
    row i, each expanded to its ``block_col_sz[h, c]`` keys. Returns (int32 indptr ``[H * MB + 1]``,
    int32 indices)."""
    mask = block_mask_map.to("cpu", torch.bool)
    cols = block_col_sz.to("cpu", torch.int64)
    heads = mask.shape[0]
    col_start = torch.cumsum(cols, 1) - cols + (torch.arange(heads) * cols.sum(1)[0])[:, None]  # [H, NB]
    h, _, c = mask.nonzero(as_tuple=True)
    lengths = cols[h, c]
    starts = torch.repeat_interleave(col_start[h, c], lengths)
    within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    row_len = (mask * cols[:, None, :]).sum(-1).reshape(-1)
    indptr = torch.zeros(row_len.numel() + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(row_len, 0)
    return indptr.to(torch.int32), (starts + within).to(torch.int32)


class VariableBlockSparseAttentionWrapper:
    """FlashInfer 0.7.2's block-sparse attention with variable block sizes and a mask per KV head:
    ``plan(block_mask_map [Hkv, MB, NB], block_row_sz [Hkv, MB], block_col_sz [Hkv, NB], num_qo_heads,
    num_kv_heads, head_dim, causal=False, ...)`` then ``run(q [Hq, qo_len, D], k [Hkv, kv_len, D], v)`` ->
    head-major ``[Hq, qo_len, D]`` (and LSE ``[Hq, qo_len]``), as FlashInfer returns them.

    As FlashInfer does, each (KV head, block row) is a request of a paged prefill with one KV head and
    one-key pages (the heads' keys end to end), so only selected blocks are read; ``causal`` is aligned
    bottom-right within a row's gathered keys. Each run copies q and the output between head-major and
    the kernel's layout, as FlashInfer does."""

    def __init__(self, float_workspace_buffer: torch.Tensor, backend: str = "auto"):
        self._paged = _engine_prefill(float_workspace_buffer, backend)
        self._shape = None  # (Hkv, group, qo_len, kv_len) from plan()

    reset_workspace_buffer = BlockSparseAttentionWrapper.reset_workspace_buffer

    def plan(self, block_mask_map, block_row_sz, block_col_sz, num_qo_heads, num_kv_heads, head_dim, causal=False,
             pos_encoding_mode="NONE", use_fp16_qk_reduction=False, logits_soft_cap=None, sm_scale=None,
             rope_scale=None, rope_theta=None, non_blocking=True, q_data_type="float16", kv_data_type=None) -> None:
        check_unsupported(pos_encoding_mode, use_fp16_qk_reduction, rope_scale, rope_theta)
        if num_qo_heads <= 0 or num_kv_heads <= 0 or num_qo_heads % num_kv_heads:
            raise ValueError(f"num_qo_heads ({num_qo_heads}) must be a positive multiple of num_kv_heads "
                             f"({num_kv_heads})")
        check_tensor("block_mask_map", block_mask_map, ndim=3)
        check_tensor("block_row_sz", block_row_sz, ndim=2, dtypes=(torch.int32, torch.int64))
        check_tensor("block_col_sz", block_col_sz, ndim=2, dtypes=(torch.int32, torch.int64))
        heads, mb, nb = block_mask_map.shape
        if heads != num_kv_heads or tuple(block_row_sz.shape) != (heads, mb) or tuple(block_col_sz.shape) != (heads, nb):
            raise ValueError(f"block_mask_map {tuple(block_mask_map.shape)}, block_row_sz {tuple(block_row_sz.shape)} "
                             f"and block_col_sz {tuple(block_col_sz.shape)} must be [num_kv_heads={num_kv_heads}, "
                             f"MB, NB], [num_kv_heads, MB] and [num_kv_heads, NB]")
        rows, cols = block_row_sz.to("cpu", torch.int64), block_col_sz.to("cpu", torch.int64)
        for name, sizes in (("block_row_sz", rows), ("block_col_sz", cols)):
            if bool((sizes < 0).any()) or bool((sizes.sum(1) != sizes[0].sum()).any()):
                raise ValueError(f"{name} must be non-negative and sum to the same length for every KV head, got "
                                 f"sums {sizes.sum(1).tolist()}")
        kv_indptr, kv_indices = expanded_key_indices(block_mask_map, cols)
        qo_indptr = torch.zeros(heads * mb + 1, dtype=torch.int32)
        qo_indptr[1:] = torch.cumsum(rows.reshape(-1), 0)
        last = (kv_indptr[1:] > kv_indptr[:-1]).to(torch.int32)  # one-key pages; an empty row has none
        self._paged.plan(qo_indptr, kv_indptr, kv_indices, last, num_qo_heads // num_kv_heads, 1, head_dim, 1,
                         causal=causal, pos_encoding_mode=pos_encoding_mode, sm_scale=sm_scale,
                         logits_soft_cap=logits_soft_cap, rope_scale=rope_scale, rope_theta=rope_theta,
                         q_data_type=q_data_type, kv_data_type=kv_data_type)
        self._shape = (heads, num_qo_heads // num_kv_heads, int(rows[0].sum()), int(cols[0].sum()))

    begin_forward = plan

    def run(self, q, k, v, out=None, lse=None, return_lse=False, enable_pdl=None):
        if self._shape is None:
            raise RuntimeError("VariableBlockSparseAttentionWrapper.run() called before plan()")
        heads, group, qo_len, kv_len = self._shape
        check_tensor("q", q, ndim=3)
        if tuple(q.shape[:2]) != (heads * group, qo_len):
            raise ValueError(f"q must be [num_qo_heads={heads * group}, qo_len={qo_len}, head_dim], got {tuple(q.shape)}")
        for name, t in (("k", k), ("v", v)):
            check_tensor(name, t, ndim=3)
            if tuple(t.shape[:2]) != (heads, kv_len):
                raise ValueError(f"{name} must be [num_kv_heads={heads}, kv_len={kv_len}, head_dim], got "
                                 f"{tuple(t.shape)}")
        for name, t, shape in (("out", out, q.shape), ("lse", lse, q.shape[:2])):
            if t is not None and tuple(t.shape) != tuple(shape):
                raise ValueError(f"{name} must be {tuple(shape)} (head-major, as q), got {tuple(t.shape)}")
        d = q.shape[-1]
        # head-major -> the kernel's rows: [(Hkv, qo_len), group, D]; keys end to end as one-key pages
        q_rows = q.reshape(heads, group, qo_len, d).transpose(1, 2).reshape(heads * qo_len, group, d)
        pages = (k.reshape(heads * kv_len, 1, 1, d), v.reshape(heads * kv_len, 1, 1, d))
        o, s = self._paged.run(q_rows, pages, return_lse=True)
        o = o.reshape(heads, qo_len, group, d).transpose(1, 2).reshape(heads * group, qo_len, d)
        s = s.reshape(heads, qo_len, group).transpose(1, 2).reshape(heads * group, qo_len)
        if out is not None:
            o = out.copy_(o)
        if lse is not None:
            s = lse.copy_(s)
        return (o, s) if return_lse else o

    run_return_lse = functools.partialmethod(run, return_lse=True)

    def forward(self, q, k, v, pos_encoding_mode="NONE", use_fp16_qk_reduction=False, logits_soft_cap=None,
                sm_scale=None, rope_scale=None, rope_theta=None):
        """FlashInfer's deprecated form: its arguments replace plan()'s and stay."""
        from .wrappers import _forward_overrides

        plan = self._paged._require_plan()
        _forward_overrides(self._paged, plan.causal, pos_encoding_mode, use_fp16_qk_reduction, -1, logits_soft_cap,
                           sm_scale, rope_scale, rope_theta)
        return self.run(q, k, v)
