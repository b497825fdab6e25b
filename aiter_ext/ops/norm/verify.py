"""Small cases that `aiter-ext gap` runs on the current device, for every backend that can run here."""

from __future__ import annotations

import torch

from aiter_ext.core.testing import max_error, poisoned_like, tolerance

from . import api, reference
from .backends import RMSNORM


def small_cases() -> list[tuple[str, str, bool, str]]:
    """``(case, backend, passed, detail)`` for each case x backend available here."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    results = []
    for dtype in (torch.float16, torch.bfloat16):
        for shape in ((19, 3584), (7, 4, 128)):
            hidden = shape[-1]
            x = torch.randn(*shape, device=device).to(dtype)
            r = torch.randn(*shape, device=device).to(dtype)
            w = torch.randn(hidden, device=device).to(dtype)
            for backend in RMSNORM.impls:
                call = {"num_rows": x.numel() // hidden, "hidden": hidden, "dtype": "fp16", "device": device}
                if not RMSNORM.usable(backend, call)[0]:
                    continue
                for gemma in (False, True):
                    name = f"{'gemma_' if gemma else ''}rmsnorm {list(shape)} {dtype}"
                    out = poisoned_like(x)
                    api._rmsnorm_out(x, w, out, 1e-6, gemma, backend)
                    results.append(_judge(name, backend, [(out, reference.rmsnorm_ref(x, w, 1e-6, gemma))], dtype))
                    x_ref, r_ref = reference.fused_add_rmsnorm_ref(x, r, w, 1e-6, gemma)
                    x_io, r_io = x.clone(), r.clone()
                    api._fused_add_rmsnorm(x_io, r_io, w, 1e-6, gemma, backend)
                    results.append(_judge("fused_add_" + name, backend, [(x_io, x_ref), (r_io, r_ref)], dtype))
    return results


def _judge(case, backend, pairs, dtype):
    atol, rtol = tolerance(dtype)
    errs = [max_error(out, ref) for out, ref in pairs]
    ok = all(e <= atol + rtol * float(ref.float().abs().max()) for e, (_, ref) in zip(errs, pairs))
    return case, backend, ok, "max|err|=" + ", ".join(f"{e:.2e}" for e in errs)
