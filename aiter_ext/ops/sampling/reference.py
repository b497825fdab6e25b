"""fp64 references for sampling, and the ``torch`` backend built on them.

The distributions define what a sampler must draw from (the filtered, renormalised probabilities),
not the tokens: tests compare draw frequencies with them. Per-row thresholds get the meanings the
kernels give them (kernels.top_k_of / top_p_of / min_p_of): ``k <= 0`` keeps everything, NaN top-p
keeps everything, min-p is clamped into [0, 1]. NaN or negative probabilities weigh nothing.

The ``draw_*`` functions are the ``torch`` backend: exact inverse-CDF draws from those distributions.
Their uniforms come from a ``torch.Generator`` seeded on the host from the seed/offset tensors (a
host sync: the reference is not for graph capture), so their tokens differ from the Triton
kernels' under one seed; their distribution is the same.
"""

from __future__ import annotations

from typing import Optional

import torch


def _clean(probs: torch.Tensor) -> torch.Tensor:
    p = probs.double()
    return torch.where(p > 0, p, torch.zeros_like(p))  # NaN and negative entries weigh nothing


def _per_row(value, p: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, device=p.device).double().reshape(-1, 1)


def _renormalised(p: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    kept = torch.where(keep & (p > 0), p, torch.zeros_like(p))
    total = kept.sum(dim=-1, keepdim=True)
    return kept / torch.where(total > 0, total, torch.ones_like(total))


def min_p_keep(probs: torch.Tensor, min_p) -> torch.Tensor:
    p = _clean(probs)
    m = _per_row(min_p, p).nan_to_num(0.0).clamp(0.0, 1.0)
    return p >= m * p.max(dim=-1, keepdim=True).values


def top_k_keep(probs: torch.Tensor, top_k) -> torch.Tensor:
    """The tokens whose probability is at least the row's k-th largest (ties may keep more)."""
    p = _clean(probs)
    k = _per_row(top_k, p).trunc()
    k = torch.where(k > 0, k, torch.full_like(k, p.shape[-1])).clamp(1, p.shape[-1]).long().expand(p.shape[0], 1)
    kth = p.sort(dim=-1, descending=True).values.gather(-1, k - 1)
    return p >= kth


def mass_strictly_above(p: torch.Tensor) -> torch.Tensor:
    """For every entry, the mass of the entries strictly larger (tied entries share one value), in
    fp64: sorted descending, an exclusive running sum read at the start of each run of equal values."""
    p = p.double()
    values, order = p.sort(dim=-1, descending=True)
    exclusive = values.cumsum(-1) - values
    # first index of each entry's run of equal values: searchsorted over the ascending negation
    first = torch.searchsorted(-values.contiguous(), -values.contiguous(), right=False)
    return torch.empty_like(p).scatter_(-1, order, exclusive.gather(-1, first))


def top_p_keep(probs: torch.Tensor, top_p) -> torch.Tensor:
    """Keep a token iff the mass of the strictly more probable tokens is below ``top_p`` (the row
    maximum always stays). Rows are taken to sum to 1, as FlashInfer's kernels take them."""
    p = _clean(probs)
    t = _per_row(top_p, p).nan_to_num(float("inf"))
    return (mass_strictly_above(p) < t) | (p == p.max(-1, keepdim=True).values)


def normalised(probs: torch.Tensor) -> torch.Tensor:
    return _renormalised(_clean(probs), torch.ones_like(probs, dtype=torch.bool))


def min_p_distribution(probs: torch.Tensor, min_p) -> torch.Tensor:
    """FlashInfer's min-p: keep ``p_t >= min_p * max(p)`` (relative to the row maximum), renormalise."""
    return _renormalised(_clean(probs), min_p_keep(probs, min_p))


def top_k_distribution(probs: torch.Tensor, top_k) -> torch.Tensor:
    return _renormalised(_clean(probs), top_k_keep(probs, top_k))


def top_p_distribution(probs: torch.Tensor, top_p) -> torch.Tensor:
    return _renormalised(_clean(probs), top_p_keep(probs, top_p))


def joint_top_k_top_p_distribution(probs: torch.Tensor, top_k, top_p) -> torch.Tensor:
    """Both filters judged on the original distribution."""
    return _renormalised(_clean(probs), top_k_keep(probs, top_k) & top_p_keep(probs, top_p))


def filtered_distribution(probs: torch.Tensor, top_k=None, top_p=None, min_p=None) -> torch.Tensor:
    """Every given filter judged on the original distribution, renormalised (the row kernel's set)."""
    keep = torch.ones_like(probs, dtype=torch.bool)
    for value, rule in ((top_k, top_k_keep), (top_p, top_p_keep), (min_p, min_p_keep)):
        if value is not None:
            keep &= rule(probs, value)
    return _renormalised(_clean(probs), keep)


def top_k_mask_ref(logits: torch.Tensor, top_k) -> torch.Tensor:
    """Logits below the row's k-th largest set to -inf (ties may keep more than k); NaN counts as -inf."""
    x = logits.double().nan_to_num(nan=float("-inf"))
    k = _per_row(top_k, x).trunc()
    k = torch.where(k > 0, k, torch.full_like(k, x.shape[-1])).clamp(1, x.shape[-1]).long().expand(x.shape[0], 1)
    kth = x.sort(dim=-1, descending=True).values.gather(-1, k - 1)
    return torch.where(x >= kth, logits, torch.full_like(logits, float("-inf")))


def softmax_ref(logits: torch.Tensor, temperature=None) -> torch.Tensor:
    """fp32 ``softmax(logits / T)``; T == 0 rows one-hot at the first maximum; NaN logits count as
    -inf; a row with no finite logit gives zeros."""
    x = logits.double().nan_to_num(nan=float("-inf"))
    t = torch.ones(x.shape[0], 1, dtype=torch.float64) if temperature is None else _per_row(temperature, x)
    t = t.to(x.device).expand(x.shape[0], 1)
    greedy = t == 0
    finite = (x > float("-inf")).any(-1, keepdim=True)
    probs = torch.softmax(x / torch.where(greedy, torch.ones_like(t), t), -1).nan_to_num(0.0)
    one_hot = torch.zeros_like(x).scatter_(1, x.argmax(-1, keepdim=True), 1.0)
    return torch.where(finite, torch.where(greedy, one_hot, probs), torch.zeros_like(x)).float()


def _uniforms(n: int, seed: torch.Tensor, offset: torch.Tensor, per_row: bool) -> torch.Tensor:
    """fp64 uniforms in [0, 1), one per output row, from (seed, offset): a host sync."""
    seeds, offsets = seed.cpu().tolist(), offset.cpu().tolist()
    if not per_row:
        gen = torch.Generator().manual_seed((seeds[0] * 1_000_003 + offsets[0]) % 2**63)
        return torch.rand(n, generator=gen, dtype=torch.float64)
    return torch.stack([torch.rand(1, generator=torch.Generator().manual_seed((s * 1_000_003 + o + i) % 2**63),
                                   dtype=torch.float64)[0] for i, (s, o) in enumerate(zip(seeds, offsets))])


def _inverse_cdf(d: torch.Tensor, u: torch.Tensor):
    """Per row of the fp64 weights ``d``: the first entry of positive weight whose running sum passes
    ``u * total`` (the last such entry if rounding leaves none), and whether the row has mass."""
    cdf = d.cumsum(-1)
    total = cdf[:, -1:]
    cols = torch.arange(d.shape[1])
    token = torch.where((cdf > u[:, None] * total) & (d > 0), cols, d.shape[1]).min(-1).values
    last = torch.where(d > 0, cols, -1).max(-1).values
    return torch.where(token < d.shape[1], token, last).clamp(min=0), total[:, 0] > 0


def draw_from(dist: torch.Tensor, indices: Optional[torch.Tensor], seed, offset, per_row, out, valid) -> None:
    """Inverse-CDF draws from the rows of ``dist`` (fp64 weights) into ``out`` and ``valid``; output
    row i samples row ``indices[i]``. An index outside the rows, or a row with no mass, gives token
    0, invalid."""
    rows = out.shape[0]
    if rows == 0:
        return
    src = torch.arange(rows) if indices is None else indices.cpu().long()
    src_ok = (src >= 0) & (src < dist.shape[0])
    token, has_mass = _inverse_cdf(dist.cpu()[src.clamp(0, dist.shape[0] - 1)], _uniforms(rows, seed, offset, per_row))
    ok = src_ok & has_mass
    out.copy_(torch.where(ok, token, 0).to(out.dtype))
    valid.copy_(ok.to(valid.dtype))


def chain_speculative_ref(draft_probs, draft_ids, target_probs, out, accepted, emitted, seed, offset, per_row):
    """Chain speculative sampling (speculative.py) in fp64 with torch uniforms; counters added into."""
    batch, n, vocab = draft_probs.shape
    q, p = draft_probs.double().cpu(), target_probs.double().cpu()
    ids = draft_ids.cpu().long()
    u_all = [_uniforms(n + 1, seed[b:b + 1] if per_row else seed[:1], (offset[b:b + 1] if per_row else offset[:1]) + b,
                       False) for b in range(batch)]
    result = torch.full((batch, n + 1), -1, dtype=torch.int32)
    acc = torch.zeros(batch, dtype=torch.int32)
    emi = torch.zeros(batch, dtype=torch.int32)
    for b in range(batch):
        u, pos, passed, pos_ok = u_all[b], n, 0, True
        for i in range(n):
            d = int(ids[b, i])
            ok = 0 <= d < vocab and float(u[i]) * float(q[b, i, d]) < float(p[b, i, d])
            if pos == n and not ok:
                pos, pos_ok = i, 0 <= d < vocab
            elif i > pos and ok:
                passed += 1
            if i < pos:
                result[b, i] = d
        w = p[b, pos] if pos == n or not pos_ok else (p[b, pos] - q[b, pos]).clamp(min=0)
        if float(w.sum()) <= 0:
            w = p[b, pos]
        token, _ = _inverse_cdf(w[None], u[n:])
        result[b, pos] = int(token[0])
        acc[b], emi[b] = pos + passed, pos
    out.copy_(result)
    accepted += acc.to(accepted.device)
    emitted += emi.to(emitted.device)
