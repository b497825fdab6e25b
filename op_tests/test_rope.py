"""RoPE: apply_rope / apply_llama31_rope (indptr and pos_ids forms, in place or not) and
apply_rope_with_cos_sin_cache.

pytest: every backend that can run here against an independent fp32 oracle in Meta's complex-number
form (torch.polar on the frequencies, view_as_complex on pairs), on fresh random inputs, q/k strided
views of a packed qkv buffer, outputs poisoned first; FlashInfer's grid on a GPU, a trimmed one on the
CPU interpreter. Also: pos_ids forms agree with indptr forms; the cos/sin-cache form against a
vLLM-style native forward; the Llama 3.1 smooth band as the kernel applies it; bad inputs.
CLI (``python op_tests/test_rope.py [--quick]``): the benchmark, beside FlashInfer when it is installed.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from aiter_ext.core.backend import BackendUnavailableError  # noqa: E402
from aiter_ext.core.testing import assert_close, poisoned_like  # noqa: E402
from aiter_ext.ops import rope  # noqa: E402
from aiter_ext.ops.rope import api  # noqa: E402
from aiter_ext.ops.rope.backends import ROPE  # noqa: E402
from aiter_ext.ops.rope.reference import rope_frequencies_ref  # noqa: E402
from conftest import DEVICE, FULL_GRID, grid  # noqa: E402

BACKENDS = [pytest.param(b, id=b, marks=() if ROPE.usable(b, {"device": DEVICE.type})[0] else
                         pytest.mark.skip(reason=f"{b}: {ROPE.usable(b, {'device': DEVICE.type})[1]}"))
            for b in ("torch", "triton")]
LLAMA31 = (1.0, 4.0, 8192.0)  # Meta's low_freq_factor, high_freq_factor, old_context_len


# --------------------------------------------------------------------------------------------------
# Oracles, written apart from aiter_ext's reference.py (which is also the torch backend).


def meta_apply_scaling(freqs, scale_factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, old_context_len=8192.0):
    """Meta's Llama 3.1 frequency scaling, pair by pair, by wavelength."""
    low_wavelen, high_wavelen = old_context_len / low_freq_factor, old_context_len / high_freq_factor
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(freq)
        elif wavelen > low_wavelen:
            out.append(freq / scale_factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append((1 - smooth) * freq / scale_factor + smooth * freq)
    return torch.tensor(out, dtype=freqs.dtype, device=freqs.device)


def meta_freqs_cis(rotary_dim, end, theta, use_scaled):
    freqs = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, device=DEVICE)[: rotary_dim // 2].float() / rotary_dim))
    if use_scaled:
        freqs = meta_apply_scaling(freqs)
    t = torch.arange(end, device=DEVICE, dtype=torch.float32)
    angles = torch.outer(t, freqs)
    return torch.polar(torch.ones_like(angles), angles)


def meta_rotate(x, freqs_cis, rotary_dim, interleave):
    """Meta's apply_rotary_emb on the rotary span (GPT-J pairs); NeoX halves are permuted into pairs
    and back. ``x [T, H, D]``, ``freqs_cis [T, r/2]``."""
    half = rotary_dim // 2
    xr = x[..., :rotary_dim]
    if not interleave:
        xr = torch.stack([xr[..., :half], xr[..., half:]], dim=-1).flatten(-2)
    xc = torch.view_as_complex(xr.float().reshape(*xr.shape[:-1], half, 2))
    out = torch.view_as_real(xc * freqs_cis[:, None, :]).flatten(-2).type_as(x)
    if not interleave:
        out = torch.cat([out[..., 0::2], out[..., 1::2]], dim=-1)
    return torch.cat([out, x[..., rotary_dim:]], dim=-1)


def vllm_native(positions, query, key, head_size, cos_sin_cache, is_neox):
    """vLLM's RotaryEmbedding.forward_native as FlashInfer's test runs it: q/k upcast to fp32 (vLLM itself
    computes in the input dtype, which drifts at long contexts), the result cast back."""
    rotary_dim = cos_sin_cache.shape[1]
    cos, sin = cos_sin_cache.index_select(0, positions.long()).chunk(2, dim=-1)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)

    def rotate(x_in):
        x = x_in.float().view(x_in.shape[0], -1, head_size)
        rot = x[..., :rotary_dim]
        x1, x2 = rot.chunk(2, dim=-1) if is_neox else (rot[..., 0::2], rot[..., 1::2])
        o1, o2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        rot = torch.cat([o1, o2], dim=-1) if is_neox else torch.stack([o1, o2], dim=-1).flatten(-2)
        return torch.cat([rot, x[..., rotary_dim:]], dim=-1).flatten(1).to(x_in.dtype)

    return rotate(query), rotate(key)


def vllm_cos_sin_cache(rotary_dim, max_position, base):
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float) / rotary_dim))
    freqs = torch.einsum("i,j -> ij", torch.arange(max_position, dtype=torch.float), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(DEVICE)


def packed_qk(nnz, num_q_heads, num_k_heads, head_dim, dtype):
    """q and k as strided views of one packed [nnz, (Hq + 2 Hk) D] qkv buffer, as FlashInfer's test."""
    qkv = torch.randn(nnz, (num_q_heads + 2 * num_k_heads) * head_dim, device=DEVICE).to(dtype)
    q = qkv[:, : num_q_heads * head_dim].unflatten(1, (num_q_heads, head_dim))
    k = qkv[:, num_q_heads * head_dim: (num_q_heads + num_k_heads) * head_dim].unflatten(1, (num_k_heads, head_dim))
    return qkv, q, k


# --------------------------------------------------------------------------------------------------
# FlashInfer's test_rope grid.

_SMALL_SHAPES = [(1, 1, 8, 0, 64), (19, 4, 16, 15, 128), (3, 19, 8, 99, 256)]
_FULL_SHAPES = [(b, L, hq, off, d) for b in (1, 19, 99, 989) for L in (1, 4, 19, 204) for hq in (8, 16)
                for off in (0, 15, 99) for d in (64, 128, 256)]


def _shape_id(s):
    return f"B{s[0]}-L{s[1]}-Hq{s[2]}-off{s[3]}-D{s[4]}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("partial", [0.25, 0.5, 0.75, 1.0], ids=lambda p: f"rot{p}")
@pytest.mark.parametrize("llama", ["llama", "llama31"])
@pytest.mark.parametrize("shape", grid(_SMALL_SHAPES, _FULL_SHAPES), ids=_shape_id)
def test_rope(shape, llama, partial, inplace, backend):
    """FlashInfer's test_rope: GPT-J pairs (interleave=True), fp16, uniform segments, 1e-3."""
    if FULL_GRID and backend == "torch" and shape[0] * shape[1] > 4096:
        pytest.skip("the torch backend is the reference itself; its full-grid run is limited to small batches")
    _check_indptr_form(*shape, llama, partial, inplace, True, torch.float16, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("partial", [0.5, 1.0], ids=lambda p: f"rot{p}")
@pytest.mark.parametrize("llama", ["llama", "llama31"])
@pytest.mark.parametrize("shape", grid(_SMALL_SHAPES[1:], _FULL_SHAPES[::7]), ids=_shape_id)
def test_rope_neox(shape, llama, partial, inplace, dtype, backend):
    """The same grid with NeoX halves (interleave=False, FlashInfer's default) and bf16."""
    _check_indptr_form(*shape, llama, partial, inplace, False, dtype, backend)


def _check_indptr_form(batch, qkv_len, num_q_heads, offset, head_dim, llama, partial, inplace, interleave, dtype,
                       backend):
    num_k_heads, nnz = 8, batch * qkv_len
    rotary_dim = int(head_dim * partial)
    qkv, q, k = packed_qk(nnz, num_q_heads, num_k_heads, head_dim, dtype)
    indptr = torch.arange(batch + 1, device=DEVICE, dtype=torch.int32) * qkv_len
    offsets = torch.full((batch,), offset, device=DEVICE, dtype=torch.int32)
    positions = (torch.arange(qkv_len, device=DEVICE) + offset).repeat(batch)
    theta = 1e4 if llama == "llama" else 5e5
    cis = meta_freqs_cis(rotary_dim, qkv_len + offset, theta, use_scaled=llama == "llama31")[positions]
    q_ref, k_ref = meta_rotate(q, cis, rotary_dim, interleave), meta_rotate(k, cis, rotary_dim, interleave)
    fn = {("llama", False): rope.apply_rope, ("llama", True): rope.apply_rope_inplace,
          ("llama31", False): rope.apply_llama31_rope, ("llama31", True): rope.apply_llama31_rope_inplace}
    kwargs = {"rotary_dim": rotary_dim, "interleave": interleave, "rope_theta": theta, "backend": backend}
    if inplace:
        v_before = qkv[:, (num_q_heads + num_k_heads) * head_dim:].clone()
        fn[llama, True](q, k, indptr, offsets, **kwargs)
        q_out, k_out = q, k
        assert torch.equal(qkv[:, (num_q_heads + num_k_heads) * head_dim:], v_before), "v was written"
    else:
        q_in, k_in = q.clone(), k.clone()
        q_out, k_out = fn[llama, False](q, k, indptr, offsets, **kwargs)
        assert torch.equal(q, q_in) and torch.equal(k, k_in), "an out-of-place call wrote its inputs"
        # and into poisoned outputs, so that any element the kernel skips shows as NaN
        q_p, k_p = poisoned_like(q_out), poisoned_like(k_out)
        api._rope_out(q, k, q_p, k_p, None, indptr, offsets, None, rotary_dim, interleave,
                      8.0 if llama == "llama31" else 1.0, theta, llama == "llama31", *LLAMA31, backend)
        assert_close(q_p, q_ref, name="q_rope (poisoned output)")
        assert_close(k_p, k_ref, name="k_rope (poisoned output)")
    assert_close(q_out, q_ref, name="q_rope")
    assert_close(k_out, k_ref, name="k_rope")


# --------------------------------------------------------------------------------------------------
# pos_ids forms agree with indptr forms (ragged segments, empty ones included).


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("idtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("interleave", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("llama", ["llama", "llama31"])
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
def test_pos_ids_agree_with_indptr(inplace, llama, interleave, idtype, backend):
    lengths = torch.tensor(grid([3, 0, 1, 7, 0, 5], [300, 0, 1, 77, 0, 1024, 5, 19]))
    offsets = torch.randint(0, 500, (lengths.shape[0],), dtype=idtype)
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(idtype)
    nnz, head_dim = int(indptr[-1]), 128
    pos_ids = torch.cat([torch.arange(int(n)) + int(o) for n, o in zip(lengths, offsets)]).to(idtype)
    _, q, k = packed_qk(nnz, 4, 2, head_dim, torch.float16)
    indptr, offsets, pos_ids = indptr.to(DEVICE), offsets.to(DEVICE), pos_ids.to(DEVICE)
    kwargs = {"rotary_dim": 96, "interleave": interleave, "backend": backend}
    if llama == "llama":
        by_segment, by_position = rope.apply_rope, rope.apply_rope_pos_ids
        by_segment_ip, by_position_ip = rope.apply_rope_inplace, rope.apply_rope_pos_ids_inplace
    else:
        by_segment, by_position = rope.apply_llama31_rope, rope.apply_llama31_rope_pos_ids
        by_segment_ip, by_position_ip = rope.apply_llama31_rope_inplace, rope.apply_llama31_rope_pos_ids_inplace
    if inplace:
        q2, k2 = q.clone(), k.clone()
        by_segment_ip(q, k, indptr, offsets, **kwargs)
        by_position_ip(q2, k2, pos_ids, **kwargs)
        a, b = (q, k), (q2, k2)
    else:
        a, b = by_segment(q, k, indptr, offsets, **kwargs), by_position(q, k, pos_ids, **kwargs)
    # same positions, same arithmetic: bit-identical
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    if not inplace:  # and both match the reference
        ref = rope.apply_rope_pos_ids if llama == "llama" else rope.apply_llama31_rope_pos_ids
        q_ref, k_ref = ref(q, k, pos_ids, **{**kwargs, "backend": "torch"})
        assert_close(a[0], q_ref, name="q_rope vs reference")
        assert_close(a[1], k_ref, name="k_rope vs reference")


# --------------------------------------------------------------------------------------------------
# cos/sin cache: FlashInfer's 10 cases against a vLLM-style native forward (bf16, 1e-2).

_CACHE_CASES = [  # head_size, rotary_dim, max_position, base, is_neox, batch, seq_len, Hq, Hk
    (64, 64, 32, 8000, True, 32, 32, 1, 1), (256, 128, 4096, 10000, True, 2, 512, 4, 2),
    (64, 32, 2048, 8432, True, 2, 199, 4, 1), (64, 64, 32, 8000, False, 32, 32, 1, 1),
    (64, 64, 32, 8000, False, 32, 32, 1, 1), (256, 128, 4096, 9231, False, 3, 231, 4, 2),
    (192, 128, 4096, 9231, True, 3, 231, 3, 2), (80, 64, 1024, 10000, False, 4, 64, 2, 2),
    (112, 64, 2048, 12000, True, 5, 77, 2, 1), (160, 96, 8192, 10000, False, 2, 128, 6, 3),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("case", _CACHE_CASES, ids=lambda c: f"hs{c[0]}-r{c[1]}-{'neox' if c[4] else 'gptj'}-B{c[5]}")
def test_rope_cos_sin_cache(case, inplace, backend):
    head_size, rotary_dim, max_position, base, is_neox, batch, seq_len, num_q_heads, num_k_heads = case
    if not FULL_GRID:
        batch, seq_len = min(batch, 2), min(seq_len, 40)  # the interpreter: fewer tokens, same shapes
    cache = vllm_cos_sin_cache(rotary_dim, max_position, base)
    positions = torch.arange(seq_len, device=DEVICE).repeat(batch)
    query = torch.randn(batch * seq_len, num_q_heads * head_size, device=DEVICE).to(torch.bfloat16)
    key = torch.randn(batch * seq_len, num_k_heads * head_size, device=DEVICE).to(torch.bfloat16)
    q_ref, k_ref = vllm_native(positions, query, key, head_size, cache, is_neox)
    if inplace:
        q_out, k_out = query.clone(), key.clone()
        rope.apply_rope_with_cos_sin_cache_inplace(positions, q_out, k_out, head_size, cache, is_neox, backend=backend)
    else:
        q_out, k_out = rope.apply_rope_with_cos_sin_cache(positions, query, key, head_size, cache, is_neox,
                                                         backend=backend)
        assert q_out.shape == query.shape and k_out.shape == key.shape
    assert_close(q_out, q_ref, name="query")
    assert_close(k_out, k_ref, name="key")


# --------------------------------------------------------------------------------------------------
# The Llama 3.1 smooth band, as the kernel applies it.


def test_reference_frequencies_follow_meta():
    for rotary_dim in (64, 128):
        freqs = 1.0 / (5e5 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
        torch.testing.assert_close(rope_frequencies_ref(rotary_dim, 8, 5e5, LLAMA31), meta_apply_scaling(freqs),
                                   rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("interleave", [False, True], ids=["neox", "gptj"])
def test_llama31_smooth_band(interleave, backend):
    """Measure each pair's frequency from the rotation of a unit vector: pairs with a wavelength under
    old_context_len / high_freq_factor (2048) keep theta^(-2i/r); over old_context_len (8192) they are
    divided by rope_scale (8); in between they are interpolated."""
    rotary_dim, theta = 128, 5e5
    half = rotary_dim // 2
    base = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2).double() / rotary_dim))
    expected = meta_apply_scaling(base.float()).double()
    wavelen = 2 * math.pi / base
    regimes = {"high": wavelen < 2048, "low": wavelen > 8192, "band": (wavelen >= 2048) & (wavelen <= 8192)}
    assert all(int(m.sum()) > 0 for m in regimes.values())  # the default rotary dim has pairs in all three
    positions = 2 ** torch.arange(0, 24)  # token j sits at 2^j
    q = torch.zeros(positions.shape[0], 1, rotary_dim)
    if interleave:
        q[..., 0::2] = 1.0  # every pair = (1, 0)
    else:
        q[..., :half] = 1.0
    q = q.to(DEVICE, torch.float16)
    out, _ = rope.apply_llama31_rope_pos_ids(q, q.clone(), positions.to(DEVICE), interleave=interleave,
                                             backend=backend)
    out = out.float().cpu()[:, 0]
    cos, sin = (out[:, 0::2], out[:, 1::2]) if interleave else (out[:, :half], out[:, half:])
    angle = torch.atan2(sin, cos).double()  # [tokens, pairs]
    for i in range(half):
        # the token whose angle is in [1.5, 3) rad: well resolved in fp16, no wrap-around
        j = min(23, max(0, math.floor(math.log2(1.5 / float(expected[i])))))
        measured = float(angle[j, i]) / float(positions[j])
        assert abs(measured - expected[i]) <= 4e-3 * expected[i], (i, measured, float(expected[i]))
        if regimes["high"][i]:
            assert abs(measured / base[i] - 1) < 4e-3
        elif regimes["low"][i]:
            assert abs(measured * 8 / base[i] - 1) < 4e-3
        else:
            assert base[i] / 8 < measured < base[i]


# --------------------------------------------------------------------------------------------------
# Edge cases: empty batch, empty segments, one token.


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("interleave", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("head_dim,rotary_dim,num_q_heads,num_k_heads", [
    (80, 2, 3, 5), (96, 48, 12, 1), (512, 512, 2, 2), (192, 160, 1, 1)],
    ids=lambda v: str(v))
def test_odd_shapes(head_dim, rotary_dim, num_q_heads, num_k_heads, interleave, backend):
    """Head dims and rotary dims that are not powers of two, more k heads than q heads, MQA, empty
    segments (first and middle), ragged lengths."""
    lengths, offs = [0, 9, 0, 12], [4, 7, 50, 300]
    indptr = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int64, device=DEVICE)
    offsets = torch.tensor(offs, dtype=torch.int64, device=DEVICE)
    positions = torch.cat([torch.arange(n) + o for n, o in zip(lengths, offs)]).to(DEVICE)
    _, q, k = packed_qk(sum(lengths), num_q_heads, num_k_heads, head_dim, torch.float16)
    cis = meta_freqs_cis(rotary_dim, int(positions.max()) + 1, 5e5, use_scaled=True)[positions]
    q_out, k_out = rope.apply_llama31_rope(q, k, indptr, offsets, rotary_dim=rotary_dim, interleave=interleave,
                                           backend=backend)
    assert_close(q_out, meta_rotate(q, cis, rotary_dim, interleave), name="q_rope")
    assert_close(k_out, meta_rotate(k, cis, rotary_dim, interleave), name="k_rope")


@pytest.mark.parametrize("interleave", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("num_tokens,num_q_heads,num_k_heads,head_dim,rotary_dim", [
    (1, 32, 8, 128, 128), (5, 4, 2, 64, 64), (64, 8, 8, 256, 128), (3, 3, 5, 80, 2), (700, 4, 4, 128, 64)],
    ids=lambda v: str(v))
def test_gpu_tiles(num_tokens, num_q_heads, num_k_heads, head_dim, rotary_dim, interleave):
    """The tiles launch_config picks on a GPU (decode, small, partial rotary), forced here so that the CPU
    interpreter, which otherwise runs its own larger tiles, checks them too. Llama 3.1 scaling,
    positions below 1000 (fp32 angles stay within fp16's tolerance)."""
    from aiter_ext.core.backend import backend_status
    from aiter_ext.ops.rope.kernels import launch_config, launch_rope

    if not backend_status("triton")[0]:
        pytest.skip(f"triton cannot run here: {backend_status('triton')[1]}")
    cfg = launch_config(num_tokens, num_q_heads, num_k_heads, rotary_dim, False, head_dim)
    q = torch.randn(num_tokens, num_q_heads, head_dim, device=DEVICE).half()
    k = torch.randn(num_tokens, num_k_heads, head_dim, device=DEVICE).half()
    pos = torch.randint(0, 1000, (num_tokens,), device=DEVICE)
    q_out, k_out = poisoned_like(q), poisoned_like(k)
    llama31 = (1.0, 4.0, 8192.0)
    launch_rope(q, k, q_out, k_out, pos_ids=pos, indptr=None, offsets=None, cos_sin_cache=None,
                rotary_dim=rotary_dim, interleave=interleave, rope_scale=8.0, rope_theta=5e5, llama31=llama31,
                config=cfg)
    q_ref, k_ref = rope.apply_llama31_rope_pos_ids(q, k, pos, rotary_dim=rotary_dim, interleave=interleave,
                                                   backend="torch")
    assert_close(q_out, q_ref, name=f"q with tile {cfg}")
    assert_close(k_out, k_ref, name=f"k with tile {cfg}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_single_token(backend):
    _, q, k = packed_qk(0, 4, 2, 64, torch.float16)
    empty = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    q_out, k_out = rope.apply_rope(q, k, torch.zeros(2, dtype=torch.int32, device=DEVICE), empty, backend=backend)
    assert q_out.shape == q.shape and k_out.shape == k.shape
    _, q, k = packed_qk(1, 4, 2, 64, torch.float16)
    q_out, _ = rope.apply_rope_pos_ids(q, k, torch.tensor([12345], device=DEVICE), backend=backend)
    angles = 12345 * (1.0 / (1e4 ** (torch.arange(0, 64, 2, device=DEVICE).double() / 64)))  # float64 truth
    cis = torch.polar(torch.ones_like(angles), angles)[None].to(torch.complex64)
    # a large position: fp32 angles carry ~pos * 2^-24 rad of rounding (~1e-3 here); judged at bf16's tolerance
    assert_close(q_out, meta_rotate(q, cis, 64, False), torch.bfloat16, name="q at position 12345")


# --------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument, and nothing written.


def _good(n=5):
    _, q, k = packed_qk(n, 4, 2, 64, torch.float16)
    indptr = torch.tensor([0, 2, n], dtype=torch.int32, device=DEVICE)
    offsets = torch.tensor([0, 7], dtype=torch.int32, device=DEVICE)
    return q, k, indptr, offsets


@pytest.mark.parametrize("case,exc,match", [
    ("q ndim", ValueError, "q must have 3 dimensions"),
    ("q dtype", TypeError, "q must be fp16, bf16"),
    ("k dtype", TypeError, "k is bf16 but q is fp16"),
    ("nnz", ValueError, "k must have as many tokens as q"),
    ("head_dim", ValueError, "k must have the head_dim of q"),
    ("layout", ValueError, "q must be contiguous in its last dimension"),
    ("rotary odd", ValueError, "rotary_dim must be even"),
    ("rotary big", ValueError, "rotary_dim must be even and in \\(0, head_dim = 64\\]"),
    ("indptr dtype", TypeError, "indptr must be int32, int64"),
    ("offsets len", ValueError, "offsets must have batch_size = len\\(indptr\\) - 1 = 2"),
    ("indptr end", ValueError, "indptr\\[-1\\] = 4 must equal the number of tokens"),
    ("indptr empty", ValueError, "indptr must have batch_size \\+ 1 >= 2"),
    ("llama31 factors", ValueError, "low_freq_factor and high_freq_factor must differ"),
    ("rope_theta", ValueError, "rope_theta must be positive"),
    ("backend", BackendUnavailableError, "'nope' was requested"),
])
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
def test_bad_input(case, exc, match, inplace):
    q, k, indptr, offsets = _good()
    kwargs = {}
    if case == "q ndim":
        q = q.flatten(1)
    elif case == "q dtype":
        q = q.float()
    elif case == "k dtype":
        k = k.bfloat16()
    elif case == "nnz":
        k = k[:4]
    elif case == "head_dim":
        k = k[..., :32]
    elif case == "layout":
        q = q.transpose(1, 2).contiguous().transpose(1, 2)
    elif case == "rotary odd":
        kwargs["rotary_dim"] = 31
    elif case == "rotary big":
        kwargs["rotary_dim"] = 128
    elif case == "indptr dtype":
        indptr = indptr.float()
    elif case == "offsets len":
        offsets = offsets[:1]
    elif case == "indptr end":
        if DEVICE.type != "cpu":
            pytest.skip("indptr's values are checked for CPU tensors only: reading a device indptr would "
                        "synchronize the host (the API never does)")
        indptr = torch.tensor([0, 2, 4], dtype=torch.int32, device=DEVICE)
    elif case == "indptr empty":
        indptr, offsets = indptr[:1], offsets[:0]
    elif case == "llama31 factors":
        kwargs.update(low_freq_factor=2.0, high_freq_factor=2.0)
    elif case == "rope_theta":
        kwargs["rope_theta"] = 0.0
    elif case == "backend":
        kwargs["backend"] = "nope"
    q_before, k_before = q.clone(), k.clone()
    fn = rope.apply_llama31_rope_inplace if inplace else rope.apply_llama31_rope
    with pytest.raises(exc, match=match):
        fn(q, k, indptr, offsets, **kwargs)
    assert torch.equal(q, q_before) and torch.equal(k, k_before)


@pytest.mark.parametrize("case,exc,match", [
    ("pos_ids len", ValueError, "pos_ids must have one entry per token"),
    ("pos_ids dtype", TypeError, "pos_ids must be int32, int64"),
])
def test_bad_pos_ids(case, exc, match):
    q, k, _, _ = _good()
    pos = torch.arange(4, device=DEVICE) if case == "pos_ids len" else torch.arange(5, device=DEVICE).float()
    q_before = q.clone()
    with pytest.raises(exc, match=match):
        rope.apply_rope_pos_ids_inplace(q, k, pos)
    assert torch.equal(q, q_before)


@pytest.mark.parametrize("case,exc,match", [
    ("cache dtype", TypeError, "cos_sin_cache must be fp32"),
    ("cache width", ValueError, "cos_sin_cache must have an even rotary_dim in \\(0, head_size = 64\\]"),
    ("cache ndim", ValueError, "cos_sin_cache must have 2 dimensions"),
    ("head_size", ValueError, "head_size \\(48\\) must divide query's width"),
    ("positions", ValueError, "positions must have one entry per token"),
    ("query ndim", ValueError, "query must have 2 dimensions"),
])
def test_bad_cos_sin_cache_input(case, exc, match):
    query = torch.randn(5, 4 * 64, device=DEVICE).half()
    key = torch.randn(5, 64, device=DEVICE).half()
    cache, positions, head_size = vllm_cos_sin_cache(64, 16, 1e4), torch.arange(5, device=DEVICE), 64
    if case == "cache dtype":
        cache = cache.half()
    elif case == "cache width":
        cache = vllm_cos_sin_cache(128, 16, 1e4)
    elif case == "cache ndim":
        cache = cache[None]
    elif case == "head_size":
        head_size = 48
    elif case == "positions":
        positions = positions[:3]
    elif case == "query ndim":
        query = query.unflatten(1, (4, 64))
    q_before = query.clone()
    with pytest.raises(exc, match=match):
        rope.apply_rope_with_cos_sin_cache_inplace(positions, query, key, head_size, cache)
    assert torch.equal(query, q_before)


# --------------------------------------------------------------------------------------------------
# torch.compile and graph capture.


def test_torch_compile_fullgraph():
    q, k, indptr, offsets = _good()

    def f(q, k, indptr, offsets):
        q2, k2 = rope.apply_llama31_rope(q, k, indptr, offsets, interleave=True)
        rope.apply_rope_inplace(q2, k2, indptr, offsets)
        return q2, k2

    q_ref, k_ref = f(q, k, indptr, offsets)
    q_c, k_c = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, indptr, offsets)
    assert torch.equal(q_c, q_ref) and torch.equal(k_c, k_ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="graph capture needs a GPU (covered on the lent GPU)")
def test_cuda_graph_capture():
    _, q, k = packed_qk(300, 32, 8, 128, torch.bfloat16)
    indptr = torch.tensor([0, 100, 300], dtype=torch.int32, device=DEVICE)
    offsets = torch.tensor([5, 9000], dtype=torch.int32, device=DEVICE)
    q_ref, k_ref = rope.apply_llama31_rope(q, k, indptr, offsets, backend="torch")
    q_w, k_w = q.clone(), k.clone()
    rope.apply_llama31_rope_inplace(q_w, k_w, indptr, offsets)  # warm-up: compile
    q_w.copy_(q), k_w.copy_(k)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        rope.apply_llama31_rope_inplace(q_w, k_w, indptr, offsets)
    q_w.copy_(q), k_w.copy_(k)
    graph.replay()
    torch.cuda.synchronize()
    assert_close(q_w, q_ref, name="q")
    assert_close(k_w, k_ref, name="k")


# --------------------------------------------------------------------------------------------------
# Benchmark CLI: python op_tests/test_rope.py [--quick]

BENCH_OPS = ("apply_llama31_rope", "apply_llama31_rope_inplace", "apply_rope_pos_ids", "apply_rope_with_cos_sin_cache")


def _bench_case(op, n, hq, hk, d, dtype, fi, copy_gbs):
    """One row: ours and FlashInfer's same function, both checked against the reference first."""
    from aiter_ext.core.bench import time_us
    from aiter_ext.core.testing import max_error

    _, q, k = packed_qk(n, hq, hk, d, dtype)
    q, k = q.contiguous(), k.contiguous()  # the serving layout of the benchmark: separate q and k
    # sequences of up to 4096 tokens (a prefill batch): positions stay where fp32 angles are accurate for
    # both sides (FlashInfer uses __sincosf), and the indptr form has several segments to search
    seq = 4096
    indptr = torch.tensor(list(range(0, n, seq)) + [n], dtype=torch.int32, device=DEVICE)
    offsets = torch.zeros(indptr.shape[0] - 1, dtype=torch.int32, device=DEVICE)
    pos = torch.arange(n, dtype=torch.int64, device=DEVICE) % seq
    cache = vllm_cos_sin_cache(d, seq, 1e4)
    query, key = q.flatten(1), k.flatten(1)
    if op == "apply_llama31_rope":
        ours = lambda: rope.apply_llama31_rope(q, k, indptr, offsets)  # noqa: E731
        theirs = (lambda: fi.apply_llama31_rope(q, k, indptr, offsets)) if fi else None
        ref = rope.apply_llama31_rope(q, k, indptr, offsets, backend="torch")
    elif op == "apply_llama31_rope_inplace":  # timed on live tensors: rotating them again keeps values finite
        q_w, k_w = q.clone(), k.clone()
        ours = lambda: rope.apply_llama31_rope_inplace(q_w, k_w, indptr, offsets)  # noqa: E731
        theirs = (lambda: fi.apply_llama31_rope_inplace(q_w, k_w, indptr, offsets)) if fi else None
        ref = rope.apply_llama31_rope(q, k, indptr, offsets, backend="torch")
    elif op == "apply_rope_pos_ids":
        ours = lambda: rope.apply_rope_pos_ids(q, k, pos)  # noqa: E731
        theirs = (lambda: fi.apply_rope_pos_ids(q, k, pos)) if fi else None
        ref = rope.apply_rope_pos_ids(q, k, pos, backend="torch")
    else:
        ours = lambda: rope.apply_rope_with_cos_sin_cache(pos, query, key, d, cache)  # noqa: E731
        theirs = (lambda: fi.apply_rope_with_cos_sin_cache(pos, query, key, d, cache)) if fi else None
        ref = tuple(t.unflatten(1, (-1, d)) for t in rope.apply_rope_with_cos_sin_cache(pos, query, key, d, cache,
                                                                                          backend="torch"))

    def check(fn, who):
        if op == "apply_llama31_rope_inplace":
            q_w.copy_(q), k_w.copy_(k)
            fn()
            out = (q_w, k_w)
        else:
            out = tuple(t.view(n, -1, d) for t in fn())
        assert_close(out[0], ref[0], name=f"{op} {who} q")
        assert_close(out[1], ref[1], name=f"{op} {who} k")
        return max(max_error(out[0], ref[0]), max_error(out[1], ref[1]))

    err = check(ours, "ours")
    fi_err = check(theirs, "flashinfer") if theirs is not None else None
    nbytes = 2 * n * (hq + hk) * d * q.element_size()  # q and k, read and written once
    if "llama31" not in op:
        nbytes += n * pos.element_size()  # one position per token (the indptr form reads ~nothing)
    if "cache" in op:
        nbytes += n * d * 4  # one fp32 cos/sin row (rotary_dim = d) per token
    us, g_us = time_us(ours), time_us(ours, graph=True)
    fi_us = fi_g_us = None
    if theirs is not None:
        fi_us, fi_g_us = time_us(theirs), time_us(theirs, graph=True)
    gbs = nbytes / us / 1e3
    return {"op": op, "shape": f"{n}x({hq}+{hk})x{d}", "dtype": str(dtype).replace("torch.", ""), "us": us,
            "graph_us": g_us, "bytes": nbytes, "GB/s": gbs, "%copy_bw": 100 * gbs / copy_gbs,
            "fi_us": fi_us, "fi_graph_us": fi_g_us, "fi/ours": (fi_us / us) if fi_us else None,
            "fi/ours graph": (fi_g_us / g_us) if fi_g_us else None, "err": err, "fi_err": fi_err}


def bench_main(argv=None) -> int:
    import argparse

    from aiter_ext.core.arch import device_info
    from aiter_ext.core.bench import (
        benchmark_setup,
        copy_bandwidth_gbs,
        git_commit,
        markdown_table,
        warm_up_gpu,
    )

    parser = argparse.ArgumentParser(description="RoPE benchmark (beside FlashInfer when installed)")
    parser.add_argument("--quick", action="store_true", help="tokens 1, 64, 8192 only")
    parser.add_argument("--tokens", type=int, nargs="*", default=[1, 16, 64, 512, 8192, 32768])
    parser.add_argument("--ops", nargs="*", default=list(BENCH_OPS), choices=BENCH_OPS)
    parser.add_argument("--no-flashinfer", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="also time every tuner tile at 8192 tokens")
    args = parser.parse_args(argv)
    ok, fi = benchmark_setup(args.no_flashinfer)
    if not ok:
        return 0  # no GPU: nothing to measure (benchmark_setup said why)
    tokens = [1, 64, 8192] if args.quick else args.tokens
    warm_up_gpu()
    info = device_info()
    copy_gbs = copy_bandwidth_gbs()
    print(f"device {info.name} ({info.arch}), commit {git_commit()}, FlashInfer "
          f"{getattr(fi, '__version__', 'absent')}, measured copy bandwidth {copy_gbs:.0f} GB/s")
    print("us: median of triton.testing.do_bench (L2 cleared before each call), public API incl. allocation; "
          "graph_us: median of CUDA-graph replays; bytes: q and k read and written once, plus positions "
          "(and cos/sin rows for the cache form)")
    rows = [_bench_case(op, n, 32, 8, 128, torch.bfloat16, fi, copy_gbs) for op in args.ops for n in tokens]
    print(markdown_table(rows))
    if args.sweep:
        print(markdown_table(_sweep(copy_gbs)))
    return 0


def _sweep(copy_gbs, n=8192, hq=32, hk=8, d=128):
    """apply_llama31_rope (out of place, bf16) with every tile in TRITON_TUNE_CONFIGS, for choosing the default."""
    from aiter_ext.core.bench import time_us
    from aiter_ext.ops.rope.backends import TRITON_TUNE_CONFIGS
    from aiter_ext.ops.rope.kernels import launch_config, launch_rope

    _, q, k = packed_qk(n, hq, hk, d, torch.bfloat16)
    q, k = q.contiguous(), k.contiguous()
    indptr = torch.tensor(list(range(0, n, 4096)) + [n], dtype=torch.int32, device=DEVICE)
    offsets = torch.zeros(indptr.shape[0] - 1, dtype=torch.int32, device=DEVICE)
    q_ref, k_ref = rope.apply_llama31_rope(q, k, indptr, offsets, backend="torch")
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)
    nbytes = 2 * n * (hq + hk) * d * 2
    rows = []
    for cfg in [launch_config(n, hq, hk, d)] + TRITON_TUNE_CONFIGS:
        def run(cfg=cfg):
            launch_rope(q, k, q_out, k_out, pos_ids=None, indptr=indptr, offsets=offsets, cos_sin_cache=None,
                        rotary_dim=d, interleave=False, rope_scale=8.0, rope_theta=5e5, llama31=LLAMA31, config=cfg)
        run()
        assert_close(q_out, q_ref, name=f"sweep {cfg} q")
        assert_close(k_out, k_ref, name=f"sweep {cfg} k")
        us = time_us(run, graph=True)
        rows.append({"config": str(cfg), "graph_us": us, "%copy_bw": 100 * nbytes / us / 1e3 / copy_gbs})
    return rows


if __name__ == "__main__":
    sys.exit(bench_main())
