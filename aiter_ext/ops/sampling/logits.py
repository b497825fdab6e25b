"""FlashInfer's ``softmax`` (with temperature) and ``sampling_from_logits`` (Gumbel-max).

``softmax(logits, temperature)`` returns fp32 probabilities. ``temperature`` is None (1), a float, or
a float32 tensor with one value per row. A row at temperature 0 is greedy: its output is one-hot at
the first maximum, in the same launch as the other rows (AITER's mixed greedy/random batches), so any
sampler then returns the argmax for it.

``sampling_from_logits`` draws from ``softmax(logits)`` without writing the probabilities: for small
vocabularies the argmax of the logits plus Gumbel noise, in one pass; for larger ones an inverse CDF
over ``exp(x - max)`` with each row spread over many programs (chunked.py). Under one seed its draws
differ from ``sampling_from_probs(softmax(x))``, as in FlashInfer. NaN logits count as ``-inf``.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from aiter_ext.core.arch import device_info
from aiter_ext.core.env import interpreted
from aiter_ext.core.checks import check_tensor
from aiter_ext.core.launch import cdiv

from .api import prepare_draw
from .chunked import chunked_launch, draw_by_chunks, softmax_by_chunks

LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)




def _checked_logits(logits: torch.Tensor) -> None:
    check_tensor("logits", logits, ndim=2, dtypes=LOGIT_DTYPES)
    if logits.shape[1] == 0:
        raise ValueError("logits must have a vocabulary of at least one token")
    if logits.stride(1) != 1:
        raise ValueError("logits must be contiguous in its last dimension")


def softmax(logits: torch.Tensor, temperature: Union[float, torch.Tensor, None] = None,
            enable_pdl: Optional[bool] = None) -> torch.Tensor:
    """``softmax(logits / temperature)`` per row, fp32 ``[B, V]``; temperature 0 gives the one-hot
    argmax of the row. A row with no finite logit gives zeros (the samplers report it invalid)."""
    from .logits_kernels import launch_config, softmax_kernel

    _checked_logits(logits)
    rows, vocab = logits.shape
    if temperature is None:
        temperature = 1.0
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        mode, temp_t, temp_v = 1, None, float(temperature)
    else:
        check_tensor("temperature", temperature, ndim=1, dtypes=(torch.float32,))
        if temperature.shape[0] != rows or temperature.device != logits.device:
            raise ValueError(f"a temperature tensor must hold one float32 value per row ({rows}) on {logits.device}, "
                             f"got shape {tuple(temperature.shape)} on {temperature.device}")
        mode, temp_t, temp_v = 2, temperature, 0.0
    out = torch.empty(rows, vocab, dtype=torch.float32, device=logits.device)
    chunks = chunked_launch("softmax", vocab, rows) if rows else None
    if chunks is not None:
        softmax_by_chunks(logits, out, mode, temp_t, temp_v, chunks)
    elif rows:
        cfg = launch_config(vocab, rows, device_info().arch, interpreted())
        softmax_kernel[(cdiv(rows, cfg["ROWS"]),)](
            logits, out, temp_t if temp_t is not None else out, temp_v, rows, vocab, logits.stride(0), out.stride(0),
            TEMP=mode, ROWS=cfg["ROWS"], BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"])
    return out


def sampling_from_logits(logits: torch.Tensor, indices: Optional[torch.Tensor] = None, deterministic: bool = True,
                         generator: Optional[torch.Generator] = None, check_nan: bool = False, seed=None,
                         offset=None, return_valid: bool = False):
    """One token per row drawn from ``softmax(logits)``: Gumbel-max in one pass, or for large
    vocabularies an inverse CDF over ``exp(x - max)`` by chunks (chunked.py).
    ``indices``, ``generator``, ``seed``/``offset``, ``check_nan`` and ``return_valid`` as for the
    ``_from_probs`` samplers; a row with no finite logit gives token 0, invalid."""
    from .chunked_kernels import LOGITS
    from .logits_kernels import gumbel_max_kernel, launch_config

    rows, seed_t, offset_t, per_row, out, valid = prepare_draw(logits, "logits", indices, generator, check_nan, seed,
                                                               offset, LOGIT_DTYPES)
    chunks = chunked_launch("logits", logits.shape[1], rows) if rows else None
    if chunks is not None:
        draw_by_chunks(logits, LOGITS, indices, None, seed_t, offset_t, per_row, out, valid, chunks)
    elif rows:
        cfg = launch_config(logits.shape[1], rows, device_info().arch, interpreted())
        gumbel_max_kernel[(cdiv(rows, cfg["ROWS"]),)](
            logits, out, valid, indices if indices is not None else out, seed_t, offset_t, rows, logits.shape[1],
            logits.stride(0), HAS_INDICES=indices is not None, SEED_PER_ROW=per_row, ROWS=cfg["ROWS"],
            BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"])
    return (out, valid.bool()) if return_valid else out
