"""``compile_ops``: bind a typed Python stub to an ``extern "C"`` function of a JIT-built C++ module.

    @compile_ops("module_merge_state")
    def merge_state_pair(v_a: Tensor, ..., mask: Optional[Tensor], num_tokens: int, ...) -> None: ...

The first call builds the module from ``csrc/ck_kernels`` (declarative spec in ``modules.json``) into a
per-version, per-arch cache and loads it with ctypes: no torch headers, so builds take seconds. Later
calls only turn tensors into pointers and call C: no allocation, no host sync, graph capture works.
C side contract: every export returns ``int`` (0 = ok); ``AITER_EXT_DEFINE_ERROR_STRING()`` (from
``include/aiter_ext_host.h``) gives the message for a non-zero code; device modules take the current
stream as a last ``void*``. Environment: ``AITER_EXT_JIT_DIR`` (default ``~/.cache/aiter_ext/jit``),
``AITER_EXT_REBUILD=1``, compilers ``AITER_EXT_NVCC``/``CUDA_HOME``, ``AITER_EXT_HIPCC``/``ROCM_PATH``,
``AITER_EXT_CXX``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from aiter_ext._version import __version__
from aiter_ext.core import arch as _arch
from aiter_ext.core.launch import current_stream

__all__ = ["JitBuildError", "compile_ops", "build_module", "module_status", "jit_dir"]

logger = logging.getLogger("aiter_ext.jit")

# Part of every cache key: bump it when the way modules are built or called changes.
_BUILD_ABI = "1"
_SPEC_KEYS = {"srcs", "device", "flags", "includes", "description"}
# Type hint -> ctypes type of the C parameter. torch.Tensor (or Optional[torch.Tensor]) is a void*.
_SCALARS = {int: ctypes.c_int64, float: ctypes.c_float, bool: ctypes.c_int}


class JitBuildError(RuntimeError):
    """A module cannot be built here (no GPU, no compiler, bad spec), or its compile failed."""


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    srcs: tuple[str, ...]
    device: bool
    flags: tuple[str, ...] = ()
    includes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Plan:
    spec: ModuleSpec
    arch: str
    compiler: str
    cmd: tuple[str, ...]  # the full command line except "-o <output>"
    lib: Path


def _csrc() -> Path:
    # Read at call time, not import time, so tests (and AITER_EXT_ROOT users) can point elsewhere.
    return Path(_arch.REPO_ROOT) / "csrc" / "ck_kernels"


def jit_dir(arch: Optional[str] = None) -> Path:
    """Where libraries built for ``arch`` (default: this device) are cached."""
    root = os.environ.get("AITER_EXT_JIT_DIR") or Path.home() / ".cache" / "aiter_ext" / "jit"
    return Path(root) / __version__ / (arch or _arch.device_info().arch)


def _load_spec(name: str) -> ModuleSpec:
    path = _csrc() / "modules.json"
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        raise JitBuildError(f"aiter_ext's C++ sources are missing: {path} does not exist. The wheel ships them "
                            "under aiter_ext/_data/csrc; reinstall aiter-ext or set AITER_EXT_ROOT to a checkout") from None
    if name not in table:
        raise JitBuildError(f"unknown module {name!r}: {path} defines {', '.join(sorted(table))}")
    entry = table[name]
    str_list = lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)
    if (set(entry) - _SPEC_KEYS or not entry.get("srcs") or not isinstance(entry.get("device"), bool)
            or not all(str_list(entry.get(k, [])) for k in ("srcs", "flags", "includes"))):
        raise JitBuildError(f"{path}: bad spec for {name}: allowed keys are {sorted(_SPEC_KEYS)}; 'srcs' is a "
                            "non-empty list of strings, 'device' a bool, 'flags' and 'includes' lists of strings")
    return ModuleSpec(name, tuple(entry["srcs"]), entry["device"], tuple(entry.get("flags", ())),
                      tuple(entry.get("includes", ())))


def _find_compiler(module: str, what: str, env_var: str, home_var: Optional[str], exe: str) -> str:
    explicit = os.environ.get(env_var)
    if explicit:  # an explicit choice is used or reported, never silently replaced by another compiler
        found = shutil.which(explicit)
        if found is None:
            raise JitBuildError(f"{module} needs {what}, but {env_var}={explicit} is not an executable; point "
                                f"{env_var} at a working {exe}")
        return found
    home = os.environ.get(home_var) if home_var else None
    found = (shutil.which(os.path.join(home, "bin", exe)) if home else None) or shutil.which(exe)
    if found is None:
        looked = f"${home_var}/bin ({home_var}={home or 'unset'}) and PATH" if home_var else "PATH"
        raise JitBuildError(f"{module} needs {what} ({exe}), not found in {looked}; set {env_var}=/path/to/{exe}"
                            + (f" or {home_var}" if home_var else ""))
    return found


def _toolchain(spec: ModuleSpec, arch: Optional[str]) -> tuple[str, str, list[str]]:
    """(target arch, compiler, base flags), or JitBuildError saying why this module cannot be built."""
    if not spec.device:
        cxx = _find_compiler(spec.name, "a host C++ compiler", "AITER_EXT_CXX", None, "c++")
        return arch or _arch.device_info().arch, cxx, ["-O3", "-shared", "-fPIC", "-std=c++17"]
    if arch is None:  # JIT for this process: build for the GPU we run on
        info = _arch.device_info()
        if not info.is_gpu:
            raise JitBuildError(
                f"{spec.name} is GPU code (built by nvcc on CUDA, hipcc on ROCm) and no GPU is visible to torch "
                f"(torch.cuda.is_available() is False), so it cannot be built or run here; to only compile it, "
                f"call build_module({spec.name!r}, arch='sm_90' or 'gfx942')")
        arch = info.arch
    if m := re.fullmatch(r"sm_(\d+[a-z]?)", arch):
        nvcc = _find_compiler(spec.name, "the CUDA compiler", "AITER_EXT_NVCC", "CUDA_HOME", "nvcc")
        return arch, nvcc, ["-O3", "-shared", "-Xcompiler", "-fPIC", "-std=c++17",
                            "-gencode", f"arch=compute_{m[1]},code=sm_{m[1]}"]
    if re.fullmatch(r"gfx[0-9a-f]+", arch):
        hipcc = _find_compiler(spec.name, "the HIP compiler", "AITER_EXT_HIPCC", "ROCM_PATH", "hipcc")
        return arch, hipcc, ["-O3", "-shared", "-fPIC", "-std=c++17", "-x", "hip", f"--offload-arch={arch}"]
    raise JitBuildError(f"{spec.name}: cannot build GPU code for arch {arch!r} (expected sm_XY or gfxNNN)")


def _plan(module_name: str, arch: Optional[str] = None, extra_flags: Sequence[str] = ()) -> _Plan:
    spec = _load_spec(module_name)
    root = _csrc()
    srcs = [root / s for s in spec.srcs]
    missing = [str(p) for p in srcs if not p.is_file()]
    if missing:
        raise JitBuildError(f"{module_name}: source files missing: {', '.join(missing)}")
    arch, compiler, base = _toolchain(spec, arch)
    include_dirs = [root / "include", *(root / d for d in spec.includes)]
    flags = [*base, *spec.flags, *extra_flags, *(f"-I{d}" for d in include_dirs)]

    # The key covers everything the library depends on: sources, every header it could include,
    # flags and the compiler (its mtime too, so an upgrade in place rebuilds).
    h = hashlib.sha256(f"{_BUILD_ABI}\0{os.path.realpath(compiler)}\0{os.stat(compiler).st_mtime_ns}".encode())
    h.update("\0".join([*base, *spec.flags, *extra_flags, *spec.includes]).encode())
    headers = sorted({p for d in include_dirs if d.is_dir() for p in d.rglob("*") if p.is_file()})
    for path in [*srcs, *headers]:
        h.update(f"\0{path.relative_to(root)}\0".encode())
        h.update(path.read_bytes())
    lib = jit_dir(arch) / f"{module_name}-{h.hexdigest()[:16]}.so"
    return _Plan(spec, arch, compiler, (compiler, *flags, *map(str, srcs)), lib)


@contextlib.contextmanager
def _locked(path: Path, module_name: str):
    # flock is released by the kernel if the holder dies, so a crashed build never wedges the cache.
    # The lock file itself is never deleted: deleting it would let two processes hold two locks.
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process building %s (%s)", module_name, path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _stat(path: Path):
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _build(plan: _Plan) -> Path:
    lib, name = plan.lib, plan.spec.name
    rebuild = os.environ.get("AITER_EXT_REBUILD", "0") not in ("", "0")
    seen = _stat(lib)
    if seen and not rebuild:
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with _locked(lib.parent / f"{name}.lock", name):
        now = _stat(lib)
        # Someone built it while we waited for the lock (even under AITER_EXT_REBUILD): reuse it.
        if now and (not rebuild or now != seen):
            return lib
        # We hold this module's lock, so any temp file of it is left over from a killed build.
        for stale in lib.parent.glob(f".{name}-*.tmp.so"):
            stale.unlink(missing_ok=True)
        tmp = lib.parent / f".{lib.stem}.{os.getpid()}.tmp.so"
        cmd = [*plan.cmd, "-o", str(tmp)]
        logger.info("building %s for %s: %s", name, plan.arch, shlex.join(cmd))
        start = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=_csrc())
            if proc.returncode != 0 or not tmp.is_file():
                out = (proc.stderr + proc.stdout).strip()
                raise JitBuildError(f"building {name} failed (exit {proc.returncode}):\n  {shlex.join(cmd)}\n"
                                    f"{out[-20000:]}")
            # Same directory, so the rename is atomic: readers see no library or the finished one.
            os.replace(tmp, lib)
        finally:
            tmp.unlink(missing_ok=True)
    logger.info("built %s in %.1f s: %s", name, time.monotonic() - start, lib)
    return lib


def build_module(module_name: str, arch: Optional[str] = None, extra_flags: Sequence[str] = ()) -> Path:
    """Build ``module_name`` (or reuse the cached build) and return the library's path; loads nothing.

    ``arch`` (``sm_90``, ``gfx942``) compiles for that target instead of this device, which needs no GPU:
    CI and ahead-of-time builds use it. ``extra_flags`` are appended to the spec's flags (and keyed).
    """
    return _build(_plan(module_name, arch, tuple(extra_flags)))


def module_status(module_name: str) -> tuple[bool, str]:
    """Whether ``module_name`` could be built and run here, and why not; builds nothing."""
    if module_name in _libs:
        return True, f"{module_name} is loaded"
    try:
        plan = _plan(module_name)
    except (JitBuildError, OSError) as e:
        return False, str(e)
    state = "built" if plan.lib.is_file() else "not built yet"
    return True, f"{module_name} for {plan.arch} with {plan.compiler} ({state}: {plan.lib})"


# -- loading and binding ---------------------------------------------------------------------------

_libs: dict[str, tuple[ctypes.CDLL, bool]] = {}  # module name -> (library, is device code)
_load_lock = threading.Lock()


def _load(module_name: str) -> tuple[ctypes.CDLL, bool]:
    with _load_lock:  # one build and one dlopen per module per process, whichever thread comes first
        if module_name not in _libs:
            plan = _plan(module_name)
            lib = ctypes.CDLL(str(_build(plan)))
            try:
                err = lib.aiter_ext_error_string
            except AttributeError:
                raise JitBuildError(f"{module_name} does not export aiter_ext_error_string: put "
                                    "AITER_EXT_DEFINE_ERROR_STRING() in one of its sources") from None
            err.argtypes, err.restype = [ctypes.c_int], ctypes.c_char_p
            _libs[module_name] = (lib, plan.spec.device)
        return _libs[module_name]


def _param_types(stub: Callable) -> tuple[inspect.Signature, list, list[tuple[int, bool]]]:
    """ctypes argtypes from the stub's hints, and the (index, optional) of each tensor parameter."""
    where = f"compile_ops stub {stub.__module__}.{stub.__qualname__}"
    try:
        hints = typing.get_type_hints(stub)
    except Exception as e:
        raise TypeError(f"{where}: cannot resolve its type hints: {e}") from e
    sig = inspect.signature(stub)
    argtypes, tensors = [], []
    for i, (pname, param) in enumerate(sig.parameters.items()):
        if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            raise TypeError(f"{where}: parameter {pname!r} must be positional (no *args, **kwargs or keyword-only)")
        hint = hints.get(pname, inspect.Parameter.empty)
        is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        if hint is torch.Tensor or (is_union and set(typing.get_args(hint)) == {torch.Tensor, type(None)}):
            tensors.append((i, hint is not torch.Tensor))
            argtypes.append(ctypes.c_void_p)
        elif isinstance(hint, type) and hint in _SCALARS:
            argtypes.append(_SCALARS[hint])
        else:
            shown = "no annotation" if hint is inspect.Parameter.empty else f"annotation {hint!r}"
            raise TypeError(f"{where}: parameter {pname!r} has {shown}; supported are torch.Tensor, "
                            "Optional[torch.Tensor], int (int64_t), float (float) and bool (int)")
    if hints.get("return", None) not in (None, type(None)):
        raise TypeError(f"{where}: must return None (the C function's int status becomes an exception)")
    return sig, argtypes, tensors


def compile_ops(module_name: str, fc_name: Optional[str] = None) -> Callable[[Callable], Callable]:
    """Bind the decorated stub to ``fc_name`` (default: the stub's name) in module ``module_name``.

    Hints map to C parameters: ``torch.Tensor`` -> ``void*`` (its ``data_ptr()``; ``Optional`` allows
    None -> NULL), ``int`` -> ``int64_t``, ``float`` -> ``float``, ``bool`` -> ``int``. Device modules
    take the current stream as a last ``gpuStream_t``. A non-zero return raises ``RuntimeError``.
    Hints are checked here, at decoration; the module is built and loaded on the first call.
    """

    def decorate(stub: Callable) -> Callable:
        sig, argtypes, tensors = _param_types(stub)
        name = fc_name or stub.__name__
        pnames = list(sig.parameters)
        nparams = len(pnames)
        bound: list = []  # [c function, error-string function, is device], filled on first call

        def resolve() -> list:
            lib, device = _load(module_name)
            try:
                fn = getattr(lib, name)
            except AttributeError:
                raise JitBuildError(f"{module_name} has no exported function {name!r} (extern \"C\")") from None
            fn.argtypes = argtypes + [ctypes.c_void_p] * device
            fn.restype = ctypes.c_int
            bound[:] = [fn, lib.aiter_ext_error_string, device]
            return bound

        @functools.wraps(stub)
        def call(*args, **kwargs):
            fn, err, device = bound or resolve()
            if kwargs or len(args) != nparams:
                ba = sig.bind(*args, **kwargs)
                ba.apply_defaults()
                args = ba.args
            cargs = list(args)
            dev = None
            for i, optional in tensors:
                t = cargs[i]
                if t is None and optional:
                    continue
                if not isinstance(t, torch.Tensor):
                    raise TypeError(f"{name}: {pnames[i]} must be a torch.Tensor, got {type(t).__name__}")
                if device:
                    if not t.is_cuda:
                        raise ValueError(f"{name}: {pnames[i]} must be on the GPU, got {t.device}")
                    if dev is None:
                        dev = t.get_device()
                    elif t.get_device() != dev:
                        raise ValueError(f"{name}: all tensors must be on one GPU, {pnames[i]} is on {t.device}")
                elif not t.is_cpu:
                    raise ValueError(f"{name}: {pnames[i]} must be a CPU tensor (host module), got {t.device}")
                cargs[i] = t.data_ptr()
            if not device:
                rc = fn(*cargs)
            elif dev is None or dev == torch.cuda.current_device():
                rc = fn(*cargs, current_stream(torch.cuda.current_device()))
            else:  # the tensors live on another GPU: launch there, on its current stream
                with torch.cuda.device(dev):
                    rc = fn(*cargs, current_stream(dev))
            if rc != 0:
                msg = err(rc)
                raise RuntimeError(f"{module_name}.{name} failed (code {rc}): "
                                   f"{msg.decode(errors='replace') if msg else 'no message'}")

        call.module_name, call.fc_name = module_name, name
        return call

    return decorate
