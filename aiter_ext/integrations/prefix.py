"""Shared-prefix detection for the serving plugins (issue 15): framework-free, on the engine's own tensors.

Neither vLLM 0.33 nor SGLang 0.5.23 passes a common-prefix length any more (vLLM's
``common_prefix_len`` is always 0; SGLang never had one), so aiter_ext's metadata builders find it: the
longest run of leading KV blocks whose ids are the same in every request's block table. Those blocks
are the cascade's shared level; the rest of each request is its unique level.

The floors are those of vLLM's former ``use_cascade_attention`` (a prefix of at least 256 tokens, at
least 8 requests, decode only, no sliding window or ALiBi). Above them, a measured rule decides: cascade
when the shared tokens it avoids re-reading, ``prefix * (requests - 1)``, reach ``MIN_SAVED_TOKENS``.
Fitted on an H100 (op_tests/test_cascade.py --decision, graph replays, 32/8 heads, d128, bf16, 256
unique tokens a request). Plain decode won at 32 and 64 requests with 256 shared tokens (17.6 against
23.2 us; 36.4 against 43.0). The two tied at 128 x 256 (69.2 against 68.5). Cascade won from 32 x 1024
(30.8 against 28.9) up to 256 x 8192 (1163 against 224). Not measured on an AMD GPU.
"""

from __future__ import annotations

import torch

#: vLLM's former use_cascade_attention thresholds
MIN_PREFIX_TOKENS = 256
MIN_REQUESTS = 8
#: shared tokens the cascade saves re-reading, prefix * (requests - 1), from which it beat plain decode
MIN_SAVED_TOKENS = 24576


def shared_prefix_blocks(block_table: torch.Tensor, seq_lens: torch.Tensor, num_reqs: int,
                         block_size: int) -> torch.Tensor:
    """The number of leading blocks that the first ``num_reqs`` rows of ``block_table``
    (``[rows >= num_reqs, max_blocks]``, block ids) have in common, as a 0-d int tensor on their device
    (no host sync here; the caller reads it once per step).

    Only whole blocks before each request's last token count (``(seq_len - 1) // block_size``), so
    every request keeps at least one token of its own, and the unused tail of a row (whatever ids
    it holds) can never count."""
    if block_table.dim() != 2 or seq_lens.dim() != 1:
        raise ValueError(f"block_table must be [requests, blocks] and seq_lens [requests], got "
                         f"{tuple(block_table.shape)} and {tuple(seq_lens.shape)}")
    if num_reqs < 1 or num_reqs > min(block_table.shape[0], seq_lens.shape[0]):
        raise ValueError(f"num_reqs must lie in [1, {min(block_table.shape[0], seq_lens.shape[0])}], got {num_reqs}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    rows = block_table[:num_reqs]
    same = (rows == rows[:1]).all(dim=0)
    run = same.to(torch.int32).cumprod(0).sum()
    own_token = ((seq_lens[:num_reqs].to(torch.int64) - 1).clamp(min=0) // block_size).min()
    return torch.minimum(run.to(torch.int64), own_token)


def should_use_cascade(prefix_tokens: int, num_reqs: int, max_query_len: int, *, sliding_window: bool = False,
                       alibi: bool = False) -> bool:
    """Whether a batch with ``prefix_tokens`` shared leading tokens takes the two-level cascade."""
    if sliding_window or alibi or max_query_len != 1:
        return False
    return (prefix_tokens >= MIN_PREFIX_TOKENS and num_reqs >= MIN_REQUESTS
            and prefix_tokens * (num_reqs - 1) >= MIN_SAVED_TOKENS)
