"""What tests, benchmarks and the tuner share: tolerances, poisoned outputs, raising comparisons."""

from __future__ import annotations

import torch

#: (atol, rtol) per output dtype, from the tolerances FlashInfer's own tests use for these ops.
#: A per-op override states its reason beside it.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    return TOLERANCES[dtype]


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill ``t`` with NaN (or the integer minimum) so that any element a kernel fails to write shows."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(torch.iinfo(t.dtype).min)


def poisoned_like(t: torch.Tensor) -> torch.Tensor:
    return poison_(torch.empty_like(t))


def max_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest |out - ref| with equal infinities counting as 0 and any NaN mismatch as inf."""
    out, ref = out.float(), ref.float()
    same_inf = torch.isinf(out) & torch.isinf(ref) & (torch.sign(out) == torch.sign(ref))
    diff = torch.where(same_inf, torch.zeros_like(out), (out - ref).abs())
    diff = torch.where(torch.isnan(out) != torch.isnan(ref), torch.full_like(diff, float("inf")), diff)
    diff = torch.nan_to_num(diff, nan=0.0)  # both NaN
    return float(diff.max()) if diff.numel() else 0.0


def error_over_bound(out: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> float:
    """``max_error(out, ref)`` over the bound ``atol + rtol * max|ref|``: at most 1 where ``out`` is within it. The
    tune targets score every candidate so, whatever the dtype (``out`` is compared on ``ref``'s device)."""
    return max_error(out.to(ref.device), ref) / (atol + rtol * float(ref.float().abs().max()))


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype | None = None, name: str = "output",
                 atol: float | None = None, rtol: float | None = None) -> None:
    """Raise with a useful message unless ``out`` matches ``ref`` within the dtype's tolerance.

    NaN is never accepted where the reference has none; infinities must match in sign and place.
    """
    d_atol, d_rtol = tolerance(dtype or out.dtype)
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol, equal_nan=False,
                               msg=lambda m: f"{name}: {m}")


def chi_square_p_value(counts: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """Pearson's chi-square test of ``counts`` against ``expected_probs`` (bins of expected count < 5 pooled)."""
    n = counts.sum().double()
    expected = expected_probs.double() * n
    keep = expected >= 5
    obs = torch.cat([counts.double()[keep], counts.double()[~keep].sum().reshape(1)])
    exp = torch.cat([expected[keep], expected[~keep].sum().reshape(1)])
    if exp[-1] < 5:  # the pooled bin is itself too small: fold it into the largest bin
        obs[:-1][exp[:-1].argmax()] += obs[-1]
        exp[:-1][exp[:-1].argmax()] += exp[-1]
        obs, exp = obs[:-1], exp[:-1]
    df = max(1, obs.numel() - 1)
    stat = ((obs - exp) ** 2 / exp).sum()
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))
