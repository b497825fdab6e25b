"""Multi-LoRA shrink and expand in the shape of vLLM 0.33's punica-style Triton ops
(``vllm/lora/ops/triton_ops``: ``lora_shrink`` / ``lora_expand``), so a serving plugin can route to them.

vLLM's metadata groups the batch's tokens by adapter: ``token_indices_sorted_by_lora_ids`` lists the
tokens adapter by adapter, ``lora_token_start_loc`` (a cumulative sum of ``num_tokens_per_lora``) bounds
each adapter's run in it, and ``lora_ids[i]`` is run i's adapter (-1: no adapter). That is a segment GEMM
over gathered rows: one launch per slice of the segment kernel with ROW_INDICES (rows gathered and
scattered through the sorted token list) and SKIP_NEGATIVE (the -1 run is left alone). Every entry of
``lora_ids`` is visited (``num_active_loras`` only sizes vLLM's grid), and nothing is read back from the
device: ``no_lora_flag_cpu`` and ``num_active_loras`` are host tensors, as in vLLM.

- ``lora_shrink``: ``output[s, t] = scaling * inputs[t] @ lora_a[s][lora(t)]^T`` (``lora_a[s]``
  ``[num_loras, rank, hidden]``); rows of tokens without an adapter are zero (the output is zeroed first).
- ``lora_expand``: ``output[t, offset_start + slice offset : + hidden_s] (+)= inputs[s, t] @
  lora_b[s][lora(t)]^T`` (``lora_b[s]`` ``[num_loras, hidden_s, rank]``), slices side by side (fused QKV,
  gate/up); tokens without an adapter are left as they are. ``inputs`` may be fp32 (vLLM's shrink buffer);
  it is rounded to the weights' dtype for the dot.
"""

from __future__ import annotations

import torch

from aiter_ext.core.arch import device_info
from aiter_ext.core.checks import check_same_device, check_tensor
from aiter_ext.core.custom_ops import mutating_ops

from aiter_ext.core.launch import kernels_module

DTYPES = (torch.float16, torch.bfloat16)


def _check_metadata(inputs, num_tokens, token_lora_mapping, token_indices_sorted_by_lora_ids, num_tokens_per_lora,
                    lora_token_start_loc, lora_ids) -> None:
    """Metadata only (shapes, dtypes, devices): the kernel reads the tables as they are, int32 as vLLM
    builds them or int64, with no conversion on the per-layer path."""
    for name, t in (("token_lora_mapping", token_lora_mapping),
                    ("token_indices_sorted_by_lora_ids", token_indices_sorted_by_lora_ids),
                    ("num_tokens_per_lora", num_tokens_per_lora), ("lora_token_start_loc", lora_token_start_loc),
                    ("lora_ids", lora_ids)):
        check_tensor(name, t, ndim=1, dtypes=(torch.int32, torch.int64))
    for name, t in (("token_lora_mapping", token_lora_mapping),
                    ("token_indices_sorted_by_lora_ids", token_indices_sorted_by_lora_ids)):
        if t.shape[0] != num_tokens:
            raise ValueError(f"{name} must have one entry per token ({num_tokens}), got {t.shape[0]}")
    if num_tokens_per_lora.shape[0] != lora_ids.shape[0] or lora_token_start_loc.shape[0] != lora_ids.shape[0] + 1:
        raise ValueError(f"lora_ids ({lora_ids.shape[0]}), num_tokens_per_lora ({num_tokens_per_lora.shape[0]}) and "
                         f"lora_token_start_loc ({lora_token_start_loc.shape[0]}) must be max_loras + 1, max_loras + 1 "
                         f"and max_loras + 2 long")
    check_same_device([("inputs", inputs), ("token_indices_sorted_by_lora_ids", token_indices_sorted_by_lora_ids),
                       ("lora_token_start_loc", lora_token_start_loc), ("lora_ids", lora_ids)])


def _tuned_config(num_rows: int, d_in: int, d_out: int, dtype: torch.dtype, out: torch.Tensor, kernels) -> dict:
    """The segment-GEMM config the tuned CSV gives this (tokens, d_in, d_out) bucket, else the default, with
    the K split this launch can take: only an fp32 output adds splits with atomics (vLLM's shrink buffer), and
    the bucket's row may come from another shape, so its SPLIT_K is re-decided here (kernels.split_k keeps it
    only where d_in holds it in whole K steps)."""
    from aiter_ext.core.checks import dtype_name

    from .backends import SEGMENT_GEMM

    call = {"num_rows": num_rows, "d_in": d_in, "d_out": d_out, "dtype": dtype_name(dtype), "device": out.device.type}
    config = SEGMENT_GEMM.select(call, "triton").config or {}
    split = kernels.split_k(num_rows, d_in, d_out, config, device_info().cu_num) if out.dtype == torch.float32 else 1
    return {**config, "SPLIT_K": split}


#: (device, weight addresses) -> the int64 device table of them. Never evicted, on purpose: a captured CUDA
#: graph keeps the address of the table it launched with, and an evicted table's memory would be reused
#: under it. One entry per layer and slice group of a model's LoRA weights.
_ADDRESS_TABLES: dict = {}


def _address_table(weights: list) -> torch.Tensor:
    """The weights' addresses as a device tensor, made once per set of weights (a model's layers keep
    theirs), so that calls in a CUDA graph capture, after the eager warm-up, copy nothing to the device.
    The key is the addresses themselves, so a reused address maps to a table of the same content."""
    key = (weights[0].device, tuple(w.data_ptr() for w in weights))
    table = _ADDRESS_TABLES.get(key)
    if table is None:
        table = torch.tensor(key[1], dtype=torch.int64).to(weights[0].device)
        _ADDRESS_TABLES[key] = table
    return table


def _lora_shrink(inputs: torch.Tensor, lora_a_weights: list[torch.Tensor], output_tensor: torch.Tensor,
                 token_lora_mapping: torch.Tensor, token_indices_sorted_by_lora_ids: torch.Tensor,
                 num_tokens_per_lora: torch.Tensor, lora_token_start_loc: torch.Tensor, lora_ids: torch.Tensor,
                 no_lora_flag_cpu: torch.Tensor, num_active_loras: torch.Tensor, scaling: float) -> None:
    if inputs.shape[0] == 0 or bool(no_lora_flag_cpu.item()):  # a host tensor: no sync
        return
    check_tensor("inputs", inputs, ndim=2, dtypes=DTYPES)
    check_tensor("output_tensor", output_tensor, ndim=3)
    if len(lora_a_weights) != output_tensor.shape[0]:
        raise ValueError(f"{len(lora_a_weights)} lora_a_weights slices for an output of {output_tensor.shape[0]}")
    rank = output_tensor.shape[2]
    for i, wa in enumerate(lora_a_weights):
        check_tensor(f"lora_a_weights[{i}]", wa, dtypes=(inputs.dtype,))
        wa = wa.reshape(-1, *wa.shape[-2:]) if wa.dim() == 4 else wa  # vLLM may keep a unit dimension
        if tuple(wa.shape[1:]) != (rank, inputs.shape[1]):
            raise ValueError(f"lora_a_weights[{i}] must be [num_loras, rank={rank}, hidden={inputs.shape[1]}], got "
                             f"{tuple(wa.shape)}")
    if not output_tensor.is_contiguous():
        raise ValueError("output_tensor must be contiguous")
    _check_metadata(inputs, inputs.shape[0], token_lora_mapping, token_indices_sorted_by_lora_ids, num_tokens_per_lora,
                    lora_token_start_loc, lora_ids)
    x = inputs.contiguous()
    output_tensor.zero_()
    bounds, ids, rows = lora_token_start_loc, lora_ids, token_indices_sorted_by_lora_ids
    kernels = kernels_module(__package__)  # Triton loads on the first call, not at import
    config = _tuned_config(x.shape[0], x.shape[1], rank, x.dtype, output_tensor, kernels)
    weights = [wa.reshape(-1, *wa.shape[-2:]) for wa in lora_a_weights]
    if len(weights) > 1 and all(wa.is_contiguous() and wa.shape == weights[0].shape for wa in weights):
        # fused QKV / gate-up: one launch for every slice, the weights found through an address table
        kernels.launch(x, weights[0], output_tensor, bounds, ids, ids.shape[0], True, config, row_index=rows,
                       skip_negative=True, scale=float(scaling), weight_table=_address_table(weights))
        return
    for s, wa in enumerate(weights):
        kernels.launch(x, wa.contiguous(), output_tensor[s], bounds, ids, ids.shape[0], True, config,
                       row_index=rows, skip_negative=True, scale=float(scaling))


def _lora_expand(inputs: torch.Tensor, lora_b_weights: list[torch.Tensor], output_tensor: torch.Tensor,
                 token_lora_mapping: torch.Tensor, token_indices_sorted_by_lora_ids: torch.Tensor,
                 num_tokens_per_lora: torch.Tensor, lora_token_start_loc: torch.Tensor, lora_ids: torch.Tensor,
                 no_lora_flag_cpu: torch.Tensor, num_active_loras: torch.Tensor, offset_start: int,
                 add_inputs: bool) -> None:
    if bool(no_lora_flag_cpu.item()):
        return
    check_tensor("inputs", inputs, ndim=3, dtypes=DTYPES + (torch.float32,))
    check_tensor("output_tensor", output_tensor, ndim=2, dtypes=DTYPES)
    if inputs.shape[0] != len(lora_b_weights):
        raise ValueError(f"inputs has {inputs.shape[0]} slices for {len(lora_b_weights)} lora_b_weights")
    if not output_tensor.is_contiguous():
        raise ValueError("output_tensor must be contiguous")
    num_tokens = inputs.shape[1]
    if num_tokens == 0:
        return
    _check_metadata(inputs, num_tokens, token_lora_mapping, token_indices_sorted_by_lora_ids, num_tokens_per_lora,
                    lora_token_start_loc, lora_ids)
    weights = [wb.reshape(-1, *wb.shape[-2:]) if wb.dim() == 4 else wb for wb in lora_b_weights]
    for i, wb in enumerate(weights):
        check_tensor(f"lora_b_weights[{i}]", wb, ndim=3, dtypes=DTYPES)
        if wb.shape[2] != inputs.shape[2]:
            raise ValueError(f"lora_b_weights[{i}] must be [num_loras, hidden, rank={inputs.shape[2]}], got "
                             f"{tuple(wb.shape)}")
    end = offset_start + sum(wb.shape[1] for wb in weights)
    if output_tensor.shape[0] != num_tokens or end > output_tensor.shape[1]:
        raise ValueError(f"output_tensor must be [num_tokens={num_tokens}, >= {end}] for offset_start={offset_start} "
                         f"and these slices, got {tuple(output_tensor.shape)}")
    bounds, ids, rows = lora_token_start_loc, lora_ids, token_indices_sorted_by_lora_ids
    col = offset_start
    kernels = kernels_module(__package__)
    for s, wb in enumerate(weights):
        hidden = wb.shape[1]
        config = _tuned_config(num_tokens, inputs.shape[2], hidden, wb.dtype, output_tensor, kernels)
        kernels.launch(inputs[s].contiguous(), wb.contiguous(), output_tensor[:, col:col + hidden], bounds, ids,
                       ids.shape[0], True, config, row_index=rows, skip_negative=True,
                       accumulate=bool(add_inputs))
        col += hidden


# Custom ops ``aiter_ext::lora_shrink`` / ``aiter_ext::lora_expand``, so that a vLLM model compiled with
# torch.compile traces through them as it does through vLLM's own registered LoRA ops.
_call = mutating_ops({_lora_shrink: ("lora_shrink", ("output_tensor",)),
                      _lora_expand: ("lora_expand", ("output_tensor",))})


def lora_shrink(inputs, lora_a_weights, output_tensor, token_lora_mapping, token_indices_sorted_by_lora_ids,
                num_tokens_per_lora, lora_token_start_loc, lora_ids, no_lora_flag_cpu, num_active_loras,
                scaling: float) -> None:
    """vLLM's ``lora_shrink`` (module docstring): inputs ``[num_tokens, hidden]``, output
    ``[num_slices, num_tokens, rank]``."""
    _call(_lora_shrink, inputs, list(lora_a_weights), output_tensor, token_lora_mapping,
          token_indices_sorted_by_lora_ids, num_tokens_per_lora, lora_token_start_loc, lora_ids, no_lora_flag_cpu,
          num_active_loras, float(scaling))


def lora_expand(inputs, lora_b_weights, output_tensor, token_lora_mapping, token_indices_sorted_by_lora_ids,
                num_tokens_per_lora, lora_token_start_loc, lora_ids, no_lora_flag_cpu, num_active_loras,
                offset_start: int = 0, add_inputs: bool = False) -> None:
    """vLLM's ``lora_expand`` (module docstring): inputs ``[num_slices, num_tokens, rank]``, output
    ``[num_tokens, >= offset_start + sum of the slices' hidden sizes]``."""
    _call(_lora_expand, inputs, list(lora_b_weights), output_tensor, token_lora_mapping,
          token_indices_sorted_by_lora_ids, num_tokens_per_lora, lora_token_start_loc, lora_ids, no_lora_flag_cpu,
          num_active_loras, int(offset_start), bool(add_inputs))
