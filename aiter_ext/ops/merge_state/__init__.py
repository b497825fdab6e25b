"""Attention-state merging (FlashInfer's cascade merge functions)."""

from .api import merge_state, merge_state_in_place, merge_states, variable_length_merge_states

__all__ = ["merge_state", "merge_state_in_place", "merge_states", "variable_length_merge_states"]
