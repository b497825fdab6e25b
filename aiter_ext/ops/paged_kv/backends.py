"""Backend registrations of the paged KV cache layer.

Two ops for the dispatcher, each with ``triton`` and ``torch`` (the reference) backends:
- ``paged_kv_append``: ``append_paged_kv_cache``; the implementation writes into the K and V caches
  it is given (4-D views) and takes the selected kernel config first.
- ``batch_indices_positions``: ``get_batch_indices_positions``; writes the two int32 outputs.

``get_seq_lens`` (a few elementwise torch ops), ``block_table_to_csr`` and ``check_paged_kv_indices``
(host-side planning helpers) need no dispatch.
"""

from __future__ import annotations

from typing import Mapping

from aiter_ext.core.backend import define_op, pow2_bucket
from aiter_ext.core.checks import DTYPES_BY_NAME
from aiter_ext.core.launch import kernels_module

from . import reference


def _append_bucket(call: Mapping) -> tuple:
    return (pow2_bucket(call["num_tokens"]), call["num_kv_heads"], call["head_dim"], call["dtype"])


def _indices_bucket(call: Mapping) -> tuple:
    return (pow2_bucket(call["nnz"]), pow2_bucket(call["batch_size"]))


#: A tuned tile serves other token and head counts (it covers rows = tokens x heads); its width follows the dim.
PAGED_KV_APPEND = define_op("paged_kv_append", ("num_tokens", "num_kv_heads", "head_dim", "dtype"), _append_bucket,
                            exact_keys=("head_dim", "dtype"))
BATCH_INDICES_POSITIONS = define_op("batch_indices_positions", ("nnz", "batch_size"), _indices_bucket)


# -- paged_kv_append ----------------------------------------------------------------------------------
# Arguments after the config: append_key, append_value, batch_indices, positions, k_cache, v_cache,
# kv_indices, kv_indptr, kv_last_page_len, layout (an api.PagedKVLayout of the two caches).


def _torch_append(config, append_key, append_value, batch_indices, positions, k_cache, v_cache,
                  kv_indices, kv_indptr, kv_last_page_len, layout) -> None:
    reference.append_paged_kv_cache_ref(append_key, append_value, batch_indices, positions, (k_cache, v_cache),
                                        kv_indices, kv_indptr, kv_last_page_len, layout.kv_layout)


def _triton_append(config, append_key, append_value, batch_indices, positions, k_cache, v_cache,
                   kv_indices, kv_indptr, kv_last_page_len, layout) -> None:
    # kv_last_page_len bounds nothing a write needs (see the kernel), so it is not passed.
    kernels_module(__package__).launch_append(append_key, append_value, batch_indices, positions, k_cache, v_cache,
                                              kv_indices, kv_indptr, layout.page_size,
                                              (*layout.k_strides, *layout.v_strides), config)


#: Tiles the tuner weighs (rows of tokens x KV heads per program, warps); {} is the heuristic
#: (kernels.default_config: 8 rows up to SMALL_ROWS rows, else 4 KiB of a row's elements per program).
TRITON_TUNE_CONFIGS = [{"BLOCK_R": r, "num_warps": w}
                       for r, w in ((4, 4), (8, 4), (16, 4), (32, 4), (32, 8), (64, 8))] + [{}]

PAGED_KV_APPEND.register("torch", _torch_append)
PAGED_KV_APPEND.register("triton", _triton_append, configs=TRITON_TUNE_CONFIGS)


# -- batch_indices_positions ----------------------------------------------------------------------


def _torch_indices(config, append_indptr, seq_lens, batch_indices, positions) -> None:
    b, p = reference.get_batch_indices_positions_ref(append_indptr, seq_lens, batch_indices.shape[0])
    batch_indices.copy_(b)
    positions.copy_(p)


def _triton_indices(config, append_indptr, seq_lens, batch_indices, positions) -> None:
    kernels_module(__package__).launch_batch_indices_positions(append_indptr, seq_lens, batch_indices, positions)


BATCH_INDICES_POSITIONS.register("torch", _torch_indices)
BATCH_INDICES_POSITIONS.register("triton", _triton_indices)


# -- tuning: how `aiter-ext tune paged_kv_append` builds and checks one shape -------------------------


def _tune_case(shape: Mapping, device: str):
    """``num_tokens`` new tokens over up to 64 requests of 100 cached tokens each, into a shuffled NHD cache of
    16-token pages. The check restores the cache's random contents first, runs, and compares every element
    of both caches with the reference's append: a copy, so the bound is exact equality."""
    import torch

    from aiter_ext.core.testing import max_error
    from aiter_ext.core.tuner import TuneCase

    from .api import PagedKVLayout, unpack_paged_kv_cache

    dtype = DTYPES_BY_NAME[shape["dtype"]]
    tokens, heads, dim, page_size, cached = shape["num_tokens"], shape["num_kv_heads"], shape["head_dim"], 16, 100
    batch = min(tokens, 64)
    appended = torch.full((batch,), tokens // batch, dtype=torch.int32)
    appended[: tokens % batch] += 1
    pages_each = (cached + appended + page_size - 1) // page_size
    kv_indptr = torch.cat([torch.zeros(1, dtype=torch.int32), pages_each.cumsum(0).to(torch.int32)])
    num_pages = int(kv_indptr[-1])
    kv_indices = torch.randperm(num_pages, dtype=torch.int32)
    kv_last_page_len = ((cached + appended - 1) % page_size + 1).to(torch.int32)
    batch_indices = torch.repeat_interleave(torch.arange(batch, dtype=torch.int32), appended)
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), appended.cumsum(0)[:-1].long()])
    positions = (cached + torch.arange(tokens) - starts.repeat_interleave(appended)).to(torch.int32)
    base = torch.randn(num_pages, 2, page_size, heads, dim).to(dtype)
    key, value = torch.randn(2, tokens, heads, dim).to(dtype)
    expected = base.clone()
    reference.append_paged_kv_cache_ref(key, value, batch_indices, positions, expected, kv_indices, kv_indptr,
                                        kv_last_page_len, "NHD")
    on = [t.to(device) for t in (base, key, value, batch_indices, positions, kv_indices, kv_indptr,
                                 kv_last_page_len, expected)]
    base, key, value, batch_indices, positions, kv_indices, kv_indptr, kv_last_page_len, expected = on
    cache = base.clone()
    k_cache, v_cache = unpack_paged_kv_cache(cache, "NHD")
    layout = PagedKVLayout.from_views(k_cache, v_cache, "NHD")

    def run(impl, cfg):
        impl.fn(cfg, key, value, batch_indices, positions, k_cache, v_cache, kv_indices, kv_indptr, kv_last_page_len,
                layout)

    def check(impl, cfg):
        cache.copy_(base)
        run(impl, cfg)
        return max_error(cache, expected)

    # read and written once each, K and V
    return TuneCase(run, check, tolerance=0.0, nbytes=2 * 2 * key.numel() * key.element_size())


def _register_tuning():
    from aiter_ext.core.tuner import register_tune_target

    register_tune_target("paged_kv_append", _tune_case)


_register_tuning()
