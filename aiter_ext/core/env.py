"""Environment reads for the per-call path.

Ops read ``AITER_EXT_BACKEND*``, ``AITER_EXT_ARCH``/``AITER_EXT_CU_NUM`` and ``TRITON_INTERPRET`` on every
call, because tests and users change them at run time. ``os.environ.get`` re-encodes the name on each read
(about 1 us on the CI machine, and an eager call made five such reads). So :func:`env` answers from a cache
that is dropped whenever the environment changes: ``os.environ``'s own store (CPython's ``_data`` dict,
which ``os.environ[...] = ...``, ``del``, ``pop``, ``update``, ``clear`` and ``monkeypatch.setenv`` all
write through) is swapped at import for a dict subclass that counts writes. A read is then one
comparison and one dictionary lookup. Changes made behind Python's back (``os.putenv``, C code) were never
seen by ``os.environ`` either.
"""

from __future__ import annotations

import os


class _CountingStore(dict):
    """``os.environ``'s store, counting the writes that go through it (``os._Environ`` writes its store only
    by item assignment and deletion)."""

    writes = 0

    def __setitem__(self, key, value):
        _CountingStore.writes += 1
        super().__setitem__(key, value)

    def __delitem__(self, key):
        _CountingStore.writes += 1
        super().__delitem__(key)


if type(getattr(os.environ, "_data", None)) is dict:
    os.environ._data = _CountingStore(os.environ._data)

_cache: dict[str, str | None] = {}
_cached_at = -1


def env(name: str) -> str | None:
    """``os.environ.get(name)``, from the cache while the environment is unchanged."""
    global _cached_at
    if _CountingStore.writes != _cached_at:
        _cache.clear()
        _cached_at = _CountingStore.writes
    try:
        return _cache[name]
    except KeyError:
        value = _cache[name] = os.environ.get(name)
        return value


def interpreted() -> bool:
    """Triton kernels run on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return env("TRITON_INTERPRET") == "1"
