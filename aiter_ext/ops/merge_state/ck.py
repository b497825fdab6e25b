"""ctypes stub of the C++ merge kernel (``csrc/ck_kernels/merge_state.cu``, module ``module_merge_state``).

Raw binding only: no checks here. The caller guarantees contiguous tensors on one GPU, v of
``dtype_code``'s dtype with 16-byte aligned storage, s fp32, and a mask of one byte per token.
"""

from __future__ import annotations

from typing import Optional

import torch

from aiter_ext.core.jit import compile_ops

#: The ``dtype_code`` the kernel takes for each dtype of v.
DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}


@compile_ops("module_merge_state")
def merge_state_pair(v_a: torch.Tensor, s_a: torch.Tensor, v_b: torch.Tensor, s_b: torch.Tensor,
                     v_out: torch.Tensor, s_out: torch.Tensor, mask: Optional[torch.Tensor],
                     num_tokens: int, num_heads: int, head_dim: int, dtype_code: int) -> None:
    """Merge state b into state a, writing ``(v_out, s_out)``, on the current stream.

    v: ``[num_tokens, num_heads, head_dim]``, s: ``[num_tokens, num_heads]`` fp32 (base-2 LSE).
    ``v_out``/``s_out`` may be ``v_a``/``s_a`` (in place). ``mask``: bool/uint8 ``[num_tokens]`` or
    None; tokens whose mask is 0 are left untouched in ``v_out`` and ``s_out``. head_dim: a multiple
    of 8 (fp16/bf16) or 4 (fp32), at most 512; anything else raises RuntimeError, nothing launched.
    """
    ...
