"""Host side of the Triton backend: tiles, grids and launches of every sampling kernel.

Imported late (by backends.py, on the first Triton call), since ``import aiter_ext`` must not import
Triton. Each function writes into tensors it is given; the checks were done by the public functions.
"""

from __future__ import annotations

import functools

import torch

from aiter_ext.core import plans
from aiter_ext.core.arch import device_info
from aiter_ext.core.env import interpreted
from aiter_ext.core.launch import cdiv

from . import chunked, kernels, logits_kernels, renorm_kernels, rounds_kernels, speculative_kernels, split_kernels
from .chunked_kernels import LOGITS, MASS_ABOVE_MIN_P
from .inputs import Draw, Mode, Threshold


def filtered_draw(config: dict, probs, indices, top_k: Threshold, top_p: Threshold, min_p: Threshold,
                  draw: Draw, stats=None) -> None:
    """Plain, top-k, top-p, min-p and joint sampling from probabilities. ``config`` overrides the
    launch (sweeps, tuned rows): chunked.chunked_launch's keys (min-p), _rounds_launch's (rejection rounds
    by chunks, only when asked), _split_launch's (small batch), or the row kernel's (ROWS, BLOCK,
    num_warps) with ``"chunked": False``. ``stats`` (benchmarks): an int32
    ``[rows, 2]`` tensor that receives each row's rejection rounds and chunks read (row kernel only)."""
    if not draw.rows:
        return
    forced_split = (config or {}).get("split") is True
    if min_p.mode != Mode.NONE and top_k.mode == Mode.NONE and top_p.mode == Mode.NONE and stats is None \
            and not forced_split:
        # min-p alone needs no rejection rounds: at large batch, each row spread over many programs
        chunks = chunked.chunked_launch("min_p", probs.shape[1], draw.rows, config)
        if chunks is not None:
            chunked.draw_by_chunks(probs, MASS_ABOVE_MIN_P, indices, min_p, draw, chunks)
            return
    rounds = _rounds_launch(probs.shape[1], config, top_k, top_p, min_p) if stats is None else None
    if rounds is not None:
        return rounds_draw(rounds, probs, indices, top_k, top_p, draw)
    full_passes = top_k.mode != Mode.NONE or min_p.mode != Mode.NONE
    split = _split_launch(probs.shape[1], draw.rows, config, full_passes) if stats is None else None
    if split is not None:
        return split_draw(split, probs, indices, top_k, top_p, min_p, draw)
    top_p_only = top_p.mode != Mode.NONE and top_k.mode == Mode.NONE and min_p.mode == Mode.NONE
    if top_p_only and stats is None and not _path_forced(config) and _graph_timed(probs):
        rounds = _rounds_route(probs.shape[1], draw.rows, interpreted())
        if rounds is not None:
            return rounds_draw(rounds, probs, indices, top_k, top_p, draw)
    cfg = {**kernels.launch_config(probs.shape[1], draw.rows, device_info().arch, interpreted(), top_p_only),
           **{k: v for k, v in (config or {}).items()
              if k not in ("chunked", "split", "rounds", "rounds_drawn", "fused")}}
    kernels.filtered_sampling_kernel[(cdiv(draw.rows, cfg["ROWS"]),)](
        probs, draw.out, draw.valid, indices if indices is not None else draw.out, top_k.pointer(probs),
        top_p.pointer(probs), min_p.pointer(probs), draw.seed, draw.offset, top_k.value, top_p.value, min_p.value,
        draw.rows, probs.shape[0], probs.shape[1], probs.stride(0), stats if stats is not None else draw.out,
        draw.out, probs, HAS_INDICES=indices is not None, TOP_K=int(top_k.mode), TOP_P=int(top_p.mode), MIN_P=int(min_p.mode),
        SEED_PER_ROW=draw.seed_per_row, ROWS=cfg["ROWS"], BLOCK=cfg["BLOCK"], STATS=stats is not None,
        PREFETCH=cfg["PREFETCH"], LANE_SUMS=cfg["LANE_SUMS"], num_warps=cfg["num_warps"])
    return cfg


def _rounds_launch(vocab: int, config, top_k: Threshold, top_p: Threshold, min_p: Threshold):
    """rounds_kernels.rounds_config, when ``config`` asks for it (``{"rounds": True}``, with optional
    ``"BLOCK"``, ``"rounds_drawn"``, ``"num_warps"``, ``"fused"``) and the call is top-k, top-p or joint
    without min-p; else None. (The default route into the same path is _rounds_route's.)"""
    config = config or {}
    if not config.get("rounds") or min_p.mode != Mode.NONE or (top_k.mode == Mode.NONE and top_p.mode == Mode.NONE):
        return None
    return rounds_kernels.rounds_config(vocab, interpreted(), config.get("BLOCK", 0), config.get("rounds_drawn", 0),
                                        config.get("num_warps", 0), config.get("fused", False))


def _path_forced(config) -> bool:
    """Whether ``config`` (sweeps, tests) names a path or the row kernel's tile: then no default route."""
    return any(key in (config or {}) for key in ("chunked", "split", "rounds", "ROWS"))


def _graph_timed(probs) -> bool:
    """Whether a launch's GPU time is what counts: while a CUDA graph is captured. Eagerly the host's
    time per launch counts too: an eager call of the rounds path (9 launches) took 326-635 us at 8-64 rows on
    an H100 (--rounds-route at c55ee23), against 74-158 us for the row kernel's one launch, so an eager call
    keeps the row kernel. (Under the interpreter, so that the CPU tests take the route too.)"""
    return interpreted() or (probs.is_cuda and torch.cuda.is_current_stream_capturing())


@functools.lru_cache(maxsize=256)
def _rounds_route(vocab: int, rows: int, interpreted: bool):
    """Top-p alone between the split kernel's batches and ROUNDS_MAX_ROWS takes the rounds path by default
    in CUDA graphs (_graph_timed): there one program per row leaves most of the GPU idle while its slowest
    row runs its rounds one after another. (Top-k and joint keep the row kernel: by chunks they were no
    faster at 32 x 128256.) The two paths draw the same tokens for a seed up to rounding at a boundary
    (test_rounds_by_chunks_draw_the_row_kernels_tokens: at most 1% of draws on a GPU)."""
    if not 1 < rows <= rounds_kernels.ROUNDS_MAX_ROWS or vocab < rounds_kernels.ROUNDS_MIN_VOCAB:
        return None
    return rounds_kernels.rounds_config(vocab, interpreted, rounds=rounds_kernels.ROUNDS_DRAWN)


def rounds_draw(cfg: dict, probs, indices, top_k: Threshold, top_p: Threshold, draw: Draw) -> dict:
    """rounds_kernels.py: ``cfg["rounds"]`` rounds by chunks, a launch each when fused, else two (check,
    then judge), plus the judge of the last; then the row kernel resumes the rows not done. One zeroed
    int32 workspace holds each row's state (kernels.ISTATE/FSTATE), its arrival counter and the per-chunk numbers
    ([5, rows, chunks] as fp32); its size follows the shape only (graph capture)."""
    rows, chunks = draw.rows, cfg["num_chunks"]
    # zeroed: the counters start at 0, and a row done before a round leaves that round's numbers unwritten,
    # which its judge still reads
    ints, state = kernels.ISTATE.value, kernels.ISTATE.value + kernels.FSTATE.value
    workspace = plans.scratch(rows * (state + 1) + 5 * rows * chunks, torch.int32, probs.device, zeroed=True)
    istate = workspace[:ints * rows]
    fstate = workspace[ints * rows:state * rows].view(torch.float32)
    arrivals = workspace[state * rows:(state + 1) * rows]
    stats = workspace[(state + 1) * rows:].view(torch.float32)
    src = (probs, indices if indices is not None else draw.out)
    shape = (probs.shape[0], probs.shape[1], probs.stride(0), chunks)
    filters = (top_k.pointer(probs), top_p.pointer(probs), draw.seed, draw.offset, top_k.value, top_p.value)
    flags = dict(HAS_INDICES=indices is not None, TOP_K=int(top_k.mode), TOP_P=int(top_p.mode),
                 SEED_PER_ROW=draw.seed_per_row, BLOCK=cfg["BLOCK"], NCHUNKS=cfg["NCHUNKS"], num_warps=cfg["num_warps"])
    # round 0's masses and draw, then each round's judge and next draw; fused, a launch each, else two
    forms = ((chunks, True, True),) if cfg["fused"] else ((chunks, True, False), (1, False, True))
    for drawn in range(cfg["rounds"] + 1):
        for grid_chunks, check, judge in forms:
            rounds_kernels.round_kernel[(rows, grid_chunks)](
                *src, *filters, istate, fstate, stats, arrivals, rows, *shape, FIRST=drawn == 0,
                DRAW=drawn < cfg["rounds"], CHECK=check, JUDGE=judge, **flags)
    # the rows still undecided go on in the row kernel, one program each, from their state
    tile = kernels.resume_tile(cfg["BLOCK"]) if not interpreted() else {"BLOCK": cfg["BLOCK"], "num_warps": 4}
    kernels.filtered_sampling_kernel[(rows,)](
        probs, draw.out, draw.valid, src[1], *filters[:2], top_k.pointer(probs), draw.seed, draw.offset, top_k.value,
        top_p.value, 0.0, rows, *shape[:3], draw.out, istate, fstate, HAS_INDICES=indices is not None,
        TOP_K=int(top_k.mode), TOP_P=int(top_p.mode), MIN_P=0, SEED_PER_ROW=draw.seed_per_row, ROWS=1, BLOCK=tile["BLOCK"],
        RESUME=True, num_warps=tile["num_warps"])
    return cfg


def _split_launch(vocab: int, rows: int, config, full_passes: bool = True):
    """split_kernels.split_config at this shape, or None. ``config`` (sweeps): ``{"split": False}``
    forces one program per row; ``{"split": True, "BLOCK": .., "num_warps": ..}`` forces this path
    (``"programs"``: at most that many programs in all, in place of the CU count: more than the GPU
    holds at once would hang). ``full_passes``: see split_kernels.split_config."""
    config = config or {}
    if not config.get("split", True) or config.get("chunked") is True or "ROWS" in config:
        return None  # another path forced, or the row kernel's tile given
    info = device_info()
    budget = split_kernels.INTERPRETER_PROGRAMS if interpreted() else info.cu_num
    return _split_config(vocab, rows, info.arch, config.get("programs", budget), interpreted(),
                         config.get("BLOCK", 0) if config.get("split") else 0,
                         config.get("num_warps", 0) if config.get("split") else 0,
                         full_passes or config.get("split") is True)


@functools.lru_cache(maxsize=256)
def _split_config(vocab, rows, arch, programs, interpreted, block, num_warps, full_passes):
    """Host time counts at small batch: cache the policy's answer."""
    return split_kernels.split_config(vocab, rows, arch, programs, interpreted, block, num_warps, full_passes)


def split_draw(cfg: dict, probs, indices, top_k: Threshold, top_p: Threshold, min_p: Threshold, draw: Draw) -> dict:
    """split_kernels.split_sampling_kernel: each row over ``cfg["programs"]`` programs. One zeroed int32
    workspace holds the per-row barrier counters, the picked tokens and the per-span numbers (its size
    follows the shape only, so the call can be graph-captured)."""
    rows, spans = draw.rows, cfg["num_spans"]
    workspace = plans.scratch(rows * (2 + split_kernels.FIELDS.value * spans), torch.int32, probs.device, zeroed=True)
    counters, picks = workspace[:rows], workspace[rows:2 * rows]
    exchange = workspace[2 * rows:].view(torch.float32)
    split_kernels.split_sampling_kernel[(rows, cfg["programs"])](
        probs, draw.out, draw.valid, indices if indices is not None else draw.out, top_k.pointer(probs),
        top_p.pointer(probs), min_p.pointer(probs), draw.seed, draw.offset, top_k.value, top_p.value, min_p.value,
        rows, probs.shape[0], probs.shape[1], probs.stride(0), cfg["span"], spans, exchange, picks, counters,
        HAS_INDICES=indices is not None, TOP_K=int(top_k.mode), TOP_P=int(top_p.mode), MIN_P=int(min_p.mode),
        SEED_PER_ROW=draw.seed_per_row, LOCAL=cfg["LOCAL"], NSPANS=cfg["NSPANS"], BLOCK=cfg["BLOCK"],
        RESIDENT=cfg["RESIDENT"], num_warps=cfg["num_warps"])
    return cfg


def logits_draw(config: dict, logits, indices, draw: Draw) -> None:
    """Sampling from ``softmax(logits)``: Gumbel-max in one pass, or by chunks for large vocabularies. ``config``
    (a tuned row's) may force either route and its tile (backends.LOGITS_TUNE_CONFIGS)."""
    if not draw.rows:
        return
    chunks = chunked.chunked_launch("logits", logits.shape[1], draw.rows, config)
    if chunks is not None:
        chunked.draw_by_chunks(logits, LOGITS, indices, None, draw, chunks)
        return
    cfg = _row_tile(logits.shape[1], draw.rows, config)
    logits_kernels.gumbel_max_kernel[(cdiv(draw.rows, cfg["ROWS"]),)](
        logits, draw.out, draw.valid, indices if indices is not None else draw.out, draw.seed, draw.offset, draw.rows,
        logits.shape[0], logits.shape[1], logits.stride(0), HAS_INDICES=indices is not None,
        SEED_PER_ROW=draw.seed_per_row, ROWS=cfg["ROWS"], BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"])


def _row_tile(vocab: int, rows: int, config) -> dict:
    """One program per row tile (logits_kernels.launch_config); ``config`` may set ``BLOCK`` and ``num_warps``."""
    config = config or {}
    return logits_kernels.launch_config(vocab, rows, device_info().arch, interpreted(), config.get("BLOCK", 0),
                                        config.get("num_warps", 0))


def softmax(config: dict, logits, temperature: Threshold, out) -> None:
    rows, vocab = logits.shape
    if not rows:
        return
    chunks = chunked.chunked_launch("softmax", vocab, rows, config)
    if chunks is not None:
        chunked.softmax_by_chunks(logits, out, temperature, chunks)
        return
    cfg = _row_tile(vocab, rows, config)
    logits_kernels.softmax_kernel[(cdiv(rows, cfg["ROWS"]),)](
        logits, out, temperature.pointer(out), temperature.value, rows, vocab, logits.stride(0), out.stride(0),
        TEMP=int(temperature.mode), ROWS=cfg["ROWS"], BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"])


def renorm(config: dict, x, mode: int, param: Threshold, out) -> None:
    """renorm_kernels.TOP_K_RENORM / TOP_P_RENORM / TOP_K_MASK of ``x`` into ``out``."""
    rows, vocab = x.shape
    if not rows:
        return
    cfg = _row_tile(vocab, rows, config)
    renorm_kernels.renorm_kernel[(cdiv(rows, cfg["ROWS"]),)](
        x, out, param.pointer(x), param.value, rows, vocab, x.stride(0), out.stride(0), MODE=mode,
        PARAM=int(param.mode), ROWS=cfg["ROWS"], BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"])


def chain_speculative(config: dict, draft_probs, draft_ids, target_probs, out, accepted, emitted, seed, offset,
                      per_row: bool) -> dict:
    """speculative_kernels.py: the chunk sums of the draw's weights (a ``[batch, chunks]`` workspace whose
    size follows the shape only), then one program per request. ``config`` may force ``BLOCK`` and
    ``num_warps`` (tests, sweeps)."""
    batch, num_draft, vocab = draft_probs.shape
    cfg = speculative_kernels.speculative_config(vocab, batch, interpreted(), (config or {}).get("BLOCK", 0),
                                                 (config or {}).get("num_warps", 0))
    if not batch:
        return cfg
    stat_w = stat_p = draft_probs  # never read with one chunk
    common = dict(SEED_PER_ROW=per_row, BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"])
    if not cfg["ONE_CHUNK"]:
        stats = torch.empty(2, batch, cfg["num_chunks"], dtype=torch.float32, device=draft_probs.device)
        stat_w, stat_p = stats[0], stats[1]
        speculative_kernels.speculative_chunk_stats_kernel[(batch, cfg["num_chunks"])](
            draft_probs, draft_ids, target_probs, seed, offset, stat_w, stat_p, num_draft, vocab, cfg["num_chunks"],
            **common)
    speculative_kernels.chain_speculative_kernel[(batch,)](
        draft_probs, draft_ids, target_probs, out, accepted, emitted, seed, offset, stat_w, stat_p, num_draft, vocab,
        cfg["num_chunks"], NCHUNKS=cfg["NCHUNKS"], ONE_CHUNK=cfg["ONE_CHUNK"], **common)
    return cfg
