"""Small sampling cases that `aiter-ext gap` runs on the current device: every draw inside the kept set,
and one frequency check (total variation distance to the reference distribution)."""

from __future__ import annotations

import torch

from . import api, reference
from .backends import CHAIN_SPECULATIVE, SAMPLING
from .speculative import chain_speculative_sampling


def _backend(op, x: torch.Tensor, rows: int, **keys) -> str:
    """The backend an automatic call of ``op`` takes here (what the cases below ran on)."""
    return op.select({"rows": rows, "vocab": x.shape[-1], "dtype": "fp32", "device": x.device.type,
                      **keys}).impl.backend


def small_cases() -> list[tuple[str, str, bool, str]]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(1, 64, generator=gen, dtype=torch.float64) * 2, -1).float().to(device)
    indices = torch.zeros(4096, dtype=torch.int32, device=device)
    results = []
    for name, fn, arg, ref in (("min_p 0.1", api.min_p_sampling_from_probs, 0.1, reference.min_p_distribution),
                               ("top_k 8", api.top_k_sampling_from_probs, 8, reference.top_k_distribution),
                               ("top_p 0.5", api.top_p_sampling_from_probs, 0.5, reference.top_p_distribution)):
        tokens = fn(probs, arg, indices=indices, seed=1, offset=0).long().cpu()
        target = ref(probs, arg)[0].cpu()
        freq = torch.bincount(tokens, minlength=64).double() / tokens.numel()
        inside = bool((target[tokens] > 0).all())
        tv = 0.5 * float((freq - target).abs().sum())
        # 4096 draws over <= 64 tokens: a correct sampler's TV distance is ~0.05; 0.15 flags a wrong one
        results.append((f"{name}, 4096 draws of one row", _backend(SAMPLING, probs, 4096, filter=name.split()[0]),
                        inside and tv < 0.15,
                        f"all inside the kept set: {inside}; TV distance {tv:.3f}"))
    q = torch.softmax(torch.randn(8, 2, 32, generator=gen), -1).to(device)
    p = torch.softmax(torch.randn(8, 3, 32, generator=gen), -1).to(device)
    ids = torch.multinomial(q.view(-1, 32).cpu(), 1).view(8, 2).to(torch.int32).to(device)
    out, acc, emi = chain_speculative_sampling(q, ids, p, seed=2, offset=0)
    ok = bool((((out >= 0).sum(1)) == emi + 1).all() and (acc >= emi).all())
    results.append(("chain speculative, 8 x 2 drafts", _backend(CHAIN_SPECULATIVE, q, 8), ok, f"emitted {emi.tolist()}"))
    return results
