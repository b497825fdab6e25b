"""aiter_ext: FlashInfer's serving kernels for AMD Instinct GPUs, shaped like AITER.

``import aiter_ext`` needs only torch: Triton kernels compile on first use, C++ modules build on
first use, and AITER (ROCm only) is imported lazily where a backend needs it.
"""

from ._version import __version__  # noqa: F401

# FlashInfer's processors live at aiter_ext.logits_processor (Temperature, Softmax, TopK, TopP, MinP, Sample).

import os as _os

if _os.environ.get("AITER_EXT_BACKEND", "").strip().lower() == "triton" and "TRITON_INTERPRET" not in _os.environ:
    import torch as _torch

    if not _torch.cuda.is_available():
        # Triton asked for everywhere on a machine with no GPU: run it through the interpreter. This
        # must happen before any kernel module is imported (Triton reads it when a kernel is defined).
        _os.environ["TRITON_INTERPRET"] = "1"

from .ops.attention import (
    BatchAttentionWithAttentionSinkWrapper, BatchDecodeWithPagedKVCacheWrapper, BatchDecodeWithSharedPrefixPagedKVCacheWrapper,
    BlockSparseAttentionWrapper, VariableBlockSparseAttentionWrapper, BatchPODWithPagedKVCacheWrapper,
    PODWithPagedKVCacheWrapper,
    BatchPrefillWithPagedKVCacheWrapper, BatchPrefillWithRaggedKVCacheWrapper,
    BatchPrefillWithSharedPrefixPagedKVCacheWrapper, MultiLevelCascadeAttentionWrapper, cascade_attention,
    packbits, segment_packbits, single_decode_with_kv_cache, single_prefill_with_kv_cache,
)
from .ops.merge_state import merge_state, merge_state_in_place, merge_states, variable_length_merge_states
from .ops.norm import fused_add_rmsnorm, gemma_fused_add_rmsnorm, gemma_rmsnorm, rmsnorm
from .ops.norm_fp4 import add_rmsnorm_fp4quant, fp4_quantize, mxfp4_quantize, rmsnorm_fp4quant, rmsnorm_mxfp4_quant
from .ops.paged_kv import (
    append_paged_kv_cache, block_table_to_csr, get_batch_indices_positions, get_seq_lens,
)
from .ops.rope import (
    apply_llama31_rope, apply_llama31_rope_inplace, apply_llama31_rope_pos_ids, apply_llama31_rope_pos_ids_inplace,
    apply_rope, apply_rope_inplace, apply_rope_pos_ids, apply_rope_pos_ids_inplace, apply_rope_with_cos_sin_cache,
    apply_rope_with_cos_sin_cache_inplace,
)
from .ops.segment_gemm import SegmentGEMMWrapper, lora_expand, lora_shrink, segment_gemm
from .ops.sampling import (
    LogitsPipe, chain_speculative_sampling, min_p_sampling_from_probs, sampling_from_logits, sampling_from_probs, softmax,
    top_k_mask_logits, top_k_renorm_probs, top_k_sampling_from_probs, top_k_top_p_sampling_from_logits,
    top_k_top_p_sampling_from_probs, top_p_renorm_probs, top_p_sampling_from_probs,
)

__all__ = [
    "add_rmsnorm_fp4quant", "append_paged_kv_cache", "apply_llama31_rope", "apply_llama31_rope_inplace",
    "apply_llama31_rope_pos_ids", "apply_llama31_rope_pos_ids_inplace", "apply_rope", "apply_rope_inplace",
    "apply_rope_pos_ids", "apply_rope_pos_ids_inplace", "apply_rope_with_cos_sin_cache",
    "apply_rope_with_cos_sin_cache_inplace", "BatchAttentionWithAttentionSinkWrapper", "packbits",
    "segment_packbits",
    "BatchDecodeWithPagedKVCacheWrapper",
    "BatchDecodeWithSharedPrefixPagedKVCacheWrapper", "BatchPrefillWithPagedKVCacheWrapper", "BlockSparseAttentionWrapper", "VariableBlockSparseAttentionWrapper",
    "BatchPODWithPagedKVCacheWrapper", "PODWithPagedKVCacheWrapper", "SegmentGEMMWrapper", "segment_gemm", "lora_shrink", "lora_expand",
    "BatchPrefillWithRaggedKVCacheWrapper", "BatchPrefillWithSharedPrefixPagedKVCacheWrapper",
    "block_table_to_csr", "cascade_attention", "chain_speculative_sampling", "fp4_quantize",
    "fused_add_rmsnorm", "gemma_fused_add_rmsnorm", "gemma_rmsnorm", "get_batch_indices_positions",
    "get_seq_lens", "LogitsPipe", "merge_state", "merge_state_in_place", "merge_states",
    "min_p_sampling_from_probs", "MultiLevelCascadeAttentionWrapper", "mxfp4_quantize", "rmsnorm",
    "rmsnorm_fp4quant", "rmsnorm_mxfp4_quant", "sampling_from_logits", "sampling_from_probs",
    "single_decode_with_kv_cache", "single_prefill_with_kv_cache", "softmax", "top_k_mask_logits",
    "top_k_renorm_probs", "top_k_sampling_from_probs", "top_k_top_p_sampling_from_logits",
    "top_k_top_p_sampling_from_probs", "top_p_renorm_probs", "top_p_sampling_from_probs",
    "variable_length_merge_states",
]
