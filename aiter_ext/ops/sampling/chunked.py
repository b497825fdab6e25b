"""Host side of the chunked path (chunked_kernels.py): each row spread over many programs.

``chunked_launch`` says whether a call takes this path; ``draw_by_chunks`` and ``softmax_by_chunks``
run it. The per-chunk numbers live in ``[rows, chunks]`` workspaces whose size follows the input's
shape only, so the path can be graph-captured.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from aiter_ext.core import plans
from aiter_ext.core.arch import device_info
from aiter_ext.core.env import interpreted
from aiter_ext.core.launch import cdiv


def chunked_launch(op: str, vocab: int, rows: int, config: Optional[dict] = None) -> Optional[dict]:
    """The chunked path's launch for ``op`` ("min_p", "logits", "softmax") at this shape, or None for
    one program per row. ``config`` (sweeps): ``{"chunked": False}`` forces one program per row;
    ``{"chunked": True, "BLOCK": .., "num_warps": ..}`` forces the chunked path with those chunks."""
    config = config or {}
    if not config.get("chunked", True):
        return None
    if config.get("chunked"):
        op = "softmax"  # forced: the only op the policy never sends to the row kernel
    return _cached_config(vocab, rows, device_info().arch, interpreted(), op, config.get("BLOCK", 0),
                          config.get("num_warps", 4))


@functools.lru_cache(maxsize=256)
def _cached_config(vocab, rows, arch, interpreted, op, block, num_warps):
    """Host time counts at batch 1: cache the policy's answer."""
    from .chunked_kernels import chunked_config

    return chunked_config(vocab, rows, arch, interpreted, op, block, num_warps)


def _workspace(rows: int, cfg: dict, device, with_arg: bool):
    shape = (rows, cfg["num_chunks"])
    # plans.scratch: workspaces a call plan allocates anew per replay (a plain torch.empty otherwise)
    stat_a = plans.scratch(shape, torch.float32, device, zeroed=False)
    stat_b = plans.scratch(shape, torch.float32, device, zeroed=False)
    stat_arg = plans.scratch(shape, torch.int32, device, zeroed=False) if with_arg else stat_a
    return stat_a, stat_b, stat_arg


def _stats(x, kind, param_t, param_v, param_mode, stats, cfg):
    from .chunked_kernels import chunk_stats_kernel

    rows, vocab = x.shape
    stat_a, stat_b, stat_arg = stats
    grid = (cdiv(rows, cfg["ROWS"]), cfg["num_chunks"])
    chunk_stats_kernel[grid](x, stat_a, stat_b, stat_arg, param_t if param_t is not None else stat_a, param_v, rows,
                             vocab, x.stride(0), cfg["num_chunks"], KIND=kind, PARAM=param_mode, ROWS=cfg["ROWS"],
                             BLOCK=cfg["BLOCK"], NCHUNKS=cfg["NCHUNKS"], num_warps=cfg["num_warps"])


#: Why a call that draws by chunks keeps no call plan (core/plans.py): logged once per op.
CHUNKED_DRAW_UNPLANNED = ("the chunked draw takes no call plan (its plan failed test_plans.py on a GPU, "
                          "not yet explained)")


def draw_by_chunks(x: torch.Tensor, kind: int, indices, min_p, draw, cfg: dict) -> None:
    """One token per output row into ``draw.out``/``draw.valid`` (an inputs.Draw). ``kind``:
    MASS_ABOVE_MIN_P (``min_p`` is an inputs.Threshold) or LOGITS (sampling from logits). The
    per-chunk numbers are taken per source row."""
    from .chunked_kernels import LOGITS, MASS_ABOVE_MIN_P, MAX, SCALAR, chunk_draw_kernel

    # No call plan for this route until one is seen right on a GPU. On an H100 (2026-12-07) test_plans.py's case
    # for it (sampling_from_logits at 1 x 128256) failed, and the log that said how did not come back.
    plans.refuse(CHUNKED_DRAW_UNPLANNED)
    stats = _workspace(x.shape[0], cfg, x.device, with_arg=kind == LOGITS)
    m_mode, m_t, m_v = (int(min_p.mode), min_p.tensor, min_p.value) if min_p is not None else (SCALAR, None, 0.0)
    if kind == MASS_ABOVE_MIN_P:
        _stats(x, MAX, None, 0.0, SCALAR, stats, cfg)
        _stats(x, MASS_ABOVE_MIN_P, m_t, m_v, m_mode, stats, cfg)
    else:
        _stats(x, kind, None, 1.0, SCALAR, stats, cfg)  # LOGITS at temperature 1
    num_out = draw.out.shape[0]
    chunk_draw_kernel[(cdiv(num_out, cfg["ROWS"]),)](
        x, draw.out, draw.valid, indices if indices is not None else draw.out, stats[0], stats[1],
        m_t if m_t is not None else stats[0], m_v, draw.seed, draw.offset, num_out, x.shape[0], x.shape[1],
        x.stride(0), cfg["num_chunks"], HAS_INDICES=indices is not None, KIND=kind, MIN_P=m_mode,
        SEED_PER_ROW=draw.seed_per_row, ROWS=cfg["ROWS"], BLOCK=cfg["BLOCK"], NCHUNKS=cfg["NCHUNKS"],
        num_warps=cfg["num_warps"])


def softmax_by_chunks(logits: torch.Tensor, out: torch.Tensor, temperature, cfg: dict) -> None:
    """Softmax with ``temperature`` (an inputs.Threshold) by chunks."""
    from .chunked_kernels import LOGITS, softmax_chunk_kernel

    rows, vocab = logits.shape
    temp_mode, temp_t, temp_v = int(temperature.mode), temperature.tensor, temperature.value
    stats = _workspace(rows, cfg, logits.device, with_arg=True)
    _stats(logits, LOGITS, temp_t, temp_v, temp_mode, stats, cfg)
    grid = (cdiv(rows, cfg["ROWS"]), cfg["num_chunks"])
    softmax_chunk_kernel[grid](logits, out, *stats, temp_t if temp_t is not None else stats[0], temp_v, rows, vocab,
                               logits.stride(0), out.stride(0), cfg["num_chunks"], TEMP=temp_mode, ROWS=cfg["ROWS"],
                               BLOCK=cfg["BLOCK"], NCHUNKS=cfg["NCHUNKS"], num_warps=cfg["num_warps"])
