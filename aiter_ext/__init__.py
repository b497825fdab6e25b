"""aiter_ext: FlashInfer's serving kernels for AMD Instinct GPUs, shaped like AITER.

``import aiter_ext`` needs only torch: Triton kernels compile on first use, C++ modules build on
first use, and AITER (ROCm only) is imported lazily where a backend needs it.
"""

__version__ = "0.1.0"

from .ops.merge_state import merge_state, merge_state_in_place, merge_states, variable_length_merge_states

__all__ = ["merge_state", "merge_state_in_place", "merge_states", "variable_length_merge_states"]
