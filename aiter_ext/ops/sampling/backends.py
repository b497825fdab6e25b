"""Backend registrations for sampling: ``triton`` (launchers.py) and ``torch`` (the fp64 references
of reference.py, drawing with torch's own generator; not graph-capturable).

Five ops for the dispatcher, each implementation writing only into tensors it is given:
- ``sampling``: ``fn(config, probs, indices, top_k, top_p, min_p, draw)``, thresholds as
  inputs.Threshold, outputs in the inputs.Draw; its calls also key on their ``filter`` (sampling_filter);
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
from aiter_ext.core.checks import DTYPES_BY_NAME, dtype_name

from . import reference
from .inputs import Mode

# renorm modes (renorm_kernels.py compares the same ints)
TOP_K_RENORM, TOP_P_RENORM, TOP_K_MASK = 0, 1, 2


def _bucket(call: Mapping) -> tuple:
    return (pow2_bucket(call["rows"]), pow2_bucket(call["vocab"]), call["dtype"])


SHAPE_KEYS = ("rows", "vocab", "dtype")
#: The draws from probabilities also key on their filter (sampling_filter): each filter's draw has its own best
#: tile (the row kernel's launch_config already tells top-p alone apart), so a tuned row serves its filter only.
SAMPLING = define_op("sampling", SHAPE_KEYS + ("filter",), lambda call: (*_bucket(call), call["filter"]))
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

#: The draws from probabilities: the policy ({}: the route and tile launchers.filtered_draw picks) against the row
#: kernel alone (no split, chunked or rounds route) at one row per program, these chunk widths and warps (its
#: PREFETCH and LANE_SUMS flags stay kernels.launch_config's for the shape and filter).
SAMPLING_TUNE_CONFIGS = [{}] + [{"split": False, "chunked": False, "ROWS": 1, "BLOCK": b, "num_warps": w}
                                for b in (2048, 4096, 8192) for w in (4, 8, 16)]
#: The draws from logits: the policy against the Gumbel-max row kernel (chunked False) at these tiles, and against the
#: chunked inverse-CDF route (chunked True) at these chunk widths and warps.
LOGITS_TUNE_CONFIGS = ([{}] + [{"chunked": False, "BLOCK": b, "num_warps": w} for b in (2048, 4096, 8192) for w in (4, 8, 16)]
                       + [{"chunked": True, "BLOCK": b, "num_warps": w} for b, w in ((2048, 4), (4096, 4), (4096, 8), (8192, 8))])
#: Chain speculative sampling: the policy (speculative_kernels.speculative_config) against these chunk widths and
#: warps of its walk (and of its chunk sums, where the vocabulary takes more than one chunk).
SPECULATIVE_TUNE_CONFIGS = [{}] + [{"BLOCK": b, "num_warps": w} for b in (1024, 2048, 4096, 8192, 16384) for w in (4, 8)]

for _op, _torch, _triton_name, _configs in ((SAMPLING, _torch_sampling, "filtered_draw", SAMPLING_TUNE_CONFIGS),
                                            (SAMPLING_FROM_LOGITS, _torch_logits, "logits_draw", LOGITS_TUNE_CONFIGS),
                                            (SOFTMAX, _torch_softmax, "softmax", SOFTMAX_TUNE_CONFIGS),
                                            (RENORM, _torch_renorm, "renorm", RENORM_TUNE_CONFIGS),
                                            (CHAIN_SPECULATIVE, _torch_speculative, "chain_speculative",
                                             SPECULATIVE_TUNE_CONFIGS)):
    _op.register("torch", _torch)
    _op.register("triton", lambda *args, _name=_triton_name: getattr(_launchers(), _name)(*args), configs=_configs)


def sampling_filter(top_k, top_p, min_p) -> str:
    """The ``sampling`` op's ``filter`` key: the thresholds a call sets, joined ("plain", "top_k", "top_p",
    "min_p", "top_k_top_p", ...)."""
    names = [name for name, t in (("top_k", top_k), ("top_p", top_p), ("min_p", min_p)) if t.mode != Mode.NONE]
    return "_".join(names) or "plain"


def dispatch(op, x: torch.Tensor, rows: int, backend=None, **keys):
    """``(fn, config)`` for a call of ``op`` on ``x`` (``rows`` output rows; ``keys``: the op's other shape keys, the
    sampling op's ``filter``): call ``fn(config, ...)``."""
    choice = op.select({"rows": rows, "vocab": x.shape[-1], "dtype": dtype_name(x.dtype), "device": x.device.type,
                        **keys}, backend)
    return choice.impl.fn, choice.config


# -- tuning: how `aiter-ext tune renorm`, `softmax`, `sampling`, `sampling_from_logits` and
# `chain_speculative_sampling` build and check one shape ---------------------------------------------------------


def _tune_logits(shape: Mapping, device: str) -> torch.Tensor:
    """Logits ``[rows, vocab]`` with a serving model's spread (randn x 3), in the shape's dtype."""
    logits = torch.randn(shape["rows"], shape["vocab"], dtype=torch.float64) * 3
    return logits.to(DTYPES_BY_NAME[shape["dtype"]]).to(device)


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


#: The statistical check of `aiter-ext tune sampling`: draws per candidate, and the chi-square test's level
SAMPLING_TUNE_DRAWS = 20_000
SAMPLING_TUNE_ALPHA = 1e-4


def _rank_with_a_gap(values: torch.Tensor, start: int, rel: float = 1e-3) -> int:
    """The first rank from ``start`` (sorted ``values``, descending) whose value lies above the next one's by more
    than ``rel`` of itself: a threshold placed in that gap keeps the ranks up to it whatever the rounding."""
    gaps = (values[:-1] - values[1:]) > rel * values[:-1]
    gaps[:min(start, gaps.numel() - 1)] = False
    return int(gaps.nonzero()[0]) if gaps.any() else values.numel() - 1


def sampling_tune_thresholds(row: torch.Tensor, filters: str) -> dict:
    """Thresholds for ``filters`` (a ``filter`` key) on one distribution ``row``, each set in a gap between two
    sorted probabilities so that the kept set is the same in fp32 and in the fp64 reference: top-k ~50, top-p
    keeping ~20 tokens, min-p ~30."""
    values = row.double().sort(descending=True).values
    mass = values.cumsum(0)
    vocab = values.numel()
    out = {}
    if "top_k" in filters:
        out["top_k"] = _rank_with_a_gap(values, min(49, vocab // 4), rel=0.0) + 1
    if "top_p" in filters:
        r = max(1, _rank_with_a_gap(values, min(20, vocab // 4)))
        out["top_p"] = float((mass[r - 1] + mass[r]) / 2)  # keeps ranks 0..r: rank r+1 has mass[r] above it
    if "min_p" in filters:
        r = _rank_with_a_gap(values, min(30, vocab // 4))
        out["min_p"] = float((values[r] + values[r + 1]) / 2 / values[0])
    return out


def _statistical_check(launch, prepare, calls: int, outcomes, target: torch.Tensor) -> float:
    """A draw's tune check over ``calls`` launches of ``launch()`` (graph replays on a GPU: the route the tuner
    times, since a capture may change the policy's), ``prepare(call)`` before each (its offset, poisoned
    outputs). After each, ``outcomes()`` gives every row's outcome (an index into ``target``) as a device tensor,
    -1 where a row is malformed (unwritten, invalid, out of range); they are kept on the device and judged once at
    the end (no host sync per call: at one row a call, 20000 synchronized calls took ~6 s a candidate on an H100).
    A malformed row or an outcome of target probability 0 scores inf; else the score is SAMPLING_TUNE_ALPHA / p of
    Pearson's chi-square test against ``target``, so at most 1 passes (a correct candidate fails one shape in
    10^4)."""
    from aiter_ext.core.bench import as_timed
    from aiter_ext.core.testing import chi_square_p_value

    launch = as_timed(launch)  # its warm-up call writes the outputs: each call below prepares them afresh
    record = None
    for call in range(calls):
        prepare(call)
        launch()
        got = outcomes()
        if record is None:
            record = torch.empty(calls, got.numel(), dtype=torch.int64, device=got.device)
        record[call] = got
    if bool((record < 0).any()):
        return float("inf")
    counts = torch.bincount(record.flatten(), minlength=target.numel()).cpu()
    if counts.numel() > target.numel() or bool(counts[target == 0].any()):
        return float("inf")
    return SAMPLING_TUNE_ALPHA / max(chi_square_p_value(counts, target), 1e-300)


def _token_outcomes(draw, vocab: int):
    """The draws' tokens as outcomes, -1 where a row is unwritten, invalid or out of range."""
    def outcomes():
        tokens = draw.out.long()
        return torch.where((tokens >= 0) & (tokens < vocab) & (draw.valid != 0), tokens, -1)
    return outcomes


def _draw_tune_case(x: torch.Tensor, kind: str, dtypes, target: torch.Tensor, call_fn):
    """A draw of one token per row of ``x`` (``kind`` "probs" or "logits"; every row holds the same distribution,
    ``target``), launched as ``call_fn(impl, cfg, draw)``: what it times, and its statistical check
    (_statistical_check over SAMPLING_TUNE_DRAWS draws)."""
    from aiter_ext.core.tuner import TuneCase

    from .inputs import prepare_draw

    rows, vocab = x.shape
    timed = prepare_draw(x, kind, None, None, False, 1234, 0, dtypes)

    def run(impl, cfg):
        call_fn(impl, cfg, timed)

    def check(impl, cfg):
        offset = torch.zeros(1, dtype=torch.int64, device=x.device)  # this check's own: written per call
        draw = prepare_draw(x, kind, None, None, False, 1234, offset, dtypes)

        def prepare(call):
            draw.offset.fill_(call * rows)  # read by the kernels on the device: a graph's replay draws afresh
            draw.out.fill_(-1)  # poisoned: a row the candidate leaves unwritten shows

        return _statistical_check(lambda: call_fn(impl, cfg, draw), prepare, -(-SAMPLING_TUNE_DRAWS // rows),
                                  _token_outcomes(draw, vocab), target)

    return TuneCase(run, check, tolerance=1.0, nbytes=x.numel() * x.element_size())


def _sampling_tune_case(shape: Mapping, device: str):
    """A draw from probabilities with the shape's filter (thresholds from sampling_tune_thresholds). Every row of
    ``probs`` holds the same distribution, so a call draws ``rows`` tokens of it; checked by _statistical_check."""
    from .inputs import PROB_DTYPES, threshold

    rows, vocab = shape["rows"], shape["vocab"]
    row = torch.softmax(torch.randn(vocab, dtype=torch.float64) * 3, -1).to(DTYPES_BY_NAME[shape["dtype"]])
    probs = row.expand(rows, vocab).contiguous().to(device)
    limits = sampling_tune_thresholds(row, shape["filter"])
    target = reference.filtered_distribution(row.double()[None], limits.get("top_k"), limits.get("top_p"),
                                             limits.get("min_p"))[0]
    given = {name: threshold(name, limits.get(name), rows, probs.device, "top_k" if name == "top_k" else "unit")
             for name in ("top_k", "top_p", "min_p")}
    return _draw_tune_case(probs, "probs", PROB_DTYPES, target, lambda impl, cfg, draw: impl.fn(
        cfg, probs, None, given["top_k"], given["top_p"], given["min_p"], draw))


def _logits_tune_case(shape: Mapping, device: str):
    """A draw from logits: a serving model's spread (randn x 3) with an eighth of the vocabulary masked to -inf
    (tokens that must never come out). Every row holds the same logits; checked by _statistical_check against
    their softmax."""
    from .logits import LOGIT_DTYPES

    rows, vocab = shape["rows"], shape["vocab"]
    row = torch.randn(vocab, dtype=torch.float64) * 3
    row[torch.randperm(vocab)[:vocab // 8]] = float("-inf")
    row = row.to(DTYPES_BY_NAME[shape["dtype"]])
    logits = row.expand(rows, vocab).contiguous().to(device)
    target = torch.softmax(row.double(), -1)
    return _draw_tune_case(logits, "logits", LOGIT_DTYPES, target,
                           lambda impl, cfg, draw: impl.fn(cfg, logits, None, draw))


#: The number of draft tokens per request in `aiter-ext tune chain_speculative_sampling` (not a shape key)
SPECULATIVE_TUNE_DRAFTS = 3


def speculative_outcome_law(q: torch.Tensor, drafts: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The law of one request's outcome under chain speculative sampling with fixed drafts: ``q [n, V]`` the draft
    probabilities, ``drafts [n]`` the draft tokens, ``p [n + 1, V]`` the target's. Outcome ``k * V + t``: the first
    ``k`` drafts accepted, then token ``t`` at position ``k`` (resampled from relu(p - q) after a rejection at
    ``k < n``; drawn from p[n] after all ``n`` are accepted). Draft ``i`` is accepted with probability
    ``min(1, p_i(d_i) / q_i(d_i))``."""
    n, vocab = q.shape
    law = torch.zeros(n + 1, vocab, dtype=torch.float64)
    reach = 1.0
    for i in range(n):
        d = int(drafts[i])
        accept = min(1.0, float(p[i, d] / q[i, d]))
        residual = (p[i] - q[i]).clamp(min=0)
        if accept < 1.0:
            law[i] = reach * (1 - accept) * residual / residual.sum()
        reach *= accept
    law[n] = reach * p[n]
    return law.flatten()


def _speculative_tune_case(shape: Mapping, device: str):
    """Chain speculative sampling with SPECULATIVE_TUNE_DRAFTS drafts (fp32; every request the same), the drafts
    drawn once from their distributions. Each request's outcome (accepted count, then its last token) is checked by
    _statistical_check against speculative_outcome_law: a token of zero residual after a rejection never comes
    out, and the chi-square test covers the acceptances and the resampling at once."""
    from aiter_ext.core.tuner import TuneCase

    from .inputs import seed_and_offset

    rows, vocab, n = shape["rows"], shape["vocab"], SPECULATIVE_TUNE_DRAFTS
    logits = torch.randn(n + 1, vocab, dtype=torch.float64) * 2
    p = torch.softmax(logits, -1)
    q = torch.softmax(logits[:n] + torch.randn(n, vocab, dtype=torch.float64), -1)
    drafts = torch.multinomial(q, 1)[:, 0]
    # the law of the fp32 values the kernels read
    target = speculative_outcome_law(q.float().double(), drafts, p.float().double())
    draft_probs = q.float().expand(rows, n, vocab).contiguous().to(device)
    target_probs = p.float().expand(rows, n + 1, vocab).contiguous().to(device)
    draft_ids = drafts.int().expand(rows, n).contiguous().to(device)
    out = torch.empty(rows, n + 1, dtype=torch.int32, device=device)
    counters = torch.zeros(2, rows, dtype=torch.int32, device=device)
    seed, offset, per_row = seed_and_offset(None, 1234, torch.zeros(1, dtype=torch.int64, device=device), rows,
                                            draft_probs.device)

    def run(impl, cfg):
        impl.fn(cfg, draft_probs, draft_ids, target_probs, out, counters[0], counters[1], seed, offset, per_row)

    def outcomes():
        written = out >= 0
        k = written.sum(1) - 1  # accepted drafts before the last token (emitted)
        last = out.gather(1, k[:, None].clamp(min=0))[:, 0].long()
        # no token, a gap before the last, a token past the vocabulary or an emitted count that disagrees: a row
        # the candidate wrote wrong
        ok = (k >= 0) & (written[:, :-1].int() >= written[:, 1:].int()).all(1) & (last < vocab) & (counters[1] == k)
        return torch.where(ok, k * vocab + last, -1)

    def check(impl, cfg):
        def prepare(call):
            offset.fill_(call * rows)  # one Philox offset per request: a fresh one per call
            out.fill_(-1)
            counters.zero_()

        return _statistical_check(lambda: run(impl, cfg), prepare, -(-SAMPLING_TUNE_DRAWS // rows), outcomes, target)

    nbytes = (draft_probs.numel() + target_probs.numel()) * 4
    return TuneCase(run, check, tolerance=1.0, nbytes=nbytes)


def _register_tuning():
    from aiter_ext.core.tuner import register_tune_target

    register_tune_target("softmax", _softmax_tune_case)
    register_tune_target("renorm", _renorm_tune_case)
    register_tune_target("sampling", _sampling_tune_case)
    register_tune_target("sampling_from_logits", _logits_tune_case)
    register_tune_target("chain_speculative_sampling", _speculative_tune_case)


_register_tuning()
