"""vLLM and SGLang plugins (shared/reference/serving-integration.md; issue 15).

- ``prefix``: shared-prefix detection and the cascade decision (framework-free);
- ``vllm``, ``sglang``: the plugins their entry points (pyproject.toml) name; each imports its framework
  only when its ``register()`` runs;
- ``framework_supported``, ``attention_enabled``, ``lora_enabled`` and ``cascade_enabled`` (here): the
  release, ``AITER_EXT_ATTN``, ``AITER_EXT_LORA`` and ``AITER_EXT_CASCADE`` checks both plugins make.
"""

import logging
import os

logger = logging.getLogger(__name__)


def framework_supported(module, supported_prefix: str) -> bool:
    """Whether the framework's release is the one the plugin is written for (else one warning: the
    plugin registers nothing)."""
    if not module.__version__.startswith(supported_prefix):
        logger.warning("aiter_ext: the %s plugin supports %s %sx, found %s; it is off", module.__name__,
                       module.__name__, supported_prefix, module.__version__)
        return False
    return True


def attention_enabled() -> bool:
    """``AITER_EXT_ATTN=0`` turns both plugins' attention backends off."""
    return os.environ.get("AITER_EXT_ATTN", "1") != "0"


LORA_ENV = "AITER_EXT_LORA"


def lora_enabled() -> bool:
    """``AITER_EXT_LORA=1`` routes both frameworks' dense LoRA GEMMs to aiter_ext (off by default)."""
    return os.environ.get(LORA_ENV, "0") == "1"


CASCADE_ENV = "AITER_EXT_CASCADE"


def cascade_enabled() -> bool:
    """``AITER_EXT_CASCADE=1`` turns on both plugins' cross-request cascade (off by default)."""
    return os.environ.get(CASCADE_ENV, "0") == "1"
