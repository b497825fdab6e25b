"""Backend registrations for sampling: ``triton`` (launchers.py) and ``torch`` (the fp64 references
of reference.py, drawing with torch's own generator; not graph-capturable).

Five ops for the dispatcher, each implementation writing only into tensors it is given:
- ``sampling``: ``fn(config, probs, indices, top_k, top_p, min_p, draw)``, thresholds as
  inputs.Threshold, outputs in the inputs.Draw;
- ``sampling_from_logits``: ``fn(config, logits, indices, draw)``;
- ``softmax``: ``fn(config, logits, temperature, out)``;
- ``renorm``: ``fn(config, x, mode, param, out)``, mode one of TOP_K_RENORM/TOP_P_RENORM/TOP_K_MASK;
- ``chain_speculative_sampling``: ``fn(config, draft_probs, draft_ids, target_probs, out, accepted,
  emitted, seed, offset, per_row)``.
"""

from __future__ import annotations

import functools
import importlib
from typing import Mapping

import torch

from aiter_ext.core.backend import define_op, pow2_bucket
from aiter_ext.core.checks import dtype_name

from . import reference
from .inputs import Mode

# renorm modes (renorm_kernels.py compares the same ints)
TOP_K_RENORM, TOP_P_RENORM, TOP_K_MASK = 0, 1, 2


def _bucket(call: Mapping) -> tuple:
    return (pow2_bucket(call["rows"]), pow2_bucket(call["vocab"]), call["dtype"])


SHAPE_KEYS = ("rows", "vocab", "dtype")
SAMPLING = define_op("sampling", SHAPE_KEYS, _bucket)
SAMPLING_FROM_LOGITS = define_op("sampling_from_logits", SHAPE_KEYS, _bucket)
SOFTMAX = define_op("softmax", SHAPE_KEYS, _bucket)
RENORM = define_op("renorm", SHAPE_KEYS, _bucket)
CHAIN_SPECULATIVE = define_op("chain_speculative_sampling", SHAPE_KEYS, _bucket)


@functools.cache
def _launchers():
    """launchers.py (it imports Triton), on the first Triton call; a dictionary lookup after."""
    return importlib.import_module(".launchers", __package__)


def _value(t):
    """A Threshold as the references take it: None, the scalar, or the per-row tensor on the CPU."""
    if t.mode == Mode.NONE:
        return None
    return t.value if t.mode == Mode.SCALAR else t.tensor.cpu()


def _torch_sampling(config, probs, indices, top_k, top_p, min_p, draw):
    dist = reference.filtered_distribution(probs.cpu(), _value(top_k), _value(top_p), _value(min_p))
    reference.draw_from(dist, indices, draw.seed, draw.offset, draw.seed_per_row, draw.out, draw.valid)


def _torch_logits(config, logits, indices, draw):
    dist = reference.softmax_ref(logits.cpu()).double()
    reference.draw_from(dist, indices, draw.seed, draw.offset, draw.seed_per_row, draw.out, draw.valid)


def _torch_softmax(config, logits, temperature, out):
    out.copy_(reference.softmax_ref(logits.cpu(), _value(temperature)))


def _torch_renorm(config, x, mode, param, out):
    rule = {TOP_K_RENORM: reference.top_k_distribution, TOP_P_RENORM: reference.top_p_distribution,
            TOP_K_MASK: reference.top_k_mask_ref}[mode]
    out.copy_(rule(x.cpu(), _value(param)))


def _torch_speculative(config, draft_probs, draft_ids, target_probs, out, accepted, emitted, seed, offset, per_row):
    reference.chain_speculative_ref(draft_probs, draft_ids, target_probs, out, accepted, emitted, seed, offset,
                                    per_row)


for _op, _torch, _triton_name in ((SAMPLING, _torch_sampling, "filtered_draw"),
                                  (SAMPLING_FROM_LOGITS, _torch_logits, "logits_draw"),
                                  (SOFTMAX, _torch_softmax, "softmax"), (RENORM, _torch_renorm, "renorm"),
                                  (CHAIN_SPECULATIVE, _torch_speculative, "chain_speculative")):
    _op.register("torch", _torch)
    _op.register("triton", lambda *args, _name=_triton_name: getattr(_launchers(), _name)(*args))


def dispatch(op, x: torch.Tensor, rows: int, backend=None):
    """``(fn, config)`` for a call of ``op`` on ``x`` (``rows`` output rows): call ``fn(config, ...)``."""
    choice = op.select({"rows": rows, "vocab": x.shape[-1], "dtype": dtype_name(x.dtype), "device": x.device.type},
                       backend)
    return choice.impl.fn, choice.config
