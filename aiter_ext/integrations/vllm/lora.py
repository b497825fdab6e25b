"""aiter_ext's LoRA shrink and expand inside vLLM 0.33's punica wrapper (issue 17), opt in with
``AITER_EXT_LORA=1`` on ROCm.

ROCm's ``get_punica_wrapper()`` is vLLM's ``PunicaWrapperGPU``, whose methods (``add_shrink``,
``add_expand``, ``add_lora_linear``, ``add_lora_embedding``, ``add_lora_logits``) call the module-level
names ``lora_shrink`` and ``lora_expand`` of ``vllm.lora.punica_wrapper.punica_gpu`` with the metadata of
``LoRAKernelMeta.meta_args``. :func:`install` points those two names at :func:`aiter_ext.lora_shrink` and
:func:`aiter_ext.lora_expand`, which take the same arguments (``aiter_ext/ops/segment_gemm/lora.py``) and
are torch custom ops (``aiter_ext::lora_shrink``/``lora_expand``), so compiled models trace through them
as through vLLM's own. vLLM's fused-MoE LoRA kernel is left as it is. Workers load general plugins before
they build the model, so the wrapper they construct already calls aiter_ext.
"""

from __future__ import annotations

import logging

from aiter_ext.integrations import LORA_ENV

logger = logging.getLogger(__name__)


def install(punica_gpu) -> None:
    """Route the punica wrapper module's ``lora_shrink``/``lora_expand`` to aiter_ext (idempotent)."""
    import aiter_ext

    punica_gpu.lora_shrink = aiter_ext.lora_shrink
    punica_gpu.lora_expand = aiter_ext.lora_expand
    logger.info("aiter_ext: vLLM's LoRA shrink/expand go through aiter_ext's segment GEMM (%s=1)", LORA_ENV)
