"""The paged KV cache layer: FlashInfer's CSR page table, its storage layouts, appends and helpers."""

from .api import (
    PagedKVLayout, append_paged_kv_cache, block_table_to_csr, check_kv_layout, check_paged_kv_indices,
    get_batch_indices_positions, get_seq_lens, unpack_paged_kv_cache,
)

__all__ = [
    "PagedKVLayout", "append_paged_kv_cache", "block_table_to_csr", "check_kv_layout", "check_paged_kv_indices",
    "get_batch_indices_positions", "get_seq_lens", "unpack_paged_kv_cache",
]
