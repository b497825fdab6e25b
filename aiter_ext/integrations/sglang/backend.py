"""The ``aiter_ext`` attention backend for SGLang 0.5.23 (issue 15): SGLang's AITER backend, subclassed
so that aiter_ext can add cross-request cascade (detected in ``init_forward_metadata``), sinks and
merge-state routing.

State (work in progress): registration and the CLI choice are in place; attention still runs SGLang's
AITER path (nothing is overridden yet).
"""

from __future__ import annotations

from sglang.srt.layers.attention.aiter_backend import AiterAttnBackend


class AiterExtAttnBackend(AiterAttnBackend):
    """SGLang's AITER backend; aiter_ext's cascade routing will hook in here."""
