"""Triton kernels that read logits: softmax with temperature, and Gumbel-max sampling.

Both take ``ROWS`` rows per program (more for small vocabularies, and many more under the CPU
interpreter, whose cost is per program) and walk the vocabulary in ``BLOCK``-wide chunks through
kernels.load_chunk.
"""

from __future__ import annotations

# Triton itself is imported only when a kernel needs it (core/lazy_triton.py: not for a code object's launch)
from aiter_ext.core.lazy_triton import tl, triton

from aiter_ext.core.launch import cdiv, next_pow2
from aiter_ext.core.aot import KernelSpec, register_aot_specs
from aiter_ext.core.thin import thin

from .chunked_kernels import chunked_config, logit_scale, logits_chunk, logits_stats_spec, softmax_chunk_spec
from .kernels import PER_ROW, SCALAR, program_rows, tile_rows

@thin
@triton.jit
def softmax_kernel(logits, out, temp_ptr, temp_value, num_rows, vocab, stride_in, stride_out,
                   TEMP: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """probs = softmax(logits / T) per row. A row with T == 0 is greedy: one-hot at its first
    maximum (AITER's mixed greedy/random batches, in the same launch). A row with no finite logit
    gives zeros, which the samplers report as invalid."""
    r_ok, r_safe = tile_rows(num_rows, ROWS)
    in_ptr = logits + r_safe * stride_in
    cols = tl.arange(0, BLOCK)
    # base-2 exponents (x - max) * scale (see chunked_kernels.logits_chunk); greedy rows keep the order
    scale, greedy = logit_scale(temp_ptr, temp_value, r_safe, TEMP)

    m = tl.full([ROWS], float("-inf"), tl.float32)
    total = tl.zeros([ROWS], tl.float32)
    best = tl.zeros([ROWS], tl.int32)
    for start in range(0, vocab, BLOCK):
        x, idx = logits_chunk(in_ptr, start, cols, vocab)
        chunk_max = tl.max(x, axis=1)
        chunk_arg = tl.min(tl.where(x == chunk_max[:, None], idx[None, :], vocab), axis=1)
        best = tl.where(chunk_max > m, chunk_arg, best)
        m_new = tl.maximum(m, chunk_max)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        total = (total * tl.exp2((m - m_safe) * scale)
                 + tl.sum(tl.exp2((x - m_safe[:, None]) * scale[:, None]), axis=1))
        m = m_new
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    inv_total = tl.where(total > 0.0, 1.0 / tl.where(total > 0.0, total, 1.0), 0.0)  # 0 for rows with no finite logit
    out_ptr = out + r_safe * stride_out
    for start in range(0, vocab, BLOCK):
        x, idx = logits_chunk(in_ptr, start, cols, vocab)
        p = tl.exp2((x - m_safe[:, None]) * scale[:, None]) * inv_total[:, None]
        one_hot = tl.where(idx[None, :] == best[:, None], 1.0, 0.0)
        p = tl.where(greedy[:, None], tl.where(m[:, None] > float("-inf"), one_hot, 0.0), p)
        tl.store(out_ptr[:, None] + idx[None, :], p, mask=r_ok[:, None] & (idx < vocab)[None, :])


@thin
@triton.jit
def gumbel_max_kernel(logits, out, valid, indices, seed_ptr, offset_ptr, num_out, num_src, vocab, stride_row,
                      HAS_INDICES: tl.constexpr, SEED_PER_ROW: tl.constexpr, ROWS: tl.constexpr,
                      BLOCK: tl.constexpr):
    """token = argmax(logits + Gumbel noise), a draw from softmax(logits) in one pass. The Philox
    counter of (output row r, token j) is ((offset + r) << 32) + j, so a seed and offset reproduce
    the tokens. A row with no finite logit (NaN counts as -inf), or a source row outside the logits,
    gives token 0, invalid."""
    r, r_ok, r_safe, src, src_ok = program_rows(indices, num_out, num_src, HAS_INDICES, ROWS)
    row_ptr = logits + src * stride_row
    cols = tl.arange(0, BLOCK)
    seed_index = r_safe if SEED_PER_ROW else tl.zeros([ROWS], tl.int32)
    seed = tl.load(seed_ptr + seed_index)
    counter = (tl.load(offset_ptr + seed_index) + r_safe) << 32
    best_score = tl.full([ROWS], float("-inf"), tl.float32)
    best = tl.zeros([ROWS], tl.int32)
    found = r < 0
    for start in range(0, vocab, BLOCK):
        x, idx = logits_chunk(row_ptr, start, cols, vocab)
        u = tl.rand(seed[:, None], counter[:, None] + idx[None, :])
        u = tl.maximum(u, 1e-20)  # tl.rand is in [0, 1): keep log(u) finite
        score = x - tl.log(-tl.log(u))
        chunk_best = tl.max(score, axis=1)
        chunk_arg = tl.min(tl.where(score == chunk_best[:, None], idx[None, :], vocab), axis=1)
        take = chunk_best > best_score
        best = tl.where(take, chunk_arg, best)
        best_score = tl.where(take, chunk_best, best_score)
        found = found | take
    found = found & src_ok
    tl.store(out + r, tl.where(found, best, 0).to(out.dtype.element_ty), mask=r_ok)
    tl.store(valid + r, found.to(tl.int8), mask=r_ok)


def launch_config(vocab: int, rows: int, arch: str, interpreted: bool = False, block: int = 0,
                  num_warps: int = 0) -> dict:
    """Row-tiles as the probability samplers take them (kernels.launch_config), at most 4096 wide; ``block`` and
    ``num_warps`` (a tuned row's, or a sweep's) override the width and the warps, and the rows per tile follow."""
    elements = 4096 * (16 if interpreted else 1)
    block = block or min(4096, max(16, next_pow2(vocab)))
    tile_rows = max(1, min(elements // block, next_pow2(max(rows, 1))))
    if arch.startswith("gfx") and not interpreted:
        tile_rows = 1
    return {"ROWS": tile_rows, "BLOCK": block, "num_warps": num_warps or (8 if tile_rows * block >= 4096 else 4)}


def _softmax_row_spec(dtype: str, temp: int, cfg: dict, suffix: str = "") -> KernelSpec:
    sig = {"logits": f"*{dtype}", "out": "*fp32", "temp_ptr": "*fp32", "temp_value": "fp32",
           "num_rows": "i32", "vocab": "i32", "stride_in": "i32", "stride_out": "i32"}
    return KernelSpec(f"softmax[{dtype}-temp={temp}-block{cfg['BLOCK']}{suffix}]", softmax_kernel, sig,
                      {"TEMP": temp, "ROWS": cfg["ROWS"], "BLOCK": cfg["BLOCK"]}, {"num_warps": cfg["num_warps"]},
                      divisible_by_16=("logits", "out", "temp_ptr"))


def tuned_softmax_specs(arch: str):
    """The launches of each tuned softmax row measured on ``arch`` (per-row temperature): the row kernel's tile
    where the row says ``chunked: false``, else the chunked path's two passes at its chunks."""
    from aiter_ext.core.tuned import measured_configs

    for row, config in measured_configs("softmax", arch):
        vocab, rows, dtype = int(row["vocab"]), int(row["rows"]), row["dtype"]
        chunks = None
        if config.get("chunked", True):
            chunks = chunked_config(vocab, rows, arch, False, "softmax", config.get("BLOCK", 0),
                                    config.get("num_warps", 4))
        if chunks is None:
            cfg = launch_config(vocab, rows, arch, False, config.get("BLOCK", 0), config.get("num_warps", 0))
            yield _softmax_row_spec(dtype, 2, cfg, f"-r{cfg['ROWS']}w{cfg['num_warps']}")
        else:
            suffix = f"-n{chunks['NCHUNKS']}w{chunks['num_warps']}"
            yield logits_stats_spec(dtype, chunks, suffix)
            yield softmax_chunk_spec(dtype, chunks, suffix)


def softmax_specs(arch: str = "gfx942"):
    """Softmax's launches: the row kernel's and the chunked path's default tiles (vocabularies 1024 and 128256),
    then each tuned row's measured on ``arch``. The chunked path's first pass, chunk_stats of LOGITS, is shared
    with the draws from logits and listed with them (chunked_kernels)."""
    names = set()
    defaults = [_softmax_row_spec(dtype, temp, launch_config(vocab, 256, "gfx942"))
                for vocab in (1024, 128256) for dtype in ("fp32", "bf16", "fp16") for temp in (1, 2)]
    defaults += [softmax_chunk_spec(dtype, chunked_config(128256, 256, "gfx942", op="softmax"), temp=temp)
                 for dtype in ("fp32", "bf16", "fp16") for temp in (PER_ROW, SCALAR)]
    for spec in [*defaults, *tuned_softmax_specs(arch)]:
        if spec.name not in names:
            names.add(spec.name)
            yield spec


def gumbel_spec(dtype: str, cfg: dict, suffix: str = "") -> KernelSpec:
    """The draw from logits by Gumbel-max (no indices, one seed) at the row tile ``cfg`` (launch_config's)."""
    sig = {"logits": f"*{dtype}", "out": "*i32", "valid": "*i8", "indices": "*i32", "seed_ptr": "*i64",
           "offset_ptr": "*i64", "num_out": "i32", "num_src": "i32", "vocab": "i32", "stride_row": "i32"}
    return KernelSpec(f"gumbel_max[{dtype}-block{cfg['BLOCK']}{suffix}]", gumbel_max_kernel, sig,
                      {"HAS_INDICES": False, "SEED_PER_ROW": False, "ROWS": cfg["ROWS"], "BLOCK": cfg["BLOCK"]},
                      {"num_warps": cfg["num_warps"]},
                      divisible_by_16=("logits", "out", "valid", "indices", "seed_ptr", "offset_ptr"))


def tuned_logits_specs(arch: str):
    """The launches of each tuned ``sampling_from_logits`` row measured on ``arch`` (backends.LOGITS_TUNE_CONFIGS):
    Gumbel-max at the row's tile (``chunked: false``), or the chunked draw's two passes at its chunks; a row of the
    policy's own choice (``{}``) adds none."""
    from aiter_ext.core.tuned import measured_configs

    from .chunked_kernels import LOGITS, chunk_draw_spec

    for row, config in measured_configs("sampling_from_logits", arch):
        if "chunked" not in config:
            continue
        vocab, rows, dtype = int(row["vocab"]), int(row["rows"]), row["dtype"]
        chunks = None
        if config["chunked"]:  # as chunked.chunked_launch forces it
            chunks = chunked_config(vocab, rows, arch, False, "softmax", config.get("BLOCK", 0),
                                    config.get("num_warps", 4))
        if chunks is None:
            cfg = launch_config(vocab, rows, arch, False, config.get("BLOCK", 0), config.get("num_warps", 0))
            yield gumbel_spec(dtype, cfg, f"-r{cfg['ROWS']}w{cfg['num_warps']}")
        else:
            suffix = f"-n{chunks['NCHUNKS']}w{chunks['num_warps']}"
            yield logits_stats_spec(dtype, chunks, suffix, param=SCALAR)
            yield chunk_draw_spec(LOGITS, dtype, chunks, suffix=suffix)


def aot_specs(arch: str = "gfx942"):
    """The draws from logits (Gumbel-max, one program per row tile) at the default tiles (the chunked path's are
    chunked_kernels'), then each tuned row's measured on ``arch``."""
    for vocab in (1024, 128256):
        for dtype in ("fp32", "bf16", "fp16"):  # the logits' dtypes the API takes
            yield gumbel_spec(dtype, launch_config(vocab, 256, "gfx942"))
    yield from tuned_logits_specs(arch)


register_aot_specs("sampling_from_logits", aot_specs)
register_aot_specs("softmax", softmax_specs)
