"""Shared test helpers: where tests run, which backends they cover, and how big the grids are.

On a machine without a GPU the Triton kernels run through the interpreter (the repository's root
conftest.py sets TRITON_INTERPRET=1) and grids are trimmed to CI size. On a GPU the same tests run
compiled, over FlashInfer's full grids (or set AITER_EXT_FULL_GRID=1 to force them on the CPU).
"""

import os
import zlib

import torch

import pytest

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FULL_GRID = torch.cuda.is_available() or os.environ.get("AITER_EXT_FULL_GRID") == "1"


def grid(small, full):
    """The CI (interpreter) grid, or FlashInfer's full grid on a GPU."""
    return full if FULL_GRID else small


def backend_params(op, names=("torch", "triton", "ck")):
    """One pytest param per backend; those that cannot run here are skipped, saying why."""
    params = []
    for name in names:
        ok, reason = op.usable(name, {"num_tokens": 1, "num_heads": 1, "head_dim": 128, "dtype": "fp16",
                                      "device": DEVICE.type, "has_mask": False, "contiguous": True,
                                      "varlen": False})
        marks = () if ok else pytest.mark.skip(reason=f"{name} cannot run here: {reason}")
        params.append(pytest.param(name, id=name, marks=marks))
    return params


@pytest.fixture(autouse=True)
def _fresh_seed():
    # A different seed per test, fixed per test id, so inputs are fresh but failures reproduce.
    torch.manual_seed(zlib.crc32(os.environ.get("PYTEST_CURRENT_TEST", "").encode()))
    yield
