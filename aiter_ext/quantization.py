"""FlashInfer's ``flashinfer.quantization`` names that aiter_ext has: ``packbits`` and ``segment_packbits``."""

from .ops.attention.masks import packbits, segment_packbits

__all__ = ["packbits", "segment_packbits"]
