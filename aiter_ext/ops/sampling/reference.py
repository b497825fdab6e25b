"""fp64 references for sampling: they define the *distribution* a sampler must draw from (the filtered,
renormalised probabilities), not the tokens; tests compare draw frequencies with it."""

from __future__ import annotations

import torch


def min_p_distribution(probs: torch.Tensor, min_p) -> torch.Tensor:
    """FlashInfer's min-p: keep ``p_t >= min_p * max(p)`` (relative to the row maximum), renormalise.
    ``min_p`` is a float or a per-row tensor."""
    p = probs.double()
    min_p = _per_row(min_p, p)
    kept = torch.where(p >= min_p * p.max(dim=-1, keepdim=True).values, p, torch.zeros_like(p))
    return kept / kept.sum(dim=-1, keepdim=True)


def normalised(probs: torch.Tensor) -> torch.Tensor:
    p = probs.double()
    return p / p.sum(dim=-1, keepdim=True)


def _renormalised(p: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    kept = torch.where(keep, p, torch.zeros_like(p))
    return kept / kept.sum(dim=-1, keepdim=True)


def _per_row(value, p: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float64, device=p.device).reshape(-1, 1).cpu().to(p.device)


def top_k_distribution(probs: torch.Tensor, top_k) -> torch.Tensor:
    """Keep the tokens whose probability is at least the row's k-th largest (ties may keep more)."""
    p = probs.double()
    k = _per_row(top_k, p).clamp(1, p.shape[-1]).long().expand(p.shape[0], 1)
    kth = p.sort(dim=-1, descending=True).values.gather(-1, k - 1)
    return _renormalised(p, p >= kth)


def mass_strictly_above(p: torch.Tensor) -> torch.Tensor:
    """For every entry, the mass of the entries strictly larger (tied entries share one value), in
    fp64: sorted descending, an exclusive running sum read at the start of each run of equal values."""
    p = p.double()
    values, order = p.sort(dim=-1, descending=True)
    exclusive = values.cumsum(-1) - values
    # first index of each entry's run of equal values: searchsorted over the ascending negation
    first = torch.searchsorted(-values.contiguous(), -values.contiguous(), right=False)
    return torch.empty_like(p).scatter_(-1, order, exclusive.gather(-1, first))


def top_p_distribution(probs: torch.Tensor, top_p) -> torch.Tensor:
    """Keep a token iff the mass of the strictly more probable tokens is below ``top_p`` (the row
    maximum always stays). Rows are taken to sum to 1, as FlashInfer's kernels take them."""
    p = probs.double()
    above = mass_strictly_above(p)
    # FlashInfer's rule, with rows taken as summing to 1 (its contract): no scaling by the row's sum
    return _renormalised(p, (above < _per_row(top_p, p)) | (p == p.max(-1, keepdim=True).values))


def joint_top_k_top_p_distribution(probs: torch.Tensor, top_k, top_p) -> torch.Tensor:
    """Both filters judged on the original distribution."""
    p = probs.double()
    k_keep = top_k_distribution(p, top_k) > 0
    p_keep = top_p_distribution(p, top_p) > 0
    return _renormalised(p, k_keep & p_keep)
