"""The CUSTOM attention backend for vLLM 0.33 on ROCm (issue 15): vLLM's AITER flash-attention backend
(``rocm_aiter_fa``), subclassed so that aiter_ext can add what vLLM's ROCm backends lack.

Why ``rocm_aiter_fa`` rather than ``rocm_aiter_unified_attn``: it has the decode / prefill / extend
split that the cascade needs (the prefix pass belongs to decode-only batches), it already merges
attention states on its extend path, and its module imports on a CPU host without a faked device,
which the contract tests rely on. Its builder asserts that every layer's impl is its impl class, so the
impl and the builder are subclassed together.

Cascade (``AITER_EXT_CASCADE=1``, off by default; vLLM 0.33 removed its own):
- The builder, on a decode-only batch, reads the batch's block table and sequence lengths back to the
  host (one device-to-host sync per step, inside vLLM's ``gpu_sync_allowed``, as vLLM's own AITER
  builder does for prefill batches), finds the shared leading blocks (integrations.prefix) and, when
  ``should_use_cascade`` says so, plans aiter_ext's two-level cascade (integrations.cascade) once for
  every layer of the step.
- The impl runs that plan for the layers it fits (the planned scale, soft cap and cache format; no ALiBi
  or sliding window), each with its own attention sinks if it has them (gpt-oss's full-attention layers)
  and, with an fp8 e4m3 cache, its own k_scale/v_scale: both are run arguments, not part of the plan.
  Everything else takes vLLM's AITER path (``super().forward``).
- With cascade on, the builder reports no full-CUDA-graph support, so attention runs between vLLM's
  piecewise graphs every step (a captured full graph would replay the plain path and never the cascade).
- docs/serving.md says what this sync costs and the designs that would avoid it.

Merge-state routing through aiter_ext is not written yet, nor the cascade for sliding-window layers (a
window of 128 keys would see little of a shared prefix) or fp8 e5m2 caches.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
from vllm._aiter_ops import rocm_aiter_ops
from vllm.config import get_layers_from_vllm_config
from vllm.model_executor.layers.attention import Attention
from vllm.utils.gpu_sync_debug import gpu_sync_allowed
from vllm.v1.attention.backend import AttentionCGSupport
from vllm.v1.attention.backends.rocm_aiter_fa import (
    AiterFlashAttentionBackend, AiterFlashAttentionImpl, AiterFlashAttentionMetadataBuilder,
)
from vllm.v1.kv_cache_interface import is_quantized_kv_cache

from aiter_ext.integrations import cascade_enabled
from aiter_ext.integrations.prefix import MIN_REQUESTS, shared_prefix_blocks, should_use_cascade


#: vLLM's fp8 KV cache formats the cascade serves: e4m3, which the platform stores as its fp8 dtype
#: (e4m3fnuz on gfx942, e4m3fn on gfx950). e5m2 keeps vLLM's path (aiter_ext's engine refuses it).
FP8_E4M3_CACHES = ("fp8", "fp8_e4m3")


class CascadeParams(NamedTuple):
    """What a cascade plan bakes in, shared by every layer it serves."""

    sm_scale: float
    logits_soft_cap: Optional[float]
    fp8_kv: bool = False  # an fp8 (e4m3) cache: each layer's k_scale/v_scale apply at run time


def cascade_params(impls) -> Optional[CascadeParams]:
    """The layers' common scale, soft cap and cache format, or None when some layer cannot take the cascade
    (ALiBi, a sliding window, an fp8 format other than e4m3) or the layers disagree. Sinks and fp8 scales
    are per layer at run time."""
    params = set()
    for impl in impls:
        fp8 = is_quantized_kv_cache(impl.kv_cache_dtype)
        if (impl.alibi_slopes is not None or impl.sliding_window[0] != -1
                or (fp8 and impl.kv_cache_dtype not in FP8_E4M3_CACHES)):
            return None
        params.add(CascadeParams(impl.scale, impl.logits_soft_cap or None, fp8))
    return params.pop() if len(params) == 1 else None


class AiterExtImpl(AiterFlashAttentionImpl):
    """vLLM's AITER impl, with the cascade of a decode-only step when the builder planned one."""

    @functools.cached_property
    def cascade_params(self) -> Optional[CascadeParams]:
        """This layer's part of a cascade plan (fixed at construction; cached off the per-step path)."""
        return cascade_params([self])

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None,
                output_block_scale=None):
        cascade = getattr(attn_metadata, "aiter_ext_cascade", None)
        if (cascade is None or output_scale is not None or output_block_scale is not None
                or self.cascade_params != cascade.params):
            return super().forward(layer, query, key, value, kv_cache, attn_metadata, output, output_scale,
                                   output_block_scale)
        key_cache, value_cache = self._split_kv_cache(kv_cache)
        scales = {}
        if cascade.params.fp8_kv:  # vLLM keeps fp8 caches as bytes; dequantized K = fp8 value * k_scale
            from vllm.platforms import current_platform

            key_cache = key_cache.view(current_platform.fp8_dtype())
            value_cache = value_cache.view(current_platform.fp8_dtype())
            scales = {"k_scale": layer._k_scale_float, "v_scale": layer._v_scale_float}
        n = attn_metadata.num_actual_tokens
        cascade.decode.run(query[:n], key_cache, value_cache, out=output[:n].view(n, self.num_heads, self.head_size),
                           sinks=self.sinks, **scales)
        return output


class PlannedCascade(NamedTuple):
    decode: object  # integrations.cascade.CascadeDecode
    params: CascadeParams


class AiterExtMetadataBuilder(AiterFlashAttentionMetadataBuilder):
    """vLLM's AITER builder, plus (``AITER_EXT_CASCADE=1``) the cascade plan of decode-only steps whose
    requests share a prefix: ``metadata.aiter_ext_cascade`` (a PlannedCascade, or None)."""

    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
        if cascade_enabled():
            return AttentionCGSupport.NEVER  # attention runs outside full graphs, so the cascade can run
        return super().get_cudagraph_support(vllm_config, kv_cache_spec)

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self._cascade = None
        self._cascade_params = None
        if cascade_enabled() and vllm_config.speculative_config is None:
            layers = get_layers_from_vllm_config(vllm_config, Attention)
            self._cascade_params = cascade_params(layers[name].impl for name in layer_names if name in layers)

    def build(self, common_prefix_len, common_attn_metadata, fast_build=False):
        metadata = super().build(common_prefix_len, common_attn_metadata, fast_build)
        metadata.aiter_ext_cascade = None
        if self._cascade_params is not None and metadata.num_prefills == 0 and metadata.num_extends == 0:
            metadata.aiter_ext_cascade = self._plan_cascade(common_attn_metadata)
        return metadata

    def _plan_cascade(self, cam) -> Optional[PlannedCascade]:
        """The step's cascade, or None when its requests share too little (should_use_cascade)."""
        num_reqs = cam.num_reqs
        if cam.max_query_len != 1 or num_reqs < MIN_REQUESTS or cam.seq_lens_cpu_upper_bound is None:
            return None
        if rocm_aiter_ops.is_shuffle_kv_cache_enabled():
            return None  # VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT: a swizzled cache the cascade cannot read
        bound = int(cam.seq_lens_cpu_upper_bound[:num_reqs].max())
        columns = -(-bound // self.block_size)
        with gpu_sync_allowed():  # the one read back per step (this module's docstring)
            table = cam.block_table_tensor[:num_reqs, :columns].cpu()
            seq_lens = cam.seq_lens[:num_reqs].cpu()
        shared = int(shared_prefix_blocks(table, seq_lens, num_reqs, self.block_size))
        if not should_use_cascade(shared * self.block_size, num_reqs, 1):
            return None
        if self._cascade is None:
            from aiter_ext.integrations.cascade import CascadeDecode

            self._cascade = CascadeDecode(self.device)
        spec = self.kv_cache_spec
        kv_dtype = spec.dtype  # an fp8 cache's spec says uint8 (its bytes): the plan wants the fp8 dtype
        if self._cascade_params.fp8_kv:
            from vllm.platforms import current_platform

            kv_dtype = current_platform.fp8_dtype()
        self._cascade.plan(table, seq_lens, shared, self.block_size, self.num_heads_q, spec.num_kv_heads,
                           spec.head_size, sm_scale=self._cascade_params.sm_scale,
                           logits_soft_cap=self._cascade_params.logits_soft_cap,
                           q_data_type=self.model_config.dtype, kv_data_type=kv_dtype)
        return PlannedCascade(self._cascade, self._cascade_params)


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
