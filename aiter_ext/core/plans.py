"""Call plans: an eager call replayed from the launches that its first call of the same kind made.

The thin launch path (``thin.py``) leaves an eager call with the op's own Python around the launch:
validation, backend choice, launch configuration, the kernel's argument list. On the lent H100 that was
10-30 us per call more than FlashInfer's (issue 18). All of it is decided by what the call's arguments
*are* (dtypes, shapes, strides, devices, alignment, aliasing, every scalar's value), never by what the
tensors hold. So an op asks :class:`CallPlans` for a plan under a key that says exactly that
(``launch.cpp``'s ``call_key``):

- on a miss, the op runs its usual path (validation included). The second call of a key runs it inside
  :meth:`CallPlans.recorded` (so a shape seen once pays no recording), which keeps the launches the thin
  path makes and turns them into a plan: per launch its kernel, grid and
  parameters, each either a constant (every integer and float the op computed) or a pointer into one of
  the call's tensors (the *slots* the op names: its arguments, and the outputs it allocated before);
- on a hit, the op allocates its outputs as before and ``plan(*slots)`` launches everything with one C
  call (``run_plan``), on torch's current stream. No host synchronization, and no allocation but the
  outputs and the workspaces the call always makes (:func:`scratch`), sized by the key: graph capture works.

A plan is kept only where the replay is known to do all that the call did. The recording is refused
(the key is remembered as "no plan": later calls take the usual path without recording) when, inside
it: a kernel is launched other than through the thin path (Triton's own launcher, a Triton kernel not
wrapped for it); any torch operation runs other than a view or a workspace from :func:`scratch` (a copy,
a fill, another allocation, a torch backend); a dispatched op chooses a backend other than Triton (a C++
module's launch would be invisible here); or a launch reads a tensor that is not among the slots. Plans
serve GPU tensors of the exact types ``torch.Tensor`` and ``nn.Parameter`` only: a CPU tensor, a tensor
subclass (torch.compile's fake tensors) or an argument of another kind has no key, and takes the usual path.

Plans are dropped when anything they were decided under changes: the environment (backend choices),
the launch mode (``thin.set_mode``), a dispatcher's cache (``Op.clear_cache``: tuned rows).
"""

from __future__ import annotations

import functools
import struct
import threading
from typing import Any, Callable, Optional

import torch
import torch.utils._python_dispatch

from .env import _CountingStore, env
from .log import log_once

#: The recording in progress (one at a time, per process), or None: thin.py and backend.py read it per
#: launch and per backend choice, so it is a module global.
ACTIVE: Optional["_Recording"] = None

#: Bumped by :func:`invalidate`; every cache of plans is cleared when it sees a new value.
_EPOCH = 0

#: AITER_EXT_PLANS=0 turns call plans off (read at import; :func:`set_enabled` in tests and benchmarks).
_ENABLED = env("AITER_EXT_PLANS") != "0"


def set_enabled(enabled: bool) -> bool:
    """Turn call plans on or off for this process; returns the previous setting. The plans made are kept
    (nothing they were decided under changed): turned on again, calls replay them."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, bool(enabled)
    return previous


def invalidate() -> None:
    """Drop every plan (the launch mode, the tuned rows or a backend registration changed)."""
    global _EPOCH
    _EPOCH += 1


# The plan format, shared with launch.cpp's run_plan: a header, then per launch its header and parameters.
_PLAN_HEADER = struct.Struct("<iiii")  # device, launches, slots, reserved
_LAUNCH_HEADER = struct.Struct("<QIIIIII")  # function, gx, gy, gz, threads, shared, parameters
_PARAM = struct.Struct("<BBHIQ")  # kind, from a slot, slot, reserved, constant bits or byte offset
#: launch.cpp's MAX_ARGS: the most slots run_plan takes (and parameters per launch)
MAX_SLOTS = 96


def _constant(kind: str, value) -> int:
    """A launch parameter's bits, as launch.cpp's launch() packs them."""
    if kind == "f":
        return struct.unpack("<I", struct.pack("<f", value))[0]
    if kind == "i":
        return int(value) & 0xFFFFFFFF
    return int(value or 0) & 0xFFFFFFFFFFFFFFFF  # 'l', and a 'p' given as an int or None


def _extent_bytes(t: torch.Tensor) -> int:
    """Bytes from a tensor's first element to one past its last (its view, not its storage: the key
    describes the view only)."""
    if t.numel() == 0:
        return 0
    return (1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()))) * t.element_size()


class _Refused(Exception):
    """The recording cannot become a plan; the message says why."""


class _Recording:
    """The launches made while an op's usual path runs, and the slots their pointers may come from."""

    def __init__(self, slots: tuple):
        self.slots = slots
        self.launches: list[tuple] = []
        self.refused: Optional[str] = None
        self.thread = threading.get_ident()
        self.scratch: list[tuple] = []  # (shape, dtype, zeroed, tensor) per scratch() inside the call
        self.allocating = False  # scratch() allocating: its torch operations are the plan's own

    def refuse(self, reason: str) -> None:
        if self.refused is None:
            self.refused = reason

    def launch(self, record, grid: tuple[int, int, int], args) -> None:
        """thin.py: one launch through the thin path (its kept runtime arguments, in parameter order)."""
        if threading.get_ident() != self.thread:
            self.refuse("another thread launched while the call was recorded")
        self.launches.append((record, grid, tuple(args) + tuple(record.trailing)))

    def plan(self) -> bytes:
        if self.refused is not None:
            raise _Refused(self.refused)
        if not self.launches:
            raise _Refused("no kernel was launched")
        devices = {record.device for record, _, _ in self.launches}
        if len(devices) != 1:
            raise _Refused("launches on several devices")
        slots = self.slots + tuple(t for *_, t in self.scratch)  # scratch tensors: slots after the op's own
        if len(slots) > MAX_SLOTS:
            raise _Refused(f"{len(slots)} slots, more than run_plan takes ({MAX_SLOTS})")
        ranges = [(i, t.data_ptr(), t.data_ptr() + _extent_bytes(t)) for i, t in enumerate(slots)
                  if isinstance(t, torch.Tensor)]
        zeroed = [(len(self.slots) + i, t.numel() * t.element_size()) for i, (_, _, z, t) in enumerate(self.scratch)
                  if z]
        if any(nbytes % 4 for _, nbytes in zeroed):
            raise _Refused("a zeroed workspace of a size that is not whole 32-bit words")
        out = [_PLAN_HEADER.pack(devices.pop(), len(zeroed) + len(self.launches), len(slots), 0)]
        for slot, nbytes in zeroed:  # first the memsets (function 0 in launch.cpp: gx words of zeros at a slot)
            out.append(_LAUNCH_HEADER.pack(0, nbytes // 4, 1, 1, 0, 0, 1))
            out.append(_PARAM.pack(ord("p"), 1, slot, 0, 0))
        for record, (gx, gy, gz), args in self.launches:
            kinds = record.fmt.decode()
            out.append(_LAUNCH_HEADER.pack(record.function, gx, gy, gz, record.threads, record.shared, len(kinds)))
            for kind, value in zip(kinds, args, strict=True):
                if kind == "p" and isinstance(value, torch.Tensor):
                    slot, offset = self._slot_of(ranges, value.data_ptr())
                    out.append(_PARAM.pack(ord(kind), 1, slot, 0, offset))
                elif isinstance(value, torch.Tensor):
                    raise _Refused(f"a tensor passed as a parameter of kind {kind!r}")
                else:
                    out.append(_PARAM.pack(ord(kind), 0, 0, 0, _constant(kind, value)))
        return b"".join(out)

    @staticmethod
    def _slot_of(ranges, address: int) -> tuple[int, int]:
        """The slot a launch's pointer points into: one starting there, else the one holding it."""
        for i, start, _ in ranges:
            if address == start:
                return i, 0
        for i, start, end in ranges:
            if start <= address < end:
                return i, address - start
        raise _Refused("a launch reads a tensor that is not among the call's slots (allocated inside the call?)")


class _ViewsOnly(torch.utils._python_dispatch.TorchDispatchMode):
    """Refuses the recording at the first torch operation that is not a view: the replay would skip it."""

    def __init__(self, recording: _Recording):
        super().__init__()
        self.recording = recording

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not getattr(func, "is_view", False) and not self.recording.allocating:
            self.recording.refuse(f"the torch operation {func} runs inside the call")
        return func(*args, **(kwargs or {}))


def _refuse_triton_launches(recording: _Recording):
    """Wraps Triton's ``JITFunction.run`` while recording: a launch through it (not a compile-only warmup)
    is one the plan would not hold. With Triton not loaded yet (core/lazy_triton.py: every launch so far from a
    code object), no launch can go through it without loading it first: loading it refuses the recording."""
    from . import lazy_triton

    if not lazy_triton.loaded():
        return lazy_triton.on_load(lambda: recording.refuse("Triton loaded inside the call"))
    import triton.runtime.jit as jit

    original = jit.JITFunction.run

    def run(self, *args, **kwargs):
        if not kwargs.get("warmup", False):
            recording.refuse(f"{getattr(self, '__name__', 'a kernel')} launched through Triton's own launcher")
        return original(self, *args, **kwargs)

    jit.JITFunction.run = run
    return lambda: setattr(jit.JITFunction, "run", original)


class _Recorder:
    """The context of :meth:`CallPlans.recorded`."""

    __slots__ = ("owner", "key", "recording", "restore", "mode")

    def __init__(self, owner: "CallPlans", key: bytes, slots: tuple):
        self.owner, self.key, self.recording = owner, key, _Recording(slots)

    def __enter__(self):
        global ACTIVE
        if ACTIVE is not None:  # an op called from inside another's recording: the outer one records
            self.recording = None
            return self
        ACTIVE = self.recording
        self.restore = _refuse_triton_launches(self.recording)
        self.mode = _ViewsOnly(self.recording)
        self.mode.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        global ACTIVE
        if self.recording is None:
            return False
        try:
            self.mode.__exit__(exc_type, exc, tb)
        finally:
            self.restore()
            ACTIVE = None
        if exc_type is None:
            self.owner._keep(self.key, self.recording)
        return False


def refuse(reason: str) -> None:
    """Called by an op's usual path: a call that passes here never becomes a plan (``reason`` is logged once). Outside
    a recording it does nothing."""
    if ACTIVE is not None:
        ACTIVE.refuse(reason)


def scratch(shape, dtype: torch.dtype, device: torch.device, zeroed: bool) -> torch.Tensor:
    """A workspace an op's launches need (sampling's barrier counters and chunk sums): ``torch.zeros`` or
    ``torch.empty``. Allocated inside a recording, it becomes a slot of the plan, after the op's own, and the
    replay allocates a new one each call (``torch.empty``), as the usual path does: a workspace kept from call
    to call would be shared by calls in flight on two streams. A zeroed one is zeroed by the plan itself, a
    memset on the stream before the launches (``torch.zeros`` took 7.4 us of host time a call on the H100,
    ``torch.empty`` 2)."""
    allocate = torch.zeros if zeroed else torch.empty
    recording = ACTIVE
    if recording is None:
        return allocate(shape, dtype=dtype, device=device)
    recording.allocating = True
    try:
        t = allocate(shape, dtype=dtype, device=device)
    finally:
        recording.allocating = False
    recording.scratch.append((shape, dtype, zeroed, t))
    return t


class _SeenOnce:
    """The state of a key seen once, not yet recorded: falsy, like "no plan", for the op's ``if plan:``."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<seen once>"


_SEEN = _SeenOnce()
#: Keys one op keeps; past it the cache starts again (a few hundred bytes per key).
MAX_PLANS = 4096


class CallPlans:
    """One op's plans, by call key. Per call::

        key, plan = PLANS.find(*every argument that decides the launches)
        if plan:
            ...allocate the outputs as usual...
            plan(*slots)
            return ...
        ...validate, allocate...
        PLANS.recorded(key, slots, dispatch, *its arguments)  # the usual dispatch and launches

    ``find`` returns ``(key, plan)`` with a falsy plan for a call that has none (yet), and ``(None, False)``
    for one that cannot have a plan. The slots are the tensors a launch may point into, in a fixed order
    (None where absent): the call's tensor arguments and the outputs allocated for it.
    """

    def __init__(self, name: str):
        self.name = name
        self._plans: dict[bytes, Any] = {}
        self._epoch = (_EPOCH, _CountingStore.writes)

    def find(self, *args) -> tuple[Optional[bytes], Any]:
        if ACTIVE is not None or not _ENABLED or torch.compiler.is_compiling():
            # inside another op's recording (launch the usual way, so that it sees them), or traced
            return None, False
        epoch = (_EPOCH, _CountingStore.writes)
        if epoch != self._epoch:
            self._plans.clear()
            self._epoch = epoch
        key = _call_key(*args)
        if key is None:
            return None, False
        return key, self._plans.get(key)

    def recorded(self, key: Optional[bytes], slots, fn: Callable, *args):
        """``fn(*args)``, the op's usual path. The second call of a key is recorded to become its plan: a
        shape seen once (a prefill's token count) pays no recording. ``slots``: a tuple, or a function that
        returns it, called only when this call is recorded (slots that cost host time to gather)."""
        if key is None:
            return fn(*args)
        state = self._plans.get(key)
        if state is None:
            if len(self._plans) >= MAX_PLANS:  # a bound on memory for ever-new shapes: start again
                self._plans.clear()
            self._plans[key] = _SEEN
            return fn(*args)
        if state is not _SEEN:
            return fn(*args)
        with _Recorder(self, key, slots() if callable(slots) else slots):
            return fn(*args)

    def _keep(self, key: bytes, recording: _Recording) -> None:
        try:
            blob = recording.plan()
        except _Refused as why:
            log_once(f"plans:{self.name}:{why}", f"{self.name}: no call plan, every call takes the usual path: {why}")
            self._plans[key] = False
            return
        self._plans[key] = _replay(blob, recording)

    def __len__(self) -> int:
        return sum(1 for p in self._plans.values() if p)


def _replay(blob: bytes, recording: _Recording) -> Callable:
    from .thin import launcher

    run_plan = functools.partial(launcher().run_plan, blob)
    if not recording.scratch:
        return run_plan
    scratch = tuple((shape, t.dtype, t.device) for shape, _, _, t in recording.scratch)  # the plan zeroes them

    def with_scratch(*slots):
        run_plan(*slots, *(torch.empty(shape, dtype=dtype, device=device) for shape, dtype, device in scratch))

    return with_scratch


def _call_key(*args):
    """``launch.cpp``'s call_key, once the thin path's extension is ready; no key (no plans) otherwise."""
    global _call_key
    from . import thin
    from .env import interpreted
    from .launch import raw_stream_getter

    # No GPU, the interpreter, or Triton's own launcher: nothing to plan (not cached: each may change)
    if interpreted() or not torch.cuda.is_available() or thin.mode() == "triton" or not thin.native_ready():
        return None
    module = thin.native()
    module.use_types((torch.Tensor, torch.nn.Parameter), raw_stream_getter())
    _call_key = module.call_key
    return _call_key(*args)
