"""aiter_ext's segment GEMM inside SGLang 0.5.23's dense LoRA layers (issue 17), opt in with
``AITER_EXT_LORA=1`` (the flag that also routes vLLM's LoRA).

SGLang's ``--lora-backend`` choices are a literal list with no helper to extend it, so the plugin
registers over ``triton``: with the flag, ``--lora-backend triton`` builds :class:`AiterExtLoRABackend`.
That class is SGLang's ``TritonLoRABackend``, keeping its batch preparation, CUDA-graph batch infos, DP
attention, embedding and LM-head paths and MoE LoRA. Only its four dense GEMM entry points change:
``run_lora_a_sgemm``, ``run_lora_b_sgemm``, ``run_qkv_lora`` and ``run_gate_up_lora``. They call
``ops/segment_gemm/ranked.py`` with the same batch info SGLang's kernels read:
- the segments and their pool slots;
- the per-slot ranks and scalings;
- the token permutation.
``run_qkv_lora`` slices the output by the layer's host copy of the QKV offsets (``output_offset_cpu``, which
SGLang's layers pass); without it, SGLang's own kernel runs. Nothing from SGLang is imported until
:func:`backend_class` runs.
"""

from __future__ import annotations

import torch


def backend_class():
    """``TritonLoRABackend`` with aiter_ext's dense LoRA GEMMs (module docstring)."""
    from sglang.srt.lora.backend.triton_backend import TritonLoRABackend

    from aiter_ext.ops.segment_gemm import ranked

    def lora_a(x, weights, info):
        return ranked.lora_a(x.contiguous(), weights, info.seg_indptr, info.weight_indices, info.lora_ranks, info.bs,
                             info.permutation)

    def lora_b(a, weights, out, info, x_slice=0):
        ranked.lora_b(a, weights, out, info.seg_indptr, info.weight_indices, info.lora_ranks, info.scalings, info.bs,
                      info.permutation, x_slice)

    def output_for(base_output, a, width):
        if base_output is not None:
            return base_output
        return torch.zeros(a.shape[0], width, dtype=a.dtype, device=a.device)

    class AiterExtLoRABackend(TritonLoRABackend):
        """SGLang's triton LoRA backend, its dense GEMMs on aiter_ext's segment-GEMM kernel."""

        def run_lora_a_sgemm(self, x, weights, pruned_batch_info=None, stack_num=1, *args, **kwargs):
            return lora_a(x, weights, self._sgemm_info(pruned_batch_info))

        def run_lora_b_sgemm(self, x, weights, base_output=None, pruned_batch_info=None, *args, **kwargs):
            out = output_for(base_output, x, weights.shape[-2])
            lora_b(x, weights, out, self._sgemm_info(pruned_batch_info))
            return out

        def run_qkv_lora(self, x, qkv_lora_a, qkv_lora_b, output_offset, max_qkv_out_dim, base_output=None,
                         n_slices=3, *args, output_offset_cpu=None, **kwargs):
            if output_offset_cpu is None:  # no host offsets to slice by: SGLang's kernel reads the device ones
                return super().run_qkv_lora(x, qkv_lora_a, qkv_lora_b, output_offset, max_qkv_out_dim, base_output,
                                            n_slices, *args, **kwargs)
            info = self._sgemm_info()
            a = lora_a(x, qkv_lora_a, info)
            out = output_for(base_output, a, qkv_lora_b.shape[-2])
            offsets = [int(v) for v in output_offset_cpu.tolist()]  # a host tensor: no sync
            for j in range(n_slices):
                lo, hi = offsets[j], offsets[j + 1]
                lora_b(a, qkv_lora_b[:, lo:hi], out[:, lo:hi], info, j)
            return out

        def run_gate_up_lora(self, x, gate_up_lora_a, gate_up_lora_b, base_output=None, *args, **kwargs):
            info = self._sgemm_info()
            a = lora_a(x, gate_up_lora_a, info)
            width = gate_up_lora_b.shape[-2] // 2
            out = output_for(base_output, a, 2 * width)
            for j in range(2):
                lora_b(a, gate_up_lora_b[:, j * width:(j + 1) * width], out[:, j * width:(j + 1) * width], info, j)
            return out

    return AiterExtLoRABackend
