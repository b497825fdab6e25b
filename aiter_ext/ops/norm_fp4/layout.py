"""Scale-buffer shapes of the three layouts. Plain Python (no Triton), so that ``import aiter_ext``
does not load Triton: the API validates shapes with it before any kernel is imported."""

from __future__ import annotations


def scale_padding(n_rows: int, n_blocks: int, layout: str) -> tuple[int, int]:
    """(rows, scale columns) of the scale buffer in ``layout``: FlashInfer's swizzle pads to 128 x 4
    tiles, AITER's e8m0 shuffle to 256 x 8; linear scales are not padded."""
    if layout == "swizzled":
        return -(-n_rows // 128) * 128, -(-n_blocks // 4) * 4
    if layout == "shuffled":
        return -(-n_rows // 256) * 256, -(-n_blocks // 8) * 8
    return n_rows, n_blocks
