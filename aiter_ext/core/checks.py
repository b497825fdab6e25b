"""Input checks shared by every op: each failure names the argument, before any kernel runs.

Type and dtype problems raise ``TypeError``; shape, layout and device problems raise ``ValueError``.
The checks read only tensor metadata (never device data), so they are free and trace under
``torch.compile`` on fake tensors.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
#: The names back (the tuned tables' dtype keys, read by the tune targets)
DTYPES_BY_NAME = {name: dtype for dtype, name in DTYPE_NAMES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def check_tensor(name: str, t, *, ndim: int | None = None, dtypes: Sequence[torch.dtype] | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(dtype_name(d) for d in dtypes)
        raise TypeError(f"{name} must be {allowed}; got {dtype_name(t.dtype)}")


def check_shape(name: str, t: torch.Tensor, expected: Sequence[int], how: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({how}), got {tuple(t.shape)}")


def check_same_device(named: Iterable[tuple[str, torch.Tensor]]) -> torch.device:
    named = list(named)
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}; "
                             "all tensors must be on one device")
    return first.device


def check_same_dtype(named: Iterable[tuple[str, torch.Tensor]]) -> None:
    named = list(named)
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.dtype != first.dtype:
            raise TypeError(f"{name} is {dtype_name(t.dtype)} but {first_name} is {dtype_name(first.dtype)}; "
                            "they must match")


def check_inner_contiguous(name: str, t: torch.Tensor, inner_dims: int) -> None:
    """The last ``inner_dims`` dimensions must be packed row-major (the leading stride is free)."""
    if inner_dims == 1 and (t.dim() == 0 or t.stride(-1) == 1):  # the common case, checked on every call
        return
    expected = 1
    for dim in range(t.dim() - 1, t.dim() - 1 - inner_dims, -1):
        if t.shape[dim] > 1 and t.stride(dim) != expected:
            raise ValueError(f"{name} must be contiguous in its last {inner_dims} dimension(s) "
                             f"(got strides {tuple(t.stride())} for shape {tuple(t.shape)})")
        expected *= t.shape[dim]


def check_indptr_values(name: str, indptr, total: int | None = None, total_what: str = "the total") -> None:
    """A CSR offset array's values: starts at 0, nondecreasing, and (given ``total``) ends at it.

    Reads the values on the host (a device sync for a GPU tensor): for ``plan()`` and CPU tensors only.
    The error names the argument and the first offending position.
    """
    values = torch.as_tensor(indptr).to("cpu", torch.int64)
    if int(values[0]) != 0:
        raise ValueError(f"{name} must start at 0, got {name}[0] = {int(values[0])}")
    down = values[1:] < values[:-1]
    if bool(down.any()):
        i = int(torch.nonzero(down)[0]) + 1
        raise ValueError(f"{name} must be nondecreasing, but {name}[{i}] = {int(values[i])} "
                         f"< {name}[{i - 1}] = {int(values[i - 1])}")
    if total is not None and int(values[-1]) != total:
        raise ValueError(f"{name}[-1] = {int(values[-1])} must equal {total_what} = {total}")


def as_workspace(name: str, buffer: torch.Tensor) -> torch.Tensor:
    """A workspace of any dtype (FlashInfer's users pass uint8 or int8), as the bytes it holds."""
    check_tensor(name, buffer, ndim=1)
    if not buffer.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return buffer.view(torch.uint8)
