"""Environment reads for the per-call path.

Ops read ``AITER_EXT_BACKEND*``, ``AITER_EXT_ARCH``/``AITER_EXT_CU_NUM`` and ``TRITON_INTERPRET`` on every
call, because tests and users change them at run time. ``os.environ.get`` re-encodes the name on each
read (about 1 us on the CI machine; an eager call made five of these reads); :func:`env` looks the
pre-encoded name up in the mapping's own store instead and gives the same answers, including after
``os.environ[...] = ...``, ``del`` and ``monkeypatch.setenv``, which all go through that store.
"""

from __future__ import annotations

import os

#: CPython's backing dict of ``os.environ`` (encoded names and values); None where it does not exist.
_STORE = getattr(os.environ, "_data", None)
_ENCODED: dict[str, object] = {}


def env(name: str) -> str | None:
    """``os.environ.get(name)``."""
    if not isinstance(_STORE, dict):
        return os.environ.get(name)
    key = _ENCODED.get(name)
    if key is None:
        key = _ENCODED[name] = os.environ.encodekey(name)
    value = _STORE.get(key)
    return None if value is None else os.environ.decodevalue(value)


def interpreted() -> bool:
    """Triton kernels run on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return env("TRITON_INTERPRET") == "1"
