"""The ops. Each registers itself with ``aiter_ext.core``: backends and tune targets where its backends
module is imported (by its public API), code-object specs where its kernels live (``register_aot_specs``
in ``<op>/kernels.py``), which the public API imports only at the first launch."""

from __future__ import annotations


def load_kernel_modules() -> None:
    """Import every module under ``aiter_ext.ops``, so that every op's registrations have run (the CLI does
    before ``aiter-ext aot`` and ``aiter-ext tune``: core lists what is registered and imports no op). An op
    module that fails to import raises, naming it: a broken op must not pass the compile check unnoticed."""
    import importlib
    import pkgutil
    import sys

    def broken(name):
        raise RuntimeError(f"cannot import {name} to collect its registrations: {sys.exc_info()[1]!r}")

    for module in pkgutil.walk_packages(__path__, __name__ + ".", onerror=broken):
        try:
            importlib.import_module(module.name)
        except Exception as exc:
            raise RuntimeError(f"cannot import {module.name} to collect its registrations: {exc!r}") from exc
