"""No sampler may return a token outside its allowed set, at any number of draws (issue 12).

Two kinds of test:

1. Forced uniforms (the CPU interpreter). ``tl.rand`` is replaced, for the duration of a test, by a
   function that returns the float whose bits are the low 32 bits of the seed; every output row gets
   its own seed, so each row's uniform ``u`` is chosen by the test. The rows are built with traps:
   - a chunk whose sequential prefix sums stall (0.5 followed by thousands of entries each below
     half an ulp of 0.5) while its reduction-tree sum does not, so that for ``u`` in the gap the sum
     says "this chunk" and no prefix passes ``u``;
   - the next chunk starting with a zero-probability entry, which a scan that takes "the first
     prefix above u" would return;
   - zeros scattered through the rest, and ``u`` up to the last float below 1 (rows that sum to
     slightly less than 1 in fp32).
   The ``u`` swept are dense over the gap, spread over [0, 1) and packed below 1. Before the fix of
   issue 12 the plain sampler returned token 8192 (probability 0) for ``u`` in the gap; a test that
   the hook is active guards against a vacuous pass.

2. Draws at scale (the GPU): at least 5 million draws per case over vocabularies 111/32000/128256,
   zero ratios 0.5/0.9 and normal(1), normal(5), Gumbel(0.1) logits, every sampler; no excluded token
   may appear. These need a GPU: on the CPU interpreter they would take days, so they are skipped
   there with that reason.
"""

from __future__ import annotations

import contextlib
import os
import sys

import pytest
import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(__file__))
from conftest import DEVICE  # noqa: E402

from aiter_ext.ops import sampling as S  # noqa: E402
from aiter_ext.ops.sampling import reference as R  # noqa: E402

ON_GPU = DEVICE.type == "cuda"
TRAP_VOCAB = 16384  # two 8192-wide chunks of the row kernel under the interpreter; 64 of the chunked path's


@triton.jit
def seed_bits_as_uniform(seed, offset):
    return (seed & 0xFFFFFFFF).to(tl.int32).to(tl.float32, bitcast=True) + tl.zeros(offset.shape, tl.float32)


@contextlib.contextmanager
def forced_uniforms():
    """Within the block, ``tl.rand(seed, offset)`` returns the float32 whose bits are ``seed``'s low 32
    bits (interpreter only: compiled kernels resolve ``tl.rand`` once, when first compiled)."""
    real = tl.rand
    tl.rand = seed_bits_as_uniform
    try:
        yield
    finally:
        tl.rand = real


def seeds_for(u: torch.Tensor):
    """Per-row (seed, offset) tensors that make each row's forced uniform ``u[i]``."""
    bits = u.float().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return bits.to(DEVICE), torch.zeros_like(bits).to(DEVICE)


def trap_row(vocab: int = TRAP_VOCAB, zero_fraction: float = 0.5) -> torch.Tensor:
    """[1, vocab] fp32 probabilities with the traps described in the module docstring."""
    half = 8192
    p = torch.zeros(vocab, dtype=torch.float64)
    p[0] = 0.5
    p[1:half] = 2.9e-8  # below half an ulp of 0.5: a sequential running sum from 0.5 never moves
    rest = torch.rand(vocab - half - 1, dtype=torch.float64) + 0.01
    rest[torch.rand(vocab - half - 1) < zero_fraction] = 0.0
    p[half + 1:] = rest / rest.sum() * (1.0 - float(p[:half].sum()))
    return p.float()[None].to(DEVICE)  # p[half] stays 0: the entry a broken scan returns


def swept_uniforms() -> torch.Tensor:
    below_one = 1.0 - torch.arange(1, 33, dtype=torch.float64) * 2.0**-24
    return torch.cat([torch.linspace(0.4999, 0.5004, 300, dtype=torch.float64),  # the stalled chunk's gap
                      torch.linspace(0.0, 1.0, 200, dtype=torch.float64)[:-1], below_one,
                      torch.zeros(1, dtype=torch.float64)]).float()


# (name, call(probs, seed, offset) -> tokens, the allowed set as a function of probs)
def _probs_cases():
    k_all = TRAP_VOCAB
    return [
        ("sampling_from_probs", lambda p, **kw: S.sampling_from_probs(p, **kw), lambda p: p > 0),
        ("top_k (k = V)", lambda p, **kw: S.top_k_sampling_from_probs(p, k_all, **kw), lambda p: p > 0),
        ("top_k 20", lambda p, **kw: S.top_k_sampling_from_probs(p, 20, **kw),
         lambda p: R.top_k_distribution(p, 20) > 0),
        ("top_p 1.0", lambda p, **kw: S.top_p_sampling_from_probs(p, 1.0, **kw), lambda p: p > 0),
        ("top_p 0.7", lambda p, **kw: S.top_p_sampling_from_probs(p, 0.7, **kw),
         lambda p: R.top_p_distribution(p, 0.7) > 0),
        ("min_p 0.0", lambda p, **kw: S.min_p_sampling_from_probs(p, 0.0, **kw), lambda p: p > 0),
        ("min_p 1e-4", lambda p, **kw: S.min_p_sampling_from_probs(p, 1e-4, **kw),
         lambda p: R.min_p_distribution(p, 1e-4) > 0),
        ("joint (k = V, p = 1)", lambda p, **kw: S.top_k_top_p_sampling_from_probs(
            p, k_all, 1.0, filter_apply_order="joint", **kw), lambda p: p > 0),
        ("top_k_first (k = V, p = 1)", lambda p, **kw: S.top_k_top_p_sampling_from_probs(p, k_all, 1.0, **kw),
         lambda p: p > 0),
        ("sampling_from_logits", lambda p, **kw: S.sampling_from_logits(torch.log(p), **kw), lambda p: p > 0),
        ("top_k_top_p_from_logits", lambda p, **kw: S.top_k_top_p_sampling_from_logits(torch.log(p), k_all, 1.0, **kw),
         lambda p: p > 0),
    ]


PROBS_CASES = _probs_cases()


@pytest.mark.skipif(ON_GPU, reason="forcing tl.rand works under the interpreter only; on a GPU the 5M-draw "
                                   "tests below cover exclusion")
def test_forced_uniforms_hook_is_active():
    """The hook must take effect, or the forced tests below would pass vacuously."""
    probs = torch.tensor([[0.25, 0.0, 0.25, 0.5]], device=DEVICE)
    u = torch.tensor([0.0, 0.3, 0.6, 0.99])
    seed, offset = seeds_for(u)
    with forced_uniforms():
        tokens = S.sampling_from_probs(probs, indices=torch.zeros(4, dtype=torch.int32, device=DEVICE), seed=seed,
                                       offset=offset)
    assert tokens.tolist() == [0, 2, 3, 3]


@pytest.mark.skipif(ON_GPU, reason="forcing tl.rand works under the interpreter only")
@pytest.mark.parametrize("name, call, allowed", PROBS_CASES, ids=[c[0] for c in PROBS_CASES])
def test_forced_uniforms_never_pick_an_excluded_token(name, call, allowed):
    check_forced_uniforms(name, call, allowed, every=1)


def check_forced_uniforms(name, call, allowed, every: int = 5):
    """``call`` on the trap row at every ``every``-th uniform of the sweep (the gap's among them): every
    token kept, every row valid. Every fifth for the paths whose programs are slow on the interpreter."""
    probs = trap_row()
    u = swept_uniforms()[::every]
    seed, offset = seeds_for(u)
    indices = torch.zeros(u.numel(), dtype=torch.int32, device=DEVICE)
    with forced_uniforms():
        tokens, valid = call(probs, indices=indices, seed=seed, offset=offset, return_valid=True)
    kept = allowed(probs.cpu())[0]
    bad = ~kept[tokens.long().cpu()]
    assert not bad.any(), (f"{name}: excluded tokens {tokens.cpu()[bad].unique().tolist()[:8]} for u = "
                           f"{u[bad][:4].tolist()}")
    assert valid.all()


SPLIT_PROBS_CASES = [c for c in PROBS_CASES if "logits" not in c[0]]  # the samplers from probabilities


@pytest.mark.skipif(ON_GPU, reason="forcing tl.rand works under the interpreter only")
@pytest.mark.parametrize("block", [2048, 256], ids=["resident", "spans"])
@pytest.mark.parametrize("name, call, allowed", SPLIT_PROBS_CASES, ids=[c[0] for c in SPLIT_PROBS_CASES])
def test_forced_uniforms_split_kernel(name, call, allowed, block, monkeypatch):
    """The same traps through the split kernel (split_kernels.py): 8 spans of 2048, held as one chunk
    each (resident) or walked in 256-wide chunks. The stalled prefix sums now sit inside span 0, and the
    spans' sums meet the scan's prefix sums at the span boundaries. One program per row runs there
    (0.1 s each), so every fifth uniform of the sweep is drawn, the gap's and those below 1 included."""
    from aiter_ext.ops.sampling import launchers
    from aiter_ext.ops.sampling.split_kernels import split_config

    forced = {}

    def split_launch(vocab, rows, config, full_passes=True):
        forced["cfg"] = split_config(vocab, rows, "cpu", 8 * rows, True, block)
        return forced["cfg"]

    monkeypatch.setattr(launchers, "_split_launch", split_launch)
    real_chunked = launchers.chunked.chunked_launch  # min-p alone takes the chunked path there: not here
    monkeypatch.setattr(launchers.chunked, "chunked_launch",
                        lambda op, *a, **kw: None if op == "min_p" else real_chunked(op, *a, **kw))
    check_forced_uniforms(name, call, allowed)
    assert forced["cfg"]["num_spans"] == 8 and forced["cfg"]["RESIDENT"] == (block == 2048)


ROUNDS_PROBS_CASES = [c for c in SPLIT_PROBS_CASES if c[0].startswith(("top_k", "top_p", "joint"))]


@pytest.mark.skipif(ON_GPU, reason="forcing tl.rand works under the interpreter only")
@pytest.mark.parametrize("rounds_drawn, fused", [(1, False), (3, True)])
@pytest.mark.parametrize("name, call, allowed", ROUNDS_PROBS_CASES, ids=[c[0] for c in ROUNDS_PROBS_CASES])
def test_forced_uniforms_rounds_by_chunks(name, call, allowed, rounds_drawn, fused, monkeypatch):
    """The same traps through the rounds path (rounds_kernels.py) in two 8192-wide chunks: the stalled
    prefix sums fill chunk 0, whose sum passes them, and chunk 1 starts at the zero that taking "the next
    entry" would return. One round by chunks, then the row kernel resumed; or three, each round's check
    and judge fused. Every fifth uniform of the sweep, the gap's included."""
    from aiter_ext.ops.sampling import launchers
    from aiter_ext.ops.sampling.rounds_kernels import rounds_config

    forced = {}

    def rounds_launch(vocab, config, top_k, top_p, min_p):
        forced["cfg"] = rounds_config(vocab, True, 8192, rounds_drawn, fused=fused)
        return forced["cfg"]

    monkeypatch.setattr(launchers, "_rounds_launch", rounds_launch)
    check_forced_uniforms(name, call, allowed)
    assert forced["cfg"]["num_chunks"] == 2


@pytest.mark.skipif(ON_GPU, reason="forcing tl.rand works under the interpreter only")
@pytest.mark.parametrize("block", [None, 8192], ids=["one-chunk", "chunks"])
def test_forced_uniforms_chain_speculative_resample(block, monkeypatch):
    """Every draft is rejected (its target probability is 0), so each row's token is drawn from
    relu(p - q), which is the trap row itself; with forced uniforms no zero of it may come out. In one
    chunk, or in two (speculative_kernels.py's two launches: the stalled prefix sums fill chunk 0, whose
    sum passes them, and chunk 1 starts at the zero that taking "the next entry" would return)."""
    from aiter_ext.ops.sampling import speculative_kernels as K

    real = K.speculative_config
    monkeypatch.setattr(K, "speculative_config",
                        lambda vocab, batch, interp=False, b=0, w=0: real(vocab, batch, interp, block or b, w))
    batch_u = swept_uniforms()
    batch, vocab = batch_u.numel(), TRAP_VOCAB
    p = trap_row()[0].cpu()
    draft_token = 8192  # p = 0 there
    q = torch.zeros(vocab)
    q[draft_token] = 1.0
    draft_probs = q.expand(batch, 1, vocab).contiguous().to(DEVICE)
    target_probs = torch.stack([p, p]).expand(batch, 2, vocab).contiguous().to(DEVICE)
    ids = torch.full((batch, 1), draft_token, dtype=torch.int32, device=DEVICE)
    seed, offset = seeds_for(batch_u)
    with forced_uniforms():
        out, accepted, emitted = S.chain_speculative_sampling(draft_probs, ids, target_probs, seed=seed, offset=offset)
    assert (emitted == 0).all() and (out[:, 1] == -1).all()
    tokens = out[:, 0].long().cpu()
    assert (p[tokens] > 0).all(), f"excluded tokens {tokens[p[tokens] == 0].unique().tolist()[:8]}"


# --------------------------------------------------------------------------------------------------
# At scale, on the GPU

EXCLUSION_DRAWS = int(os.environ.get("AITER_EXT_EXCLUSION_DRAWS", 5_000_000))


def _logits(vocab: int, dist: str, zero_ratio: float) -> torch.Tensor:
    if dist == "gumbel":
        x = torch.distributions.Gumbel(0.0, 0.1).sample((1, vocab)).double()
    else:
        x = torch.randn(1, vocab, dtype=torch.float64) * float(dist.split("_")[1])
    x[torch.rand(1, vocab) < zero_ratio] = float("-inf")
    x[0, 0] = 0.0 if x[0, 0] == float("-inf") else x[0, 0]
    return x


# Kept sets for the GPU cases. Where a filter's boundary is decided by an fp32 running mass, a token
# within rounding of it may fall either way: the set is widened by that margin (1e-5 of mass, 1e-6
# relative for min-p), so only clear exclusions (and every zero-probability token) count.
def _top_p_kept(p, t):
    return (R.mass_strictly_above(p) < t + 1e-5) & (p > 0)


def _min_p_kept(p, t):
    return (p.double() >= t * p.double().max(-1, keepdim=True).values * (1 - 1e-6)) & (p > 0)


GPU_SAMPLERS = {
    "plain": (lambda p, lg, **kw: S.sampling_from_probs(p, **kw), lambda p: p > 0),
    "top_k 50": (lambda p, lg, **kw: S.top_k_sampling_from_probs(p, 50, **kw), lambda p: R.top_k_keep(p, 50) & (p > 0)),
    "top_k V": (lambda p, lg, **kw: S.top_k_sampling_from_probs(p, p.shape[1], **kw), lambda p: p > 0),
    "top_p 0.9": (lambda p, lg, **kw: S.top_p_sampling_from_probs(p, 0.9, **kw), lambda p: _top_p_kept(p, 0.9)),
    "top_p 1.0": (lambda p, lg, **kw: S.top_p_sampling_from_probs(p, 1.0, **kw), lambda p: p > 0),
    "min_p 0.2": (lambda p, lg, **kw: S.min_p_sampling_from_probs(p, 0.2, **kw), lambda p: _min_p_kept(p, 0.2)),
    "min_p 0.0": (lambda p, lg, **kw: S.min_p_sampling_from_probs(p, 0.0, **kw), lambda p: p > 0),
    "joint 50/0.9": (lambda p, lg, **kw: S.top_k_top_p_sampling_from_probs(p, 50, 0.9, filter_apply_order="joint",
                                                                            **kw),
                     lambda p: R.top_k_keep(p, 50) & _top_p_kept(p, 0.9)),
    "top_k_first V/1.0": (lambda p, lg, **kw: S.top_k_top_p_sampling_from_probs(p, p.shape[1], 1.0, **kw),
                          lambda p: p > 0),
    "from_logits": (lambda p, lg, **kw: S.sampling_from_logits(lg, **kw), lambda p: p > 0),
    "pipe softmax+min_p 0.2": (lambda p, lg, **kw: _pipe_min_p(lg, **kw), lambda p: _min_p_kept(p, 0.2)),
}


def _pipe_min_p(logits, **kw):
    from aiter_ext.logits_processor import LogitsPipe, MinP, Sample, Softmax

    return LogitsPipe([Softmax(), MinP(0.2), Sample()])(logits, **kw)


@pytest.mark.skipif(not ON_GPU, reason="5M draws per case need a GPU (days on the CPU interpreter); the forced "
                                       "tests above cover the CPU")
@pytest.mark.parametrize("sampler", list(GPU_SAMPLERS))
@pytest.mark.parametrize("dist", ["normal_1", "normal_5", "gumbel"])
@pytest.mark.parametrize("zero_ratio", [0.5, 0.9])
@pytest.mark.parametrize("vocab", [111, 32000, 128256])
def test_no_excluded_token_in_5m_draws(vocab, zero_ratio, dist, sampler):
    call, allowed = GPU_SAMPLERS[sampler]
    logits = _logits(vocab, dist, zero_ratio)
    probs = torch.softmax(logits, -1).float()
    kept = allowed(probs)[0].to(DEVICE)
    probs, logits = probs.to(DEVICE), logits.float().to(DEVICE)
    indices = torch.zeros(EXCLUSION_DRAWS, dtype=torch.int32, device=DEVICE)
    tokens = call(probs, logits, indices=indices, seed=int(torch.randint(0, 2**31, (1,))), offset=0)
    bad = ~kept[tokens.long()]
    assert not bool(bad.any()), f"{int(bad.sum())} excluded draws, tokens {tokens[bad].unique().tolist()[:8]}"


# The split kernel (split_kernels.py) at scale: small calls, as a decode step makes them, replayed from a
# CUDA graph (seeds drawn from the generator inside it) until 5M draws; the tokens are counted in the
# graph. "spans": half the SMs' worth of rows, two spans each; "resident": as many rows as leave one
# 4096-wide span per program (4 rows at vocabulary 128256 on an H100, so that case takes 1.25M replays:
# only zero ratio 0.9 there).
# Plain and top-p alone take spans of several chunks only when forced (split_config's full_passes), so
# that layout runs the others.
SPLIT_GPU_SAMPLERS = ["plain", "top_k 50", "top_p 0.9", "min_p 0.2", "joint 50/0.9"]
SPLIT_GPU_CASES = [(layout, vocab, zero_ratio, sampler) for layout in ("spans", "resident") for vocab in (32000, 128256)
                   for zero_ratio in (0.5, 0.9) for sampler in SPLIT_GPU_SAMPLERS
                   if not (layout == "resident" and vocab == 128256 and zero_ratio == 0.5)
                   and not (layout == "spans" and sampler in ("plain", "top_p 0.9"))]


@pytest.mark.skipif(not ON_GPU, reason="5M draws per case need a GPU; test_forced_uniforms_split_kernel covers the CPU")
@pytest.mark.parametrize("layout, vocab, zero_ratio, sampler", SPLIT_GPU_CASES, ids=["-".join(map(str, c)) for c in SPLIT_GPU_CASES])
def test_split_kernel_no_excluded_token_in_5m_draws(layout, vocab, zero_ratio, sampler):
    from test_sampling import graph_replay_counts, split_rows

    from aiter_ext.ops.sampling.launchers import _split_launch

    call, allowed = GPU_SAMPLERS[sampler]
    logits = _logits(vocab, "normal_5", zero_ratio)
    probs = torch.softmax(logits, -1).float()
    kept = allowed(probs)[0]
    probs, logits = probs.to(DEVICE), logits.float().to(DEVICE)
    rows = split_rows(vocab, layout == "resident")
    cfg = _split_launch(vocab, rows, None, full_passes=sampler.split()[0] in ("top_k", "min_p", "joint"))
    assert cfg is not None and cfg["RESIDENT"] == (layout == "resident"), cfg  # the default route at this batch
    indices = torch.zeros(rows, dtype=torch.int32, device=DEVICE)
    counts = graph_replay_counts(lambda: call(probs, logits, indices=indices), vocab, rows, EXCLUSION_DRAWS)
    assert int(counts.sum()) == -(-EXCLUSION_DRAWS // rows) * rows
    bad = (counts > 0) & ~kept
    assert not bool(bad.any()), f"{int(counts[bad].sum())} excluded draws, tokens {bad.nonzero().flatten()[:8].tolist()}"


# Chain speculative sampling's resample at scale: every draft is a token the target gives 0 (always
# rejected), so every emitted token is drawn from relu(p - q); the excluded set is p <= q, exactly as the
# fp32 subtraction decides it. 1024 requests a replay (the default two-launch draw), 5M draws.
SPEC_GPU_CASES = [(vocab, zero_ratio, dist) for vocab in (111, 32000, 128256) for zero_ratio in (0.5, 0.9)
                  for dist in ("normal_5", "gumbel")]


@pytest.mark.skipif(not ON_GPU, reason="5M draws per case need a GPU; test_forced_uniforms_chain_speculative_resample "
                                       "covers the CPU")
@pytest.mark.parametrize("vocab, zero_ratio, dist", SPEC_GPU_CASES, ids=["-".join(map(str, c)) for c in SPEC_GPU_CASES])
def test_chain_speculative_resample_no_excluded_token_in_5m_draws(vocab, zero_ratio, dist):
    from test_sampling import graph_replay_counts

    requests = 1024
    p = torch.softmax(_logits(vocab, dist, zero_ratio), -1).float()[0]
    q = torch.softmax(_logits(vocab, dist, 0.0), -1).float()[0]
    draft = int(torch.where(p == 0, q, -1.0).argmax())
    assert p[draft] == 0 and q[draft] > 0
    kept = p > q
    assert kept.any() and not kept.all()
    draft_probs = q.expand(requests, 1, vocab).contiguous().to(DEVICE)
    target_probs = torch.stack([p, p]).expand(requests, 2, vocab).contiguous().to(DEVICE)
    ids = torch.full((requests, 1), draft, dtype=torch.int32, device=DEVICE)
    out, _, emitted = S.chain_speculative_sampling(draft_probs, ids, target_probs)
    assert int(emitted.sum()) == 0 and bool((out[:, 1] == -1).all())
    counts = graph_replay_counts(lambda: S.chain_speculative_sampling(draft_probs, ids, target_probs)[0][:, 0],
                                 vocab, requests, EXCLUSION_DRAWS)
    assert int(counts.sum()) == -(-EXCLUSION_DRAWS // requests) * requests
    bad = (counts > 0) & ~kept
    assert not bool(bad.any()), f"{int(counts[bad].sum())} excluded draws, tokens {bad.nonzero().flatten()[:8].tolist()}"


# The rounds path (rounds_kernels.py) at scale: 5M output rows in one call, forced (by default only top-p at
# 2-64 rows takes it), one round by chunks (so most top-k rows end in the resumed row kernel) or three (the
# default route's count).
ROUNDS_GPU_CASES = [(vocab, zero_ratio, sampler, rounds) for vocab in (32000, 128256) for zero_ratio in (0.5, 0.9)
                    for sampler in ("top_k 50", "top_p 0.9", "joint 50/0.9") for rounds in (1, 3)]


@pytest.mark.skipif(not ON_GPU, reason="5M draws per case need a GPU; test_forced_uniforms_rounds_by_chunks covers "
                                       "the CPU")
@pytest.mark.parametrize("vocab, zero_ratio, sampler, rounds", ROUNDS_GPU_CASES,
                         ids=["-".join(map(str, c)) for c in ROUNDS_GPU_CASES])
def test_rounds_by_chunks_no_excluded_token_in_5m_draws(vocab, zero_ratio, sampler, rounds):
    from aiter_ext.ops.sampling.api import _sample, _thresholds

    _, allowed = GPU_SAMPLERS[sampler]
    k = 50 if sampler.startswith(("top_k", "joint")) else None
    p = 0.9 if sampler.startswith(("top_p", "joint")) else None
    probs = torch.softmax(_logits(vocab, "normal_5", zero_ratio), -1).float()
    kept = allowed(probs)[0].to(DEVICE)
    probs = probs.to(DEVICE)
    indices = torch.zeros(EXCLUSION_DRAWS, dtype=torch.int32, device=DEVICE)
    tokens = _sample(probs, indices, *_thresholds(probs, k, p, None), None, False,
                     int(torch.randint(0, 2**31, (1,))), 0, False, None, {"rounds": True, "rounds_drawn": rounds})
    bad = ~kept[tokens.long()]
    assert not bool(bad.any()), f"{int(bad.sum())} excluded draws, tokens {tokens[bad].unique().tolist()[:8]}"
