"""Backend registrations for attention-state merging.

Two ops for the dispatcher:
- ``merge_state``: two states into one (``merge_state`` and ``merge_state_in_place``); backends
  ``triton``, ``ck`` (the C++ kernel built by ``compile_ops``) and ``torch``; tuned by CSV.
- ``merge_states``: several states per token, fixed count or by ``indptr``; ``triton`` and ``torch``.

Every implementation writes into the output tensors it is given (``v_out``/``s_out``, which are the
inputs themselves for the in-place form) and takes the selected kernel config first.
"""

from __future__ import annotations

import json
from typing import Mapping

import torch

from aiter_ext.core.backend import define_op, pow2_bucket
from aiter_ext.core.checks import DTYPES_BY_NAME
from aiter_ext.core.launch import kernels_module
from aiter_ext.core.tuned import load_rows

from . import reference

#: Tiles the tuner tries for the Triton pair kernel (rows per program x warps).
TRITON_TUNE_CONFIGS = [
    {"BLOCK_R": r, "num_warps": w} for r, w in ((8, 4), (16, 4), (32, 4), (32, 8), (64, 4), (64, 8))
]
#: Head dims the untuned shape list covers, so the AMD compile check builds every tuner tile for them.
TUNED_HEAD_DIMS = (64, 128, 256)
#: merge_states' candidates: the heuristic's tile ({}, what the table's margin rule measures the others against)
#: and the pair kernel's tiles (merge_many_kernel takes the same rows x warps, its rows capped by many_block_r).
MERGE_STATES_TUNE_CONFIGS = [{}] + TRITON_TUNE_CONFIGS
#: States per output token in `aiter-ext tune merge_states`: the table has no state-count key, so a row serves
#: every count (a tile's rows and warps matter by the rows it covers; each row's states are a loop or unrolled).
MERGE_STATES_TUNE_STATES = 4


def _bucket(call: Mapping) -> tuple:
    return (pow2_bucket(call["num_tokens"]), call["num_heads"], call["head_dim"], call["dtype"])


SHAPE_KEYS = ("num_tokens", "num_heads", "head_dim", "dtype")
MERGE_STATE = define_op("merge_state", SHAPE_KEYS, _bucket)
MERGE_STATES = define_op("merge_states", SHAPE_KEYS, _bucket)


def tuned_triton_configs() -> list[tuple[str, int, dict]]:
    """``(label, head_dim, config)`` of every Triton row in the tuned CSV, any arch (for the AMD compile check)."""
    return [(f"{row['arch']}:{row['num_tokens']}x{row['num_heads']}x{row['head_dim']}", int(row["head_dim"]),
             json.loads(row["config"])) for row in load_rows("merge_state") if row["backend"] == "triton"]


def tuned_many_configs() -> list[tuple[str, str, int, dict]]:
    """``(label, dtype, head_dim, config)`` of every Triton row of merge_states' tuned CSV that names a tile, any
    arch (an fp32 row serves fp32 states: split attention's and cascade's partials into a 16-bit output, and fp32
    outputs)."""
    return [(f"{row['arch']}:{row['num_tokens']}x{row['num_heads']}x{row['head_dim']}", row["dtype"],
             int(row["head_dim"]), json.loads(row["config"])) for row in load_rows("merge_states")
            if row["backend"] == "triton" and json.loads(row["config"])]


# -- torch: the reference, written into the outputs ----------------------------------------------


def _torch_pair(config, v_a, s_a, v_b, s_b, v_out, s_out, mask):
    v, s = reference.merge_state_ref(v_a, s_a, v_b, s_b)
    if mask is None:
        v_out.copy_(v)
        s_out.copy_(s)
    else:
        keep = mask.to(device=v_out.device, dtype=torch.bool)
        v_out[keep] = v[keep]
        s_out[keep] = s[keep]


def _torch_many(config, v, s, indptr, v_out, s_out):
    if indptr is None:
        v_m, s_m = reference.merge_states_ref(v, s)
    else:
        v_m, s_m = reference.variable_length_merge_states_ref(v, s, indptr)
    v_out.copy_(v_m)
    s_out.copy_(s_m)


# -- triton ---------------------------------------------------------------------------------------


def _triton_pair(config, v_a, s_a, v_b, s_b, v_out, s_out, mask):
    kernels_module(__package__).launch_pair(v_a, s_a, v_b, s_b, v_out, s_out, mask, config)


def _triton_many(config, v, s, indptr, v_out, s_out):
    kernels_module(__package__).launch_many(v, s, indptr, v_out, s_out, config)


# -- ck: the vectorized C++ kernel ------------------------------------------------------------------

def _ck_supports(call: Mapping) -> tuple[bool, str]:
    from aiter_ext.core.jit import module_status

    ok, reason = module_status("module_merge_state")
    if not ok:
        return False, reason
    if not call["contiguous"]:
        return False, "the C++ kernel needs contiguous v and s"
    if not call.get("aligned16", True):
        return False, "the C++ kernel needs 16-byte aligned v tensors"
    vec = 4 if call["dtype"] == "fp32" else 8  # elements per 16-byte access
    if call["head_dim"] % vec or call["head_dim"] > 512:
        return False, f"the C++ kernel needs head_dim a multiple of {vec} and at most 512, got {call['head_dim']}"
    return True, ""


def _ck_pair(config, v_a, s_a, v_b, s_b, v_out, s_out, mask):
    from .ck import DTYPE_CODES, merge_state_pair

    num_tokens, num_heads, head_dim = v_a.shape
    merge_state_pair(v_a, s_a, v_b, s_b, v_out, s_out, mask, num_tokens, num_heads, head_dim,
                     DTYPE_CODES[v_a.dtype])


MERGE_STATE.register("torch", _torch_pair)
MERGE_STATE.register("triton", _triton_pair, configs=TRITON_TUNE_CONFIGS)
MERGE_STATE.register("ck", _ck_pair, _ck_supports)
MERGE_STATES.register("torch", _torch_many)
MERGE_STATES.register("triton", _triton_many, configs=MERGE_STATES_TUNE_CONFIGS)


# -- tuning: how `aiter-ext tune merge_state` builds and checks one shape -----------------------------


def _tune_case(shape: dict, device: str):
    from aiter_ext.core.tuner import TuneCase

    dtype = DTYPES_BY_NAME[shape["dtype"]]
    n, h, d = shape["num_tokens"], shape["num_heads"], shape["head_dim"]
    v_a, v_b = (torch.randn(n, h, d, device=device).to(dtype) for _ in range(2))
    s_a, s_b = (torch.randn(n, h, device=device) * 5 for _ in range(2))
    v_ref, s_ref = reference.merge_state_ref(v_a, s_a, v_b, s_b)
    v_out, s_out = torch.empty_like(v_a), torch.empty_like(s_a)

    def run(impl, cfg):
        impl.fn(cfg, v_a, s_a, v_b, s_b, v_out, s_out, None)

    nbytes = 3 * v_a.numel() * v_a.element_size() + 3 * s_a.numel() * 4
    return TuneCase(run, _merged_check(run, v_out, s_out, v_ref, s_ref), tolerance=1.0, nbytes=nbytes)


def _merged_check(run, v_out, s_out, v_ref, s_ref):
    """A merge's tune check: both outputs poisoned, ``run(impl, cfg)``, then the worst error over its bound (the value
    error scaled to the output dtype's tolerance, so that one bound serves every dtype; the LSE within 1e-4)."""
    from aiter_ext.core.testing import error_over_bound, poison_, tolerance

    def check(impl, cfg):
        poison_(v_out), poison_(s_out)
        run(impl, cfg)
        atol, rtol = tolerance(v_out.dtype)
        return max(error_over_bound(v_out, v_ref, atol, rtol), error_over_bound(s_out, s_ref, 1e-4, 0.0))

    return check


def _tune_case_many(shape: dict, device: str):
    """merge_states as split attention and cascade launch it: MERGE_STATES_TUNE_STATES states per output token, by
    ``indptr``. An fp32 row is their fp32 partial states merged into a bf16 output; a 16-bit row keeps its dtype
    (the public merge_states)."""
    from aiter_ext.core.tuner import TuneCase

    dtype = DTYPES_BY_NAME[shape["dtype"]]
    out_dtype = torch.bfloat16 if dtype == torch.float32 else dtype
    n, h, d, states = shape["num_tokens"], shape["num_heads"], shape["head_dim"], MERGE_STATES_TUNE_STATES
    v = torch.randn(n * states, h, d, device=device).to(dtype)
    s = torch.randn(n * states, h, device=device) * 5
    indptr = torch.arange(0, n * states + 1, states, dtype=torch.int32, device=device)
    # uniform segments: the fixed-count reference gives the same merge, vectorized
    v_ref, s_ref = reference.merge_states_ref(v.float().view(n, states, h, d), s.view(n, states, h))
    v_out = torch.empty(n, h, d, dtype=out_dtype, device=device)
    s_out = torch.empty(n, h, device=device)

    def run(impl, cfg):
        impl.fn(cfg, v, s, indptr, v_out, s_out)

    nbytes = v.numel() * v.element_size() + s.numel() * 4 + v_out.numel() * v_out.element_size() + s_out.numel() * 4
    return TuneCase(run, _merged_check(run, v_out, s_out, v_ref, s_ref), tolerance=1.0, nbytes=nbytes)


def _register_tuning():
    from aiter_ext.core.tuner import register_tune_target

    register_tune_target("merge_state", _tune_case)
    register_tune_target("merge_states", _tune_case_many)


_register_tuning()
