"""Batch prefill/decode attention over ragged and paged KV (FlashInfer's wrappers), the engine that
cascade, POD, block-sparse and sink attention build on."""

from .cascade import (
    BatchDecodeWithSharedPrefixPagedKVCacheWrapper, BatchPrefillWithSharedPrefixPagedKVCacheWrapper,
    MultiLevelCascadeAttentionWrapper, cascade_attention,
)
from .single import single_decode_with_kv_cache, single_prefill_with_kv_cache
from .wrappers import (
    BatchDecodeWithPagedKVCacheWrapper, BatchPrefillWithPagedKVCacheWrapper, BatchPrefillWithRaggedKVCacheWrapper,
)

__all__ = ["BatchDecodeWithPagedKVCacheWrapper", "BatchDecodeWithSharedPrefixPagedKVCacheWrapper",
           "BatchPrefillWithPagedKVCacheWrapper", "BatchPrefillWithRaggedKVCacheWrapper",
           "BatchPrefillWithSharedPrefixPagedKVCacheWrapper", "MultiLevelCascadeAttentionWrapper",
           "cascade_attention", "single_decode_with_kv_cache", "single_prefill_with_kv_cache"]
