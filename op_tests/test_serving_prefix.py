"""Shared-prefix detection for the serving plugins (aiter_ext.integrations.prefix; issue 15), against a
brute-force Python reference on random block tables. No serving framework is needed.

    python op_tests/test_serving_prefix.py   # host time of one detection at batch 256 (CPU tensors)
"""

from __future__ import annotations

import random
import sys

import pytest
import torch

from aiter_ext.integrations.prefix import should_use_cascade, shared_prefix_blocks


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
    assert should_use_cascade(256, 8, 1)
    assert not should_use_cascade(255, 8, 1)
    assert not should_use_cascade(4096, 7, 1)
    assert not should_use_cascade(4096, 64, 2)  # not decode only
    assert not should_use_cascade(4096, 64, 1, sliding_window=True)
    assert not should_use_cascade(4096, 64, 1, alibi=True)


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
