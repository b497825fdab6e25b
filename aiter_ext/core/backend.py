"""Backends, per-op registries and the selection order every op follows.

A *backend* (``torch``, ``triton``, ``ck``, ``asm``, ``aiter``) is available or not on this machine,
for a reason that is computed once and cached. An *op* registers one implementation per backend it
has, each with a ``supports(call)`` predicate saying whether it can serve a concrete call (dtypes,
head dim, flags). ``Op.select(call, backend)`` picks one, in this order:

1. an explicit ``backend=`` argument (FlashInfer's ``"auto"``, ``"fa2"``, ``"fa3"`` mean automatic);
2. the environment: ``AITER_EXT_BACKEND_<OP>`` for one op, else ``AITER_EXT_BACKEND`` for all;
3. the tuned-CSV row for this arch, CU count and shape (``core.tuned``), re-checked with ``supports``;
4. the op's registered backends in fixed priority order, first one that is available and supports it.

An explicit request (1 or 2) that cannot run raises :class:`BackendUnavailableError` with the reason:
there is never a silent fallback. Automatic choices are logged once per (op, shape bucket).
Decisions are cached per call key, so the hot path is a dictionary lookup with no device work.
"""

from __future__ import annotations

import functools
import importlib.util
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from . import plans
from .arch import device_info
from .env import env, interpreted
from .log import log_once

#: Values of ``backend=`` that FlashInfer users pass and that mean "choose for me".
AUTOMATIC = (None, "auto", "fa2", "fa3")
#: Backend names, in the default priority order (first = preferred when nothing else decides).
BACKEND_NAMES = ("triton", "ck", "asm", "aiter", "torch")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot serve the call; the message says why."""


# --------------------------------------------------------------------------------------------------
# Backend availability: one probe per backend name, cached with its reason.


def _triton_status() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "the triton package is not installed"
    if device_info().is_gpu:
        return True, f"compiled for {device_info().arch}"
    if interpreted():
        return True, "no GPU: kernels run on the CPU through the Triton interpreter (TRITON_INTERPRET=1)"
    return False, "no GPU here, and TRITON_INTERPRET=1 is not set (the interpreter runs Triton on the CPU)"


def _ck_status() -> tuple[bool, str]:
    # Whether a given op's module can be built (compiler, sources) is that op's `supports` check,
    # through core.jit.module_status; the backend itself needs a GPU to run on.
    info = device_info()
    if not info.is_gpu:
        return False, "C++ device kernels need a GPU (ROCm or CUDA); none is visible"
    return True, f"built by compile_ops for {info.arch}"


def _asm_status() -> tuple[bool, str]:
    # Code objects are the same compile as Triton's (bit for bit), so they are a launch route, not a backend
    # to weigh: the thin path beneath the triton backend takes one wherever it fits (core/thin.py).
    return False, ("code objects run beneath the triton backend, not as a backend of their own: the thin launch "
                   "path loads one from hsa/ or AITER_EXT_HSA_DIR wherever it fits, and AITER_EXT_LAUNCH=asm "
                   "launches objects only (build them with `aiter-ext aot --build`)")


def _aiter_status() -> tuple[bool, str]:
    info = device_info()
    if info.platform != "rocm":
        return False, f"AITER needs ROCm; this device is {info.arch}"
    if importlib.util.find_spec("aiter") is None:
        return False, "the amd-aiter package is not installed"
    try:  # `import aiter` runs ROCm probes at import time; only ever done here, lazily.
        importlib.import_module("aiter")
    except (ImportError, RuntimeError, OSError) as exc:
        return False, f"import aiter failed: {exc}"
    return True, "amd-aiter imports"


_STATUS_PROBES: dict[str, Callable[[], tuple[bool, str]]] = {
    "torch": lambda: (True, "the fp32 PyTorch reference runs everywhere"),
    "triton": _triton_status,
    "ck": _ck_status,
    "asm": _asm_status,
    "aiter": _aiter_status,
}


@functools.lru_cache(maxsize=None)
def _cached_status(name: str, interpret: str | None) -> tuple[bool, str]:
    return _STATUS_PROBES[name]()


def backend_status(name: str) -> tuple[bool, str]:
    """``(available, reason)`` for backend ``name`` on this machine (cached)."""
    if name not in _STATUS_PROBES:
        return False, f"unknown backend {name!r}; known: {', '.join(BACKEND_NAMES)}"
    return _cached_status(name, env("TRITON_INTERPRET"))


def _device_ok(backend: str, device: str | None) -> tuple[bool, str]:
    """Kernel backends run on GPU tensors (torch calls ROCm devices "cuda" too); Triton under the
    interpreter runs on CPU tensors instead; the torch reference runs on anything."""
    if device is None or backend == "torch":
        return True, ""
    want = "cpu" if backend == "triton" and interpreted() else "cuda"
    if device != want:
        where = "CPU tensors (the interpreter)" if want == "cpu" else "GPU tensors"
        return False, f"the {backend} backend runs on {where} here; these tensors are on {device}"
    return True, ""


# --------------------------------------------------------------------------------------------------
# Ops and their implementations.

Supports = Callable[[Mapping[str, Any]], "tuple[bool, str]"]


def _always(call: Mapping[str, Any]) -> tuple[bool, str]:
    return True, ""


@dataclass
class Impl:
    """One backend's implementation of an op."""

    backend: str
    fn: Callable
    supports: Supports = _always
    #: Kernel configurations the tuner may try ({} = the backend's heuristic default).
    configs: list[dict] = field(default_factory=lambda: [{}])
    #: For plan/run ops: builds, at plan time, the extra metadata this backend's run needs.
    prepare: Callable | None = None


@dataclass(frozen=True)
class Choice:
    impl: Impl
    config: dict
    how: str  # "argument", "environment", "tuned", "priority"


class Op:
    """The backends of one op and the selection order above.

    ``shape_keys`` name the call fields that key the tuned CSV (``core.tuned``); ``bucket`` maps a
    call to the key that decisions are cached and logged under. ``exact_keys`` (some of the shape keys)
    must be equal for a tuned row to serve a call of another shape.
    """

    def __init__(self, name: str, shape_keys: tuple[str, ...], bucket: Callable[[Mapping], tuple],
                 exact_keys: tuple[str, ...] = ()):
        self.name = name
        self.shape_keys = shape_keys
        self.exact_keys = exact_keys
        self.bucket = bucket
        self.impls: dict[str, Impl] = {}
        self._cache: dict[tuple, Choice] = {}
        self._env_vars = (f"AITER_EXT_BACKEND_{name.upper()}", "AITER_EXT_BACKEND")
        #: the call's key names -> a getter of its non-shape values (the cache key's second part)
        self._extras: dict[tuple, Callable[[Mapping], object]] = {}

    def register(self, backend: str, fn: Callable, supports: Supports = _always,
                 configs: list[dict] | None = None, prepare: Callable | None = None) -> None:
        if backend not in _STATUS_PROBES:
            raise ValueError(f"{self.name}: unknown backend {backend!r}")
        self.impls[backend] = Impl(backend, fn, supports, configs or [{}], prepare)
        plans.invalidate()

    def env_request(self) -> tuple[str | None, str]:
        for name in self._env_vars:
            value = env(name)
            if value:
                return value.strip().lower(), f"{name}="
        return None, ""

    def usable(self, backend: str, call: Mapping[str, Any]) -> tuple[bool, str]:
        """Can ``backend`` serve ``call`` here? ``(ok, reason)``."""
        impl = self.impls.get(backend)
        if impl is None:
            return False, f"{self.name} has no {backend!r} backend (it has: {', '.join(self.impls)})"
        ok, reason = backend_status(backend)
        if not ok:
            return False, reason
        ok, reason = _device_ok(backend, call.get("device"))
        if not ok:
            return False, reason
        return impl.supports(call)

    def select(self, call: Mapping[str, Any], backend: str | None = None) -> Choice:
        """Pick the implementation for ``call``; raise if an explicit request cannot run."""
        requested, where = (backend.lower(), "backend=") if backend not in AUTOMATIC else self.env_request()
        if requested == "auto":
            requested = None
        # The other keys' values in the caller's order, through a getter made once per set of key names.
        names = tuple(call)
        extras = self._extras.get(names)
        if extras is None:
            extras = self._extras[names] = _getter([k for k in names if k not in self.shape_keys])
        key = (self.bucket(call), names, extras(call))
        choice = self._cache.get((requested, where, key))
        if choice is None:
            if requested is None:
                choice = self._automatic(call, key)
            else:
                choice = self._explicit(call, requested, "argument" if where == "backend=" else "environment", where)
            self._cache[(requested, where, key)] = choice
        if plans.ACTIVE is not None and choice.impl.backend != "triton":
            plans.ACTIVE.refuse(f"{self.name} chose the {choice.impl.backend} backend, whose launches a plan "
                                "cannot hold")
        return choice

    def _explicit(self, call, backend: str, how: str, where: str) -> Choice:
        ok, reason = self.usable(backend, call)
        if not ok:
            raise BackendUnavailableError(
                f"{self.name}: {where}{backend!r} was requested but cannot run here: {reason}")
        from .tuned import lookup

        # the tuned config, if the row is for this backend
        row = lookup(self.name, call, self.shape_keys, self.exact_keys)
        return Choice(self.impls[backend], row.config if row and row.backend == backend else {}, how)

    def _automatic(self, call, key) -> Choice:
        from .tuned import lookup  # deferred: the CSV is read on the first automatic choice only

        rejected = []
        row = lookup(self.name, call, self.shape_keys, self.exact_keys)
        if row is not None:
            ok, reason = self.usable(row.backend, call)
            if ok:
                choice = Choice(self.impls[row.backend], row.config, "tuned")
                self._log(key, choice, f"tuned row ({row.source})")
                return choice
            log_once(("stale", self.name, key), f"{self.name}: tuned row names {row.backend!r}, which "
                     f"cannot run here ({reason}); falling through to priority order", level=30)
        for name in BACKEND_NAMES:
            if name not in self.impls or name == "torch":
                continue
            ok, reason = self.usable(name, call)
            if ok:
                choice = Choice(self.impls[name], {}, "priority")
                self._log(key, choice, "priority; passed over: " + ("; ".join(rejected) or "none"))
                return choice
            rejected.append(f"{name} ({reason})")
        if "torch" in self.impls:
            choice = Choice(self.impls["torch"], {}, "priority")
            self._log(key, choice, "no kernel backend can run here: " + "; ".join(rejected))
            return choice
        raise BackendUnavailableError(f"{self.name}: no backend can run this call: " + "; ".join(rejected))

    def _log(self, key, choice: Choice, why: str) -> None:
        log_once(("choice", self.name, key), f"{self.name} {key[0]}: backend {choice.impl.backend} "
                 f"config {choice.config or 'default'} ({why})")

    def clear_cache(self) -> None:
        self._cache.clear()
        plans.invalidate()  # the call plans were made under the cached choices


def _getter(keys: list) -> Callable[[Mapping], object]:
    """``call -> the values of keys`` (a value, or a tuple of them), at C speed; the cache key carries the
    names beside it."""
    return operator.itemgetter(*keys) if keys else (lambda call: ())


#: Every op, by name, for the CLI (info, tune, gap) and the tests.
OPS: dict[str, Op] = {}


def define_op(name: str, shape_keys: tuple[str, ...], bucket: Callable[[Mapping], tuple],
              exact_keys: tuple[str, ...] = ()) -> Op:
    op = OPS[name] = Op(name, shape_keys, bucket, exact_keys)
    return op


def pow2_bucket(n: int) -> int:
    """Round a size up to a power of two: the shape bucket used for tuned-CSV misses and caching."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()
