"""Cascade (shared-prefix) attention against the fp32 reference: full attention over each request's
concatenated shared + unique KV.

Grid: FlashInfer's shared-prefix test (stage decode/append, batch 12/17, unique 17/37, shared
128/512/2048, heads 8/16, head dim 128/256, page size 1/16, fp16) on the GPU; a trimmed grid on the
CPU interpreter. Plus GQA groups 1/4/8, three levels, a request with an empty unique part, the
two-level wrappers and the functional form.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from attention_utils import i32, indptr_of  # noqa: E402
from conftest import DEVICE, backend_params, grid  # noqa: E402

import aiter_ext  # noqa: E402
from aiter_ext.core.testing import assert_close  # noqa: E402
from aiter_ext.ops.attention.backends import ATTENTION  # noqa: E402
from aiter_ext.ops.attention.reference import single_attention_ref  # noqa: E402

BACKENDS = backend_params(ATTENTION, ("triton", "torch"))
ATOL = {torch.float16: 2e-3, torch.bfloat16: 2e-2}


class Batch:
    """A paged cache holding a shared prefix (pages 0..) and each request's unique pages, with the page
    tables of every level and the per-request reference K/V."""

    def __init__(self, batch, shared_len, unique_lens, num_kv_heads, head_dim, page_size, dtype, layout="NHD",
                 group_len=None):
        self.page_size = page_size
        pages = lambda n: (n + page_size - 1) // page_size  # noqa: E731
        last = lambda n: n - (pages(n) - 1) * page_size if n else 0  # noqa: E731
        self.levels = []  # (kv_indptr, kv_indices, last_page_len, owners) per level, owners: request -> table row
        next_page = 0

        def take(n):
            nonlocal next_page
            ids = list(range(next_page, next_page + pages(n)))
            next_page += pages(n)
            return ids

        shared_ids = take(shared_len)
        self.levels.append(([0, len(shared_ids)], shared_ids, [last(shared_len)]))
        self.group_len = group_len
        if group_len is not None:  # a middle level: requests in pairs share a second prefix
            groups = [take(group_len) for _ in range((batch + 1) // 2)]
            self.levels.append((indptr_of(len(g) for g in groups).tolist(), sum(groups, []),
                                [last(group_len)] * len(groups)))
        unique_ids = [take(n) for n in unique_lens]
        self.levels.append((indptr_of(len(u) for u in unique_ids).tolist(), sum(unique_ids, []),
                            [last(n) for n in unique_lens]))
        shape = (next_page, 2, page_size, num_kv_heads, head_dim)
        self.cache = torch.randn(shape, device=DEVICE).to(dtype)
        self._k_all = self.cache[:, 0].reshape(-1, num_kv_heads, head_dim)
        self._v_all = self.cache[:, 1].reshape(-1, num_kv_heads, head_dim)
        tokens = lambda ids, n: (torch.arange(n) + ids[0] * page_size) if ids else torch.zeros(0, dtype=torch.long)  # noqa: E731
        self._token_idx = []  # each request's cache rows, shared first (pages of one level are consecutive)
        for b, n in enumerate(unique_lens):
            idx = [tokens(shared_ids, shared_len)]
            if group_len is not None:
                idx.append(tokens(groups[b // 2], group_len))
            idx.append(tokens(unique_ids[b], n))
            self._token_idx.append(torch.cat(idx).to(DEVICE))
        if layout == "HND":
            self.cache = self.cache.transpose(2, 3).contiguous()

    def kv(self, b):
        """Request ``b``'s concatenated (shared, [group,] unique) K and V, gathered on demand."""
        idx = self._token_idx[b]
        return self._k_all[idx], self._v_all[idx]

    def tables(self, qo_lens):
        """The four per-level arrays of MultiLevelCascadeAttentionWrapper.plan for these query lengths."""
        total = sum(qo_lens)
        qo = [i32([0, total])]
        if self.group_len is not None:
            pairs = [sum(qo_lens[i:i + 2]) for i in range(0, len(qo_lens), 2)]
            qo.append(indptr_of(pairs))
        qo.append(indptr_of(qo_lens))
        return (qo, [i32(t[0]) for t in self.levels], [i32(t[1]) for t in self.levels],
                [i32(t[2]) for t in self.levels])

    def reference(self, q, qo_lens, causal):
        outs, start = [], 0
        for b, n in enumerate(qo_lens):
            outs.append(single_attention_ref(q[start:start + n], *self.kv(b), causal)[0])
            start += n
        return torch.cat(outs)


def _workspace():
    # 0xFF bytes read as NaN in fp32: a partial state the kernels fail to write poisons the output
    return torch.full((128 << 20,), 255, dtype=torch.uint8, device=DEVICE)


CASCADE_GRID = grid(
    [(3, 17, 33, 4, 64, 16), (3, 5, 128, 4, 64, 1)],
    [(b, u, s, h, d, p) for b in (12, 17) for u in (17, 37) for s in (128, 512, 2048) for h in (8, 16)
     for d in (128, 256) for p in (1, 16)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stage", ["decode", "append"])
@pytest.mark.parametrize("batch,unique,shared,heads,head_dim,page_size", CASCADE_GRID,
                         ids=lambda v: str(v))
def test_two_level_cascade(backend, stage, batch, unique, shared, heads, head_dim, page_size):
    """FlashInfer's shared-prefix grid: MHA (Hq = Hkv), fp16, non-causal in decode, causal in append."""
    dtype = torch.float16
    data = Batch(batch, shared, [unique] * batch, heads, head_dim, page_size, dtype)
    qo_lens = [1] * batch if stage == "decode" else [min(unique, 7)] * batch
    causal = stage == "append"
    q = torch.randn(sum(qo_lens), heads, head_dim, device=DEVICE).to(dtype)
    w = aiter_ext.MultiLevelCascadeAttentionWrapper(2, _workspace(), backend=backend)
    w.plan(*data.tables(qo_lens), heads, heads, head_dim, page_size, causal=causal, q_data_type=dtype)
    out = w.run(q, data.cache)
    assert_close(out, data.reference(q, qo_lens, causal), dtype, name="out", atol=ATOL[dtype], rtol=1e-2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_cascade_gqa_three_levels_empty_unique(backend, group, layout):
    """Three levels (shared, per-pair, unique), GQA, causal on the last level, a request with no
    unique KV, and per-request query lengths that differ."""
    dtype = torch.float16
    num_kv_heads, head_dim, page_size = 2, 64, 16
    unique_lens = [9, 0, 33, 16]
    qo_lens = [3, 1, 5, 2]  # the request without unique KV decodes one token
    data = Batch(4, 40, unique_lens, num_kv_heads, head_dim, page_size, dtype, layout, group_len=21)
    q = torch.randn(sum(qo_lens), num_kv_heads * group, head_dim, device=DEVICE).to(dtype)
    w = aiter_ext.MultiLevelCascadeAttentionWrapper(3, _workspace(), layout, backend=backend)
    w.plan(*data.tables(qo_lens), num_kv_heads * group, num_kv_heads, head_dim, page_size, causal=True,
           q_data_type=dtype)
    out = w.run(q, data.cache)
    # causal on the last level only: request 1 (no unique KV) sees every shared and group key
    ref = []
    start = 0
    for b, (n, u) in enumerate(zip(qo_lens, unique_lens)):
        k, v = data.kv(b)
        shared_len = k.shape[0] - u
        qs = q[start:start + n]
        start += n
        # the unique part is causal within itself; all shared keys are visible
        ref.append(_prefix_plus_causal_ref(qs, k, v, shared_len))
    assert_close(out, torch.cat(ref), dtype, name="out", atol=ATOL[dtype], rtol=1e-2)


def _prefix_plus_causal_ref(q, k, v, prefix_len):
    """Attention where every prefix key is visible and the rest is causal (bottom-right) among itself."""
    from aiter_ext.ops.attention.reference import attention_mask

    qo_len, kv_len = q.shape[0], k.shape[0]
    visible = torch.ones(qo_len, kv_len, dtype=torch.bool, device=q.device)
    visible[:, prefix_len:] = attention_mask(qo_len, kv_len - prefix_len, True, -1, q.device)
    group = q.shape[1] // k.shape[1]
    logits = torch.einsum("qhd,khd->hqk", q.float(), k.float().repeat_interleave(group, 1)) / q.shape[-1] ** 0.5
    probs = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1).nan_to_num(0.0)
    return torch.einsum("hqk,khd->qhd", probs, v.float().repeat_interleave(group, 1)).to(q.dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_level_wrappers_and_functional_match_multilevel(backend):
    dtype, heads, head_dim, page_size = torch.float16, 4, 64, 16
    data = Batch(5, 48, [17] * 5, heads, head_dim, page_size, dtype)
    qo_lens = [1] * 5
    q = torch.randn(5, heads, head_dim, device=DEVICE).to(dtype)
    tables = data.tables(qo_lens)
    multi = aiter_ext.MultiLevelCascadeAttentionWrapper(2, _workspace(), backend=backend)
    multi.plan(*tables, heads, heads, head_dim, page_size, q_data_type=dtype)
    expected = multi.run(q, data.cache)
    assert_close(expected, data.reference(q, qo_lens, False), dtype, name="multi-level", atol=ATOL[dtype], rtol=1e-2)

    k0, v0 = data.kv(0)
    k_shared, v_shared = k0[:k0.shape[0] - 17], v0[:v0.shape[0] - 17]
    unique = aiter_ext.BatchDecodeWithSharedPrefixPagedKVCacheWrapper(_workspace(), backend=backend)
    unique.begin_forward(tables[1][1], tables[2][1], tables[3][1], heads, heads, head_dim, page_size, dtype)
    assert_close(unique.forward(q, k_shared, v_shared, data.cache), expected, dtype, name="two-level decode",
                 atol=ATOL[dtype], rtol=1e-2)

    prefill = aiter_ext.BatchPrefillWithSharedPrefixPagedKVCacheWrapper(_workspace(), backend=backend)
    prefill.begin_forward(tables[0][1], tables[1][1], tables[2][1], tables[3][1], heads, heads, head_dim, page_size)
    assert_close(prefill.forward(q, k_shared, v_shared, data.cache, causal=True), expected, dtype,
                 name="two-level prefill", atol=ATOL[dtype], rtol=1e-2)

    functional = aiter_ext.cascade_attention(q, data.cache, *tables, backend=backend, workspace=_workspace())
    assert_close(functional, expected, dtype, name="cascade_attention", atol=ATOL[dtype], rtol=1e-2)


def test_plan_checks_level_arrays():
    w = aiter_ext.MultiLevelCascadeAttentionWrapper(2, _workspace())
    with pytest.raises(ValueError, match="qo_indptr_arr must hold one tensor per level"):
        w.plan([i32([0, 1])], [i32([0, 1])] * 2, [i32([0])] * 2, [i32([1])] * 2, 4, 4, 64, 16)
    with pytest.raises(ValueError, match="must end at the same number of queries"):
        w.plan([i32([0, 2]), i32([0, 1])], [i32([0, 1])] * 2, [i32([0]), i32([1])], [i32([1])] * 2, 4, 4, 64, 16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_writes_into_a_given_out(backend):
    """``out=`` (ours: a serving engine's output buffer): the result lands in it, poisoned first, as without
    it; a wrong shape or dtype is refused by name before anything is written."""
    from aiter_ext.core.testing import poison_

    dtype, heads, dim, page = torch.float16, 4, 64, 16
    data = Batch(5, 40, [9] * 5, heads, dim, page, dtype)
    q = torch.randn(5, heads, dim, device=DEVICE).to(dtype)
    w = aiter_ext.MultiLevelCascadeAttentionWrapper(2, _workspace(), backend=backend)
    w.plan(*data.tables([1] * 5), heads, heads, dim, page, q_data_type=dtype)
    out = poison_(torch.empty_like(q))
    assert w.run(q, data.cache, out=out) is out
    assert_close(out, data.reference(q, [1] * 5, False), dtype, name="out", atol=ATOL[dtype], rtol=1e-2)
    for bad in (torch.empty(4, heads, dim, dtype=dtype, device=DEVICE), torch.empty_like(q, dtype=torch.float32)):
        poison_(bad)
        with pytest.raises((ValueError, TypeError), match="out"):
            w.run(q, data.cache, out=bad)
        assert bad.isnan().all(), "a refused call wrote into out"


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_takes_fp8_kv_dequantization_scales(backend):
    """``k_scale``/``v_scale`` (ours, as FlashInfer's decode run; a serving engine's fp8 KV cache): the
    result is attention over K * k_scale and V * v_scale, on both the merged (triton) and the per-level
    (torch) paths; a tensor scale is refused by name (reading it would be a sync)."""
    dtype, heads, dim, page, k_scale, v_scale = torch.float16, 4, 64, 16, 0.05, 3.0
    data = Batch(5, 40, [9] * 5, heads, dim, page, dtype)
    fp8 = torch.float8_e4m3fn
    cache8 = torch.stack([(data.cache[:, 0].float() / k_scale).to(fp8), (data.cache[:, 1].float() / v_scale).to(fp8)], 1)
    q = torch.randn(5, heads, dim, device=DEVICE).to(dtype)
    w = aiter_ext.MultiLevelCascadeAttentionWrapper(2, _workspace(), backend=backend)
    w.plan(*data.tables([1] * 5), heads, heads, dim, page, q_data_type=dtype, kv_data_type=fp8)
    out = w.run(q, cache8, k_scale=k_scale, v_scale=v_scale)
    k_all = cache8[:, 0].reshape(-1, heads, dim).float() * k_scale
    v_all = cache8[:, 1].reshape(-1, heads, dim).float() * v_scale
    ref = torch.cat([single_attention_ref(q[b:b + 1].float(), k_all[data._token_idx[b]], v_all[data._token_idx[b]])[0]
                     for b in range(5)])
    assert_close(out, ref, dtype, name="out", atol=ATOL[dtype], rtol=1e-2)
    out = w.run(q, cache8, k_scale=k_scale, v_scale=torch.tensor(v_scale, device=DEVICE))  # no sync: mul_
    assert_close(out, ref, dtype, name="out, v_scale a tensor", atol=ATOL[dtype], rtol=1e-2)
    with pytest.raises(TypeError, match="k_scale must be a real number"):
        w.run(q, cache8, k_scale=torch.tensor(k_scale))


# --------------------------------------------------------------------------------------------------
# Benchmark CLI: python op_tests/test_cascade.py  (GPU; beside FlashInfer when it is installed)


def _bench_case(batch, shared, unique, num_qo_heads, num_kv_heads, head_dim, page_size, fi, peak_tflops, copy_gbs):
    from aiter_ext.core.bench import time_us

    dtype = torch.bfloat16
    data = Batch(batch, shared, [unique] * batch, num_kv_heads, head_dim, page_size, dtype)
    qo_lens = [1] * batch
    q = torch.randn(batch, num_qo_heads, head_dim, device=DEVICE).to(dtype)
    tables = [[t.to(DEVICE) for t in arr] for arr in data.tables(qo_lens)]
    ws = _workspace()
    ours = aiter_ext.MultiLevelCascadeAttentionWrapper(2, ws)
    ours.plan(*tables, num_qo_heads, num_kv_heads, head_dim, page_size, q_data_type=dtype)
    # plain decode: each request's page list repeats the shared pages (what a non-cascade engine reads)
    shared_pages = tables[2][0]
    per_req = [torch.cat([shared_pages, tables[2][1][tables[1][1][b]:tables[1][1][b + 1]]]) for b in range(batch)]
    dec_indptr = torch.tensor([0] + [len(p) for p in per_req], device=DEVICE).cumsum(0).to(torch.int32)
    dec_indices, dec_last = torch.cat(per_req).to(torch.int32), tables[3][1]
    plain = aiter_ext.BatchDecodeWithPagedKVCacheWrapper(ws)
    plain.plan(dec_indptr, dec_indices, dec_last, num_qo_heads, num_kv_heads, head_dim, page_size, q_data_type=dtype)

    ref = data.reference(q, qo_lens, False)
    out = ours.run(q, data.cache)
    assert_close(out, ref, dtype, name="cascade", atol=ATOL[dtype], rtol=1e-2)
    assert_close(plain.run(q, data.cache), ref, dtype, name="plain decode", atol=ATOL[dtype], rtol=1e-2)
    us = time_us(lambda: ours.run(q, data.cache))
    graph_us = time_us(lambda: ours.run(q, data.cache), graph=True)
    plain_us = time_us(lambda: plain.run(q, data.cache))
    plain_graph_us = time_us(lambda: plain.run(q, data.cache), graph=True)
    fi_us = fi_plain_us = fi_graph_us = fi_plain_graph_us = None
    if fi is not None:
        fw = fi.MultiLevelCascadeAttentionWrapper(2, torch.empty(256 << 20, dtype=torch.uint8, device=DEVICE), "NHD")
        fw.plan(*tables, num_qo_heads, num_kv_heads, head_dim, page_size, q_data_type=dtype)
        assert_close(fw.run(q, data.cache), ref, dtype, name="FlashInfer cascade", atol=ATOL[dtype], rtol=1e-2)
        fi_us = time_us(lambda: fw.run(q, data.cache))
        fi_graph_us = time_us(lambda: fw.run(q, data.cache), graph=True)
        fd = fi.BatchDecodeWithPagedKVCacheWrapper(torch.empty(256 << 20, dtype=torch.uint8, device=DEVICE), "NHD",
                                                   use_tensor_cores=True)
        fd.plan(dec_indptr, dec_indices, dec_last, num_qo_heads, num_kv_heads, head_dim, page_size,
                q_data_type=dtype, kv_data_type=dtype)
        fi_plain_us = time_us(lambda: fd.run(q, data.cache))
        fi_plain_graph_us = time_us(lambda: fd.run(q, data.cache), graph=True)
    flops = 4 * batch * num_qo_heads * (shared + unique) * head_dim
    nbytes = 2 * (shared + batch * unique) * num_kv_heads * head_dim * 2 + 2 * q.numel() * 2
    floor_us = max(flops / (peak_tflops * 1e6), nbytes / (copy_gbs * 1e3))
    return {"batch": batch, "shared": shared, "unique": unique, "heads": f"{num_qo_heads}/{num_kv_heads}",
            "cascade_us": us, "graph_us": graph_us, "fi_graph_us": fi_graph_us, "floor_us": floor_us,
            "%floor": 100 * floor_us / us, "plain_decode_us": plain_us, "plain_graph_us": plain_graph_us,
            "cascade wins (graph)": graph_us < plain_graph_us, "fi_cascade_us": fi_us, "fi_plain_us": fi_plain_us,
            "fi_plain_graph_us": fi_plain_graph_us, "vs_fi": (fi_us / us) if fi_us else None}


#: ``--decision``: the serving plugins' cascade-or-plain choice (issue 15) at vLLM-like decode batches,
#: from the smallest shared prefix the thresholds allow (integrations/prefix.py) up
DECISION_GRID = tuple((b, s, 256) for s in (256, 1024, 8192) for b in (32, 64, 128, 256))


def bench_main(argv=None) -> int:
    from attention_utils import attention_bench_setup

    from aiter_ext.core.bench import git_commit, markdown_table

    argv = list(sys.argv[1:] if argv is None else argv)
    decision = "--decision" in argv
    if decision:
        argv.remove("--decision")
    page_size = 16
    if "--page" in argv:  # --page 1: SGLang's token-level pool (its plugin's cascade)
        i = argv.index("--page")
        page_size = int(argv[i + 1])
        del argv[i:i + 2]

    # An AMD launch of these shapes: the shared level packs 128 (or 64) queries x group 4 as rows of one
    # prefill; the unique level is a decode (4 packed rows); neither is causal in a decode step.
    code, ctx = attention_bench_setup("cascade attention benchmark (the issue's anchor shapes)",
                                      [(512, 4, False), (256, 4, False), (4, 4, False)], argv)
    if ctx is None:
        return code
    args, fi, copy_gbs = ctx
    print(f"device {torch.cuda.get_device_name()}, commit {git_commit()}, copy {copy_gbs:.0f} GB/s, "
          f"peak bf16 {args.peak_tflops} TFLOP/s; bf16, head_dim 128, page {page_size}, decode (1 query per request)")
    shapes = DECISION_GRID if decision else ((128, 32768, 256), (64, 4096, 256))
    rows = []
    for b, s, u in shapes:
        rows.append(_bench_case(b, s, u, 32, 8, 128, page_size, fi, args.peak_tflops, copy_gbs))
        print(markdown_table(rows[-1:]), flush=True)  # a call cut short keeps what it measured
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(bench_main())
