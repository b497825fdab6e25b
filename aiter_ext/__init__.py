"""aiter_ext: FlashInfer's serving kernels for AMD Instinct GPUs, shaped like AITER."""

__version__ = "0.1.0"
