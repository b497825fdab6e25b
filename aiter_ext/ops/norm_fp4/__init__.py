"""RMSNorm fused with FP4 quantization: FlashInfer's NVFP4/MXFP4 functions and AITER-style MXFP4."""

from .api import add_rmsnorm_fp4quant, fp4_quantize, mxfp4_quantize, rmsnorm_fp4quant, rmsnorm_mxfp4_quant

__all__ = ["rmsnorm_fp4quant", "add_rmsnorm_fp4quant", "fp4_quantize", "rmsnorm_mxfp4_quant", "mxfp4_quantize"]
