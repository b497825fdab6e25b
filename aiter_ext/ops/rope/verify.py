"""Small cases that `aiter-ext gap` runs on the current device, for every backend that can run here."""

from __future__ import annotations

import torch

from aiter_ext.core.testing import max_error, poisoned_like, tolerance

from . import api, reference
from .backends import ROPE


def small_cases() -> list[tuple[str, str, bool, str]]:
    """``(case, backend, passed, detail)`` for each case x backend available here."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    results = []
    for dtype in (torch.float16, torch.bfloat16):
        n, hq, hk, d = 37, 4, 2, 128
        qkv = torch.randn(n, (hq + 2 * hk) * d, device=device).to(dtype)
        q, k = qkv[:, : hq * d].unflatten(1, (hq, d)), qkv[:, hq * d: (hq + hk) * d].unflatten(1, (hk, d))
        indptr = torch.tensor([0, 5, 5, 30, n], dtype=torch.int32, device=device)
        offsets = torch.tensor([0, 3, 100, 7], dtype=torch.int32, device=device)
        pos = reference.positions_from_indptr_ref(indptr, offsets, n)
        freqs = torch.outer(torch.arange(256.0), 1e4 ** (-torch.arange(0, 64, 2) / 64))
        cache = torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(device)
        cases = [  # name, positions from, cache, rotary_dim, interleave, rope_scale, theta, llama31, reference
            ("llama31 indptr neox", None, None, d, False, 8.0, 5e5, (1.0, 4.0, 8192.0),
             reference.apply_llama31_rope_ref(q, k, indptr, offsets)),
            ("rope pos_ids gptj r64", pos, None, 64, True, 1.0, 1e4, None,
             reference.apply_rope_pos_ids_ref(q, k, pos, 64, True)),
            ("cos_sin_cache neox r64", pos, cache, 64, False, 1.0, 1e4, None,
             tuple(t.unflatten(1, (-1, d)) for t in reference.apply_rope_with_cos_sin_cache_ref(
                 pos, q.flatten(1), k.flatten(1), d, cache))),
        ]
        for name, pos_ids, cos_sin_cache, rotary_dim, interleave, scale, theta, llama31, (q_ref, k_ref) in cases:
            for backend in ROPE.impls:
                if not ROPE.usable(backend, {"device": device})[0]:
                    continue
                q_out, k_out = poisoned_like(q_ref), poisoned_like(k_ref)
                lf, hf, ctx = llama31 or (0.0, 0.0, 0.0)
                api._rope_out(q, k, q_out, k_out, pos_ids, None if pos_ids is not None else indptr,
                              None if pos_ids is not None else offsets, cos_sin_cache, rotary_dim, interleave, scale,
                              theta, llama31 is not None, lf, hf, ctx, backend)
                atol, rtol = tolerance(dtype)
                err = max(max_error(q_out, q_ref), max_error(k_out, k_ref))
                bound = atol + rtol * float(max(q_ref.float().abs().max(), k_ref.float().abs().max()))
                results.append((f"rope {name} {n}x({hq}+{hk})x{d} {dtype}", backend, err <= bound,
                                f"max|d|={err:.2e}"))
    return results
