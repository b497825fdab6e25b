"""Segment GEMM (FlashInfer's ``SegmentGEMMWrapper``; issue 17): rows of ``x`` in segments, each segment
multiplied by its own weight. The base of multi-LoRA serving."""

from .api import SegmentGEMMWrapper, segment_gemm
from .lora import lora_expand, lora_shrink

__all__ = ["SegmentGEMMWrapper", "lora_expand", "lora_shrink", "segment_gemm"]
