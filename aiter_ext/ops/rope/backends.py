"""Backend registrations for rotary position embedding.

One op for the dispatcher, ``rope``, serving every public RoPE function: backends ``triton`` (the
kernel in ``kernels.py``) and ``torch`` (the fp32 reference). Each implementation writes into the
``q_out``/``k_out`` it is given (``q``/``k`` themselves for the in-place forms) and takes the
selected kernel config first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from aiter_ext.core.backend import define_op, pow2_bucket
from aiter_ext.core.checks import DTYPES_BY_NAME
from aiter_ext.core.launch import kernels_module

from . import reference


@dataclass(frozen=True)
class RopeArgs:
    """Where positions come from and how tokens rotate; exactly one of ``pos_ids``, ``indptr`` (with
    ``offsets``) gives the positions. With ``cos_sin_cache``, cos/sin come from it (``rope_*`` unused)."""

    rotary_dim: int
    interleave: bool
    pos_ids: Optional[torch.Tensor] = None
    indptr: Optional[torch.Tensor] = None
    offsets: Optional[torch.Tensor] = None
    cos_sin_cache: Optional[torch.Tensor] = None
    rope_scale: float = 1.0
    rope_theta: float = 1e4
    #: ``(low_freq_factor, high_freq_factor, old_context_len)`` for Llama 3.1, else None.
    llama31: Optional[tuple[float, float, float]] = None


def _bucket(call: Mapping) -> tuple:
    return (pow2_bucket(call["num_tokens"]), call["num_heads"], call["head_dim"], call["dtype"])


SHAPE_KEYS = ("num_tokens", "num_heads", "head_dim", "dtype")
#: A tuned tile serves other token counts only: heads per program and the tile's width follow the heads and dim.
ROPE = define_op("rope", SHAPE_KEYS, _bucket, exact_keys=("num_heads", "head_dim", "dtype"))

#: Tiles the tuner and the benchmark's ``--sweep`` may try at head_dim 128 (tokens x heads per program,
#: warps); the default comes from ``kernels.launch_config`` (16 x 8, 4 warps there).
TRITON_TUNE_CONFIGS = [
    {"BLOCK_T": t, "BLOCK_H": h, "num_warps": w}
    for t, h, w in ((8, 8, 4), (16, 8, 4), (16, 8, 8), (32, 8, 4), (32, 8, 8), (16, 4, 4), (32, 4, 8))
] + [{}]  # {}: the heuristic (kernels.launch_config), which the tuner weighs against the others


# -- torch: the reference, written into the outputs ----------------------------------------------


def _torch_rope(config, q, k, q_out, k_out, args: RopeArgs) -> None:
    if args.cos_sin_cache is not None:
        cis = reference.cache_cis_ref(args.pos_ids, args.cos_sin_cache)
    else:
        pos = args.pos_ids
        if pos is None:
            pos = reference.positions_from_indptr_ref(args.indptr, args.offsets, q.shape[0])
        freqs = reference.rope_frequencies_ref(args.rotary_dim, args.rope_scale, args.rope_theta, args.llama31,
                                               q.device)
        cis = reference.cis_ref(pos, freqs)
    q_new = reference.rotate_ref(q, cis, args.rotary_dim, args.interleave)
    k_new = reference.rotate_ref(k, cis, args.rotary_dim, args.interleave)
    q_out.copy_(q_new)
    k_out.copy_(k_new)


# -- triton ---------------------------------------------------------------------------------------


def _triton_rope(config, q, k, q_out, k_out, args: RopeArgs) -> None:
    kernels_module(__package__).launch_rope(
        q, k, q_out, k_out, pos_ids=args.pos_ids, indptr=args.indptr, offsets=args.offsets,
        cos_sin_cache=args.cos_sin_cache, rotary_dim=args.rotary_dim, interleave=args.interleave,
        rope_scale=args.rope_scale, rope_theta=args.rope_theta, llama31=args.llama31, config=config)


ROPE.register("torch", _torch_rope)
ROPE.register("triton", _triton_rope, configs=TRITON_TUNE_CONFIGS)


# -- tuning: how `aiter-ext tune rope` builds and checks one shape ------------------------------------


def _tune_case(shape: Mapping, device: str):
    """Llama 3.1 RoPE over one sequence; the untuned CSV gives ``num_q_heads`` beside the total (k has the rest)."""
    from aiter_ext.core.testing import error_over_bound, poison_, tolerance
    from aiter_ext.core.tuner import TuneCase

    dtype = DTYPES_BY_NAME[shape["dtype"]]
    tokens, heads, dim = shape["num_tokens"], shape["num_heads"], shape["head_dim"]
    q_heads = shape["num_q_heads"]
    q = torch.randn(tokens, q_heads, dim, device=device).to(dtype)
    k = torch.randn(tokens, heads - q_heads, dim, device=device).to(dtype)
    args = RopeArgs(dim, False, indptr=torch.tensor([0, tokens], dtype=torch.int32, device=device),
                    offsets=torch.tensor([3], dtype=torch.int32, device=device), rope_theta=5e5,
                    llama31=(1.0, 4.0, 8192.0))
    q_ref, k_ref = torch.empty_like(q), torch.empty_like(k)
    _torch_rope({}, q, k, q_ref, k_ref, args)
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)

    def run(impl, cfg):
        impl.fn(cfg, q, k, q_out, k_out, args)

    def check(impl, cfg):
        poison_(q_out), poison_(k_out)
        run(impl, cfg)
        atol, rtol = tolerance(dtype)
        return max(error_over_bound(o, r, atol, rtol) for o, r in ((q_out, q_ref), (k_out, k_ref)))

    return TuneCase(run, check, tolerance=1.0, nbytes=2 * (q.numel() + k.numel()) * q.element_size())


def _register_tuning():
    from aiter_ext.core.tuner import register_tune_target

    register_tune_target("rope", _tune_case)


_register_tuning()
