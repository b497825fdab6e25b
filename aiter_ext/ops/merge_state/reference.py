"""fp32 PyTorch references for attention-state merging (FlashInfer semantics).

An attention state is ``(v, s)``: ``v`` the softmax-weighted sum of values over some set of keys, and
``s`` the log2-sum-exp of the scaled logits over the same keys. Merging states over disjoint key sets
gives the state over their union:

    m = max_i s_i,   w_i = 2^(s_i - m),   v = sum_i w_i v_i / sum_i w_i,   s = m + log2(sum_i w_i)

A state with ``s = -inf`` is empty (it covered no keys) and has weight 0; its ``v`` is ignored, even NaN. When every state is empty
the result is ``v = 0`` and ``s = -inf``, never NaN.

These functions are readable rather than fast; they are the oracle of the tests, the benchmarks'
baseline and the ``torch`` backend.
"""

from __future__ import annotations

import torch


def merge_stacked_ref(v: torch.Tensor, s: torch.Tensor, valid: torch.Tensor | None = None):
    """Merge states stacked along dim 1: ``v [N, S, H, D]``, ``s [N, S, H]`` -> fp32 ``[N, H, D]``, ``[N, H]``.

    ``valid [N, S]`` (bool) marks the states that exist; the others are treated as empty.
    """
    v, s = v.float(), s.float()
    if valid is not None:
        s = torch.where(valid[:, :, None], s, torch.full_like(s, float("-inf")))
    m = s.amax(dim=1) if s.shape[1] else torch.full((s.shape[0], s.shape[2]), float("-inf"), device=s.device)
    m_safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)  # all-empty rows: avoid -inf - -inf
    w = torch.exp2(s - m_safe[:, None, :])  # [N, S, H]; empty states weigh 0
    denom = w.sum(dim=1)  # [N, H]
    # An empty state contributes nothing, whatever its v holds (NaN from an earlier 0/0 included).
    v_sum = torch.where(w[..., None] > 0, w[..., None] * v, torch.zeros_like(v)).sum(dim=1)
    v_out = v_sum / torch.where(denom == 0, torch.ones_like(denom), denom)[..., None]
    s_out = m_safe + torch.log2(denom)  # log2(0) = -inf for all-empty rows
    return v_out, s_out


def merge_state_ref(v_a, s_a, v_b, s_b):
    """Merge two states ``[N, H, D]``/``[N, H]``; returns ``v`` in ``v_a.dtype`` and fp32 ``s``."""
    v, s = merge_stacked_ref(torch.stack([v_a, v_b], dim=1), torch.stack([s_a, s_b], dim=1))
    return v.to(v_a.dtype), s


def merge_state_in_place_ref(v, s, v_other, s_other, mask=None) -> None:
    """Merge ``(v_other, s_other)`` into ``(v, s)`` in place; rows whose ``mask`` is 0 stay untouched."""
    v_new, s_new = merge_state_ref(v, s, v_other, s_other)
    if mask is None:
        v.copy_(v_new)
        s.copy_(s_new)
        return
    keep = mask.to(torch.bool).to(v.device)
    v[keep] = v_new[keep]
    s[keep] = s_new[keep]


def merge_states_ref(v, s):
    """Merge ``S`` states per token: ``v [N, S, H, D]``, ``s [N, S, H]`` -> ``[N, H, D]``, fp32 ``[N, H]``."""
    v_out, s_out = merge_stacked_ref(v, s)
    return v_out.to(v.dtype), s_out


def variable_length_merge_states_ref(v, s, indptr):
    """Merge a variable number of states per output row: output ``i`` merges rows ``indptr[i]:indptr[i+1]``
    of ``v [total, H, D]`` and ``s [total, H]``. A segment with no rows gives ``v = 0``, ``s = -inf``.
    """
    bounds = indptr.tolist()
    n_out, heads, dim = len(bounds) - 1, v.shape[1], v.shape[2]
    v_out = torch.empty(n_out, heads, dim, dtype=v.dtype, device=v.device)
    s_out = torch.empty(n_out, heads, dtype=torch.float32, device=v.device)
    for i in range(n_out):
        lo, hi = bounds[i], bounds[i + 1]
        vi, si = merge_stacked_ref(v[lo:hi].unsqueeze(0).float(), s[lo:hi].unsqueeze(0))
        v_out[i] = vi[0].to(v.dtype)
        s_out[i] = si[0]
    return v_out, s_out
