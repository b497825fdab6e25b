"""Host-side planning for the attention engine: tile sizes, KV splits and the work list.

``plan()`` of every wrapper ends here. It may read lengths on the host (FlashInfer's ``plan`` does
too); everything ``run()`` needs is built here as device tensors of fixed size, so ``run()`` does no
host synchronization and allocates nothing that depends on data (graph capture works).

Splitting: when (query tiles x KV heads) would leave the GPU under-filled, each request's KV is cut
into chunks (at least ``MIN_CHUNK`` keys) so that about ``TARGET_WAVES`` programs per compute unit
run; the chunks' partial states are merged afterwards by the merge op. A single long request (a
shared prefix in cascade attention, a long decode) then still fills the GPU.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from aiter_ext.core.arch import device_info

MIN_CHUNK = 256  # keys per split: below this the merge costs more than the parallelism gains
TARGET_WAVES = 2  # programs per compute unit the splitter aims for
LARGE_TILE_ROWS = 1024  # packed query rows from which NVIDIA launches use 128-row tiles


@dataclass(frozen=True)
class WorkPlan:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int | None  # None: Triton's default for the arch
    num_work: int
    split: bool  # partial states go through the workspace and the merge
    num_partial_rows: int
    work: torch.Tensor  # int32 [5, num_work]: request, first packed row, kv start, kv end, split index
    merge_indptr: torch.Tensor  # int32 [total_q + 1]: each token's first workspace row (SPLIT only)
    prefetch_pages: bool = False  # paged KV: load the next block's page ids one step ahead (kernels.py)


def default_config(max_packed_rows: int, head_dim: int, arch: str | None = None) -> dict:
    """Tiles and launch options when no tuned row says otherwise; they depend on the arch.

    NVIDIA (``sm_*``), from sweeps on an H200 (op_tests/sweep_attention.py; bf16, d128, page 16, beside
    FlashInfer 0.7.2 in the same run, 2026-11-21):
    - decode-sized tiles (<= 16 packed rows): 64 keys per step, 2 warps, 3 stages, no page prefetch
      (32 x 16384-key decode: 489 us, FlashInfer 488; the prefetch made it slower);
    - up to 64 rows: 64 x 32, 4 warps, 3 stages, page ids prefetched (the 128-query x 32768-key shared
      level of cascade: 204 us, FlashInfer 442; 224 us without the prefetch);
    - from LARGE_TILE_ROWS rows: 128 x 64, 8 warps, 3 stages, prefetched (causal 8 x 2048 prefill:
      829 us, FlashInfer 670; not causal 4 x 4096: 2689 us, FlashInfer 2125; without the prefetch
      974 and 3224 us).
    AMD and the rest: the H200 decode settings compiled badly for gfx942 (2-warp decode tiles: 296
    VGPRs, one wave per SIMD, all 64 KiB of LDS), so a moderate 4-warp default with Triton's own
    pipelining depth and no prefetch stands until an AMD GPU can be tuned. d256 halves the key step
    so K and V tiles fit gfx942's LDS.
    """
    arch = arch or device_info().arch
    if arch.startswith("sm_"):
        # 128-row tiles only for long prefills: for cascade's shared level (a few hundred packed rows,
        # split over many KV chunks) 64-row tiles were as fast at 512 rows and faster at 256.
        block_m = 128 if max_packed_rows >= LARGE_TILE_ROWS else min(64, max(16, triton_next_pow2(max_packed_rows)))
        if block_m <= 16:
            cfg = {"BLOCK_M": block_m, "BLOCK_N": 64, "num_warps": 2, "num_stages": 3}
        elif block_m <= 64:
            cfg = {"BLOCK_M": block_m, "BLOCK_N": 32, "num_warps": 4, "num_stages": 3, "prefetch_pages": True}
        else:
            cfg = {"BLOCK_M": block_m, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "prefetch_pages": True}
    else:
        block_m = min(64, max(16, triton_next_pow2(max_packed_rows)))
        cfg = {"BLOCK_M": block_m, "BLOCK_N": 64 if block_m <= 16 else 32, "num_warps": 4}
        if head_dim > 128 and block_m >= 64:
            # gfx942 compile check: the 64 x 256 fp32 accumulator over 4 warps took 268-279 VGPRs, one wave
            # per SIMD; over 8 warps 208-210, two waves (LDS allows two), no spills. A 32-row tile reached
            # two waves too (228-230 VGPRs) at half the reuse of K/V. Not timed on an AMD GPU.
            cfg["num_warps"] = 8
    if head_dim > 128:
        cfg["BLOCK_N"] = 32
    return cfg


def tile_sizes(max_packed_rows: int, head_dim: int, arch: str | None = None) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) of the default config."""
    cfg = default_config(max_packed_rows, head_dim, arch)
    return cfg["BLOCK_M"], cfg["BLOCK_N"]


def choose_splits(programs: int, cu_num: int, max_splits: int) -> int:
    """KV splits per request so that ``programs * splits`` fills the GPU in nearly whole waves.

    At least ``TARGET_WAVES`` waves; beyond that, the fewest splits (each adds merge traffic) whose
    last wave is at least 90% full, searched up to 4x the minimum (seen on an H200: 288 programs on
    132 SMs ran 2.2 waves, the last a quarter full).
    """
    if programs <= 0:  # nothing to run (every query empty): no split
        return 1
    want = max(1, math.ceil(TARGET_WAVES * cu_num / programs))
    if want >= max_splits:
        return max(1, max_splits)
    best, best_eff = want, 0.0
    for s in range(want, min(max_splits, 4 * want) + 1):
        total = programs * s
        eff = total / (math.ceil(total / cu_num) * cu_num)
        if eff >= 0.9:
            return s
        if eff > best_eff:
            best, best_eff = s, eff
    return best


def triton_next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def make_plan(qo_lens: list[int], kv_lens: list[int], group: int, num_kv_heads: int, head_dim: int,
              device: torch.device, allow_split: bool = True, config: dict | None = None) -> WorkPlan:
    """``config`` (from a tuned-CSV row or an experiment) may set ``BLOCK_M``, ``BLOCK_N``,
    ``num_warps``, ``num_stages``, ``min_chunk`` and ``prefetch_pages``; the rest comes from the heuristics above."""
    # Host time counts here (a serving engine plans every step: the cascade plan of a 256-request decode
    # batch), so plain integer arithmetic and few passes over the batch.
    max_rows = max(qo_lens, default=1) * group if qo_lens else 1
    config = {**default_config(max_rows, head_dim), **(config or {})}
    block_m, block_n = config["BLOCK_M"], config["BLOCK_N"]
    min_chunk = config.get("min_chunk", MIN_CHUNK)
    q_tiles = [-(-q * group // block_m) if q > 0 else 0 for q in qo_lens]
    programs = sum(q_tiles) * num_kv_heads
    max_splits = max(kv_lens, default=0) // min_chunk if kv_lens else 1
    want = choose_splits(programs, device_info().cu_num, max_splits) if allow_split else 1
    splits = [min(want, kv // min_chunk) or 1 for kv in kv_lens]
    # Chunks are whole blocks, so rounding a chunk up can leave the last of n splits nothing (4096 keys
    # in 33 splits of 128); such a request takes fewer splits, so no work item is empty and every
    # workspace row a token's splits reserve is written.
    chunk_of = [-(-kv // (n * block_n)) * block_n if n > 1 else kv for kv, n in zip(kv_lens, splits)]
    splits = [-(-kv // chunk) if n > 1 else 1 for kv, n, chunk in zip(kv_lens, splits, chunk_of)]

    items = []
    for b, (tiles, kv, n) in enumerate(zip(q_tiles, kv_lens, splits)):
        if tiles == 1 and n == 1:  # a decode-sized request, most of a serving batch: one item
            items.append((b, 0, 0, kv, 0))
        elif tiles:
            chunk = chunk_of[b]
            chunks = [(s * chunk, min(kv, (s + 1) * chunk), s) for s in range(n)]
            items += [(b, t * block_m, lo, hi, s) for t in range(tiles) for lo, hi, s in chunks]
    items.sort(key=lambda it: it[3] - it[2], reverse=True)  # longest chunks first: better balance
    split = max(splits, default=1) > 1

    # each query token's first workspace row: a row per split of its request (one row each unsplit)
    if split:
        per_token = itertools.chain.from_iterable(itertools.repeat(n, q) for q, n in zip(qo_lens, splits))
    else:
        per_token = itertools.repeat(1, sum(qo_lens))
    merge_rows = [0, *itertools.accumulate(per_token)]
    work = torch.tensor(list(zip(*items)) if items else [[]] * 5, dtype=torch.int32).reshape(5, -1)
    return WorkPlan(block_m, block_n, config["num_warps"], config.get("num_stages"), len(items), split,
                    merge_rows[-1], work.to(device),
                    torch.tensor(merge_rows, dtype=torch.int32, device=device),
                    bool(config.get("prefetch_pages", False)))


def rotate_keys_ahead(qo_lens: list[int], kv_lens: list[int], group: int, block_m: int, causal: bool,
                      config: dict | None = None) -> bool:
    """In-kernel RoPE: whether the plan's q and keys are rotated once per call before the kernel
    (kernels.rotate_rows_kernel, ROPE_KEYS_AHEAD) rather than in every query tile that reads them.

    Ahead costs a write and a re-read of every key; in the tiles, a table read and a turn per key and
    read, and a K tile that goes through registers before its dot. So ahead pays when tiles read each key at least twice on average (prefill: a 2048-query
    request has 32-128 tiles); decode tiles read each key once and keep it in the kernel. Counted
    reads: a request of t tiles reads its keys t times, causally its earlier keys t times and its own
    queries' keys (t + 1) / 2 times. ``config["rope_keys_ahead"]`` (True/False) overrides (tests,
    benchmarks)."""
    if config and "rope_keys_ahead" in config:
        return bool(config["rope_keys_ahead"])
    reads = keys = 0
    for qo, kv in zip(qo_lens, kv_lens):
        tiles = -(-qo * group // block_m)
        own = min(qo, kv) if causal else 0
        reads += tiles * (kv - own) + (tiles + 1) / 2 * own
        keys += kv
    return reads >= 2 * keys > 0
