"""Batch prefill/decode attention over ragged and paged KV (FlashInfer's wrappers), the engine that
cascade, POD, block-sparse and sink attention build on. The public names live in ``api``."""

from .api import (
    BatchAttentionWithAttentionSinkWrapper, BatchDecodeWithPagedKVCacheWrapper, BatchDecodeWithSharedPrefixPagedKVCacheWrapper,
    BlockSparseAttentionWrapper, VariableBlockSparseAttentionWrapper, BatchPODWithPagedKVCacheWrapper,
    PODWithPagedKVCacheWrapper,
    BatchPrefillWithPagedKVCacheWrapper, BatchPrefillWithRaggedKVCacheWrapper,
    BatchPrefillWithSharedPrefixPagedKVCacheWrapper, MultiLevelCascadeAttentionWrapper, __all__, cascade_attention,
    packbits, segment_packbits, single_decode_with_kv_cache, single_prefill_with_kv_cache,
)
