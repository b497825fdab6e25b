"""Small cases that `aiter-ext gap` runs on the current device, for every backend that can run here."""

from __future__ import annotations

import torch

from aiter_ext.core.testing import max_error, poisoned_like, tolerance

from . import api, reference
from .backends import MERGE_STATE, MERGE_STATES


def small_cases() -> list[tuple[str, str, bool, str]]:
    """``(case, backend, passed, detail)`` for each case x backend available here."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    results = []
    for dtype in (torch.float16, torch.bfloat16):
        n, h, d = 33, 4, 128
        v_a, v_b = (torch.randn(n, h, d, device=device).to(dtype) for _ in range(2))
        s_a, s_b = (torch.randn(n, h, device=device) * 5 for _ in range(2))
        s_a[0], s_b[0] = float("-inf"), float("-inf")  # two empty states: v = 0, s = -inf
        v_ref, s_ref = reference.merge_state_ref(v_a, s_a, v_b, s_b)
        v_many, s_many = torch.stack([v_a, v_b], 1), torch.stack([s_a, s_b], 1)
        for backend in MERGE_STATE.impls:
            if not MERGE_STATE.usable(backend, _call(n, h, d, dtype))[0]:
                continue
            v_out, s_out = poisoned_like(v_a), poisoned_like(s_a)
            api._merge_pair_out(v_a, s_a, v_b, s_b, v_out, s_out, None, backend)
            results.append(_judge(f"merge_state {n}x{h}x{d} {dtype}", backend, v_out, s_out, v_ref, s_ref, dtype))
        for backend in MERGE_STATES.impls:
            if not MERGE_STATES.usable(backend, _call(n, h, d, dtype))[0]:
                continue
            v_out, s_out = poisoned_like(v_a), poisoned_like(s_a)
            api._merge_many_out(v_many, s_many, None, v_out, s_out, backend)
            results.append(_judge(f"merge_states {n}x2x{h}x{d} {dtype}", backend, v_out, s_out, v_ref, s_ref, dtype))
    return results


def _call(n, h, d, dtype):
    names = {torch.float16: "fp16", torch.bfloat16: "bf16"}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"num_tokens": n, "num_heads": h, "head_dim": d, "dtype": names[dtype], "device": device,
            "has_mask": False, "contiguous": True, "varlen": False}


def _judge(case, backend, v_out, s_out, v_ref, s_ref, dtype):
    atol, rtol = tolerance(dtype)
    err_v, err_s = max_error(v_out, v_ref), max_error(s_out, s_ref)
    ok = err_v <= atol + rtol * float(v_ref.float().abs().max()) and err_s <= 1e-4
    return case, backend, ok, f"max|dv|={err_v:.2e} max|ds|={err_s:.2e}"
