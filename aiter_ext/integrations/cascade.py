"""A two-level cascade decode planned from a serving engine's block table (issue 15): framework-free.

Level 0 is every request's query against the shared leading blocks (read once for the whole batch);
level 1 is each request's query against its own blocks after them. :class:`CascadeDecode` plans both
from a host copy of the block table and the sequence lengths, and runs them on K/V caches laid out as
``[blocks, block_size, kv_heads, head_dim]`` views of any strides (vLLM's split of its paged cache).

Planning is host work (as FlashInfer's ``plan``): the block table must be on the host. The serving
plugins say where that copy comes from and what it costs.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class LevelTables(NamedTuple):
    """One list per argument of ``MultiLevelCascadeAttentionWrapper.plan``, two levels each (host int32)."""

    qo_indptr: list
    kv_indptr: list
    kv_indices: list
    last_page_len: list


def level_tables(block_table: torch.Tensor, seq_lens: torch.Tensor, shared_blocks: int, block_size: int) -> LevelTables:
    """The two levels' page tables of a decode batch (one query per request) whose requests share their
    first ``shared_blocks`` blocks. ``block_table``: host ``[requests, >= blocks used]`` block ids;
    ``seq_lens``: host ``[requests]`` tokens each, every one above ``shared_blocks * block_size`` (each
    request keeps a token of its own, as integrations.prefix.shared_prefix_blocks guarantees)."""
    if block_table.device.type != "cpu" or seq_lens.device.type != "cpu":
        raise ValueError("block_table and seq_lens must be host tensors (planning reads them)")
    num_reqs = seq_lens.shape[0]
    if num_reqs < 1 or block_table.dim() != 2 or block_table.shape[0] < num_reqs:
        raise ValueError(f"block_table must be [requests >= {max(num_reqs, 1)}, blocks], got {tuple(block_table.shape)}")
    lens = seq_lens.to(torch.int64)
    blocks = (lens + block_size - 1) // block_size
    if shared_blocks < 1 or bool((lens <= shared_blocks * block_size).any()):
        raise ValueError(f"every request needs tokens past the {shared_blocks} shared blocks")
    if int(blocks.max()) > block_table.shape[1]:
        raise ValueError(f"block_table has {block_table.shape[1]} columns, a request uses {int(blocks.max())}")
    i32 = torch.int32
    own = blocks - shared_blocks
    cols = torch.arange(block_table.shape[1])
    own_mask = (cols[None, :] >= shared_blocks) & (cols[None, :] < blocks[:, None])
    return LevelTables(
        qo_indptr=[torch.tensor([0, num_reqs], dtype=i32), torch.arange(num_reqs + 1, dtype=i32)],
        kv_indptr=[torch.tensor([0, shared_blocks], dtype=i32),
                   torch.cat([torch.zeros(1, dtype=torch.int64), own.cumsum(0)]).to(i32)],
        # masked_select, not block_table[own_mask]: torch 2.13's CPU boolean indexing took 4.4 ms here at
        # batch 256 x 107 blocks, masked_select 35 us (op_tests/test_serving_prefix.py main)
        kv_indices=[block_table[0, :shared_blocks].to(i32), torch.masked_select(block_table[:num_reqs], own_mask).to(i32)],
        last_page_len=[torch.tensor([block_size], dtype=i32), (lens - (blocks - 1) * block_size).to(i32)])


def token_level_tables(token_table: torch.Tensor, row_ids: torch.Tensor, seq_lens: torch.Tensor,
                       seq_lens_cpu: torch.Tensor, shared_tokens: int) -> LevelTables:
    """The two levels' tables of a decode batch over a token-level KV pool (SGLang's ``req_to_token``:
    a slot id per token, so pages of one token): level 0 is the first request's first ``shared_tokens``
    slots, level 1 every request's slots after them. ``token_table``: ``[pool rows, tokens]`` slot ids on
    the device; ``row_ids``: each request's row; ``seq_lens`` (device) and ``seq_lens_cpu`` (host): its
    tokens, every one above ``shared_tokens``.

    The slots are gathered on the device and read back once (the cascade's plan reads its tables on
    the host): ``shared_tokens`` plus the requests' own tokens, not the whole ``[requests, tokens]``
    table that level_tables would need."""
    num_reqs = seq_lens_cpu.shape[0]
    lens = seq_lens_cpu.to(torch.int64)
    if num_reqs < 1 or shared_tokens < 1 or bool((lens <= shared_tokens).any()):
        raise ValueError(f"every request needs tokens past the {shared_tokens} shared ones")
    own = lens - shared_tokens
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), own.cumsum(0)])
    total = int(indptr[-1])
    dev = token_table.device
    rows = row_ids[:num_reqs].to(torch.int64)
    # each own token's request and column, with sizes from the host: no sync before the read back
    req = torch.repeat_interleave(torch.arange(num_reqs, device=dev), seq_lens[:num_reqs].to(torch.int64) - shared_tokens,
                                  output_size=total)
    col = torch.arange(total, device=dev) - indptr.to(dev)[req] + shared_tokens
    slots = torch.cat([token_table[rows[0], :shared_tokens], token_table[rows[req], col]]).to(torch.int32).cpu()
    i32 = torch.int32
    return LevelTables(
        qo_indptr=[torch.tensor([0, num_reqs], dtype=i32), torch.arange(num_reqs + 1, dtype=i32)],
        kv_indptr=[torch.tensor([0, shared_tokens], dtype=i32), indptr.to(i32)],
        kv_indices=[slots[:shared_tokens], slots[shared_tokens:]],
        last_page_len=[torch.tensor([1], dtype=i32), torch.ones(num_reqs, dtype=i32)])


class CascadeDecode:
    """A planned two-level cascade decode, reused by every layer of a step (the plan holds no layer state)."""

    def __init__(self, device: torch.device, workspace_bytes: int = 128 << 20):
        from aiter_ext import MultiLevelCascadeAttentionWrapper

        self._wrapper = MultiLevelCascadeAttentionWrapper(
            2, torch.empty(workspace_bytes, dtype=torch.uint8, device=device))
        self.shared_blocks = 0

    def plan(self, block_table: torch.Tensor, seq_lens: torch.Tensor, shared_blocks: int, block_size: int,
             num_qo_heads: int, num_kv_heads: int, head_dim: int, *, sm_scale: Optional[float] = None,
             logits_soft_cap: Optional[float] = None, q_data_type=torch.bfloat16, kv_data_type=None) -> None:
        self.plan_tables(level_tables(block_table, seq_lens, shared_blocks, block_size), block_size, num_qo_heads,
                         num_kv_heads, head_dim, sm_scale=sm_scale, logits_soft_cap=logits_soft_cap,
                         q_data_type=q_data_type, kv_data_type=kv_data_type)

    def plan_tables(self, tables: LevelTables, block_size: int, num_qo_heads: int, num_kv_heads: int, head_dim: int,
                    *, sm_scale: Optional[float] = None, logits_soft_cap: Optional[float] = None,
                    q_data_type=torch.bfloat16, kv_data_type=None) -> None:
        """Plan from tables already built (level_tables, token_level_tables)."""
        self._wrapper.plan(*tables, num_qo_heads, num_kv_heads, head_dim, block_size, causal=False,
                           sm_scale=sm_scale, logits_soft_cap=logits_soft_cap, q_data_type=q_data_type,
                           kv_data_type=kv_data_type)
        self.shared_blocks = int(tables.kv_indptr[0][-1])

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            out: Optional[torch.Tensor] = None, sinks: Optional[torch.Tensor] = None,
            k_scale: Optional[float] = None, v_scale: Optional[float] = None) -> torch.Tensor:
        """``q``: ``[requests, Hq, D]``; the caches: ``[blocks, block_size, Hkv, D]`` (NHD) views; ``out``:
        where the result goes (contiguous, q's shape and dtype), else a new tensor; ``sinks``: the layer's
        attention-sink logits ``[Hq]`` (gpt-oss), counted once over both levels; ``k_scale``/``v_scale``:
        an fp8 cache's dequantization scales (host numbers)."""
        return self._wrapper.run(q, (k_cache, v_cache), out=out, sinks=sinks, k_scale=k_scale, v_scale=v_scale)
