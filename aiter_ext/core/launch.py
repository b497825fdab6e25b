"""Helpers for the host side of kernel launchers: integer arithmetic, the kernels module, the stream.

Plain Python on purpose: since Triton 3.5, ``triton.cdiv`` and ``triton.next_power_of_2`` are constexpr
functions, and a call from host code costs microseconds (3.5 us each on the 2-core CI machine; the nine
calls of one RoPE launch were half of its Python time). Inside ``@triton.jit`` code keep using Triton's.
"""

from __future__ import annotations

import functools
import importlib

import torch


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for ints, ``b > 0``."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``), as ``triton.next_power_of_2`` gives for n >= 1."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@functools.cache
def kernels_module(package: str):
    """``<package>.kernels``, imported on the first call and a dictionary lookup after. Backends import
    their Triton kernels late, since ``import aiter_ext`` must not import Triton; an ``import`` statement
    in the per-call function costs about 1 us on every call (CI machine)."""
    return importlib.import_module(".kernels", package)


def _public_current_stream(device: int) -> int:
    return torch.cuda.current_stream(device).cuda_stream


#: torch's current raw stream per device, as Triton reads it (no Stream object is made); the public call
#: where a torch build lacks it
_RAW_STREAM = getattr(torch._C, "_cuda_getCurrentRawStream", None) or _public_current_stream


def current_stream(device: int) -> int:
    """The handle of torch's current stream on ``device`` (CUDA or HIP), for a launch made outside torch."""
    return _RAW_STREAM(device)


def raw_stream_getter():
    """``device -> torch's current raw stream on it``, as one callable (for the C launcher's call plans)."""
    return _RAW_STREAM
