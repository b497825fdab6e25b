"""The ``aiter_ext`` attention backend for SGLang 0.5.23 (issue 15): SGLang's AITER backend, subclassed
so that decode steps whose requests share a prefix run aiter_ext's two-level cascade.

Cascade (``AITER_EXT_CASCADE=1``, off by default, as in the vLLM plugin):
- SGLang's KV pool is token-level: ``req_to_token[row, i]`` is the slot of a request's token i, and the
  radix cache gives requests that share a prefix the same leading slots. ``init_forward_metadata``
  finds that run on the device (integrations.prefix.shared_prefix_blocks over one-token blocks) and
  reads it back (one sync); when ``should_use_cascade`` says so, it gathers the two levels' slots on
  the device and reads them back (a second sync; integrations.cascade.token_level_tables).
- The plan is made at the step's first layer that fits, with that layer's scale and soft cap, and
  reused by every later layer with the same ones; other layers take SGLang's path.
- Only steps SGLang runs eagerly: a decode batch it replays from a CUDA graph (up to
  ``--cuda-graph-max-bs``) never calls ``init_forward_metadata``, so it keeps SGLang's path; batches
  above that size, or every batch with ``--disable-cuda-graph``, can take the cascade.
- Layers and pools it serves: MHA/GQA with a bf16/fp16 cache in SGLang's default layout, without the
  unified-attention, sliding-window or vectorized-5D pools, and no sliding window on the layer. A
  layer's attention sinks (``sinks=``) go to the cascade, counted once over both levels. fp8 caches and
  MLA keep SGLang's path.
- The cascade uses ``layer.scaling``; SGLang's own AITER decode uses ``1/sqrt(head_dim)`` whatever the
  layer says (the same number for most models).

Not written: merge-state routing through aiter_ext (SGLang's AITER backend merges with its own
``merge_state_triton``), the cascade for fp8 caches and sliding-window pools.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from sglang.kernels.ops.quantization.fp8_kernel import fp8_dtype
from sglang.srt.layers.attention.aiter_backend import AiterAttnBackend
from sglang.srt.mem_cache.memory_pool import KVWriteLoc

from aiter_ext.integrations import cascade_enabled
from aiter_ext.integrations.prefix import MIN_PREFIX_TOKENS, MIN_REQUESTS, shared_prefix_blocks, should_use_cascade


class StepCascade(NamedTuple):
    """A decode step's cascade: its tables (integrations.cascade.LevelTables), and the layer parameters
    the plan was made for (None until the step's first fitting layer plans it)."""

    tables: object
    planned_for: Optional[tuple]


class AiterExtAttnBackend(AiterAttnBackend):
    """SGLang's AITER backend, plus the cross-request cascade of eager decode steps (module docstring)."""

    def __init__(self, model_runner, *args, **kwargs):
        super().__init__(model_runner, *args, **kwargs)
        self._cascade = None  # integrations.cascade.CascadeDecode, made on first use
        self._step_cascade: Optional[StepCascade] = None
        self._step_batch = None  # the ForwardBatch that _step_cascade belongs to

    # -- which steps and layers -------------------------------------------------------------------

    def _pool_fits_cascade(self) -> bool:
        return not (self.use_mla or self.kv_cache_is_vectorized_5d or self.use_triton_unified_attention
                    or self.use_sliding_window_kv_pool or self.kv_cache_dtype == fp8_dtype)

    @staticmethod
    def _layer_key(layer) -> Optional[tuple]:
        """What a plan bakes in for ``layer``, or None when the cascade cannot serve it."""
        if (layer.sliding_window_size is not None and layer.sliding_window_size > -1) or layer.is_cross_attention \
                or layer.qk_head_dim != layer.v_head_dim:
            return None
        return (float(layer.scaling), float(layer.logit_cap or 0.0) or None, layer.tp_q_head_num, layer.tp_k_head_num,
                layer.qk_head_dim)

    # -- per step ---------------------------------------------------------------------------------

    def init_forward_metadata(self, forward_batch):
        super().init_forward_metadata(forward_batch)
        self._step_cascade = None
        self._step_batch = None
        if (cascade_enabled() and forward_batch.forward_mode.is_decode() and forward_batch.spec_info is None
                and forward_batch.seq_lens_cpu is not None and self._pool_fits_cascade()):
            tables = self._cascade_tables(forward_batch)
            if tables is not None:
                self._step_cascade = StepCascade(tables, None)
                self._step_batch = forward_batch

    def _cascade_tables(self, forward_batch):
        """The step's two cascade levels, or None when its requests share too little."""
        from aiter_ext.integrations.cascade import token_level_tables

        num_reqs = forward_batch.batch_size
        if num_reqs < MIN_REQUESTS:
            return None
        seq_lens_cpu = forward_batch.seq_lens_cpu[:num_reqs]
        # every request keeps a token of its own, so the shared run ends before the shortest's last token
        columns = int(seq_lens_cpu.min()) - 1
        if columns < MIN_PREFIX_TOKENS:
            return None
        rows = forward_batch.req_pool_indices[:num_reqs]
        table = self.req_to_token[rows, :columns]
        shared = int(shared_prefix_blocks(table, forward_batch.seq_lens[:num_reqs], num_reqs, 1))  # a sync
        if not should_use_cascade(shared, num_reqs, 1):
            return None
        return token_level_tables(self.req_to_token, rows, forward_batch.seq_lens, seq_lens_cpu, shared)

    def _planned_for(self, layer):
        """The cascade for ``layer`` in this step (planned at the first layer that fits), or None."""
        key = self._layer_key(layer)
        step = self._step_cascade
        if key is None or step is None or (step.planned_for is not None and step.planned_for != key):
            return None
        if step.planned_for is None:
            if self._cascade is None:
                from aiter_ext.integrations.cascade import CascadeDecode

                self._cascade = CascadeDecode(self.device)
            scale, cap, heads_q, heads_kv, head_dim = key
            self._cascade.plan_tables(step.tables, 1, heads_q, heads_kv, head_dim, sm_scale=scale,
                                      logits_soft_cap=cap, q_data_type=self.input_dtype,
                                      kv_data_type=self.kv_cache_dtype)
            self._step_cascade = step._replace(planned_for=key)
        return self._cascade

    # -- per layer --------------------------------------------------------------------------------

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, sinks=None):
        cascade = None
        capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
        if forward_batch is self._step_batch and not capturing:
            cascade = self._planned_for(layer)
        if cascade is None:
            return super().forward_decode(q, k, v, layer, forward_batch, save_kv_cache=save_kv_cache, sinks=sinks)
        if save_kv_cache:  # SGLang's own write for this pool (a 16-bit cache, no SWA or 5D layout)
            self.token_to_kv_pool.set_kv_buffer(
                layer, KVWriteLoc.for_batch(forward_batch, swa_loc=self.forward_metadata.swa_out_cache_loc),
                k, v, None, None)
        k_cache, v_cache = self.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        heads_q, heads_kv, head_dim = layer.tp_q_head_num, layer.tp_k_head_num, layer.qk_head_dim
        q3 = q.reshape(-1, heads_q, head_dim)
        out = torch.empty(q3.shape, dtype=self.input_dtype, device=q3.device)
        cascade.run(q3.to(self.input_dtype), k_cache.view(-1, 1, heads_kv, head_dim),
                    v_cache.view(-1, 1, heads_kv, head_dim), out=out, sinks=sinks)
        return out.view(-1, heads_q * head_dim)
