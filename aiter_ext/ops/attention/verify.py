"""Small cascade cases that `aiter-ext gap` runs on the current device, on every backend usable here."""

from __future__ import annotations

import torch

from aiter_ext.core.testing import max_error

from .cascade import MultiLevelCascadeAttentionWrapper
from .backends import ATTENTION
from .reference import single_attention_ref


def small_cases() -> list[tuple[str, str, bool, str]]:
    """Two-level decode cascade (shared 40 keys, 3 requests with 5/0/21 unique keys, GQA 4, page 16)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float16  # the interpreter has no bf16 dot
    torch.manual_seed(0)
    heads, kv_heads, dim, page = 8, 2, 64, 16
    cache = torch.randn(9, 2, page, kv_heads, dim, device=device).to(dtype)
    i32 = lambda *x: torch.tensor(x, dtype=torch.int32)  # noqa: E731
    # shared: pages 0-2 (40 keys); unique: request 0 page 3 (5), request 1 none, request 2 pages 4-5 (21)
    tables = ([i32(0, 3), i32(0, 1, 2, 3)], [i32(0, 3), i32(0, 1, 1, 3)], [i32(0, 1, 2), i32(3, 4, 5)],
              [i32(8), i32(5, 0, 5)])
    q = torch.randn(3, heads, dim, device=device).to(dtype)
    k_all, v_all = cache[:, 0].reshape(-1, kv_heads, dim), cache[:, 1].reshape(-1, kv_heads, dim)
    unique = [torch.arange(48, 53), torch.arange(0), torch.arange(64, 85)]
    ref = torch.cat([single_attention_ref(q[b:b + 1], k_all[torch.cat([torch.arange(40), u])],
                                          v_all[torch.cat([torch.arange(40), u])])[0] for b, u in enumerate(unique)])
    results = []
    call = {"num_qo_heads": heads, "num_kv_heads": kv_heads, "head_dim": dim, "dtype": "fp16", "device": device}
    for backend in ATTENTION.impls:
        if not ATTENTION.usable(backend, call)[0]:
            continue
        w = MultiLevelCascadeAttentionWrapper(2, torch.empty(1 << 20, dtype=torch.uint8, device=device),
                                              backend=backend)
        w.plan(*tables, heads, kv_heads, dim, page, q_data_type=dtype)
        err = max_error(w.run(q, cache), ref)
        tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
        results.append((f"cascade 2 levels, 3 requests, {dtype}", backend, err <= tol, f"max|dout|={err:.2e}"))
    return results
