"""How ``aiter-ext tune attention`` builds, checks and times one shape (core/tuner.py).

A shape is a paged batch: ``batch`` requests of ``qo_len`` queries over ``kv_len`` keys each (pages of 16, in
shuffled order), ``num_qo_heads`` / ``num_kv_heads`` of ``head_dim``, ``causal`` or not. Each candidate is a
tile config (``TRITON_TUNE_CONFIGS``) over the heuristic's ``BLOCK_M`` for the shape's packed rows: the batch
is planned with it through the public wrapper (so the work list, splits and merge are the ones a user's call
gets), run, and checked against the fp32 reference (the ``torch`` backend's run of the same batch), output and
LSE. The tuned row's keys (backends.ATTENTION) are the heads, ``head_dim``, the q and KV dtypes, the packed
rows' power of two (the tile regime: a row serves only its own) and ``kv_len``.
"""

from __future__ import annotations

import json

import torch

#: What the tuner tries beside the heuristic (``{}``: plan.default_config for the shape): the key step, warps,
#: software-pipelining stages and the page-id prefetch; BLOCK_M stays the heuristic's (it follows the packed rows).
TRITON_TUNE_CONFIGS = [{}] + [{"BLOCK_N": n, "num_warps": w, "num_stages": s, "prefetch_pages": p}
                              for n in (32, 64) for w in (2, 4, 8) for s in (2, 3) for p in (False, True)]

#: Output tolerance against the fp32 reference, as op_tests/test_attention.py checks it.
_ATOL = {torch.float16: 2e-3, torch.bfloat16: 2e-2}
_RTOL = 1e-2
_PAGE = 16


def packed_rows_bucket(max_qo_len: int, group: int) -> int:
    """The ``packed_rows`` key: the longest request's queries times the query heads per KV head, rounded up to a
    power of two (the rows one program's tile packs: what the default tiles follow)."""
    from aiter_ext.core.backend import pow2_bucket

    return pow2_bucket(max(1, max_qo_len) * group)


def tune_case(shape: dict, device: str):
    from aiter_ext.core.checks import DTYPES_BY_NAME
    from aiter_ext.core.testing import error_over_bound, poison_
    from aiter_ext.core.tuner import TuneCase

    from .plan import default_config
    from .wrappers import BatchPrefillWithPagedKVCacheWrapper

    dtype = DTYPES_BY_NAME[shape["dtype"]]
    if shape["kv_dtype"] != shape["dtype"]:
        raise ValueError(f"untuned row {shape}: a KV cache of another dtype than q is not tuned yet")
    batch, qo_len, kv_len = shape["batch"], shape["qo_len"], shape["kv_len"]
    hq, hkv, dim = shape["num_qo_heads"], shape["num_kv_heads"], shape["head_dim"]
    causal = bool(int(shape.get("causal", 0)))
    if shape["packed_rows"] != packed_rows_bucket(qo_len, hq // hkv):
        raise ValueError(f"untuned row {shape}: packed_rows must be {packed_rows_bucket(qo_len, hq // hkv)} "
                         "(qo_len * num_qo_heads / num_kv_heads, rounded up to a power of two)")
    pages_per = -(-kv_len // _PAGE)
    generator = torch.Generator().manual_seed(0)
    cache = torch.randn(batch * pages_per, 2, _PAGE, hkv, dim, generator=generator).to(device=device, dtype=dtype)
    q = torch.randn(batch * qo_len, hq, dim, generator=generator).to(device=device, dtype=dtype)
    i32 = dict(dtype=torch.int32)
    table = (torch.arange(0, batch * qo_len + 1, qo_len, **i32),
             torch.arange(0, batch * pages_per + 1, pages_per, **i32),
             torch.randperm(batch * pages_per, generator=generator).to(torch.int32),
             torch.full((batch,), kv_len - (pages_per - 1) * _PAGE, **i32))
    workspace = torch.empty(512 << 20, dtype=torch.uint8, device=device)  # one for every candidate: runs in turn
    heuristic = default_config(qo_len * hq // hkv, dim)

    def planned(backend: str, config: dict | None):
        wrapper = BatchPrefillWithPagedKVCacheWrapper(workspace, backend=backend)
        wrapper._config = config  # the experiments' override (a full config, so no tuned row stands in for it)
        wrapper.plan(*table, hq, hkv, dim, _PAGE, causal=causal, q_data_type=dtype, kv_data_type=dtype)
        return wrapper

    ref_out, ref_lse = planned("torch", None).run(q, cache, return_lse=True)
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=device)
    wrappers: dict[str, object] = {}

    def wrapper_for(impl, cfg):
        label = json.dumps(cfg, sort_keys=True)
        if label not in wrappers:
            wrappers[label] = planned(impl.backend, {**heuristic, **cfg})
        return wrappers[label]

    def run(impl, cfg):
        wrapper_for(impl, cfg).run(q, cache, out=out, lse=lse)

    def check(impl, cfg):
        poison_(out), poison_(lse)
        run(impl, cfg)
        # each error over its bound, as the other tune targets scale it, so that 1 is the limit for both
        return max(error_over_bound(out, ref_out, _ATOL[dtype], _RTOL), error_over_bound(lse, ref_lse, 1e-3, 1e-4))

    element = q.element_size()
    nbytes = batch * kv_len * hkv * dim * 2 * element + 2 * q.numel() * element
    pairs = batch * qo_len * kv_len * (0.5 if causal and qo_len == kv_len else 1.0)
    return TuneCase(run, check, tolerance=1.0, nbytes=nbytes, flops=int(4 * pairs * hq * dim))
