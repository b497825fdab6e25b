"""Repository-wide pytest set-up (op_tests/ and the docstring examples in aiter_ext/).

Without a GPU, Triton kernels run on the CPU through the interpreter; TRITON_INTERPRET must be set
before any kernel module is imported, so it is set here, first.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
