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


#: Row tiles the tuner weighs for renorm (one program per row: tile width, warps); {} is the heuristic
#: (logits_kernels.launch_config: 4096 wide at a large vocabulary).
RENORM_TUNE_CONFIGS = [{"BLOCK": b, "num_warps": w}
                       for b, w in ((1024, 4), (2048, 4), (2048, 8), (4096, 4), (4096, 16), (8192, 8), (8192, 16))] + [{}]
#: Softmax: one program per row (chunked False) against the chunked path's chunk widths (chunked.chunked_launch);
#: {} is the policy (on a GPU every vocabulary wider than one chunk takes the chunked path).
SOFTMAX_TUNE_CONFIGS = ([{"chunked": False}, {"chunked": False, "BLOCK": 8192, "num_warps": 16}]
                        + [{"chunked": True, "BLOCK": b, "num_warps": w}
                           for b, w in ((1024, 4), (2048, 4), (4096, 4), (4096, 8), (8192, 8))] + [{}])

for _op, _torch, _triton_name, _configs in ((SAMPLING, _torch_sampling, "filtered_draw", None),
                                            (SAMPLING_FROM_LOGITS, _torch_logits, "logits_draw", None),
                                            (SOFTMAX, _torch_softmax, "softmax", SOFTMAX_TUNE_CONFIGS),
                                            (RENORM, _torch_renorm, "renorm", RENORM_TUNE_CONFIGS),
                                            (CHAIN_SPECULATIVE, _torch_speculative, "chain_speculative", None)):
    _op.register("torch", _torch)
    _op.register("triton", lambda *args, _name=_triton_name: getattr(_launchers(), _name)(*args), configs=_configs)


def dispatch(op, x: torch.Tensor, rows: int, backend=None):
    """``(fn, config)`` for a call of ``op`` on ``x`` (``rows`` output rows): call ``fn(config, ...)``."""
    choice = op.select({"rows": rows, "vocab": x.shape[-1], "dtype": dtype_name(x.dtype), "device": x.device.type},
                       backend)
    return choice.impl.fn, choice.config


# -- tuning: how `aiter-ext tune renorm` and `aiter-ext tune softmax` build and check one shape -------------
# The draws (sampling, sampling_from_logits, chain speculative) have no tune target: their outputs are random, so a
# candidate could only be checked statistically, and their routes (row, split, rounds, chunked) were chosen by the
# sweeps in op_tests/gpu_session.sh (sampling-split-sweep, sampling-sweep) and are fixed in their launch policies.


def _tune_logits(shape: Mapping, device: str) -> torch.Tensor:
    """Logits ``[rows, vocab]`` with a serving model's spread (randn x 3), in the shape's dtype."""
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[shape["dtype"]]
    return (torch.randn(shape["rows"], shape["vocab"], dtype=torch.float64) * 3).to(dtype).to(device)


def _softmax_tune_case(shape: Mapping, device: str):
    from aiter_ext.core.testing import error_over_bound, poison_, tolerance
    from aiter_ext.core.tuner import TuneCase

    from .inputs import threshold

    logits = _tune_logits(shape, device)
    rows = logits.shape[0]
    temperature = threshold("temperature", torch.rand(rows, device=device) + 0.5, rows, logits.device, "temperature")
    ref = reference.softmax_ref(logits.cpu(), _value(temperature))
    out = torch.empty(logits.shape, dtype=torch.float32, device=device)

    def run(impl, cfg):
        impl.fn(cfg, logits, temperature, out)

    def check(impl, cfg):
        poison_(out)
        run(impl, cfg)
        return error_over_bound(out, ref, *tolerance(torch.float32))

    return TuneCase(run, check, tolerance=1.0, nbytes=logits.numel() * (logits.element_size() + 4))


def _renorm_tune_case(shape: Mapping, device: str):
    """One row tile serves the three modes, so a candidate runs (and is timed on) all three: top-k renorm (k = 50),
    top-k mask (k = 50) and top-p renorm. Each row's p lies halfway between two of its sorted running masses (past
    its 20 largest entries), so no entry sits within fp32 summation error of the threshold: the kept sets are
    exact and every output compares with the reference elementwise."""
    from aiter_ext.core.testing import error_over_bound, poison_, tolerance
    from aiter_ext.core.tuner import TuneCase

    from .inputs import threshold

    logits = _tune_logits(shape, device)
    rows, vocab = logits.shape
    probs = torch.softmax(logits.double(), -1).to(logits.dtype)
    sorted_mass = probs.double().cpu().sort(-1, descending=True).values.cumsum(-1)
    j = min(20, vocab - 2)
    top_p = ((sorted_mass[:, j] + sorted_mass[:, j + 1]) / 2).float()
    k = threshold("top_k", 50, rows, logits.device, "top_k")
    p = threshold("top_p", top_p.to(device), rows, logits.device, "unit")
    cases = [(probs, TOP_K_RENORM, k, reference.top_k_distribution(probs.cpu().float(), 50), probs.dtype),
             (logits, TOP_K_MASK, k, reference.top_k_mask_ref(logits.cpu(), 50), logits.dtype),
             (probs, TOP_P_RENORM, p, reference.top_p_distribution(probs.cpu().float(), top_p), torch.float32)]
    outs = [torch.empty(x.shape, dtype=dtype, device=device) for x, _, _, _, dtype in cases]

    def run(impl, cfg):
        for (x, mode, param, _, _), out in zip(cases, outs):
            impl.fn(cfg, x, mode, param, out)

    def check(impl, cfg):
        for out in outs:
            poison_(out)
        run(impl, cfg)
        return max(error_over_bound(out, ref, *tolerance(dtype)) for (_, _, _, ref, dtype), out in zip(cases, outs))

    nbytes = sum(x.numel() * x.element_size() + out.numel() * out.element_size() for (x, *_), out in zip(cases, outs))
    return TuneCase(run, check, tolerance=1.0, nbytes=nbytes)


def _register_tuning():
    from aiter_ext.core.tuner import register_tune_target

    register_tune_target("softmax", _softmax_tune_case)
    register_tune_target("renorm", _renorm_tune_case)


_register_tuning()
