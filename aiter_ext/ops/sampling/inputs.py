"""What every sampling function checks and prepares before a launch (no Triton here).

The public modules (api, logits, renorm, speculative, pipe) all take their inputs through this one:
- ``checked_rows``: ``[B, V]`` rows and ``indices``;
- ``threshold``: a top-k/top-p/min-p/temperature argument, as FlashInfer takes it;
- ``seed_and_offset``: explicit Philox seeds, or one drawn on the device from a generator;
- ``prepare_draw``: all of the above plus the ``(token, valid)`` outputs of a sampler.

Everything here reads tensor metadata only (never device data), so a call stays free of host
synchronization and graph-capturable. What only the device knows (per-row threshold values, indices
and draft ids) is clamped or masked in the kernels; each kernel module says how.
"""

from __future__ import annotations

import enum
import numbers
from typing import NamedTuple, Optional, Union

import torch

from aiter_ext.core.checks import check_tensor

from .seeds import drawn_seed

INDEX_DTYPES = (torch.int32, torch.int64)
#: FlashInfer converts probabilities with ``.float()``; the kernels convert on load instead.
PROB_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SEED_DTYPES = tuple(d for d in (torch.int64, getattr(torch, "uint64", None)) if d is not None)
#: Threshold tensors: FlashInfer takes any real dtype (``.float()`` / ``.int()``); so do we, read as is.
THRESHOLD_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int16,
                    torch.int32, torch.int64, torch.uint8)

Number = Union[int, float]


class Mode(enum.IntEnum):
    """How a threshold reaches a kernel (its constexpr): absent, one value for all rows, or one per
    source row read from a tensor."""

    NONE = 0
    SCALAR = 1
    PER_ROW = 2


class Threshold(NamedTuple):
    mode: Mode
    tensor: Optional[torch.Tensor]  # PER_ROW only
    value: float  # SCALAR only

    def pointer(self, fallback: torch.Tensor) -> torch.Tensor:
        """The tensor to pass as the kernel's pointer (``fallback`` stands in, never read)."""
        return self.tensor if self.tensor is not None else fallback


ABSENT = Threshold(Mode.NONE, None, 0.0)


def checked_rows(x, indices: Optional[torch.Tensor], name: str = "probs", dtypes=PROB_DTYPES) -> int:
    """Check ``[B, V]`` rows (contiguous in V) and ``indices``; return the number of output rows."""
    check_tensor(name, x, ndim=2, dtypes=dtypes)
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have a vocabulary of at least one token")
    if x.stride(1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension")
    if indices is None:
        return x.shape[0]
    check_tensor("indices", indices, ndim=1, dtypes=INDEX_DTYPES)
    if indices.device != x.device:
        raise ValueError(f"indices is on {indices.device} but {name} is on {x.device}")
    if indices.shape[0] and x.shape[0] == 0:
        raise ValueError(f"indices selects rows of {name}, which has none")
    return indices.shape[0]


def threshold(name: str, value, rows: int, device: torch.device, kind: str) -> Threshold:
    """A sampling parameter as FlashInfer takes it: ``None``, a Python number, or a 1-D tensor of
    any real dtype with one value per row of the input (``rows``), indexed by the source row.

    ``kind``: "top_k" (scalar: a positive integer), "unit" (top_p/min_p; scalar in [0, 1]) or
    "temperature" (scalar >= 0). Scalars are checked here; tensor values are only read on the
    device, where the kernels clamp them (see kernels.threshold_value). The tensor messages are
    FlashInfer's, prefixed with the argument's name."""
    if value is None:
        return ABSENT
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if kind == "top_k" and (int(value) != value or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value}")
        if kind == "unit" and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if kind == "temperature" and not float(value) >= 0.0:
            raise ValueError(f"{name} must be >= 0, got {value}")
        return Threshold(Mode.SCALAR, None, float(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a number or a 1D tensor, got {type(value).__name__}")
    if value.dtype not in THRESHOLD_DTYPES:
        raise TypeError(f"{name} must be a real or integer tensor, got {value.dtype}")
    if value.dim() == 0:
        raise ValueError(f"{name}: Expected a 1D tensor of shape (batch_size,) or scalar for the sampling "
                         "parameter, but got a 0-dimensional tensor.")
    if value.dim() > 1:
        raise ValueError(f"{name}: Expected a 1D tensor or scalar for the sampling parameter, but got a "
                         f"{value.dim()}D tensor.")
    if value.shape[0] != rows:
        raise ValueError(f"{name}: Sampling parameter tensor batch size mismatch: expected length {rows} to match "
                         f"the reference tensor batch size, but got length {value.shape[0]}.")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but the input is on {device}")
    if value.stride(0) != 1 and rows > 1:
        raise ValueError(f"{name} must be contiguous")
    return Threshold(Mode.PER_ROW, value, 0.0)


_ZERO_OFFSETS: dict = {}


def _zero_offset(device: torch.device) -> torch.Tensor:
    key = (device.type, device.index)
    if key not in _ZERO_OFFSETS:
        _ZERO_OFFSETS[key] = torch.zeros(1, dtype=torch.int64, device=device)
    return _ZERO_OFFSETS[key]


def _seed_tensor(name: str, value, rows: int, device: torch.device) -> torch.Tensor:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
        if not 0 <= value < 2**64:
            raise ValueError(f"{name} must lie in [0, 2**64), got {value}")
        # FlashInfer takes uint64 seeds: the same 64 bits, stored as int64
        return torch.full((1,), value - 2**64 if value >= 2**63 else value, dtype=torch.int64, device=device)
    check_tensor(name, value, ndim=1, dtypes=SEED_DTYPES)
    if value.shape[0] not in (1, rows) or value.device != device:
        raise ValueError(f"{name} must be an int or an int64/uint64 tensor of length 1 or {rows} on {device}, "
                         f"got shape {tuple(value.shape)} on {value.device}")
    if not value.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return value


def seed_and_offset(generator, seed, offset, rows: int, device: torch.device):
    """Device tensors ``(seed, offset)`` of equal length 1 or ``rows``, and whether they are per row."""
    if (seed is None) != (offset is None):
        raise ValueError("seed and offset must be given together (or neither)")
    if seed is None:
        # One seed from the generator, on the device (seeds.py: from a pool drawn ahead, or drawn now in a
        # CUDA-graph capture): no host sync. The offset is a cached zero (read only).
        return drawn_seed(generator, device), _zero_offset(device), False
    seed_t = _seed_tensor("seed", seed, rows, device)
    offset_t = _seed_tensor("offset", offset, rows, device)
    if seed_t.shape != offset_t.shape:  # one per row and one for all: widen the single one (no sync)
        seed_t, offset_t = seed_t.expand(rows).contiguous(), offset_t.expand(rows).contiguous()
    return seed_t, offset_t, seed_t.shape[0] == rows and rows > 1


class Draw(NamedTuple):
    rows: int
    seed: torch.Tensor
    offset: torch.Tensor
    seed_per_row: bool
    out: torch.Tensor
    valid: torch.Tensor


def prepare_draw(x: torch.Tensor, name: str, indices, generator, check_nan: bool, seed, offset,
                 dtypes=PROB_DTYPES) -> Draw:
    """What every sampler does before its launch: checks, seed/offset, and the (token, valid) outputs."""
    rows = checked_rows(x, indices, name, dtypes)
    seed_t, offset_t, per_row = seed_and_offset(generator, seed, offset, rows, x.device)
    if check_nan and bool(torch.isnan(x).any()):  # opt-in, as in FlashInfer: a host sync
        raise ValueError(f"{name} contains NaN")
    out = torch.empty(rows, dtype=indices.dtype if indices is not None else torch.int32, device=x.device)
    valid = torch.empty(rows, dtype=torch.int8, device=x.device)
    return Draw(rows, seed_t, offset_t, per_row, out, valid)


def finish(draw: Draw, return_valid: bool):
    return (draw.out, draw.valid.bool()) if return_valid else draw.out
