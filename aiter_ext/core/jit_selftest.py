"""A host-only ``compile_ops`` module (``module_jit_selftest``) so GPU-less CI exercises the JIT path.

``jit_selftest_axpy`` is the raw stub; ``axpy_`` checks its inputs first, as real op wrappers do.
"""

from __future__ import annotations

import torch

from aiter_ext.core.jit import compile_ops


@compile_ops("module_jit_selftest")
def jit_selftest_axpy(y: torch.Tensor, x: torch.Tensor, a: float, n: int) -> None:
    """``y[:n] += a * x[:n]`` in place; CPU float32, contiguous."""
    ...


def axpy_(y: torch.Tensor, x: torch.Tensor, a: float) -> torch.Tensor:
    """``y += a * x`` in place through the C++ module; returns ``y``."""
    for name, t in (("y", y), ("x", x)):
        if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous float32 CPU tensor, got {t.dtype} on {t.device}")
    if x.shape != y.shape:
        raise ValueError(f"x has shape {tuple(x.shape)}, y has {tuple(y.shape)}")
    jit_selftest_axpy(y, x, float(a), y.numel())
    return y
