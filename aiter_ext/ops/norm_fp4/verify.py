"""Small cases that `aiter-ext gap` runs on the current device, for every backend that can run here."""

from __future__ import annotations

import torch

from aiter_ext.core.checks import dtype_name

from . import api, reference
from .backends import NORM_FP4
from .layout import scale_padding

#: (scale rule, block size, layout) per public format
CASES = (("e4m3", 16, "linear"), ("e4m3", 16, "swizzled"), ("ue8m0", 32, "linear"), ("aiter", 32, "shuffled"))


def small_cases() -> list[tuple[str, str, bool, str]]:
    """``(case, backend, passed, detail)``: fused norm + quantization with a residual, codes and scales
    compared with the reference: scales and the written residual exactly, codes with at most 1 byte in
    1000 different (the fp32 norm may round differently in the last bit; op_tests/test_norm_fp4.py holds
    each such difference to a rounding boundary, which this smoke check does not)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    results = []
    m, n = 33, 256
    for dtype in (torch.float16, torch.bfloat16):
        x, r = (torch.randn(m, n, device=device).to(dtype) for _ in range(2))
        w = (torch.rand(n, device=device) + 0.5).to(dtype)
        gs = torch.tensor([50.0], device=device)
        for rule, block_size, layout in CASES:
            codes_ref, sf_ref, res_ref = reference.norm_fp4_quant_ref(x.cpu(), w.cpu(), r.cpu(), gs.cpu(), 1e-6, True,
                                                                      block_size, rule, layout)
            for backend in NORM_FP4.impls:
                call = {"num_tokens": m, "hidden": n, "dtype": dtype_name(dtype), "device": device}
                if not NORM_FP4.usable(backend, call)[0]:
                    continue
                pad_rows, pad_blocks = scale_padding(m, n // block_size, layout)
                q = torch.full((m, n // 2), 0xEE, dtype=torch.uint8, device=device)
                sf = torch.full((pad_rows * pad_blocks,) if layout == "swizzled" else (pad_rows, pad_blocks), 0xEE,
                                dtype=torch.uint8, device=device)
                res_out = torch.full_like(x, float("nan"))
                api._quant_out(x, r, w, gs, q, sf, res_out, 1e-6, True, block_size, rule, layout, backend)
                code_diff = int((q.cpu() != codes_ref).sum())
                ok = (code_diff <= q.numel() // 1000 and torch.equal(sf.cpu(), sf_ref.reshape(sf.shape))
                      and torch.equal(res_out.cpu(), res_ref))
                results.append((f"norm_fp4 {rule}/{layout} {m}x{n} {dtype}", backend, ok,
                                f"{code_diff} code bytes differ; scales {'equal' if ok else 'checked'}"))
    return results
