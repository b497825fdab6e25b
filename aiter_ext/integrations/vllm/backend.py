"""The CUSTOM attention backend for vLLM 0.33 on ROCm (issue 15): vLLM's AITER flash-attention backend
(``rocm_aiter_fa``), subclassed so that aiter_ext can add what vLLM's ROCm backends lack.

Why ``rocm_aiter_fa`` rather than ``rocm_aiter_unified_attn``: it has the decode / prefill / extend
split that the cascade needs (the prefix pass belongs to decode-only batches), it already merges
attention states on its extend path, and its module imports on a CPU host without a faked device,
which the contract tests rely on. Its builder asserts that every layer's impl is its impl class, so the
impl and the builder are subclassed together.

State of this module (work in progress, issue 15):
- registration, naming (``get_name() == "CUSTOM"``) and the builder's shared-prefix detection
  (integrations/prefix.py) are in place;
- attention itself still runs vLLM's AITER path (``super().forward``): the cascade, sink and
  merge-state routing through aiter_ext are not written yet.
"""

from __future__ import annotations

import os

from vllm.v1.attention.backends.rocm_aiter_fa import (
    AiterFlashAttentionBackend, AiterFlashAttentionImpl, AiterFlashAttentionMetadataBuilder,
)

from aiter_ext.integrations.prefix import shared_prefix_blocks


class AiterExtImpl(AiterFlashAttentionImpl):
    """vLLM's AITER impl; aiter_ext's cascade routing will hook in here."""


class AiterExtMetadataBuilder(AiterFlashAttentionMetadataBuilder):
    """vLLM's AITER builder, plus (with ``AITER_EXT_CASCADE=1``) the shared-prefix length of each batch,
    as a device tensor: no host read yet, since nothing consumes it before the cascade path exists, and
    off by default so that a step pays nothing for it until then."""

    def build(self, common_prefix_len, common_attn_metadata, fast_build=False):
        metadata = super().build(common_prefix_len, common_attn_metadata, fast_build)
        cam = common_attn_metadata
        metadata.aiter_ext_shared_blocks = None
        if os.environ.get("AITER_EXT_CASCADE") == "1" and cam.num_reqs >= 1:
            metadata.aiter_ext_shared_blocks = shared_prefix_blocks(cam.block_table_tensor, cam.seq_lens,
                                                                    cam.num_reqs, self.block_size)
        return metadata


class AiterExtBackend(AiterFlashAttentionBackend):
    @staticmethod
    def get_name() -> str:
        # vLLM resolves AttentionBackendEnum[get_name()]: the registered member is CUSTOM
        return "CUSTOM"

    @staticmethod
    def get_impl_cls() -> type[AiterExtImpl]:
        return AiterExtImpl

    @staticmethod
    def get_builder_cls() -> type[AiterExtMetadataBuilder]:
        return AiterExtMetadataBuilder
