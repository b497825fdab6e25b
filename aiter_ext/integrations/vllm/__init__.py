"""aiter_ext's vLLM plugin (issue 15; serving-integration.md, section 3).

The entry point (group ``vllm.general_plugins``) is :func:`register`. On ROCm, as vLLM's own platform
answers it (``current_platform.is_rocm()``), it registers :class:`~aiter_ext.integrations.vllm.backend.AiterExtBackend`
as vLLM's ``CUSTOM`` attention backend: users pass ``--attention-backend CUSTOM``. ``CUSTOM`` is a member
of vLLM's enum in every process, so a pickled config that names it unpickles before plugins load (a
member created at run time would not).

Nothing from vLLM is imported at ``import aiter_ext``, nor here until ``register()`` runs. Off ROCm, or
without vLLM 0.33, it logs why and registers nothing. ``AITER_EXT_ATTN=0`` turns the backend off;
``AITER_EXT_SAMPLER=1`` also sends vLLM's top-k/top-p sampling through aiter_ext (:mod:`.sampler`), and
``AITER_EXT_CASCADE=1`` gives shared-prefix decode steps aiter_ext's cascade (:mod:`.backend`), and
``AITER_EXT_LORA=1`` sends the punica wrapper's LoRA shrink/expand through aiter_ext (:mod:`.lora`).
"""

from __future__ import annotations

import logging

from aiter_ext.integrations import attention_enabled, framework_supported, lora_enabled

logger = logging.getLogger(__name__)

#: The vLLM release this plugin is written and tested against (the contract tests assert it).
SUPPORTED_VLLM = "0.33."
BACKEND_PATH = "aiter_ext.integrations.vllm.backend.AiterExtBackend"


def register() -> None:
    """vLLM's general-plugin hook: idempotent, no device calls, nothing registered off ROCm."""
    try:
        import vllm
        from vllm.platforms import current_platform
        from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend
    except ImportError as exc:
        logger.warning("aiter_ext: vLLM is not importable (%s); the aiter_ext vLLM plugin is off", exc)
        return
    if not (current_platform.is_rocm() and framework_supported(vllm, SUPPORTED_VLLM)):
        return
    if attention_enabled():
        register_backend(AttentionBackendEnum.CUSTOM, BACKEND_PATH)
        logger.info("aiter_ext: attention backend registered as CUSTOM (--attention-backend CUSTOM)")
    from . import lora, sampler

    if lora_enabled():
        import vllm.lora.punica_wrapper.punica_gpu as punica_gpu

        lora.install(punica_gpu)

    if sampler.enabled():
        import vllm.v1.worker.gpu.sample.sampler as v2_sampler
        from vllm.v1.sample.ops.topk_topp_sampler import TopKTopPSampler

        sampler.install(TopKTopPSampler)
        sampler.install_v2(v2_sampler)
