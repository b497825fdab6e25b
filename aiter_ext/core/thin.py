"""The thin launch path: ``kernel[grid](...)`` through one C call instead of Triton's launcher.

Triton's ``JITFunction.run`` binds and specialises every argument in Python on each call. On the lent
H100's host that was most of an eager call (issue 18: 100-130 us per attention launch, 45 us for an
rmsnorm whose kernel takes 2). :func:`thin` wraps a ``@triton.jit`` kernel so that a call site keeps its
form, ``kernel[grid](*args, **constexprs)``, and:

- the first call of a *launch signature* (the constexpr values, and per runtime argument its dtype and
  Triton's specialisation classes: 16-byte alignment of a pointer, an int's width and divisibility by 16;
  and each tensor's device, since a kernel's handle belongs to one device's context)
  takes a code object from ``hsa/`` that fits it (``core/objects.py``: no Triton compile), or else asks
  Triton for the compiled kernel (``warmup``: Triton specialises and compiles, or loads its cache, exactly
  as its own launch would), and records the kernel's handle, its parameter kinds and launch sizes;
- every later call computes that signature (in C), finds the record and launches through
  ``csrc/ck_kernels/launch.cpp`` (``cuLaunchKernel`` / ``hipModuleLaunchKernel``) on torch's current
  stream. A kernel from Triton is Triton's own object, so results are the same bit for bit (checked on an
  H100 for eight ops, and for a code object built there).

Triton's launcher is used instead (logged once per kernel and reason) where the thin path cannot serve a
call: the interpreter, a grid given as a function, a kernel that needs scratch memory, an argument kind it
does not pack, or a tensor on another device than the current one. ``AITER_EXT_LAUNCH`` (read at import;
:func:`set_mode` in tests and benchmarks) picks the path: ``triton`` turns the thin path off, ``asm`` allows
code objects only. Graph capture works: a launch reads no device data and allocates nothing.
"""

from __future__ import annotations

import functools
import inspect
import importlib.machinery
import importlib.util
import sysconfig
from dataclasses import dataclass
from typing import Any, Optional

import torch

from . import lazy_triton, object_check, objects, plans
from .env import env, interpreted
from .launch import current_stream
from .log import log_once

#: AITER_EXT_LAUNCH, read once here since it is a per-process choice: "thin" (default: a code object from
#: hsa/ where one fits, else Triton's compile, launched thin), "asm" (code objects only: a launch with none
#: raises) or "triton" (Triton's own launcher).
MODES = ("thin", "asm", "triton")
_MODE = env("AITER_EXT_LAUNCH") or "thin"
if _MODE not in MODES:
    raise ValueError(f"AITER_EXT_LAUNCH must be one of {MODES}, got {_MODE!r}")

#: AITER_EXT_OBJECT_CHECK (object_check.py): each launch a code object serves is compared with Triton's compile
_CHECK_OBJECTS = object_check.ENABLED

#: The pointers a launch passes after the kernel's own parameters: Triton 3.3+ appends a global-scratch
#: pointer, 3.5+ also a profile-scratch one (both unused here, so NULL). Two are passed whatever the version
#: or the object: the driver reads only the parameters the kernel declares.
_SCRATCH = (0, 0)

#: Triton parameter types -> the launcher's letter (ints narrower than 32 bits travel in a 32-bit slot:
#: the driver copies the parameter's own size from its little-endian start).
_PARAM_KIND = {"i1": "i", "i8": "i", "i16": "i", "i32": "i", "u1": "i", "u8": "i", "u16": "i", "u32": "i",
               "i64": "l", "u64": "l", "fp32": "f", "f32": "f"}


def set_mode(mode: str) -> str:
    """Switch the launch path for this process (one of MODES); returns the previous mode. For tests and
    benchmarks that compare the paths."""
    global _MODE
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    previous, _MODE = _MODE, mode
    plans.invalidate()
    return previous


def mode() -> str:
    return _MODE


# --------------------------------------------------------------------------------------------------
# The C launcher, built on first use by the compile_ops machinery (a host-only module).


@functools.cache
def native():
    """The ``aiter_ext_launch`` extension, built for this Python on first use (not yet opened on a driver:
    ``signature`` works anywhere, for tests)."""
    from .jit import build_module

    include = sysconfig.get_paths()["include"]
    path = build_module("module_launch", extra_flags=(f"-I{include}",))
    loader = importlib.machinery.ExtensionFileLoader("aiter_ext_launch", str(path))
    spec = importlib.util.spec_from_file_location("aiter_ext_launch", str(path), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@functools.cache
def launcher():
    """:func:`native`, opened on this GPU's driver (CUDA or HIP)."""
    module = native()
    module.init("hip" if torch.version.hip else "cuda")
    return module


# --------------------------------------------------------------------------------------------------
# Launch signatures.


def signature_of(args) -> bytes:
    """What Triton specialises a compiled kernel on, per runtime argument (``launch.cpp``'s ``signature``:
    a tensor's dtype and 16-byte alignment, an int's width, divisibility by 16 and whether it is 1, the
    kind of a float, bool or None). Finer than Triton's own key where unsure, never coarser, so that one
    record never serves a call that Triton would compile differently."""
    return native().signature(*args)


@dataclass(frozen=True)
class _Layout:
    """How one call form (number of positional arguments, keyword names) maps to the kernel's parameters."""

    runtime_positional: Optional[tuple[int, ...]]  # None: every positional argument is a runtime one
    runtime_keywords: tuple[str, ...]  # runtime parameters passed by keyword, in parameter order
    constexpr_keywords: tuple[str, ...]  # the rest (constexprs and launch options), in call order
    constexpr_positional: tuple[int, ...] = ()  # constexprs passed by position

    @property
    def simple(self) -> bool:
        """Runtime arguments all positional, constexprs and options all by keyword: every call site today."""
        return self.runtime_positional is None and not self.runtime_keywords


@dataclass(frozen=True)
class _Record:
    function: int
    threads: int
    shared: int
    fmt: bytes
    trailing: tuple  # NULL scratch pointers Triton's kernels take after their own parameters
    device: int
    keep: Optional[tuple[int, ...]]  # the runtime arguments passed at launch (None: all of them)
    source: Optional[str] = None  # the code object's file name, for one from hsa/ (None: Triton's compile)


class ThinKernel:
    """A ``@triton.jit`` kernel launched through the thin path (module docstring). ``fn`` is the kernel
    (what the AMD compile check and Triton's own launcher use)."""

    def __init__(self, fn):
        self._kernel = fn  # a LazyKernel until something needs Triton (core/lazy_triton.py)
        self.__name__ = getattr(fn, "__name__", "kernel")
        self.__doc__ = getattr(fn, "__doc__", None)
        params = getattr(fn, "params", None)
        if not params and inspect.isfunction(getattr(fn, "fn", None)):
            # Triton's interpreter object (a kernel module imported after Triton was loaded under TRITON_INTERPRET)
            # has no params: read them off its Python function, as lazy_triton does before Triton loads
            params = lazy_triton.kernel_params(fn.fn)
        self._params = list(params) if params else []
        self._names = [p.name for p in self._params]
        self._constexpr = {p.name for p in self._params if p.is_constexpr}
        self._kernel_id: Optional[str] = None  # the manifests' name of the kernel, at the first lookup
        self._layouts: dict = {}
        self._records: dict = {}

    @property
    def fn(self):
        """The kernel itself (Triton's JITFunction, or its interpreter's object): what Triton's own launcher,
        its compile and the AMD compile check use. Loads Triton if nothing has yet."""
        if isinstance(self._kernel, lazy_triton.LazyKernel):
            self._kernel = self._kernel.jit_function()
        return self._kernel

    def __getitem__(self, grid):
        if _MODE == "triton" or interpreted() or not self._names or callable(grid) or not native_ready():
            return self.fn[grid]
        return functools.partial(self._launch, grid)

    def __getattr__(self, name):  # warmup, cache_key, params, ...: the kernel's own
        if name.startswith("_"):  # own attributes not set yet (copies, pickling): never the kernel's
            raise AttributeError(name)
        return getattr(self.fn, name)

    # -- per call ------------------------------------------------------------------------------------

    def _launch(self, grid, *args, **kwargs):
        form = (len(args), tuple(kwargs))
        layout = self._layouts.get(form)
        if layout is None:
            layout = self._layout(*form)
        if layout.simple:
            runtime, consts = args, tuple(kwargs.values())
        else:
            picked = args if layout.runtime_positional is None else [args[i] for i in layout.runtime_positional]
            runtime = (*picked, *(kwargs[k] for k in layout.runtime_keywords))
            consts = (*(kwargs[k] for k in layout.constexpr_keywords), *(args[i] for i in layout.constexpr_positional))
        # the call form keys too: the constexpr values alone do not say which parameters they are
        key = (form, consts, _SIGNATURE(*runtime))
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = self._record(grid, args, kwargs, runtime)
        if record is False:
            return self.fn[grid](*args, **kwargs)
        if record.keep is not None:
            runtime = [runtime[i] for i in record.keep]
        gx = grid[0]
        gy = grid[1] if len(grid) > 1 else 1
        gz = grid[2] if len(grid) > 2 else 1
        if plans.ACTIVE is not None:
            plans.ACTIVE.launch(record, (gx, gy, gz), runtime)
        if _CHECK_OBJECTS and record.source is not None:
            object_check.launch_checked(
                self.__name__, (id(self), key), record.source,
                lambda: launcher().launch(record.function, gx, gy, gz, record.threads, record.shared,
                                          current_stream(record.device), record.fmt, *runtime, *record.trailing),
                lambda: self.fn[grid](*args, **kwargs), args, kwargs)
            return
        launcher().launch(record.function, gx, gy, gz, record.threads, record.shared, current_stream(record.device),
                          record.fmt, *runtime, *record.trailing)

    # -- once per call form / launch signature --------------------------------------------------------

    def _layout(self, num_positional: int, keywords: tuple[str, ...]) -> _Layout:
        runtime_positional = tuple(i for i in range(num_positional) if self._names[i] not in self._constexpr)
        runtime_keywords = tuple(n for n in self._names if n in keywords and n not in self._constexpr)
        layout = _Layout(None if len(runtime_positional) == num_positional else runtime_positional,
                         runtime_keywords, tuple(k for k in keywords if k not in runtime_keywords),
                         tuple(i for i in range(num_positional) if self._names[i] in self._constexpr))
        self._layouts[(num_positional, keywords)] = layout
        return layout

    def _refuse(self, reason: str) -> bool:
        log_once(f"thin-launch:{self.__name__}:{reason}",
                 f"{self.__name__}: Triton's launcher, not the thin path: {reason}")
        return False

    def _record(self, grid, args, kwargs, runtime):
        """Compile (or find) the kernel this launch signature runs, through Triton, and describe its launch."""
        if not all(a is None or isinstance(a, (torch.Tensor, int, float)) for a in runtime):
            return self._refuse("an argument of a kind the launcher does not pack")
        tensors = [a for a in runtime if isinstance(a, torch.Tensor)]
        if not tensors or tensors[0].device.type != "cuda":
            return self._refuse("no GPU tensor among the arguments")
        device = tensors[0].device.index
        if device != torch.cuda.current_device() or any(t.device != tensors[0].device for t in tensors):
            return self._refuse("tensors on a device other than the current one")
        names = self._runtime_names(len(args), kwargs)
        if len(names) != len(runtime):
            return self._refuse(f"{len(names)} runtime parameter names for {len(runtime)} arguments")
        record = self._object_record(args, kwargs, names, runtime, device)
        if _CHECK_OBJECTS:
            object_check.note_signature(self.__name__, record)
        if record is not None or _MODE == "asm":
            if record is None:
                raise RuntimeError(f"{self.__name__}: AITER_EXT_LAUNCH=asm, but no code object in "
                                   f"{[str(r) for r in objects.object_roots()]} fits this launch (build them with "
                                   f"`aiter-ext aot --build`); its constexprs and options: {kwargs}")
            return record
        grid = tuple(grid)
        compiled = self.fn.warmup(*args, grid=grid, **kwargs)
        compiled._init_handles()
        meta = compiled.metadata
        if getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0):
            return self._refuse("the kernel needs scratch memory")
        if getattr(meta, "num_ctas", 1) != 1 or tuple(getattr(meta, "cluster_dims", (1, 1, 1)) or (1,)) not in (
                (1, 1, 1), (1,), ()):
            return self._refuse("a thread-block cluster launch")
        if getattr(meta, "launch_cooperative_grid", False) or getattr(meta, "launch_pdl", False):
            return self._refuse("a cooperative or PDL launch")
        # Triton folds some runtime arguments into the compiled kernel as constants (an int equal to 1, None):
        # those are not passed at launch. The launch signature tells them apart, so the record says which.
        kinds, keep = [], []
        for i, name in enumerate(names):
            ty = compiled.src.signature.get(name)
            if ty == "constexpr":
                continue
            kind = None if ty is None else "p" if ty.startswith("*") else _PARAM_KIND.get(ty)
            if kind is None:
                return self._refuse(f"parameter {name} of type {ty}")
            kinds.append(kind)
            keep.append(i)
        warp = getattr(meta, "warp_size", 64 if torch.version.hip else 32)
        record = _Record(int(compiled.function), meta.num_warps * warp, meta.shared,
                         ("".join(kinds) + "p" * len(_SCRATCH)).encode(), _SCRATCH, device,
                         None if len(keep) == len(runtime) else tuple(keep))
        launcher()  # built and opened before the first launch, so that a build failure says so here
        return record


    def object_key(self, args, kwargs) -> Optional[tuple[str, dict, dict, dict, set]]:
        """What core/objects.find matches a code object on for the launch ``self[grid](*args, **kwargs)``:
        ``(kernel id, constexprs, options, signature, divisible)``, or None where no object could serve it (an
        argument Triton would fold, such as None). For tests that check a launch against the registered specs."""
        names = self._runtime_names(len(args), kwargs)
        runtime = [a for n, a in zip(self._names, args) if n not in self._constexpr]
        runtime += [kwargs[n] for n in self._names if n in kwargs and n not in self._constexpr]
        key = self._launch_key(args, kwargs, names, runtime)
        return None if key is None else (objects.kernel_id(self._kernel), *key)

    def _runtime_names(self, num_positional: int, kwargs) -> list[str]:
        """The runtime (not constexpr) parameters a call passes, in the order _launch packs them: positional ones,
        then keywords in parameter order."""
        names = [n for n in self._names[:num_positional] if n not in self._constexpr]
        return names + [n for n in self._names if n in kwargs and n not in self._constexpr]

    def _launch_key(self, args, kwargs, names, runtime) -> Optional[tuple[dict, dict, dict, set]]:
        """(constexprs, options, signature, divisible) of a launch, as objects.find takes them; None for an
        argument no object is built for."""
        constexprs = {}
        for i, p in enumerate(self._params):
            if p.is_constexpr:
                constexprs[p.name] = kwargs[p.name] if p.name in kwargs else args[i] if i < len(args) else p.default
        options = {k: v for k, v in kwargs.items() if k not in self._names}
        signature, divisible = {}, set()
        for name, a in zip(names, runtime):
            if isinstance(a, torch.Tensor):
                if a.dtype not in objects.TRITON_DTYPES:
                    return None
                signature[name] = "*" + objects.TRITON_DTYPES[a.dtype]
                divisible |= {name} if a.data_ptr() % 16 == 0 else set()
            elif isinstance(a, bool):
                signature[name] = "i1"
            elif isinstance(a, int):
                signature[name] = "i32" if -2 ** 31 <= a < 2 ** 31 else "i64"
                divisible |= {name} if a % 16 == 0 else set()
            elif isinstance(a, float):
                signature[name] = "fp32"
            else:  # None: Triton would fold it; no object is built that way
                return None
        return constexprs, options, signature, divisible

    def _object_record(self, args, kwargs, names, runtime, device) -> Optional[_Record]:
        """A record for a code object from hsa/ (core/objects.py) that fits this launch, or None."""
        key = self._launch_key(args, kwargs, names, runtime)
        if key is None:
            return None
        constexprs, options, signature, divisible = key
        from .arch import get_arch

        if self._kernel_id is None:
            self._kernel_id = objects.kernel_id(self._kernel)  # a deferred kernel names itself without Triton
        row = objects.find(get_arch(), self._kernel_id, constexprs, options, signature, divisible)
        if row is None and _CHECK_OBJECTS and object_check.BUILD:  # the check's own object for this launch
            row = object_check.build_for_launch(self.fn, self.__name__, get_arch(), constexprs, options, signature,
                                                divisible)
        if row is None:
            return None
        if "image" in row:
            image = row["image"]
        else:
            with open(row["path"], "rb") as f:
                image = f.read()
        shared = int(row["lds_bytes"] or 0)
        function = launcher().load(image, row["knl_name"], shared, device)
        kinds = ["p" if t.startswith("*") else _PARAM_KIND[t] for t in signature.values()]  # parameter order
        warp = 64 if torch.version.hip else 32
        return _Record(function, int(row["num_warps"]) * warp, shared, ("".join(kinds) + "p" * len(_SCRATCH)).encode(),
                       _SCRATCH, device, None, row["co_name"])


#: native().signature once the extension is built (module-level, so the per-call path reads one global)
_SIGNATURE = None


def native_ready() -> bool:
    """Build and load the extension on the first thin launch; without it (no compiler, no Python headers)
    Triton's launcher serves every call, as logged."""
    global _SIGNATURE
    if _SIGNATURE is None:
        try:
            _SIGNATURE = native().signature
        except Exception as exc:  # noqa: BLE001 - any build or load failure means: use Triton's launcher
            log_once("thin-launch:native", f"the thin launch path is off: its C extension did not build ({exc})")
            _SIGNATURE = False
    return _SIGNATURE is not False


def thin(fn) -> ThinKernel:
    """Wrap a ``@triton.jit`` kernel for the thin launch path (module docstring)."""
    return ThinKernel(fn)


def records_of(kernel: ThinKernel) -> dict[Any, Any]:
    """The launch records made so far (tests)."""
    return kernel._records
