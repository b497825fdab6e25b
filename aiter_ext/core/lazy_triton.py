"""Kernel modules that do not import Triton until a kernel needs it.

``import triton`` costs about 300 ms (issue 18's cold starts on an H100 host): most of an op's first call in
a fresh process when its launches come from code objects (``hsa/``, ``core/objects.py``), which Triton
never touches. So kernel modules write

    from aiter_ext.core.lazy_triton import tl, triton

and keep their kernels as written (``@triton.jit``, module constants of ``tl.constexpr``, ``tl.*`` inside
kernels). Until Triton is loaded, ``triton.jit`` gives a :class:`LazyKernel` (the Python function, the jit's
options, and the parameters as Triton reads them) and ``tl.constexpr`` a :class:`LazyConstexpr`. The first
use that needs Triton (a compile, Triton's launcher, the interpreter, any other attribute of ``triton`` or
``tl``) calls :func:`load`: it imports Triton, makes every deferred kernel and constant a real one, and
puts them, and the real ``triton`` and ``tl``, in place of the stand-ins in every ``aiter_ext`` module,
since Triton's compiler reads a kernel's helpers and constants from its module's globals. From then on
``triton.jit`` is Triton's own.
"""

from __future__ import annotations

import inspect
import sys
import threading
import types
from typing import Any, Callable, NamedTuple

#: (triton, triton.language) once loaded
_REAL: tuple[Any, Any] | None = None
_LOCK = threading.RLock()
#: every stand-in made before the load, made real by it
_DEFERRED: list = []
_ON_LOAD: dict[int, Callable[[], None]] = {}


def loaded() -> bool:
    return _REAL is not None


def load() -> tuple[Any, Any]:
    """Import Triton, make every deferred kernel and constant real and swap them into the ``aiter_ext``
    modules (module docstring); returns ``(triton, triton.language)``."""
    global _REAL
    with _LOCK:
        if _REAL is not None:
            return _REAL
        import triton as real_triton
        import triton.language as real_tl

        for item in _DEFERRED:  # (Triton's jit reads no global until a compile: any order will do)
            item._make_real(real_triton, real_tl)
        swaps = {id(item): item for item in _DEFERRED}
        for name, module in list(sys.modules.items()):
            if module is None or name == __name__ or not (name == "aiter_ext" or name.startswith("aiter_ext.")):
                continue  # (this module keeps its stand-ins: they are what the others are compared with)
            names = vars(module)
            for key, value in list(names.items()):
                if value is _TRITON:
                    names[key] = real_triton
                elif value is _TL:
                    names[key] = real_tl
                elif isinstance(value, (LazyKernel, LazyConstexpr)) and swaps.get(id(value)) is value:
                    names[key] = value.real
        _DEFERRED.clear()
        _REAL = (real_triton, real_tl)
        callbacks = list(_ON_LOAD.values())
    for callback in callbacks:
        callback()
    return _REAL


def on_load(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` when :func:`load` imports Triton; returns the function that cancels it."""
    key = id(callback)
    _ON_LOAD[key] = callback
    return lambda: _ON_LOAD.pop(key, None)


class Param(NamedTuple):
    """A kernel parameter as the launch path reads it (Triton's ``KernelParam`` has the same three)."""

    name: str
    is_constexpr: bool
    default: Any


def kernel_params(fn) -> list[Param]:
    """``fn``'s parameters, a constexpr being one annotated with a type whose name holds ``constexpr``, as
    Triton decides (the kernel modules' ``from __future__ import annotations`` keeps annotations strings)."""
    out = []
    for p in inspect.signature(fn).parameters.values():
        annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        out.append(Param(p.name, "constexpr" in str(annotation), p.default))
    return out


class LazyKernel:
    """``@triton.jit`` before Triton is loaded: the parameters are known, anything else loads Triton and
    asks the real ``JITFunction`` (``kernel[grid](...)``, ``warmup``, ...)."""

    def __init__(self, fn, options: dict):
        self.python_fn = fn
        self.options = options
        self.params = kernel_params(fn)
        self.real = None
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__module__ = fn.__module__
        self.__doc__ = fn.__doc__
        _DEFERRED.append(self)

    def _make_real(self, real_triton, real_tl) -> None:
        self.real = real_triton.jit(self.python_fn, **self.options)

    def jit_function(self):
        """The real kernel (Triton's ``JITFunction``, or its interpreter's object), loading Triton first."""
        if self.real is None:
            load()
        return self.real

    @property
    def fn(self):  # what unwrapping code walks (aot._kernel_of): the JITFunction
        return self.jit_function()

    def __getitem__(self, grid):
        return self.jit_function()[grid]

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.jit_function(), name)


class LazyConstexpr:
    """``tl.constexpr(value)`` before Triton is loaded: host code reads ``.value``; the loaded module holds
    the real constexpr in its place."""

    def __init__(self, value):
        self.value = value
        self.real = None
        _DEFERRED.append(self)

    def _make_real(self, real_triton, real_tl) -> None:
        self.real = real_tl.constexpr(self.value)

    def __repr__(self) -> str:
        return f"constexpr[{self.value!r}] (deferred)"


class _Facade(types.ModuleType):
    """A module object standing in for ``triton`` or ``triton.language``: the deferred names here, every
    other attribute from the real module (loading Triton)."""

    def __init__(self, name: str, deferred: dict, real_index: int):
        super().__init__(name)
        self._deferred = deferred
        self._real_index = real_index

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_deferred", "_real_index"):
            raise AttributeError(name)
        if _REAL is None and name in self._deferred:
            return self._deferred[name]
        return getattr(load()[self._real_index], name)


def _jit(fn=None, **options):
    """``triton.jit``, deferred until Triton is loaded (its own once it is)."""
    if fn is None:
        return lambda f: _jit(f, **options)
    with _LOCK:  # a kernel module imported by another thread while load() runs waits for it, then gets Triton's
        return _REAL[0].jit(fn, **options) if _REAL is not None else LazyKernel(fn, options)


def _constexpr(value):
    with _LOCK:
        return _REAL[1].constexpr(value) if _REAL is not None else LazyConstexpr(value)


_TRITON = _Facade("triton (deferred: aiter_ext.core.lazy_triton)", {"jit": _jit}, 0)
_TL = _Facade("triton.language (deferred: aiter_ext.core.lazy_triton)", {"constexpr": _constexpr}, 1)


def __getattr__(name: str):
    """``triton`` and ``tl``: the stand-ins until Triton is loaded, the real modules after (a kernel module
    imported later must hold the real ``tl``: Triton's compiler reads it from the module's globals)."""
    if name == "triton":
        return _REAL[0] if _REAL is not None else _TRITON
    if name == "tl":
        return _REAL[1] if _REAL is not None else _TL
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
