"""fp32 PyTorch references for rotary position embedding (FlashInfer semantics).

Written in Meta's complex-number form: the rotary span of each head is read as ``rotary_dim / 2``
complex numbers (GPT-J pairs ``(x[2i], x[2i+1])`` when ``interleave=True``, NeoX halves
``(x[i], x[i + r/2])`` otherwise) and multiplied by ``exp(1j * pos * freq_i)``, built with
``torch.polar``. Dims past ``rotary_dim`` pass through unchanged.

Frequencies: ``freq_i = theta^(-2i/rotary_dim)``. Plain RoPE divides them by ``rope_scale``. Llama 3.1
follows Meta's ``apply_scaling``, by wavelength: wavelengths shorter than ``old_context_len /
high_freq_factor`` keep their frequency, longer than ``old_context_len / low_freq_factor`` are divided
by ``rope_scale``, and the band between is interpolated.

The in-place functions have the same references (their results are what the out-of-place forms
return). These functions are readable, not fast; they are the oracle of the tests and the ``torch``
backend.
"""

from __future__ import annotations

import math

import torch


def rope_frequencies_ref(rotary_dim: int, rope_scale: float = 1.0, rope_theta: float = 1e4,
                         llama31: tuple[float, float, float] | None = None, device=None) -> torch.Tensor:
    """fp32 ``[rotary_dim / 2]`` frequencies; ``llama31 = (low_freq_factor, high_freq_factor, old_context_len)``."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / rotary_dim
    freqs = 1.0 / (rope_theta ** exponents)
    if llama31 is None:
        return freqs / rope_scale
    low, high, old_context_len = llama31
    wavelen = 2 * math.pi / freqs
    smooth = (old_context_len / wavelen - low) / (high - low)
    band = (1 - smooth) * freqs / rope_scale + smooth * freqs
    out = torch.where(wavelen < old_context_len / high, freqs, band)
    return torch.where(wavelen > old_context_len / low, freqs / rope_scale, out)


def positions_from_indptr_ref(indptr: torch.Tensor, offsets: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """int64 ``[num_tokens]``: token ``j`` of segment ``b`` sits at ``offsets[b] + j - indptr[b]``."""
    bounds, starts = indptr.tolist(), offsets.tolist()
    pos = torch.zeros(num_tokens, dtype=torch.int64)
    for b in range(len(bounds) - 1):
        lo, hi = bounds[b], bounds[b + 1]
        pos[lo:hi] = torch.arange(hi - lo) + starts[b]
    return pos.to(indptr.device)


def rotate_ref(x: torch.Tensor, cis: torch.Tensor, rotary_dim: int, interleave: bool) -> torch.Tensor:
    """Rotate ``x [T, H, D]`` by ``cis [T, rotary_dim/2]`` (complex64); returns ``x.dtype``."""
    xr = x[..., :rotary_dim].float()
    if interleave:
        pairs = torch.view_as_complex(xr.reshape(*xr.shape[:-1], rotary_dim // 2, 2).contiguous())
    else:
        half = rotary_dim // 2
        pairs = torch.view_as_complex(torch.stack([xr[..., :half], xr[..., half:]], dim=-1).contiguous())
    rotated = torch.view_as_real(pairs * cis[:, None, :])  # [T, H, r/2, 2]
    if interleave:
        rotated = rotated.flatten(-2)
    else:
        rotated = torch.cat([rotated[..., 0], rotated[..., 1]], dim=-1)
    return torch.cat([rotated.to(x.dtype), x[..., rotary_dim:]], dim=-1)


def cis_ref(positions: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """complex64 ``[T, r/2]``: ``exp(1j * pos * freq)``."""
    angles = positions.to(torch.float32)[:, None] * freqs[None, :]
    return torch.polar(torch.ones_like(angles), angles)


def cache_cis_ref(positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> torch.Tensor:
    """complex64 ``[T, r/2]`` read from the rows ``[cos | sin]`` of ``cos_sin_cache`` at ``positions``."""
    half = cos_sin_cache.shape[1] // 2
    rows = cos_sin_cache.float()[positions.long()]
    return torch.complex(rows[:, :half], rows[:, half:])


def apply_rope_pos_ids_ref(q, k, pos_ids, rotary_dim=None, interleave=False, rope_scale=1, rope_theta=1e4,
                           llama31=None):
    """``(q_rope, k_rope)`` for ``q [T, Hq, D]``, ``k [T, Hk, D]`` at positions ``pos_ids [T]``."""
    rotary_dim = q.shape[-1] if rotary_dim is None else rotary_dim
    cis = cis_ref(pos_ids, rope_frequencies_ref(rotary_dim, rope_scale, rope_theta, llama31, q.device))
    return rotate_ref(q, cis, rotary_dim, interleave), rotate_ref(k, cis, rotary_dim, interleave)


def apply_rope_ref(q, k, indptr, offsets, rotary_dim=None, interleave=False, rope_scale=1, rope_theta=1e4):
    pos = positions_from_indptr_ref(indptr, offsets, q.shape[0])
    return apply_rope_pos_ids_ref(q, k, pos, rotary_dim, interleave, rope_scale, rope_theta)


def apply_llama31_rope_pos_ids_ref(q, k, pos_ids, rotary_dim=None, interleave=False, rope_scale=8, rope_theta=5e5,
                                   low_freq_factor=1, high_freq_factor=4, old_context_len=8192):
    return apply_rope_pos_ids_ref(q, k, pos_ids, rotary_dim, interleave, rope_scale, rope_theta,
                                  llama31=(low_freq_factor, high_freq_factor, old_context_len))


def apply_llama31_rope_ref(q, k, indptr, offsets, rotary_dim=None, interleave=False, rope_scale=8, rope_theta=5e5,
                           low_freq_factor=1, high_freq_factor=4, old_context_len=8192):
    pos = positions_from_indptr_ref(indptr, offsets, q.shape[0])
    return apply_llama31_rope_pos_ids_ref(q, k, pos, rotary_dim, interleave, rope_scale, rope_theta,
                                          low_freq_factor, high_freq_factor, old_context_len)


def apply_rope_with_cos_sin_cache_ref(positions, query, key, head_size, cos_sin_cache, is_neox=True):
    """``query [T, Hq*head_size]``, ``key [T, Hk*head_size]``; cache rows ``[cos(r/2) | sin(r/2)]``."""
    rotary_dim = cos_sin_cache.shape[1]
    cis = cache_cis_ref(positions, cos_sin_cache)
    q = rotate_ref(query.unflatten(1, (-1, head_size)), cis, rotary_dim, not is_neox)
    k = rotate_ref(key.unflatten(1, (-1, head_size)), cis, rotary_dim, not is_neox)
    return q.flatten(1), k.flatten(1)
