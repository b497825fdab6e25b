"""The seed a sampler draws from a torch generator when the call gives none: one per call, on the device.

Drawing it with ``torch.randint`` each call is graph-capturable and never syncs, but it is a torch launch:
8.9 us of host time a call on the H100, a quarter of a 1-row sampler's eager call (FlashInfer reads the
generator's Philox state on the host instead). So outside a CUDA-graph capture, seeds are drawn
``POOL_SIZE`` at a time, and handed out one per call while the generator is exactly where the pool's
draw left it:

- the generator's ``(initial_seed(), get_offset())`` is compared at every call. Any other use of it (a torch
  random op, ``manual_seed``, another pool's draw) moves the offset or the seed, and the next call draws a
  new pool first. So a sequence of calls after ``torch.manual_seed(s)`` gives the same tokens every run, as
  before; the seeds differ from a draw per call, the distributions do not;
- the pool belongs to the stream it was drawn on: a call on another stream draws its own (a kernel there
  must not read seeds before the draw that writes them);
- inside a capture the draw stays ``torch.randint`` per call (a pool's views would be frozen into the graph,
  and every replay would use one seed).

Each seed sits in its own 16-byte row, so every call's seed tensor has the same alignment: the launch
signature and the call plan's key do not change from call to call.
"""

from __future__ import annotations

import threading
from typing import Callable, NamedTuple

import torch

#: Seeds per draw (each a 16-byte row of two int64, the first used).
POOL_SIZE = 256
#: Generators a process keeps pools for; past it the pools start again (a user may make generators freely).
MAX_POOLS = 64


class _Pool(NamedTuple):
    seeds: tuple  # POOL_SIZE views of shape [1], one per row
    state: tuple  # (initial_seed, offset, stream) right after the draw
    used: list  # [count handed out]


_POOLS: dict = {}
_LOCK = threading.Lock()  # two threads sampling from one generator must not be handed one seed


def _randint(generator, device, n: int) -> torch.Tensor:
    return torch.randint(0, 2**62, (n,), generator=generator, device=device, dtype=torch.int64)


def pooled_seed(generator, device: torch.device, stream: int, draw: Callable = _randint) -> torch.Tensor:
    """A ``[1]`` int64 seed from ``generator`` (a CUDA generator of ``device``) for a call on ``stream``."""
    with _LOCK:
        state = (generator.initial_seed(), generator.get_offset(), stream)
        pool = _POOLS.get(generator)
        if pool is None or pool.state != state or pool.used[0] == POOL_SIZE:
            rows = draw(generator, device, 2 * POOL_SIZE).view(POOL_SIZE, 2)[:, :1]
            if len(_POOLS) >= MAX_POOLS:
                _POOLS.clear()
            pool = _POOLS[generator] = _Pool(rows.unbind(0),
                                             (generator.initial_seed(), generator.get_offset(), stream), [0])
        seed = pool.seeds[pool.used[0]]
        pool.used[0] += 1
        return seed


def drawn_seed(generator, device: torch.device) -> torch.Tensor:
    """The seed of a call that gives none (the module docstring): from a pool on a CUDA device outside a
    capture, else ``torch.randint`` now."""
    if device.type == "cuda" and not torch.cuda.is_current_stream_capturing():
        if generator is None:
            generator = torch.cuda.default_generators[device.index]
        if generator.device == device:  # else randint raises the mismatch as torch words it
            from aiter_ext.core.launch import current_stream

            return pooled_seed(generator, device, current_stream(device.index))
    return _randint(generator, device, 1)
