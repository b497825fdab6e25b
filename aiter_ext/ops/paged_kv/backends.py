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
from aiter_ext.core.launch import kernels_module

from . import reference


def _append_bucket(call: Mapping) -> tuple:
    return (pow2_bucket(call["num_tokens"]), call["num_kv_heads"], call["head_dim"], call["dtype"])


def _indices_bucket(call: Mapping) -> tuple:
    return (pow2_bucket(call["nnz"]), pow2_bucket(call["batch_size"]))


PAGED_KV_APPEND = define_op("paged_kv_append", ("num_tokens", "num_kv_heads", "head_dim", "dtype"), _append_bucket)
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


PAGED_KV_APPEND.register("torch", _torch_append)
PAGED_KV_APPEND.register("triton", _triton_append)


# -- batch_indices_positions ----------------------------------------------------------------------


def _torch_indices(config, append_indptr, seq_lens, batch_indices, positions) -> None:
    b, p = reference.get_batch_indices_positions_ref(append_indptr, seq_lens, batch_indices.shape[0])
    batch_indices.copy_(b)
    positions.copy_(p)


def _triton_indices(config, append_indptr, seq_lens, batch_indices, positions) -> None:
    kernels_module(__package__).launch_batch_indices_positions(append_indptr, seq_lens, batch_indices, positions)


BATCH_INDICES_POSITIONS.register("torch", _torch_indices)
BATCH_INDICES_POSITIONS.register("triton", _triton_indices)
