"""aiter_ext's SGLang plugin (issue 15; serving-integration.md, section 5).

The entry point (group ``sglang.srt.plugins``) is :func:`register`. It registers the attention backend
``aiter_ext`` (``--attention-backend aiter_ext``), whatever torch was built for: the backend checks its
device when the model runner constructs it, as SGLang's own backends do. SGLang 0.5.23 has no helper to
extend the CLI's choices, so the name is appended to its choice lists in place (argparse is built after
plugins load). It also registers the sampling backend ``aiter_ext`` (``--sampling-backend aiter_ext``;
:mod:`.sampler`), and with ``AITER_EXT_LORA=1`` puts aiter_ext's dense LoRA GEMMs behind
``--lora-backend triton`` (:mod:`.lora`).

Nothing from SGLang is imported at ``import aiter_ext``, nor here until ``register()`` runs.
``AITER_EXT_ATTN=0`` turns the attention backend off (the sampler stays).
"""

from __future__ import annotations

import logging

from aiter_ext.integrations import attention_enabled, framework_supported, lora_enabled

logger = logging.getLogger(__name__)

SUPPORTED_SGLANG = "0.5."
BACKEND_NAME = "aiter_ext"


def _create_backend(runner):
    from .backend import AiterExtAttnBackend

    return AiterExtAttnBackend(runner)


def _create_sampler():
    from .sampler import AiterExtSampler

    return AiterExtSampler()


def register() -> None:
    """SGLang's general-plugin hook: idempotent, no device calls."""
    try:
        import sglang
        from sglang.srt.arg_groups import choices
        from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS, register_attention_backend
    except ImportError as exc:
        logger.warning("aiter_ext: SGLang is not importable (%s); the aiter_ext SGLang plugin is off", exc)
        return
    if not framework_supported(sglang, SUPPORTED_SGLANG):
        return
    from sglang.srt.layers.sampler import register_sampler_backend
    from sglang.srt.server_args import SAMPLING_BACKEND_CHOICES

    if BACKEND_NAME not in SAMPLING_BACKEND_CHOICES:  # register_sampler_backend warns on a second call
        register_sampler_backend(BACKEND_NAME, _create_sampler)
    if lora_enabled():  # over "triton": --lora-backend's choices are a literal list (lora.py)
        from sglang.srt.lora.backend.lora_registry import register_lora_backend

        from .lora import backend_class

        register_lora_backend("triton")(backend_class)
        logger.info("aiter_ext: --lora-backend triton runs aiter_ext's dense LoRA GEMMs (AITER_EXT_LORA=1)")
    if not attention_enabled():
        return
    if BACKEND_NAME not in ATTENTION_BACKENDS:
        register_attention_backend(BACKEND_NAME)(_create_backend)
    if BACKEND_NAME not in choices.ATTENTION_BACKEND_CHOICES:
        choices.ATTENTION_BACKEND_CHOICES.append(BACKEND_NAME)
