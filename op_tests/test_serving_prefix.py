"""Shared-prefix detection for the serving plugins (aiter_ext.integrations.prefix; issue 15), against a
brute-force Python reference on random block tables, and the two-level cascade decode planned from a
block table (aiter_ext.integrations.cascade) against fp32 attention over each request's whole sequence.
No serving framework is needed.

    python op_tests/test_serving_prefix.py   # host time of one detection at batch 256 (CPU tensors)
"""

from __future__ import annotations

import os
import random
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import DEVICE, grid  # noqa: E402

from aiter_ext.core.testing import assert_close
from aiter_ext.integrations.cascade import CascadeDecode, level_tables, token_level_tables
from aiter_ext.integrations.prefix import should_use_cascade, shared_prefix_blocks
from aiter_ext.ops.attention.reference import single_attention_ref


def _reference(table: list, seq_lens: list, block_size: int) -> int:
    shared = 0
    cap = min((n - 1) // block_size if n > 0 else 0 for n in seq_lens)
    while shared < cap and all(row[shared] == table[0][shared] for row in table):
        shared += 1
    return shared


def _random_batch(rng: random.Random, num_reqs: int, block_size: int, shared_blocks: int, padded_rows: int):
    """Block tables whose rows share ``shared_blocks`` leading ids, then distinct ids, then garbage in the
    unused tail (sometimes equal across rows, which must not count); rows past num_reqs are garbage too."""
    seq_lens = [rng.randint(1, 40 * block_size) + shared_blocks * block_size for _ in range(num_reqs)]
    max_blocks = max(-(-n // block_size) for n in seq_lens) + 3
    prefix = rng.sample(range(10_000), shared_blocks)
    table = []
    for b, n in enumerate(seq_lens):
        used = -(-n // block_size)
        own = [100_000 + 1000 * b + i for i in range(used - shared_blocks)]
        tail = [7] * (max_blocks - used)  # the same id in every row's unused tail
        table.append(prefix + own + tail)
    table += [[7] * max_blocks for _ in range(padded_rows)]
    return table, seq_lens + [0] * padded_rows


@pytest.mark.parametrize("num_reqs", [1, 2, 9, 64])
@pytest.mark.parametrize("shared_blocks", [0, 1, 5, 30])
@pytest.mark.parametrize("block_size", [1, 16])
def test_shared_prefix_blocks_matches_the_reference(num_reqs, shared_blocks, block_size):
    rng = random.Random(num_reqs * 1000 + shared_blocks * 10 + block_size)
    for _ in range(5):
        table, seq_lens = _random_batch(rng, num_reqs, block_size, shared_blocks, padded_rows=3)
        got = shared_prefix_blocks(torch.tensor(table, dtype=torch.int32), torch.tensor(seq_lens, dtype=torch.int32),
                                   num_reqs, block_size)
        assert got.dim() == 0
        assert int(got) == _reference(table[:num_reqs], seq_lens[:num_reqs], block_size)


def test_a_request_keeps_its_last_token():
    """Two requests with identical tables of 3 full blocks (48 tokens): at most 2 blocks are shared, so
    the last token of each stays in its unique level; one of 33 tokens caps it at 2 as well."""
    table = torch.tensor([[4, 5, 6], [4, 5, 6]], dtype=torch.int32)
    assert int(shared_prefix_blocks(table, torch.tensor([48, 48]), 2, 16)) == 2
    assert int(shared_prefix_blocks(table, torch.tensor([48, 33]), 2, 16)) == 2
    assert int(shared_prefix_blocks(table, torch.tensor([48, 32]), 2, 16)) == 1
    assert int(shared_prefix_blocks(table, torch.tensor([48, 1]), 2, 16)) == 0


def test_bad_arguments_name_themselves():
    table, lens = torch.zeros(4, 8, dtype=torch.int32), torch.full((4,), 20)
    with pytest.raises(ValueError, match="num_reqs"):
        shared_prefix_blocks(table, lens, 5, 16)
    with pytest.raises(ValueError, match="block_size"):
        shared_prefix_blocks(table, lens, 4, 0)
    with pytest.raises(ValueError, match="block_table"):
        shared_prefix_blocks(table[0], lens, 4, 16)


def test_cascade_decision_thresholds():
    assert should_use_cascade(4096, 8, 1)
    assert not should_use_cascade(255, 200, 1)
    assert not should_use_cascade(4096, 7, 1)
    # the measured rule (prefix.py): plain decode won at 32 and 64 requests x 256 shared tokens, the
    # cascade from 32 x 1024 and 128 x 256 up
    assert not should_use_cascade(256, 32, 1) and not should_use_cascade(256, 64, 1)
    assert should_use_cascade(256, 128, 1) and should_use_cascade(1024, 32, 1)
    assert not should_use_cascade(4096, 64, 2)  # not decode only
    assert not should_use_cascade(4096, 64, 1, sliding_window=True)
    assert not should_use_cascade(4096, 64, 1, alibi=True)


def _vllm_like_cache(num_blocks, block_size, num_kv_heads, head_dim, dtype):
    """K and V as vLLM 0.33's ROCm AITER backend hands them to attention: one ``[blocks, kv_heads, block_size,
    2 * head_dim]`` allocation (its LBHNC layout), split into two ``[blocks, block_size, kv_heads, head_dim]``
    strided views (rocm_aiter_fa's _split_kv_cache)."""
    cache = torch.randn(num_blocks, num_kv_heads, block_size, 2 * head_dim, device=DEVICE).to(dtype)
    return cache.transpose(1, 2).split(head_dim, dim=-1)


# bf16 on the GPU only: Triton 3.9's interpreter computes tl.dot of bf16 operands wrongly (a 16x16 bf16 dot
# came out off by 2e10; fp16 is exact), which is also why op_tests/test_attention.py's CPU grid is fp16
@pytest.mark.parametrize("dtype", grid([torch.float16], [torch.float16, torch.bfloat16]))
@pytest.mark.parametrize("shared_blocks, block_size", [(1, 16), (3, 16), (2, 32)])
def test_cascade_decode_from_a_block_table_matches_full_attention(dtype, shared_blocks, block_size):
    """Random block ids (shared ones first, then each request's own, the unused tail filled with ids the
    cascade must not read), random lengths past the prefix, GQA 8/2 heads, a soft cap and a scale."""
    torch.manual_seed(shared_blocks * 100 + block_size)
    num_reqs, hq, hkv, dim, num_blocks = 9, 8, 2, 64, 64
    lens = torch.randint(1, 3 * block_size, (num_reqs,)) + shared_blocks * block_size
    used = (lens + block_size - 1) // block_size
    ids = torch.randperm(num_blocks)
    table = torch.full((num_reqs + 2, int(used.max()) + 2), int(ids[-1]), dtype=torch.int32)  # padding rows too
    table[:, :shared_blocks] = ids[:shared_blocks]
    nxt = shared_blocks
    for b in range(num_reqs):
        table[b, shared_blocks:used[b]] = ids[nxt:nxt + used[b] - shared_blocks]
        nxt += int(used[b]) - shared_blocks
    assert int(shared_prefix_blocks(table, lens, num_reqs, block_size)) == shared_blocks
    k_cache, v_cache = _vllm_like_cache(num_blocks, block_size, hkv, dim, dtype)
    q = torch.randn(num_reqs, hq, dim, device=DEVICE).to(dtype)
    cascade = CascadeDecode(torch.device(DEVICE), workspace_bytes=16 << 20)
    cascade.plan(table, lens, shared_blocks, block_size, hq, hkv, dim, sm_scale=0.11, logits_soft_cap=30.0,
                 q_data_type=dtype)
    out = cascade.run(q, k_cache, v_cache)
    for b in range(num_reqs):
        pages = table[b, :used[b]].long().to(DEVICE)
        k = k_cache[pages].reshape(-1, hkv, dim)[:lens[b]]
        v = v_cache[pages].reshape(-1, hkv, dim)[:lens[b]]
        ref = single_attention_ref(q[b:b + 1], k, v, sm_scale=0.11, logits_soft_cap=30.0)[0]
        assert_close(out[b:b + 1], ref, dtype, name=f"request {b}")


def test_level_tables_checks_its_inputs():
    table, lens = torch.arange(12, dtype=torch.int32).reshape(3, 4), torch.tensor([40, 20, 33])
    t = level_tables(table, lens, 1, 16)
    assert t.kv_indptr[0].tolist() == [0, 1] and t.kv_indices[0].tolist() == [0]
    assert t.kv_indptr[1].tolist() == [0, 2, 3, 5] and t.kv_indices[1].tolist() == [1, 2, 5, 9, 10]
    assert t.last_page_len[1].tolist() == [8, 4, 1]
    with pytest.raises(ValueError, match="tokens past"):
        level_tables(table, torch.tensor([40, 16, 33]), 1, 16)
    with pytest.raises(ValueError, match="columns"):
        level_tables(table, torch.tensor([40, 20, 80]), 1, 16)
    with pytest.raises(ValueError, match="host"):
        level_tables(table.to("meta"), lens, 1, 16)


def test_token_level_tables_are_level_tables_of_one_token_pages():
    """SGLang's token pool (a slot a token): the tables gathered from the scattered rows of a token table
    equal level_tables over those rows with block size 1."""
    gen = torch.Generator().manual_seed(3)
    lens = torch.tensor([70, 65, 90, 66])
    table = torch.randperm(7 * 100, generator=gen).to(torch.int32).reshape(7, 100)
    table[:, :64] = table[0, :64]  # every row shares 64 leading slots
    rows = torch.tensor([5, 2, 6, 0])
    got = token_level_tables(table, rows, lens, lens.clone(), 64)
    want = level_tables(table[rows], lens, 64, 1)
    for name in got._fields:
        for level in (0, 1):
            assert torch.equal(getattr(got, name)[level], getattr(want, name)[level]), (name, level)
    with pytest.raises(ValueError, match="tokens past"):
        token_level_tables(table, rows, lens, torch.tensor([70, 64, 90, 66]), 64)


def main() -> int:
    """Host time of one detection plus its read (the per-step cost in a builder), CPU tensors."""
    import time

    rng = random.Random(0)
    table, seq_lens = _random_batch(rng, 256, 16, 64, padded_rows=0)
    table_t, lens_t = torch.tensor(table, dtype=torch.int32), torch.tensor(seq_lens, dtype=torch.int32)
    for _ in range(50):
        int(shared_prefix_blocks(table_t, lens_t, 256, 16))
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        int(shared_prefix_blocks(table_t, lens_t, 256, 16))
    print(f"batch 256 x {table_t.shape[1]} blocks: {(time.perf_counter() - t0) / n * 1e6:.1f} us per step (CPU tensors)")
    # what a cascade step adds on the host after that: the two levels' page tables and the plan (Llama-8B
    # heads; a CPU workspace, so no device copies are in the figure)
    shared = int(shared_prefix_blocks(table_t, lens_t, 256, 16))
    cascade = CascadeDecode(torch.device("cpu"), workspace_bytes=64 << 20)
    for _ in range(5):
        cascade.plan(table_t, lens_t, shared, 16, 32, 8, 128, q_data_type=torch.bfloat16)
    n = 50
    t0 = time.perf_counter()
    for _ in range(n):
        cascade.plan(table_t, lens_t, shared, 16, 32, 8, 128, q_data_type=torch.bfloat16)
    print(f"the cascade plan of that batch ({shared} shared blocks, {int(lens_t.sum())} tokens): "
          f"{(time.perf_counter() - t0) / n * 1e6:.0f} us per step (host)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
