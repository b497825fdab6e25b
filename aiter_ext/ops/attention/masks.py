"""Custom attention masks in FlashInfer's packed form: ``packbits`` and ``segment_packbits``
(``flashinfer.packbits`` / ``flashinfer.quantization``), and the references' unpacking of a batch
(engine._packed_mask checks and packs a plan's masks; the kernel reads them by byte offset).

A request's mask is its ``[qo_len, kv_len]`` boolean matrix, flattened row-major; a batch's masks
are concatenated (``qk_indptr[i] = sum_j<i qo_len_j * kv_len_j``). Packed, each request's bits start
on a byte (``mask_indptr[i] = sum_j<i ceil(qo_len_j * kv_len_j / 8)``), in *little* bit order (element
``e`` of a segment is bit ``e % 8`` of byte ``e // 8``), which is what FlashInfer's attention plans
pack with. ``packbits`` itself follows numpy (``bitorder="big"`` by default).
"""

from __future__ import annotations

import torch

from aiter_ext.core.checks import check_tensor

BITORDERS = ("big", "little")

#: Keys per visibility class: a plan summarises each query row's mask over groups of this many keys,
#: so that the kernel skips blocks no row sees and gathers mask bits only in blocks some row sees in
#: part (kernels.attention_kernel). It divides every key block (BLOCK_N >= 16) and chunk start.
CLASS_KEYS = 16
#: The classes of a (query row, key group): no key visible, every key visible, some.
CLASS_NONE, CLASS_ALL, CLASS_SOME = 0, 1, 2


def class_offsets(qo_lens: list, kv_lens: list, base: int) -> list:
    """Where each request's classes start (``[batch + 1]``, the first at ``base``): request ``b`` has
    ``qo_len * ceil(kv_len / CLASS_KEYS)`` bytes, row-major by query row."""
    offsets = [base]
    for q, k in zip(qo_lens, kv_lens):
        offsets.append(offsets[-1] + q * -(-k // CLASS_KEYS))
    return offsets


def reference_classes(mask: torch.Tensor) -> torch.Tensor:
    """The classes of one request's ``[qo_len, kv_len]`` boolean mask (the tests' reference): uint8
    ``[qo_len, ceil(kv_len / CLASS_KEYS)]``; a last group of fewer keys is never CLASS_ALL."""
    q, k = mask.shape
    groups = -(-k // CLASS_KEYS)
    padded = torch.zeros(q, groups * CLASS_KEYS, dtype=torch.int32, device=mask.device)
    padded[:, :k] = mask.to(torch.int32)
    seen = padded.view(q, groups, CLASS_KEYS).sum(-1)
    return torch.where(seen == 0, CLASS_NONE, torch.where(seen == CLASS_KEYS, CLASS_ALL, CLASS_SOME)).to(torch.uint8)


def _bit_weights(bitorder: str, device) -> torch.Tensor:
    if bitorder not in BITORDERS:
        raise ValueError(f"bitorder must be 'big' or 'little', got {bitorder!r}")
    w = 1 << torch.arange(8, device=device, dtype=torch.int32)
    return w.flip(0) if bitorder == "big" else w


def packbits(x: torch.Tensor, bitorder: str = "big") -> torch.Tensor:
    """Pack a 1-D binary array into ``uint8`` bytes, as ``numpy.packbits`` (the last byte zero-padded).

    >>> import torch, aiter_ext
    >>> [bin(b) for b in aiter_ext.packbits(torch.tensor([1, 0, 1, 1, 0, 0, 1, 1], dtype=torch.bool)).tolist()]
    ['0b10110011']
    """
    check_tensor("x", x, ndim=1)
    weights = _bit_weights(bitorder, x.device)
    bits = torch.zeros(-(-x.shape[0] // 8) * 8, dtype=torch.int32, device=x.device)
    bits[: x.shape[0]] = (x != 0).to(torch.int32)
    return (bits.view(-1, 8) * weights).sum(-1).to(torch.uint8)


def segment_packbits(x: torch.Tensor, indptr: torch.Tensor, bitorder: str = "big"):
    """Pack each segment ``x[indptr[i]:indptr[i+1]]`` on its own bytes: ``(packed, new_indptr)`` with
    ``new_indptr[i+1] - new_indptr[i] == ceil(segment length / 8)``. Reads ``indptr`` on the host.

    >>> import torch, aiter_ext
    >>> x = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1], dtype=torch.bool)
    >>> packed, new_indptr = aiter_ext.segment_packbits(x, torch.tensor([0, 4, 7, 11]), bitorder="big")
    >>> [bin(b) for b in packed.tolist()], new_indptr.tolist()
    (['0b10110000', '0b100000', '0b11010000'], [0, 1, 2, 3])
    """
    check_tensor("x", x, ndim=1)
    check_tensor("indptr", indptr, ndim=1, dtypes=(torch.int32, torch.int64))
    bounds = indptr.to("cpu", torch.int64)
    lengths = bounds[1:] - bounds[:-1]
    if bool((lengths < 0).any()) or int(bounds[-1]) > x.shape[0]:
        raise ValueError(f"indptr must be nondecreasing and end within x ({x.shape[0]} elements)")
    new_indptr = torch.zeros_like(bounds)
    new_indptr[1:] = torch.cumsum((lengths + 7) // 8, 0)
    weights = _bit_weights(bitorder, x.device)
    seg = torch.repeat_interleave(torch.arange(lengths.shape[0]), lengths).to(x.device)
    local = torch.arange(int(bounds[-1]), device=x.device) - bounds[:-1].to(x.device)[seg]
    byte = new_indptr[:-1].to(x.device)[seg] + local // 8
    packed = torch.zeros(int(new_indptr[-1]), dtype=torch.int32, device=x.device)
    packed.index_add_(0, byte, (x[: int(bounds[-1])] != 0).to(torch.int32) * weights[local % 8])
    return packed.to(torch.uint8), new_indptr.to(device=indptr.device, dtype=indptr.dtype)


def unpack_request_masks(packed: torch.Tensor, mask_indptr: list, qo_lens: list, kv_lens: list) -> list:
    """The ``[qo_len, kv_len]`` boolean masks of a batch packed in little bit order (the references'
    view of what the kernel reads)."""
    bits = ((packed.to(torch.int32)[:, None] >> torch.arange(8, device=packed.device)) & 1).view(-1).bool()
    return [bits[8 * mask_indptr[b]: 8 * mask_indptr[b] + q * k].view(q, k)
            for b, (q, k) in enumerate(zip(qo_lens, kv_lens))]
