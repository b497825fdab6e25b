"""``AITER_EXT_OBJECT_CHECK``: every launch a code object serves, checked against Triton's own compile.

Issue 18 asks that the ``asm`` path (objects from ``hsa/``) give the same results as the Triton JIT, bit
for bit, on every op test that runs on the GPU. An object is found by a launch's signature
(``objects.find``), and may assume less alignment than the launch gives, so "same source, same config"
does not by itself make it the kernel Triton would compile for that launch. This module checks what
matters, the bytes a launch writes:

- the launch's tensor arguments are copied; the object's launch runs; what every tensor holds then is
  kept; the tensors are restored from the copies (in-place kernels read what they write) and the same call
  runs through Triton's own launcher (its JIT compile for exactly this launch); every tensor argument is
  compared byte for byte with what the object left;
- a difference raises at once, naming the kernel, the object and the argument; but first Triton's launch
  is repeated from the same inputs: a kernel whose own two runs differ (float atomics) is counted as
  nondeterministic, not as an object's fault.

With ``AITER_EXT_OBJECT_CHECK_BUILD=1`` too, a launch that no object serves gets one built for it there and then,
through the same path as ``aiter-ext aot --build`` (a ``KernelSpec`` of the launch's own signature, constexprs,
options and alignment, compiled by ``aot``, loaded by the C launcher) and checked the same way: every launch
of a test suite then compares the ``asm`` path with Triton's, not only the shapes objects are shipped for.

Each launch signature is checked on its first ``CHECKS_PER_RECORD`` launches; launches inside a CUDA-graph
capture run unchecked (the comparison needs a synchronization). The counts go to stderr at exit, or to
the file the variable names (any value other than ``1``). Plans (``plans.py``) refuse a recording that
runs torch operations, so with the check on, calls take the usual path and every launch is seen here.
"""

from __future__ import annotations

import atexit
import json
import sys
import time
from collections import Counter
from typing import Callable

import torch

from .env import env

#: AITER_EXT_OBJECT_CHECK: unset or "0" off; "1" on, the counts to stderr; else on, the counts to that file.
SETTING = env("AITER_EXT_OBJECT_CHECK") or "0"
ENABLED = SETTING != "0"
#: AITER_EXT_OBJECT_CHECK_BUILD=1: launches no object serves get one built for the check (module docstring)
BUILD = env("AITER_EXT_OBJECT_CHECK_BUILD") == "1"

CHECKS_PER_RECORD = 4

#: per kernel name: launches "checked", "differed", "unchecked" (capture, or past CHECKS_PER_RECORD), "nondeterministic";
#: launch signatures "served" by an object, "built for the check", or "compiled" by Triton; "builds failed"
COUNTS: dict[str, Counter] = {}
_SEEN: Counter = Counter()


class ObjectMismatch(RuntimeError):
    """A code object wrote other bytes than Triton's compile of the same launch."""


def _tensors(args, kwargs) -> list[torch.Tensor]:
    """The launch's tensor arguments, each storage once (views of one buffer are restored together)."""
    seen, out = set(), []
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() not in seen:
            seen.add(a.untyped_storage().data_ptr())
            out.append(a)
    return out


def _storage_bytes(t: torch.Tensor) -> torch.Tensor:
    """A copy of the whole storage under ``t`` (a view's neighbours included: a kernel may write past a view
    only by a bug, and that shows too)."""
    storage = t.untyped_storage()
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(storage).clone()


def _restore(t: torch.Tensor, saved: torch.Tensor) -> None:
    torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage()).copy_(saved)


def launch_checked(name: str, record_key, object_name: str, launch_object: Callable[[], None],
                   launch_triton: Callable[[], None], args, kwargs) -> None:
    """Run the object's launch and, where checked, Triton's from the same inputs; see the module docstring."""
    counts = COUNTS.setdefault(name, Counter())
    _SEEN[record_key] += 1
    tensors = _tensors(args, kwargs)
    capturing = any(t.is_cuda for t in tensors) and torch.cuda.is_current_stream_capturing()
    if _SEEN[record_key] > CHECKS_PER_RECORD or capturing:
        counts["unchecked"] += 1
        launch_object()
        return
    inputs = [_storage_bytes(t) for t in tensors]
    launch_object()
    by_object = [_storage_bytes(t) for t in tensors]
    for t, saved in zip(tensors, inputs):
        _restore(t, saved)
    launch_triton()
    differing = [i for i, (t, o) in enumerate(zip(tensors, by_object)) if not torch.equal(_storage_bytes(t), o)]
    if differing:
        by_triton = [_storage_bytes(t) for t in tensors]
        for t, saved in zip(tensors, inputs):
            _restore(t, saved)
        launch_triton()
        if any(not torch.equal(_storage_bytes(t), b) for t, b in zip(tensors, by_triton)):
            counts["nondeterministic"] += 1
            return
        i = differing[0]
        bytes_differing = int((_storage_bytes(tensors[i]) != by_object[i]).sum())
        counts["differed"] += 1
        _report(every=0.0)
        raise ObjectMismatch(f"{name}: the code object {object_name} wrote {bytes_differing} bytes other than "
                             f"Triton's compile of the same launch into tensor argument {i} "
                             f"(shape {tuple(tensors[i].shape)}, {tensors[i].dtype})")
    counts["checked"] += 1
    _report()


def note_signature(name: str, record) -> None:
    """thin.py: a new launch signature of kernel ``name`` and its record (None: Triton's compile, no object;
    how much of a test suite the objects cover)."""
    if record is None:
        kind = "signatures compiled"
    else:
        kind = "signatures built for the check" if record.source.startswith(BUILT) else "signatures served"
    COUNTS.setdefault(name, Counter())[kind] += 1
    _report()


#: The source of an object built by build_for_launch (thin.py's record names it so)
BUILT = "built for this launch"


def build_for_launch(fn, name: str, arch: str, constexprs: dict, options: dict, signature: dict,
                     divisible: set):
    """A manifest-like row for an object compiled now for exactly this launch (``aot.compile_reports``, as
    ``aiter-ext aot --build`` does), the image in memory; None where the compile fails (the launch then takes
    Triton's path, counted as compiled)."""
    from . import aot

    spec = aot.KernelSpec(f"{name}[launch]", fn, dict(signature), dict(constexprs), dict(options),
                          divisible_by_16=tuple(sorted(divisible & set(signature))))
    (report,) = aot.compile_reports([(spec, arch)], keep_binary=True)
    if not report.compiled or report.binary is None:
        COUNTS.setdefault(name, Counter())["builds failed"] += 1
        return None
    return {"image": report.binary, "knl_name": report.symbol, "lds_bytes": report.lds_bytes,
            "num_warps": report.num_warps, "co_name": f"{BUILT}: {report.symbol}_{report.object_hash[:8]}"}


def summary() -> dict:
    return {name: dict(c) for name, c in sorted(COUNTS.items())}


_LAST_WRITE = [0.0]


def _report(every: float = 2.0) -> None:
    """The counts to the file the setting names, at most once per ``every`` seconds while running (a run cut
    by its time limit may not reach the exit: the last counts written stand), and at exit (stderr for "1")."""
    if not ENABLED or not COUNTS or (SETTING == "1" and every):
        return
    now = time.monotonic()
    if every and now - _LAST_WRITE[0] < every:
        return
    _LAST_WRITE[0] = now
    text = json.dumps({"object_check": summary()}, indent=1)
    if SETTING == "1":
        print(text, file=sys.stderr)
    else:
        with open(SETTING, "w") as f:
            f.write(text + "\n")


atexit.register(_report, every=0.0)
