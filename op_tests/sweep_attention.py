"""Sweep the attention engine's kernel configs on a GPU, beside FlashInfer (an experiment, not a test).

    python op_tests/sweep_attention.py [--quick] [--ragged]

Cases: cascade's shared level (batch 128 x 32768 shared keys), long-context decode without sharing
(batch 32 x 16384 keys), and a causal batch prefill (8 x 2048). Prints, per case, the floor, the best
configs and FlashInfer's time; each config's output is checked against FlashInfer's (or the
reference) before it is timed.
"""

from __future__ import annotations

import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from attention_utils import bench_paged_case  # noqa: E402

from aiter_ext.core.bench import copy_bandwidth_gbs, markdown_table, warm_up_gpu  # noqa: E402



def _case(name, qo_lens, kv_lens, causal, configs, fi, peak, copy_gbs, ragged=False):
    rows = bench_paged_case(name, qo_lens, kv_lens, causal, configs, fi, peak, copy_gbs, ragged=ragged)
    good = sorted((r for r in rows if r.get("us")), key=lambda r: r["us"])
    floor = good[0]["floor_us"] if good else None
    print(f"\n## {name}: floor {floor} us, FlashInfer {good[0]['fi_us'] if good else None} us; "
          f"{len(good)}/{len(rows)} configs ran")
    print(markdown_table(good[:6]))
    bad = [r for r in rows if not r.get("us")]
    if bad:
        print("did not run:", "; ".join(f"{r['config']}: {r['note']}" for r in bad[:8]))
    return good[:1]


def main() -> int:
    quick = "--quick" in sys.argv
    try:
        import flashinfer as fi
    except ImportError:
        fi = None
    warm_up_gpu()
    copy_gbs = copy_bandwidth_gbs()
    peak = 790.0
    grid = lambda **kw: [dict(zip(kw, v)) for v in itertools.product(*kw.values())]  # noqa: E731
    print(f"{torch.cuda.get_device_name()}, copy {copy_gbs:.0f} GB/s, bf16 peak taken as {peak} TFLOP/s")
    best = []
    tiles = [None] + grid(BLOCK_M=[64], BLOCK_N=[32, 64], num_warps=[4], num_stages=[3], prefetch_pages=[False, True]) \
        + grid(BLOCK_M=[128], BLOCK_N=[32], num_warps=[4], num_stages=[3], prefetch_pages=[False, True]) \
        + grid(BLOCK_M=[128], BLOCK_N=[64], num_warps=[8], num_stages=[3], prefetch_pages=[False, True]) \
        + grid(BLOCK_M=[128], BLOCK_N=[128], num_warps=[8], num_stages=[2], prefetch_pages=[False, True])
    best += _case("cascade shared level: 128 queries x 32768 keys", [128], [32768], False,
                  [cfg and {**cfg, "min_chunk": 2048} for cfg in tiles], fi, peak, copy_gbs)
    best += _case("decode, no sharing: 32 x 16384 keys", [1] * 32, [16384] * 32, False,
                  [None] + grid(BLOCK_M=[16], BLOCK_N=[64], num_warps=[2], num_stages=[3, 4], prefetch_pages=[True]),
                  fi, peak, copy_gbs)
    if not quick:
        ragged_too = "--ragged" in sys.argv
        for ragged in (False, True) if ragged_too else (False,):
            best += _case("prefill, causal: 8 x 2048", [2048] * 8, [2048] * 8, True, tiles, fi, peak, copy_gbs,
                          ragged=ragged)
            best += _case("prefill, not causal: 4 x 4096", [4096] * 4, [4096] * 4, False, tiles, fi, peak,
                          copy_gbs, ragged=ragged)
    print("\n## best per case")
    print(markdown_table(best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
