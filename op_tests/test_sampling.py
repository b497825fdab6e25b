"""Sampling (issue 4, in progress): statistical tests against the fp64 reference distributions.

The stated test, per case:
- Draw N tokens from one fixed distribution (``indices`` = zeros, so every output row samples source row 0 with its own Philox counter).
- Assert that no token outside the kept set is ever drawn.
- Run a chi-square goodness-of-fit test of the counts against N times the reference distribution. Bins with an expected count below 5 are pooled.
- Fail when the p-value is below ALPHA = 1e-4. Inputs are fresh per test id (conftest), so a correct kernel fails a case with probability 1e-4.

N is 20k on the CPU interpreter (CI) and 400k on a GPU. At 20k draws, a kernel that draws uniformly from the kept set, or that misses the smallest kept token, gives a chi-square far past that threshold; the mask check catches one extra token outright.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import DEVICE, grid  # noqa: E402

ON_GPU = DEVICE.type == "cuda"

from aiter_ext.core.testing import chi_square_p_value  # noqa: E402
from aiter_ext.ops import sampling as S  # noqa: E402
from aiter_ext.ops.sampling import reference as R  # noqa: E402
from aiter_ext.ops.sampling.api import _thresholds  # noqa: E402

ALPHA = 1e-4
DRAWS = grid(20_000, 400_000)
VOCABS = grid([16, 256], [16, 256, 1024])
# Min-p and from-logits sampling and softmax can spread each row over many programs
# (chunked_kernels.py): on the interpreter above one 256-wide chunk, on a GPU from vocabulary 65536
# (min-p also from batch 128). These vocabularies take that path.
CHUNKED_VOCAB = grid(1000, 70000)


def random_probs(vocab: int, rows: int = 1, zero_fraction: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    logits = torch.randn(rows, vocab, dtype=torch.float64) * scale
    if zero_fraction:
        logits[torch.rand(rows, vocab) < zero_fraction] = float("-inf")
        logits[:, 0] = 0.0  # keep at least one token
    return torch.softmax(logits, -1).float().to(DEVICE)


def check_distribution(tokens: torch.Tensor, target: torch.Tensor, what: str) -> None:
    counts = torch.bincount(tokens.long().cpu(), minlength=target.numel())
    outside = (counts > 0) & (target.cpu() == 0)
    assert not outside.any(), f"{what}: drew tokens outside the kept set: {outside.nonzero().flatten().tolist()[:10]}"
    p = chi_square_p_value(counts, target.cpu())
    assert p > ALPHA, f"{what}: chi-square p-value {p:.3g} <= {ALPHA} over {int(counts.sum())} draws"


def draw(fn, probs, *args, **kwargs):
    indices = torch.zeros(DRAWS, dtype=torch.int32, device=DEVICE)
    return fn(probs, *args, indices=indices, seed=int(torch.randint(0, 2**31, (1,))), offset=0, **kwargs)


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("zero_fraction", [0.0, 0.5])
def test_sampling_from_probs_frequencies(vocab, zero_fraction):
    probs = random_probs(vocab, zero_fraction=zero_fraction)
    check_distribution(draw(S.sampling_from_probs, probs), R.normalised(probs)[0], "sampling_from_probs")


# (sampler, reference, threshold): each threshold its own case; top_k 100000 is k >= vocab
FILTER_CASES = [(S.top_k_sampling_from_probs, R.top_k_distribution, k) for k in (1, 5, 10, 100000)]
FILTER_CASES += [(S.top_p_sampling_from_probs, R.top_p_distribution, p) for p in (0.1, 0.5, 0.9, 1.0)]
FILTER_CASES += [(S.min_p_sampling_from_probs, R.min_p_distribution, m) for m in (0.0, 0.05, 0.2, 0.7, 1.0)]


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("sampler, reference, threshold", FILTER_CASES,
                         ids=[f"{fn.__name__.split('_sampling')[0]}={t}" for fn, _, t in FILTER_CASES])
def test_filtered_frequencies(vocab, sampler, reference, threshold):
    probs = random_probs(vocab, scale=2.0)
    check_distribution(draw(sampler, probs, threshold), reference(probs, threshold)[0],
                       f"{sampler.__name__}({threshold})")


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("top_k_frac, top_p", [(0.5, 0.1), (0.1, 0.5), (0.25, 0.9)])
def test_joint_top_k_top_p_frequencies(vocab, top_k_frac, top_p):
    probs = random_probs(vocab, scale=2.0)
    top_k = max(1, int(vocab * top_k_frac))
    target = R.joint_top_k_top_p_distribution(probs, top_k, top_p)[0]
    tokens = draw(S.top_k_top_p_sampling_from_probs, probs, top_k, top_p, filter_apply_order="joint")
    check_distribution(tokens, target, f"joint top_k={top_k} top_p={top_p}")


@pytest.mark.parametrize("case", ["min_p", "logits"])
def test_chunked_path_frequencies(case):
    """The chunked path (each row over many programs) against the same references, at a vocabulary
    that is not a multiple of the chunk width."""
    from aiter_ext.ops.sampling.chunked import chunked_launch

    assert chunked_launch(case, CHUNKED_VOCAB, DRAWS) is not None, "this case should take the chunked path"
    logits = torch.randn(1, CHUNKED_VOCAB, dtype=torch.float64) * 3
    logits[0, torch.rand(CHUNKED_VOCAB) < 0.3] = float("-inf")
    logits[0, 0] = 0.0
    probs = torch.softmax(logits, -1).float().to(DEVICE)
    if case == "min_p":
        tokens, target = draw(S.min_p_sampling_from_probs, probs, 0.05), R.min_p_distribution(probs, 0.05)[0]
    else:
        tokens, target = draw(S.sampling_from_logits, logits.float().to(DEVICE)), torch.softmax(logits, -1)[0]
    check_distribution(tokens, target, f"chunked {case}")


def test_per_row_thresholds_follow_the_source_row():
    """Thresholds are indexed by the source row (``indices[i]``), not by the output row."""
    vocab, rows = 64, 4
    probs = random_probs(vocab, rows=rows, scale=2.0)
    top_k = torch.tensor([1, 3, 64, 10], dtype=torch.int32, device=DEVICE)
    min_p = torch.tensor([0.9, 0.0, 0.5, 0.2], dtype=torch.float32, device=DEVICE)
    indices = torch.tensor([3, 0, 2, 1] * 500, dtype=torch.int64, device=DEVICE)
    for fn, thr, ref in ((S.top_k_sampling_from_probs, top_k, R.top_k_distribution),
                         (S.min_p_sampling_from_probs, min_p, R.min_p_distribution)):
        tokens = fn(probs, thr, indices=indices, seed=7, offset=3)
        assert tokens.dtype == torch.int64  # the output takes the indices' dtype
        kept = ref(probs, thr) > 0
        assert kept[indices.cpu(), tokens.long().cpu()].all(), f"{fn.__name__}: a token outside its source row's set"


def test_seed_and_offset_reproduce_and_generator_advances():
    probs = random_probs(1000, rows=64)
    a = S.top_p_sampling_from_probs(probs, 0.9, seed=123, offset=7)
    assert torch.equal(a, S.top_p_sampling_from_probs(probs, 0.9, seed=123, offset=7))
    assert not torch.equal(a, S.top_p_sampling_from_probs(probs, 0.9, seed=123, offset=8))
    per_row = torch.full((64,), 123, dtype=torch.int64, device=DEVICE)
    b = S.top_p_sampling_from_probs(probs, 0.9, seed=per_row, offset=torch.full_like(per_row, 7))
    assert torch.equal(a, b)  # per-row seeds equal to the scalar give the same counters
    gen = torch.Generator(device=DEVICE).manual_seed(5)
    first = S.sampling_from_probs(probs, generator=gen)
    second = S.sampling_from_probs(probs, generator=gen)
    assert not torch.equal(first, second), "the generator did not advance"
    again = S.sampling_from_probs(probs, generator=torch.Generator(device=DEVICE).manual_seed(5))
    assert torch.equal(first, again)


def test_pooled_seeds_follow_the_generator_and_the_stream():
    """seeds.py's pool, with a stand-in generator (Philox's seed and offset) and draw: one draw serves POOL_SIZE
    calls while nothing else moves the generator; any move, a re-seed, a full pool or another stream draws
    again; a re-seed to the same seed repeats the same seeds."""
    from aiter_ext.ops.sampling import seeds

    class Philox:
        def __init__(self, seed):
            self.seed, self.offset = seed, 0

        def initial_seed(self):
            return self.seed

        def get_offset(self):
            return self.offset

    draws = []

    def draw(gen, device, n):  # a function of the generator's state, advancing it as torch's draws do
        draws.append((gen.seed, gen.offset))
        out = torch.arange(n, dtype=torch.int64) + 1000 * gen.seed + 10 ** 6 * gen.offset
        gen.offset += n
        return out

    gen = Philox(7)
    first = [seeds.pooled_seed(gen, "cpu", 0, draw) for _ in range(seeds.POOL_SIZE)]
    assert len(draws) == 1 and len({int(t) for t in first}) == seeds.POOL_SIZE
    assert all(t.shape == (1,) and t.dtype == torch.int64 and t.data_ptr() % 16 == 0 for t in first)
    seeds.pooled_seed(gen, "cpu", 0, draw)
    assert len(draws) == 2  # the pool was used up
    gen.offset += 4  # another use of the generator (a torch random op)
    seeds.pooled_seed(gen, "cpu", 0, draw)
    assert len(draws) == 3
    seeds.pooled_seed(gen, "cpu", 1, draw)  # another stream
    assert len(draws) == 4
    gen.seed, gen.offset = 7, 0  # manual_seed(7) again: the same seeds as the first time
    again = [seeds.pooled_seed(gen, "cpu", 0, draw) for _ in range(5)]
    assert [int(t) for t in again] == [int(t) for t in first[:5]]
    seeds._POOLS.clear()


@pytest.mark.skipif(not ON_GPU, reason="the pool serves CUDA generators (the lent GPU)")
def test_pooled_seeds_reproduce_after_manual_seed_and_vary_in_graph_replays():
    probs = torch.full((1, 4096), 1 / 4096, device=DEVICE)
    torch.manual_seed(3)
    first = torch.cat([S.sampling_from_probs(probs) for _ in range(300)])  # past one pool of seeds
    torch.manual_seed(3)
    again = torch.cat([S.sampling_from_probs(probs) for _ in range(300)])
    assert torch.equal(first, again) and first.unique().numel() > 250  # 300 draws of 4096 equal tokens
    graph = torch.cuda.CUDAGraph()
    S.sampling_from_probs(probs)
    with torch.cuda.graph(graph):
        out = S.sampling_from_probs(probs)
    replays = []
    for _ in range(50):
        graph.replay()
        replays.append(out.clone())
    assert torch.cat(replays).unique().numel() > 40, "a graph replay reused one seed"


@pytest.mark.parametrize("vocab", [40, CHUNKED_VOCAB])
def test_edges_one_hot_ties_nan_and_empty_rows(vocab):
    probs = random_probs(vocab, rows=5)
    probs[1] = 0.0
    probs[1, 17] = 1.0  # one-hot
    probs[2] = 0.0
    probs[2, [3, 9]] = 0.5  # two tied maxima: top_k=1 and min_p=1 keep both
    probs[3] = float("nan")
    probs[4] = 0.0  # no mass
    indices = torch.tensor([1, 2, 3, 4] * 300, dtype=torch.int32, device=DEVICE)
    for fn, args in ((S.sampling_from_probs, ()), (S.top_k_sampling_from_probs, (1,)),
                     (S.top_p_sampling_from_probs, (0.0,)), (S.min_p_sampling_from_probs, (1.0,))):
        tokens, valid = fn(probs, *args, indices=indices, seed=1, offset=0, return_valid=True)
        tokens, valid = tokens.cpu().view(-1, 4), valid.cpu().view(-1, 4)
        assert (tokens[:, 0] == 17).all() and valid[:, 0].all(), fn.__name__
        assert set(tokens[:, 1].tolist()) == {3, 9} and valid[:, 1].all(), fn.__name__
        assert (tokens[:, 2:] == 0).all() and not valid[:, 2:].any(), f"{fn.__name__}: NaN/empty rows"
    with pytest.raises(ValueError, match="probs contains NaN"):
        S.sampling_from_probs(probs, check_nan=True)


def test_bad_arguments_are_named():
    probs = random_probs(32, rows=2)
    with pytest.raises(TypeError, match="probs"):
        S.sampling_from_probs(probs.to(torch.int32))
    with pytest.raises(ValueError, match="top_k"):
        S.top_k_sampling_from_probs(probs, 0)
    with pytest.raises(ValueError, match="top_p"):
        S.top_p_sampling_from_probs(probs, 1.5)
    with pytest.raises(ValueError, match="min_p"):
        S.min_p_sampling_from_probs(probs, torch.zeros(3, device=DEVICE))
    with pytest.raises(ValueError, match="seed and offset"):
        S.sampling_from_probs(probs, seed=1)
    with pytest.raises(ValueError, match="filter_apply_order"):
        S.top_k_top_p_sampling_from_probs(probs, 3, 0.5, filter_apply_order="sideways")
    with pytest.raises(TypeError, match="indices"):
        S.sampling_from_probs(probs, indices=torch.zeros(2, device=DEVICE))


# --------------------------------------------------------------------------------------------------
# FlashInfer's call forms, and inputs that only the device can judge

ALL_SAMPLERS = {  # name -> call(probs, threshold-or-None, **keywords)
    "sampling_from_probs": lambda p, t, **kw: S.sampling_from_probs(p, **kw),
    "top_k": lambda p, t, **kw: S.top_k_sampling_from_probs(p, t, **kw),
    "top_p": lambda p, t, **kw: S.top_p_sampling_from_probs(p, t, **kw),
    "min_p": lambda p, t, **kw: S.min_p_sampling_from_probs(p, t, **kw),
    # the two-filter forms at top_k 5, top_p 0.9 (``t`` is not used)
    "joint": lambda p, t, **kw: S.top_k_top_p_sampling_from_probs(p, 5, 0.9, filter_apply_order="joint", **kw),
    "top_k_first": lambda p, t, **kw: S.top_k_top_p_sampling_from_probs(p, 5, 0.9, **kw),
}


def test_thresholds_of_any_real_dtype_are_taken_per_row():
    """FlashInfer takes ``torch.full((batch,), 1)`` (int64) for top_k, top_p and min_p alike."""
    probs = random_probs(64, rows=3, scale=2.0)
    ones = torch.full((3,), 1, device=DEVICE)  # int64
    assert ones.dtype == torch.int64
    indices = torch.tensor([0, 1, 2] * 200, dtype=torch.int32, device=DEVICE)
    argmax = probs.argmax(-1).cpu()[indices.cpu().long()]
    # k = 1 and min_p = 1 keep only the maximum; top_p = 1 keeps every token
    assert torch.equal(S.top_k_sampling_from_probs(probs, ones, indices=indices).cpu().long(), argmax)
    assert torch.equal(S.min_p_sampling_from_probs(probs, ones, indices=indices).cpu().long(), argmax)
    tokens = S.top_p_sampling_from_probs(probs, ones, indices=indices).cpu()
    assert len(set(tokens.tolist())) > 10
    for dtype in (torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.uint8):
        k = torch.full((3,), 1, dtype=dtype, device=DEVICE)
        assert torch.equal(S.top_k_sampling_from_probs(probs, k, indices=indices).cpu().long(), argmax), dtype
    # a float top_k is truncated (FlashInfer's .int()): 1.9 keeps one token
    k = torch.full((3,), 1.9, device=DEVICE)
    assert torch.equal(S.top_k_sampling_from_probs(probs, k, indices=indices).cpu().long(), argmax)


def test_out_of_range_thresholds_in_tensors_have_a_meaning():
    """Per-row values are only read on the device: documented meanings, never an invalid row."""
    vocab = 64
    probs = random_probs(vocab, rows=4, scale=2.0)
    probs[:, :8] = 0.0  # zeros that "keep everything" must still never return
    probs = probs / probs.sum(-1, keepdim=True)
    indices = torch.tensor([0, 1, 2, 3] * 300, dtype=torch.int32, device=DEVICE)
    src = indices.cpu().long()
    argmax = probs.argmax(-1).cpu()[src]
    cases = {  # threshold tensor -> (sampler, is each row "keep all" (True) or "the maximum only" (False))
        "top_k <= 0: no filter": ("top_k", torch.tensor([0, -1, -(2**40), vocab * 2]), [True] * 4),
        "top_p >= 1 or NaN: no filter; <= 0: the maximum": ("top_p", torch.tensor([1.5, float("nan"), 0.0, -3.0]),
                                                             [True, True, False, False]),
        "min_p clamped: > 1 the maximum, < 0 or NaN no filter": ("min_p", torch.tensor([7.0, -1.0, float("nan"), 1.0]),
                                                                  [False, True, True, False]),
    }
    for what, (name, values, keep_all) in cases.items():
        tokens, valid = ALL_SAMPLERS[name](probs, values.to(DEVICE), indices=indices, seed=5, offset=0,
                                           return_valid=True)
        tokens = tokens.cpu().long()
        assert valid.all(), what
        assert (probs.cpu()[src, tokens] > 0).all(), f"{what}: a zero-probability token"
        for row, all_kept in enumerate(keep_all):
            mine = tokens[src == row]
            if all_kept:
                assert len(set(mine.tolist())) > 5, f"{what}: row {row} should keep every token"
            else:
                assert (mine == argmax[src == row]).all(), f"{what}: row {row} should keep the maximum only"


@pytest.mark.parametrize("name", list(ALL_SAMPLERS))
def test_indices_outside_the_rows_are_never_read(name):
    """An ``indices`` entry outside [0, B) gives token 0, invalid, and reads nothing past ``probs``:
    the rows are a view inside a larger buffer whose neighbours hold one-hot guard rows."""
    vocab, rows = 40, 4
    buffer = torch.zeros(rows + 4, vocab, device=DEVICE)
    buffer[:, vocab - 1] = 1.0  # guard rows: a read past the view would return token vocab - 1
    probs = buffer[2:2 + rows]
    probs.copy_(random_probs(vocab, rows=rows))
    probs[:, vocab - 1] = 0.0
    probs /= probs.sum(-1, keepdim=True).clone()
    indices = torch.tensor([0, 7, -1, 3, rows, -(2**31)], dtype=torch.int32, device=DEVICE)
    threshold = {"top_k": 5, "top_p": 0.9, "min_p": 0.1}.get(name)
    tokens, valid = ALL_SAMPLERS[name](probs, threshold, indices=indices, seed=3, offset=1, return_valid=True)
    assert valid.cpu().tolist() == [True, False, False, True, False, False]
    assert (tokens.cpu()[[1, 2, 4, 5]] == 0).all()
    assert (tokens.cpu()[[0, 3]] != vocab - 1).all()


@pytest.mark.parametrize("vocab", [64, CHUNKED_VOCAB])
def test_indices_outside_the_rows_from_logits_and_chunked_min_p(vocab):
    logits = torch.randn(3, vocab, device=DEVICE)
    indices = torch.tensor([2, 3, -5, 0], dtype=torch.int64, device=DEVICE)
    for tokens, valid in (S.sampling_from_logits(logits, indices=indices, seed=1, offset=0, return_valid=True),
                          S.min_p_sampling_from_probs(torch.softmax(logits, -1), 0.05, indices=indices, seed=1,
                                                      offset=0, return_valid=True)):
        assert valid.cpu().tolist() == [True, False, False, True] and tokens.dtype == torch.int64
        assert (tokens.cpu()[[1, 2]] == 0).all()


def test_flashinfer_keywords_and_messages():
    probs = random_probs(32, rows=3)
    kw = dict(seed=1, offset=0)
    for name, fn in ALL_SAMPLERS.items():  # deterministic= on every sampler
        t = {"top_k": 3, "top_p": 0.5, "min_p": 0.1}.get(name)
        a = fn(probs, t, deterministic=False, **kw)
        assert torch.equal(a, fn(probs, t, deterministic=True, **kw)), name
    S.sampling_from_logits(probs.log(), deterministic=False, **kw)
    S.top_k_top_p_sampling_from_logits(probs.log(), 3, 0.5, deterministic=False, **kw)
    S.chain_speculative_sampling(probs[:, None], probs.argmax(-1, keepdim=True).int(),
                                 torch.stack([probs, probs], 1), deterministic=False, **kw)
    out, _, emitted = S.chain_speculative_sampling(probs[:, None].half(), probs.argmax(-1, keepdim=True).int(),
                                                   torch.stack([probs, probs], 1).bfloat16(), **kw)  # .float()'d
    assert ((out >= 0).sum(1) == emitted + 1).all()
    for fn in (S.top_p_renorm_probs, S.top_k_renorm_probs):  # FlashInfer's legacy keyword name
        fn(probs, 2 if fn is S.top_k_renorm_probs else 0.5, is_deterministic=True)
    S.softmax(probs.log(), 1.0, enable_pdl=False)
    # FlashInfer's messages, prefixed with the argument's name
    with pytest.raises(ValueError, match=r"top_p: Expected a 1D tensor or scalar .* but got a 2D tensor"):
        S.top_p_sampling_from_probs(probs, torch.full((3, 1), 0.5, device=DEVICE))
    with pytest.raises(ValueError, match=r"min_p: Expected a 1D tensor of shape \(batch_size,\) or scalar"):
        S.min_p_sampling_from_probs(probs, torch.tensor(0.5, device=DEVICE))
    with pytest.raises(ValueError, match="top_k: Sampling parameter tensor batch size mismatch: expected length 3"):
        S.top_k_sampling_from_probs(probs, torch.ones(4, dtype=torch.int32, device=DEVICE))
    with pytest.raises(TypeError, match="top_k"):
        S.top_k_sampling_from_probs(probs, torch.ones(3, dtype=torch.bool, device=DEVICE))
    # uint64 seeds (FlashInfer's other seed dtype) and one seed with per-row offsets
    if hasattr(torch, "uint64"):
        seed64 = torch.full((1,), 7, dtype=torch.int64, device=DEVICE)
        seedu = torch.full((1,), 7, dtype=torch.uint64, device=DEVICE)
        zero = torch.zeros(1, dtype=torch.int64, device=DEVICE)
        assert torch.equal(S.sampling_from_probs(probs, seed=seed64, offset=zero),
                           S.sampling_from_probs(probs, seed=seedu, offset=zero))
    per_row_offset = torch.zeros(3, dtype=torch.int64, device=DEVICE)
    assert torch.equal(S.sampling_from_probs(probs, seed=7, offset=per_row_offset),
                       S.sampling_from_probs(probs, seed=7, offset=0))
    # half-precision probabilities are read as fp32, as FlashInfer's .float() does
    assert torch.equal(S.top_k_sampling_from_probs(probs.half(), 1, **kw).cpu().long(), probs.half().argmax(-1).cpu())


def test_chain_speculative_out_of_range_draft_ids_are_rejected_and_never_read():
    """A draft id outside [0, V) is rejected (an unchecked read would land in a neighbouring row or
    past the tensor and accept it now and then: ``emitted`` would show it); its position's token is
    drawn from the target there."""
    batch, n, vocab = 400, 2, 16
    q = random_probs(vocab, rows=n, scale=1.5).cpu()
    p = random_probs(vocab, rows=n + 1, scale=1.5).cpu()
    draft = q.expand(batch, n, vocab).contiguous()
    target = p.expand(batch, n + 1, vocab).contiguous()
    ids = torch.multinomial(q[0], batch, replacement=True)[:, None].repeat(1, n).int()
    ids[: batch // 2, 0] = vocab + 3  # past the vocabulary
    ids[batch // 2:, 0] = -2
    out, accepted, emitted = S.chain_speculative_sampling(draft.to(DEVICE), ids.to(DEVICE), target.to(DEVICE),
                                                          seed=4, offset=0)
    out = out.cpu()
    assert (emitted == 0).all() and (out[:, 1:] == -1).all()
    assert (accepted.cpu() <= 1).all()  # only the second (valid) draft may count
    check_distribution(out[:, 0], p[0].double(), "the token at a rejected out-of-range draft")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_backend_selection_and_the_torch_reference_backend(backend, monkeypatch):
    """``backend=`` and AITER_EXT_BACKEND pick the implementation; the torch backend (the fp64
    reference) draws from the same distributions."""
    from aiter_ext.ops.sampling.backends import SAMPLING

    monkeypatch.setenv("AITER_EXT_BACKEND", backend)
    SAMPLING.clear_cache()
    try:
        probs = random_probs(48, scale=2.0)
        indices = torch.zeros(4000, dtype=torch.int32, device=DEVICE)
        tokens = S.min_p_sampling_from_probs(probs, 0.1, indices=indices, seed=2, offset=0)
        choice = SAMPLING.select({"rows": 4000, "vocab": 48, "dtype": "fp32", "device": DEVICE.type, "filter": "min_p"})
        assert choice.impl.backend == backend
        check_distribution(tokens, R.min_p_distribution(probs, 0.1)[0], f"min_p on {backend}")
    finally:
        SAMPLING.clear_cache()
    torch_tokens = S.top_k_sampling_from_probs(probs, 3, indices=indices, seed=2, offset=0, backend="torch")
    check_distribution(torch_tokens, R.top_k_distribution(probs, 3)[0], "top_k, backend='torch'")


def row_kernel_stats(probs, top_k=None, top_p=None, min_p=None):
    """(tokens, rounds, passes over the row) per row of one row-kernel draw: the benchmark's profile."""
    from aiter_ext.ops.sampling import launchers
    from aiter_ext.ops.sampling.inputs import prepare_draw, threshold

    rows, vocab = probs.shape
    draw = prepare_draw(probs, "probs", None, None, False, 11, 0)
    stats = torch.empty(rows, 2, dtype=torch.int32, device=probs.device)
    cfg = launchers.filtered_draw({"chunked": False}, probs, None, threshold("top_k", top_k, rows, probs.device, "top_k"),
                                  threshold("top_p", top_p, rows, probs.device, "unit"),
                                  threshold("min_p", min_p, rows, probs.device, "unit"), draw, stats)
    chunks_per_row = -(-vocab // cfg["BLOCK"])
    return draw.out, stats[:, 0], stats[:, 1].double() / chunks_per_row


def test_row_kernel_profile_counts_rounds_and_passes():
    vocab = 3000
    probs = random_probs(vocab, rows=8, scale=3.0)
    tokens, rounds, passes = row_kernel_stats(probs)
    assert (rounds == 1).all() and (passes > 0).all() and (passes <= 1.0).all()  # plain: one early-exit scan
    _, rounds, passes = row_kernel_stats(probs, min_p=0.1)
    assert (rounds == 1).all() and (passes >= 2).all()  # the maximum and the kept mass, then the draw
    _, rounds, passes = row_kernel_stats(probs, top_k=5)
    assert (rounds >= 1).all() and (passes >= rounds.double()).all()  # each round counts with one full pass
    # the tokens are those of the public call with the same seed
    assert torch.equal(row_kernel_stats(probs, top_k=5)[0], S.top_k_sampling_from_probs(probs, 5, seed=11, offset=0))


# --------------------------------------------------------------------------------------------------
# Renormalisation and masking (exact thresholds)

TOP_P_BOUNDARY = 1e-5  # fp64 margin within which an fp32 running mass may decide either way


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("vocab", grid([111, 2000], [111, 32000, 128256]))
def test_top_k_and_top_p_renorm_match_the_sort_reference(dtype, vocab):
    rows = grid(6, 99)
    probs = random_probs(vocab, rows=rows, scale=3.0).to(dtype)
    probs[1, : vocab // 3] = 0.0  # zeros (a -inf logit)
    probs = (probs.float() / probs.float().sum(-1, keepdim=True)).to(dtype)  # rows sum to 1 in their dtype
    top_k = torch.randint(1, vocab + 5, (rows,), dtype=torch.int32, device=DEVICE)
    top_p = torch.rand(rows, device=DEVICE)
    for name, ours, ref in (("top_k_renorm_probs", S.top_k_renorm_probs(probs, top_k),
                             R.top_k_distribution(probs.float(), top_k.cpu())),
                            ("top_k_renorm_probs k=10", S.top_k_renorm_probs(probs, 10),
                             R.top_k_distribution(probs.float(), 10)),
                            ("top_p_renorm_probs", S.top_p_renorm_probs(probs, top_p),
                             R.top_p_distribution(probs.float(), top_p.cpu())),
                            ("top_p_renorm_probs p=0.9", S.top_p_renorm_probs(probs, 0.9),
                             R.top_p_distribution(probs.float(), 0.9))):
        # FlashInfer 0.7.2: top-k keeps the dtype, top-p renormalises in fp32 (its .float())
        assert ours.dtype == (dtype if name.startswith("top_k") else torch.float32), name
        # The same kept set. Top-k counts entries, so its set is exact. Top-p compares a running mass
        # with p: the kernel sums in fp32 over up to 2e5 entries (error ~1e-6 here), so an entry whose
        # fp64 strictly-larger mass lies within TOP_P_BOUNDARY of p may fall either way; no other may.
        kept, ref_kept = ours.cpu() > 0, ref.cpu() > 0
        if name.startswith("top_p"):
            thr = (top_p.cpu()[:, None] if "p=" not in name else torch.tensor(0.9)).double()
            boundary = (R.mass_strictly_above(probs.float().cpu()) - thr).abs() <= TOP_P_BOUNDARY
            # a handful per row; at fp16/bf16 and V 128256 the small kept entries tie in runs of ~20
            assert boundary.sum() <= max(2 * rows, int(0.01 * ref_kept.sum())), f"{name}: too many boundary entries"
            kept, ref_kept = kept | boundary, ref_kept | boundary
        assert torch.equal(kept, ref_kept), f"{name}: kept sets differ"
        tol = 1e-6 if dtype == torch.float32 else 1e-2
        if name.startswith("top_k"):  # renormalised values within the dtype's rounding
            assert (ours.double().cpu() - ref.cpu()).abs().max() <= tol * max(1.0, float(ref.max())), name
        else:  # whatever the boundary did: kept entries scaled by one factor per row, rows summing to 1
            o, x = ours.double().cpu(), probs.double().cpu()
            factor = (o.sum(-1, keepdim=True) / torch.where(o > 0, x, 0.0).sum(-1, keepdim=True))
            assert (o - torch.where(o > 0, x * factor, 0.0)).abs().max() <= 4 * tol * float(o.max()), name
            assert (o.sum(-1) - 1).abs().max() <= (1e-3 if dtype == torch.float32 else 2e-2), name


@pytest.mark.parametrize("op", ["renorm", "softmax"])
def test_a_tuned_row_tile_reaches_the_launch_and_keeps_the_result(op, monkeypatch):
    """A tuned row's tile (``aiter-ext tune renorm`` / ``softmax``) is the one launched, and the outputs stay those of
    the heuristic's tile (the tile changes the schedule, not the arithmetic's result beyond rounding)."""
    import types

    from aiter_ext.ops.sampling import backends, launchers

    tuned = {"BLOCK": 64, "num_warps": 2} if op == "renorm" else {"chunked": False, "BLOCK": 64, "num_warps": 2}
    probs = random_probs(300, rows=5, scale=3.0)
    call = (lambda: S.top_k_renorm_probs(probs, 7)) if op == "renorm" else (lambda: S.softmax(probs.log()))
    expected = call()
    target = backends.RENORM if op == "renorm" else backends.SOFTMAX
    impl = target.impls["triton"]
    monkeypatch.setattr(target, "select", lambda call, backend=None: types.SimpleNamespace(impl=impl, config=tuned))
    tiles, real = [], launchers.logits_kernels.launch_config
    monkeypatch.setattr(launchers.logits_kernels, "launch_config",
                        lambda *a: tiles.append(real(*a)) or tiles[-1])
    out = call()
    assert [(t["BLOCK"], t["num_warps"]) for t in tiles] == [(64, 2)]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_each_sampler_dispatches_with_its_filter_and_a_tuned_tile_reaches_the_launch(monkeypatch):
    """The sampling op's calls carry their filter (a tuned row serves its own filter only), and a tuned row's
    row-kernel tile (``aiter-ext tune sampling``) is the one launched, its draws still the filtered distribution."""
    import types

    from aiter_ext.ops.sampling import backends, launchers

    probs = random_probs(300, scale=2.0)
    impl = backends.SAMPLING.impls["triton"]
    # (64 rows a program: the interpreter's cost is per program)
    tuned = {"split": False, "chunked": False, "ROWS": 64, "BLOCK": 64, "num_warps": 2}
    seen, tiles = [], []

    def select(call, backend=None):
        seen.append(call["filter"])
        return types.SimpleNamespace(impl=impl, config=tuned if call["filter"] == "top_k" else {})

    monkeypatch.setattr(backends.SAMPLING, "select", select)
    real = launchers.kernels.filtered_sampling_kernel

    class Recorder:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                tiles.append((kwargs["BLOCK"], kwargs["num_warps"]))
                return real[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(launchers.kernels, "filtered_sampling_kernel", Recorder())
    indices = torch.zeros(min(DRAWS, 8192), dtype=torch.int32, device=DEVICE)
    tokens = S.top_k_sampling_from_probs(probs, 20, indices=indices, seed=5, offset=0)
    assert tiles == [(64, 2)]
    check_distribution(tokens, R.top_k_distribution(probs, 20)[0], "top_k with a tuned tile")
    S.sampling_from_probs(probs)
    S.top_p_sampling_from_probs(probs, 0.5)
    S.min_p_sampling_from_probs(probs, 0.1)
    S.top_k_top_p_sampling_from_probs(probs, 20, 0.5, filter_apply_order="joint")
    assert seen == ["top_k", "plain", "top_p", "min_p", "top_k_top_p"]


def test_tuner_checks_draws_statistically_and_rejects_a_wrong_sampler(tmp_path, monkeypatch):
    """`aiter-ext tune sampling` (CPU interpreter: plumbing only, two candidates, fewer draws): the candidates
    pass the statistical check and the fastest is written with the filter as a shape key; a sampler that ignores
    the filter (draws outside the kept set) is rejected."""
    from aiter_ext.core.tuner import tune
    from aiter_ext.ops.sampling import backends

    impl = backends.SAMPLING.impls["triton"]
    monkeypatch.setattr(backends, "SAMPLING_TUNE_DRAWS", 640)
    monkeypatch.setattr(impl, "configs", [{}, {"split": False, "chunked": False, "ROWS": 16, "BLOCK": 32, "num_warps": 4}])
    untuned = tmp_path / "u.csv"
    untuned.write_text("rows,vocab,dtype,filter\n64,100,fp32,top_k\n")
    lines = []
    rows = tune("sampling", untuned, tmp_path / "t.csv", backends=["triton"], allow_cpu=True, log=lines.append)
    assert len(rows) == 1 and rows[0]["filter"] == "top_k" and float(rows[0]["err"]) <= 1.0, lines
    assert sum("us," in line for line in lines) == 2, lines
    assert "filter" in (tmp_path / "t.csv").read_text().splitlines()[0]
    real = impl.fn
    wrong = lambda cfg, probs, indices, top_k, *rest: real(cfg, probs, indices, _thresholds(probs)[0], *rest)  # noqa: E731
    monkeypatch.setattr(impl, "fn", wrong)
    lines = []
    assert tune("sampling", untuned, tmp_path / "t2.csv", backends=["triton"], allow_cpu=True, log=lines.append) == []
    assert sum("REJECTED, error inf" in line for line in lines) == 2, lines


@pytest.mark.parametrize("op, untuned, forced, draws", [
    # one candidate per route: the policy's (chunked at vocabulary 300 on the interpreter) and the row kernel's
    ("sampling_from_logits", "64,300,fp32", {"chunked": False, "BLOCK": 128, "num_warps": 4}, 640),
    # the policy's one chunk against the two-launch walk over chunks of 16 (fewer draws: on the interpreter a call
    # of this walk takes ~0.1 s a request)
    ("chain_speculative_sampling", "8,64,fp32", {"BLOCK": 16, "num_warps": 4}, 160),
])
def test_tuner_checks_logits_and_speculative_draws_and_rejects_wrong_ones(op, untuned, forced, draws, tmp_path,
                                                                          monkeypatch):
    """`aiter-ext tune sampling_from_logits` and `chain_speculative_sampling` (CPU interpreter: plumbing only, two
    candidates, fewer draws): both candidates pass the statistical check and a row is written; a sampler that
    draws from the wrong law (logits with their -inf mask lifted; speculative drafts all accepted, their draft
    probabilities made ~0) is rejected, and so is one that writes nothing."""
    from aiter_ext.core.tuner import tune
    from aiter_ext.ops.sampling import backends

    op_def = backends.SAMPLING_FROM_LOGITS if op == "sampling_from_logits" else backends.CHAIN_SPECULATIVE
    impl = op_def.impls["triton"]
    monkeypatch.setattr(backends, "SAMPLING_TUNE_DRAWS", draws)
    monkeypatch.setattr(impl, "configs", [{}, forced])
    (tmp_path / "u.csv").write_text(f"rows,vocab,dtype\n{untuned}\n")
    lines = []
    rows = tune(op, tmp_path / "u.csv", tmp_path / "t.csv", backends=["triton"], allow_cpu=True, log=lines.append)
    assert len(rows) == 1 and float(rows[0]["err"]) <= 1.0, lines
    assert sum("us," in line for line in lines) == 2, lines
    real = impl.fn
    if op == "sampling_from_logits":
        def wrong(cfg, logits, indices, draw):
            real(cfg, logits.nan_to_num(neginf=10.0), indices, draw)  # the masked tokens made likely
    else:
        def wrong(cfg, draft_probs, draft_ids, target_probs, *rest):  # q ~ 0: every draft accepted (p / q > 1)
            real(cfg, torch.full_like(draft_probs, 1e-30), draft_ids, target_probs, *rest)
    monkeypatch.setattr(impl, "fn", wrong)
    lines = []
    assert tune(op, tmp_path / "u.csv", tmp_path / "t2.csv", backends=["triton"], allow_cpu=True,
                log=lines.append) == []
    assert sum("REJECTED" in line for line in lines) == 2, lines
    monkeypatch.setattr(impl, "fn", lambda *args: None)  # writes nothing: every row stays poisoned
    lines = []
    assert tune(op, tmp_path / "u.csv", tmp_path / "t3.csv", backends=["triton"], allow_cpu=True,
                log=lines.append) == []
    assert sum("REJECTED, error inf" in line for line in lines) == 2, lines


def test_speculative_outcome_law_matches_the_reference_sampler():
    """backends.speculative_outcome_law (what the tune check tests against) is the law of the fp64 reference
    sampler's outcomes (accepted drafts, last token): 40000 requests, chi-square p > 1e-4, and no outcome of law 0."""
    from aiter_ext.core.testing import chi_square_p_value
    from aiter_ext.ops.sampling.backends import speculative_outcome_law

    n, vocab, batch = 3, 12, 40_000
    logits = torch.randn(n + 1, vocab, dtype=torch.float64) * 2
    p = torch.softmax(logits, -1)
    q = torch.softmax(logits[:n] + torch.randn(n, vocab, dtype=torch.float64), -1)
    drafts = torch.multinomial(q, 1)[:, 0]
    law = speculative_outcome_law(q, drafts, p)
    assert abs(float(law.sum()) - 1) < 1e-12
    out, accepted, emitted = S.chain_speculative_sampling(
        q.float().expand(batch, n, vocab).contiguous(), drafts.int().expand(batch, n).contiguous(),
        p.float().expand(batch, n + 1, vocab).contiguous(), seed=7, offset=0, backend="torch")
    k = emitted.long()
    outcome = k * vocab + out.long().gather(1, k[:, None])[:, 0]
    counts = torch.bincount(outcome, minlength=law.numel())
    assert not bool(counts[law == 0].any())
    assert chi_square_p_value(counts, law) > 1e-4


def test_sampling_tune_thresholds_sit_in_gaps():
    """The tune case's thresholds keep the same set in fp32 as in the fp64 reference: each lies in a gap between
    two sorted probabilities (top-k keeps exactly k, top-p and min-p keep their stated ranks)."""
    from aiter_ext.ops.sampling.backends import sampling_tune_thresholds

    for dtype in (torch.float32, torch.bfloat16):
        row = torch.softmax(torch.randn(5000, dtype=torch.float64) * 3, -1).to(dtype)
        limits = sampling_tune_thresholds(row, "top_k_top_p_min_p")
        values = row.double().sort(descending=True).values
        k = limits["top_k"]
        assert values[k - 1] > values[k] and k >= 50
        kept_p = int(R.top_p_keep(row.double()[None], limits["top_p"]).sum())
        assert kept_p >= 21 and kept_p == int(R.top_p_keep(row.float()[None], limits["top_p"]).sum())
        bound = limits["min_p"] * values[0]
        kept_min = int((values >= bound).sum())
        assert kept_min >= 31 and min(values[kept_min - 1] - bound, bound - values[kept_min]) > 1e-4 * bound


def test_top_k_mask_logits_is_exact_with_ties_and_minus_inf():
    logits = torch.randn(5, 300, device=DEVICE)
    logits[0, :200] = float("-inf")  # fewer finite logits than k below
    logits[1, [3, 7, 9]] = 9.0  # a three-way tie at the top
    for k in (1, 2, 50, 150, 300):
        out = S.top_k_mask_logits(logits, k)
        kth = logits.sort(-1, descending=True).values[:, k - 1:k]
        assert torch.equal(out, torch.where(logits >= kth, logits, float("-inf"))), f"k={k}"
    assert (S.top_k_mask_logits(logits, 1)[1] > float("-inf")).sum() == 3  # ties keep more than k


@pytest.mark.parametrize("vocab", VOCABS)
def test_top_k_first_order_frequencies(vocab):
    probs = random_probs(vocab, scale=2.0)
    top_k, top_p = max(2, vocab // 4), 0.5
    target = R.top_p_distribution(R.top_k_distribution(probs, top_k).float(), top_p)[0]
    tokens = draw(S.top_k_top_p_sampling_from_probs, probs, top_k, top_p)  # top_k_first is the default
    check_distribution(tokens, target, "top_k_first from probs")
    logits = torch.log(probs)
    tokens = draw(S.top_k_top_p_sampling_from_logits, logits, top_k, top_p)
    check_distribution(tokens, target, "top_k_first from logits")
    joint = R.joint_top_k_top_p_distribution(probs, top_k, top_p)[0]
    tokens = draw(S.top_k_top_p_sampling_from_logits, logits, top_k, top_p, filter_apply_order="joint")
    check_distribution(tokens, joint, "joint from logits")


# --------------------------------------------------------------------------------------------------
# Softmax with temperature, and sampling from logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_row", [False, True], ids=["scalar_t", "tensor_t"])
@pytest.mark.parametrize("vocab", grid([111, 5000], [111, 32000, 128256]))
def test_softmax_with_temperature(dtype, per_row, vocab):
    rows = grid(7, 99)
    logits = (torch.randn(rows, vocab, device=DEVICE) * 5).to(dtype)
    logits[0, : vocab // 2] = float("-inf")  # -inf entries
    temps = torch.tensor([1.0, 0.5, 0.1] * rows, device=DEVICE)[:rows]
    temperature = temps if per_row else 0.5
    out = S.softmax(logits, temperature)
    t = temps[:, None] if per_row else 0.5
    ref = torch.softmax(logits.double() / t, -1)
    assert out.dtype == torch.float32 and not out.isnan().any()
    assert (out.double() - ref).abs().max() < 1e-5


@pytest.mark.parametrize("vocab", [333, CHUNKED_VOCAB])
def test_softmax_temperature_zero_is_greedy_in_the_same_launch(vocab):
    logits = torch.randn(6, vocab, device=DEVICE)
    logits[2, 17] = logits[2, 200] = 40.0  # tied maxima: the first is taken
    logits[4] = float("-inf")  # no finite logit: zeros, then an invalid sample
    temps = torch.tensor([0.0, 1.0, 0.0, 0.7, 0.0, 1.0], device=DEVICE)
    probs = S.softmax(logits, temps)
    assert torch.equal(probs[0], torch.nn.functional.one_hot(logits[0].argmax(), vocab).float())
    assert probs[2, 17] == 1.0 and probs[2].sum() == 1.0
    assert probs[4].abs().sum() == 0.0
    assert (probs[[1, 3, 5]].double() - torch.softmax(logits[[1, 3, 5]].double() / temps[[1, 3, 5], None], -1)).abs().max() < 1e-5
    tokens, valid = S.sampling_from_probs(probs, seed=4, offset=0, return_valid=True)
    assert tokens[0] == logits[0].argmax() and tokens[2] == 17 and not valid[4] and valid[[0, 1, 2, 3, 5]].all()
    with pytest.raises(ValueError, match="temperature"):
        S.softmax(logits, -1.0)


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_sampling_from_logits_frequencies(vocab, scale):
    logits = (torch.randn(1, vocab, dtype=torch.float64) * scale)
    logits[0, torch.rand(vocab) < 0.3] = float("-inf")
    logits[0, 0] = 0.0
    target = torch.softmax(logits, -1)[0]
    tokens = draw(S.sampling_from_logits, logits.float().to(DEVICE))
    check_distribution(tokens, target, f"sampling_from_logits scale {scale}")


@pytest.mark.parametrize("vocab", [64, CHUNKED_VOCAB])
def test_sampling_from_logits_edges(vocab):
    logits = torch.randn(5, vocab, device=DEVICE)
    logits[1] = float("-inf")
    logits[2, 5] = 1e30  # huge logit: always drawn
    logits[3, 10:] = float("nan")  # NaN logits count as -inf: never drawn, probability 0
    logits[4] = float("nan")  # nothing finite: token 0, invalid
    tokens, valid = S.sampling_from_logits(logits, seed=9, offset=2, return_valid=True)
    assert tokens[1] == 0 and not valid[1] and tokens[4] == 0 and not valid[4]
    assert valid[[0, 2, 3]].all() and tokens[2] == 5
    rows3 = S.sampling_from_logits(logits, indices=torch.full((300,), 3, dtype=torch.int32, device=DEVICE))
    assert (rows3 < 10).all(), "a NaN logit was drawn"
    probs = S.softmax(logits)
    assert (probs[3, 10:] == 0).all() and abs(float(probs[3].sum()) - 1.0) < 1e-5 and (probs[4] == 0).all()
    again = S.sampling_from_logits(logits, seed=9, offset=2)
    assert torch.equal(tokens, again)
    idx = torch.tensor([2, 2, 0], dtype=torch.int64, device=DEVICE)
    assert S.sampling_from_logits(logits, indices=idx).dtype == torch.int64
    with pytest.raises(TypeError, match="logits"):
        S.sampling_from_logits(logits.to(torch.int32))


# --------------------------------------------------------------------------------------------------
# LogitsPipe

from aiter_ext.logits_processor import (  # noqa: E402
    LogitsPipe, MinP, Sample, Softmax, Temperature, TensorType, TopK, TopP,
)


@pytest.mark.parametrize("compiled", [True, False], ids=["fused", "unfused"])
def test_logits_pipe_distribution(compiled):
    vocab, temperature, top_k, top_p = 64, 0.7, 12, 0.8
    logits = torch.randn(1, vocab, dtype=torch.float64) * 2
    probs = torch.softmax(logits / temperature, -1)
    target = R.top_p_distribution(R.top_k_distribution(probs, top_k).float(), top_p)[0]
    pipe = LogitsPipe([Temperature(), Softmax(), TopK(), TopP(), Sample()], compile=compiled)
    indices = torch.zeros(DRAWS, dtype=torch.int32, device=DEVICE)
    tokens = pipe(logits.float().to(DEVICE), temperature=temperature, top_k=top_k, top_p=top_p, indices=indices,
                  seed=int(torch.randint(0, 2**31, (1,))), offset=0)
    check_distribution(tokens, target, f"LogitsPipe ({pipe})")
    min_p_pipe = LogitsPipe([Softmax(), MinP(0.2), Sample()], compile=compiled)
    tokens = min_p_pipe(logits.float().to(DEVICE), indices=indices, seed=3, offset=0)
    check_distribution(tokens, R.min_p_distribution(torch.softmax(logits, -1), 0.2)[0], f"LogitsPipe ({min_p_pipe})")


def test_logits_pipe_takes_flashinfer_constructor_keywords():
    logits = torch.randn(3, 40, device=DEVICE)
    indices = torch.tensor([2, 2, 0, 1], dtype=torch.int32, device=DEVICE)
    for compiled in (True, False):
        pipe = LogitsPipe([Temperature(temperature=0.5), Softmax(enable_pdl=False), TopK(top_k=1),
                           TopP(top_p=0.9, is_deterministic=True), Sample(deterministic=True, indices=indices)],
                          compile=compiled)
        tokens = pipe(logits)
        assert tokens.shape == (4,) and torch.equal(tokens.long().cpu(), logits.argmax(-1).cpu()[indices.long().cpu()])
    with pytest.raises(TypeError, match="topk"):
        TopK(topk=5)


def test_logits_pipe_fuses_and_types():
    assert "softmax(temperature)" in repr(LogitsPipe([Temperature(), Softmax(), Sample()]))
    assert "top_k_top_p_sampling_from_probs(joint)" in repr(
        LogitsPipe([Softmax(), TopK(joint_topk_topp=True), TopP(), Sample()]))
    assert "min_p_sampling_from_probs" in repr(LogitsPipe([Softmax(), MinP(), Sample()]))
    assert "TopK -> Sample" in repr(LogitsPipe([TopK(), Sample()], input_type=TensorType.LOGITS))  # no fusion
    with pytest.raises(ValueError, match="input_type"):
        LogitsPipe([TopK(), Sample()])
    with pytest.raises(TypeError, match="TopP takes PROBS"):
        LogitsPipe([Temperature(), TopP(), Sample()])
    with pytest.raises(ValueError, match="nothing may follow Sample"):
        LogitsPipe([Softmax(), Sample(), TopK()])
    with pytest.raises(ValueError, match="at most one Softmax"):
        LogitsPipe([Softmax(), TopK(), Softmax()], input_type=TensorType.LOGITS)


def test_logits_pipe_keywords_and_greedy_rows():
    logits = torch.randn(4, 50, device=DEVICE)
    temps = torch.tensor([0.0, 1.0, 0.0, 0.5], device=DEVICE)
    for compiled in (True, False):
        pipe = LogitsPipe([Temperature(), Softmax(), TopK(top_k=5), Sample()], compile=compiled)
        tokens = pipe(logits, temperature=temps, seed=2, offset=0)  # top_k from the constructor
        assert tokens[0] == logits[0].argmax() and tokens[2] == logits[2].argmax()
        top5 = logits.topk(5, dim=-1).indices
        assert (top5 == tokens[:, None].long()).any(-1).all()
        with pytest.raises(ValueError, match="temperature="):
            pipe(logits)
        with pytest.raises(TypeError, match="no processor takes"):
            pipe(logits, temperature=1.0, min_pp=0.1)  # a misspelling
        pipe(logits, temperature=1.0, min_p=0.1, top_p=0.5, is_deterministic=True)  # unused: ignored, as in FlashInfer
    # the first TopK takes the runtime top_k; the second keeps its constructor value
    probs = torch.softmax(logits, -1)
    two = LogitsPipe([TopK(top_k=40), TopK(top_k=3)], input_type=TensorType.PROBS, compile=False)
    out = two(probs, top_k=10)
    assert ((out > 0).sum(-1) == 3).all()


@pytest.mark.parametrize("filters", [(None, None, None), (5, None, None), (None, 0.8, None), (None, None, 0.1),
                                     (7, 0.9, None)], ids=["plain", "top_k", "top_p", "min_p", "joint"])
def test_row_kernel_prefetch_and_lane_sums_draw_the_same_tokens(filters):
    """kernels.load_ahead's PREFETCH only reorders loads, and LANE_SUMS (kernels.lane_zeros) only the
    order of the full passes' sums: the same seed gives the same tokens with either on, through every
    pass (min-p's two, the scan, the count). (A sum in another order may differ in its last bit, and a
    draw within an ulp of a boundary could then move: not at this fixed seed and input.)"""
    from aiter_ext.ops.sampling.api import _sample

    probs = random_probs(3000, rows=6, scale=3.0)
    k, p, m = filters
    rows = probs.shape[0]
    args = _thresholds(probs, k, p, m)
    draws = [_sample(probs, None, *args, None, False, 5, 0, False, None,
                     {"chunked": False, "ROWS": 1, "BLOCK": 1024, "num_warps": 4, "PREFETCH": prefetch,
                      "LANE_SUMS": lane_sums})
             for prefetch, lane_sums in ((False, False), (True, False), (False, True), (True, True))]
    for other in draws[1:]:
        assert torch.equal(draws[0], other)


# --------------------------------------------------------------------------------------------------
# The split kernel (split_kernels.py): small batches, each row over several programs

def split_config_for(vocab: int, rows: int, resident: bool) -> dict:
    """A forced launch of the split kernel for ``rows`` output rows: under the interpreter one program
    per row (every span in it): 256-wide chunks (``resident``: spans of one chunk at vocabulary 1000) or
    64-wide chunks in 128-wide spans; on a GPU within the SM count (every program resident at once, or a
    barrier never opens). ``resident`` None: either layout."""
    from aiter_ext.core.arch import device_info
    from aiter_ext.ops.sampling.launchers import _split_launch

    if ON_GPU:
        config = {"split": True}
    else:
        config = {"split": True, "programs": 8 * rows, "BLOCK": 64 if resident is False else 256}
    cfg = _split_launch(vocab, rows, config)
    assert cfg is not None and cfg["num_spans"] >= 2, f"no split launch for {rows} x {vocab}"
    if ON_GPU:
        assert rows * cfg["programs"] <= device_info().cu_num
    assert resident is None or cfg["RESIDENT"] == resident, cfg
    return config


def split_rows(vocab: int, resident: bool) -> int:
    """(GPU) Output rows per call: as many as leave the wanted span layout (resident spans of one
    4096-wide chunk need cdiv(vocab, 4096) programs per row)."""
    from aiter_ext.core.arch import device_info

    cus = device_info().cu_num
    return max(1, cus // -(-vocab // 4096)) if resident else cus // 2


def split_draw_counts(probs, filters, n: int, resident: bool) -> torch.Tensor:
    """(GPU) Counts per token of ``n`` draws of row 0 by the split kernel: CUDA-graph replays of one
    small call (graph_replay_counts)."""
    from aiter_ext.ops.sampling.api import _sample

    vocab = probs.shape[1]
    rows = split_rows(vocab, resident)
    k, p, m = filters
    args = _thresholds(probs, k, p, m)
    config = split_config_for(vocab, rows, resident)
    indices = torch.zeros(rows, dtype=torch.int32, device=DEVICE)
    return graph_replay_counts(lambda: _sample(probs, indices, *args, None, False, None, None, False, None, config),
                               vocab, rows, n)


def graph_replay_counts(draw_tokens, vocab: int, rows: int, n: int) -> torch.Tensor:
    """Counts per token of ``ceil(n / rows)`` CUDA-graph replays of ``draw_tokens()`` (``rows`` tokens a
    call), counted inside the graph. Seeds come from the default generator, which a replay advances
    (another generator would have to be registered with the graph)."""
    counts = torch.zeros(vocab, dtype=torch.int64, device=DEVICE)
    ones = torch.ones(rows, dtype=torch.int64, device=DEVICE)

    def step():
        counts.index_add_(0, draw_tokens().long(), ones)

    step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    counts.zero_()
    for _ in range(-(-n // rows)):
        graph.replay()
    torch.cuda.synchronize()
    return counts.cpu()


SPLIT_FILTERS = {"plain": (None, None, None), "top_k 5": (5, None, None), "top_p 0.5": (None, 0.5, None),
                 "top_p 0.9": (None, 0.9, None), "min_p 0.2": (None, None, 0.2), "joint 10/0.8": (10, 0.8, None)}


@pytest.mark.skipif(not ON_GPU, reason="400k draws of one-row programs are hours on the interpreter; on the CPU "
                                       "test_split_kernel_draws_the_row_kernels_tokens ties this kernel to the row "
                                       "kernel draw by draw")
@pytest.mark.parametrize("resident", [True, False], ids=["resident", "spans"])
@pytest.mark.parametrize("name", list(SPLIT_FILTERS))
@pytest.mark.parametrize("vocab", [32000, 128256])
def test_split_kernel_frequencies(vocab, name, resident):
    k, p, m = SPLIT_FILTERS[name]
    probs = random_probs(vocab, zero_fraction=0.3, scale=2.0)
    target = R.filtered_distribution(probs.cpu().double(), k, p, m)[0]
    counts = split_draw_counts(probs, (k, p, m), DRAWS, resident)
    outside = (counts > 0) & (target == 0)
    assert not outside.any(), f"split {name}: drew tokens outside the kept set {outside.nonzero().flatten()[:10]}"
    p_value = chi_square_p_value(counts, target)
    assert p_value > ALPHA, f"split {name}: chi-square p-value {p_value:.3g} over {int(counts.sum())} draws"


@pytest.mark.parametrize("resident", [True, False], ids=["resident", "spans"])
@pytest.mark.parametrize("name", list(SPLIT_FILTERS))
def test_split_kernel_draws_the_row_kernels_tokens(name, resident):
    """The split kernel runs the row kernel's algorithm (the same uniforms per round, pivots and rules);
    only its sums are taken in another order. So at one seed both give the same token for every output
    row, except where a uniform lands within rounding of a boundary between two tokens, and every token
    must be inside the kept set. On the interpreter both kernels sum sequentially: at most one of 48
    draws may differ. On a GPU the sums are trees of different shapes: the first H100 run (bc05602) had 5
    of 4096 plain draws differ at vocabulary 32000 (a boundary moved by ~3e-8 of mass, at ~22000 kept
    tokens, predicts about that), so there at most 1% may differ; a broken exchange or barrier changes
    most draws. With the row kernel's frequencies checked above, this carries them over to the split
    kernel on the interpreter."""
    from aiter_ext.ops.sampling.api import _sample

    k, p, m = SPLIT_FILTERS[name]
    vocab, draws = (32000, 4096) if ON_GPU else (1000, 48)
    probs = random_probs(vocab, rows=2, zero_fraction=0.3, scale=2.0)
    indices = torch.arange(draws, device=DEVICE, dtype=torch.int32) % 2
    args = _thresholds(probs, k, p, m)
    seed = int(torch.randint(0, 2**31, (1,)))
    row = _sample(probs, indices, *args, None, False, seed, 0, False, None, {"split": False, "chunked": False})
    if ON_GPU:  # calls within the SM count, each with its slice of the counters (offset = first row)
        rows = split_rows(vocab, resident)
        config = split_config_for(vocab, rows, resident)
        split = torch.cat([_sample(probs, indices[i:i + rows], *args, None, False, seed, i, False, None, config)
                           for i in range(0, draws, rows)])
    else:
        split = _sample(probs, indices, *args, None, False, seed, 0, False, None,
                        split_config_for(vocab, draws, resident))
    differ = (split != row).nonzero().flatten()
    assert differ.numel() <= (draws // 100 if ON_GPU else 1), f"split {name}: {differ.numel()} of {draws} draws differ"
    kept = R.filtered_distribution(probs.cpu().double(), k, p, m) > 0
    assert kept[indices.cpu().long(), split.cpu().long()].all(), f"split {name}: a token outside the kept set"


def test_split_kernel_is_the_small_batch_route():
    """Small batches take the split kernel by default (on the interpreter: up to 4 rows above one
    chunk), large ones the row kernel; a row-kernel tile in the config forces the row kernel."""
    from aiter_ext.ops.sampling.launchers import _split_launch

    vocab = 128256 if ON_GPU else 1000
    assert _split_launch(vocab, 1, None) is not None
    assert _split_launch(vocab, 4096, None) is None
    assert _split_launch(vocab, 1, {"chunked": False, "ROWS": 1, "BLOCK": 1024}) is None
    assert _split_launch(vocab, 1, {"split": False}) is None


def guarded_edge_rows(vocab: int):
    """Four rows inside guard rows whose last entry holds all their mass (a read past ``probs`` would
    give token vocab - 1): rows 0 and 3 random (their last entry 0), row 1 zeros, row 2 NaN; and indices
    that take each row and two outside them (7, -1). Valid: [True, False, False, True, False, False]."""
    rows = 4
    buffer = torch.zeros(rows + 4, vocab, device=DEVICE)
    buffer[:, vocab - 1] = 1.0
    probs = buffer[2:2 + rows]
    probs.copy_(random_probs(vocab, rows=rows, scale=3.0))
    probs[:, vocab - 1] = 0.0
    probs /= probs.sum(-1, keepdim=True).clone()
    probs[1] = 0.0
    probs[2] = float("nan")
    return probs, torch.tensor([0, 1, 2, 3, 7, -1], dtype=torch.int32, device=DEVICE)


def test_split_kernel_edges_and_indices_outside_the_rows():
    """Zero, NaN and out-of-range rows through the split kernel: token 0, invalid, nothing read past
    ``probs`` (guard rows around the view would give token vocab - 1); thresholds per source row."""
    from aiter_ext.ops.sampling.api import _sample

    vocab = 32000 if ON_GPU else 1000
    probs, indices = guarded_edge_rows(vocab)
    config = split_config_for(vocab, indices.numel(), resident=None)
    top_k = torch.tensor([1, 5, 5, 3], device=DEVICE)  # int64, as torch.full makes it
    for k, p, m in ((None, None, None), (top_k, None, None), (None, 0.9, None), (None, None, 0.5), (top_k, 0.9, None)):
        args = _thresholds(probs, k, p, m)
        tokens, valid = _sample(probs, indices, *args, None, False, 11, 0, True, None, config)
        assert valid.cpu().tolist() == [True, False, False, True, False, False], (k, p, m)
        assert (tokens.cpu()[[1, 2, 4, 5]] == 0).all()
        kept = R.filtered_distribution(probs[[0, 3]].cpu().double(), None if k is None else top_k[[0, 3]].cpu(),
                                       p, m) > 0
        assert kept[0, tokens[0]] and kept[1, tokens[3]], (k, p, m, tokens)


# --------------------------------------------------------------------------------------------------
# Rejection rounds by chunks (rounds_kernels.py): top-k, top-p and joint, every pass over many programs

ROUNDS_FILTERS = {"top_k 5": (5, None, None), "top_k 50": (50, None, None), "top_p 0.5": (None, 0.5, None),
                  "top_p 0.9": (None, 0.9, None), "joint 10/0.8": (10, 0.8, None)}


def rounds_config(rounds_drawn: int, fused: bool = False) -> dict:
    """A forced launch of the rounds path: 128-wide chunks on the interpreter (8 at vocabulary 1000), the
    default width on a GPU; ``rounds_drawn`` rounds by chunks before the row kernel resumes; ``fused``:
    each round's check and judge in one launch."""
    return {"rounds": True, "rounds_drawn": rounds_drawn, "fused": fused, **({} if ON_GPU else {"BLOCK": 128})}


@pytest.mark.parametrize("rounds_drawn, fused", [(1, False), (4, False), (4, True)])
@pytest.mark.parametrize("name", list(ROUNDS_FILTERS))
def test_rounds_by_chunks_draw_the_row_kernels_tokens(name, rounds_drawn, fused):
    """The rounds path runs the row kernel's algorithm (uniforms per round, pivots, rules); its sums are
    per chunk, then over chunks. So at one seed it gives the row kernel's token for every output row, up
    to rounding at a boundary (interpreter: at most one of 24 draws; GPU: 1% of 4096, as for the split
    kernel). One round by chunks leaves most top-k rows to the resumed row kernel (top-k makes 3-5
    rounds), four leave few, so both halves of the path are compared; at four, also with each round's
    check and judge fused in one launch (the last program of a row to arrive judges)."""
    from aiter_ext.ops.sampling.api import _sample

    k, p, m = ROUNDS_FILTERS[name]
    vocab, draws = (32000, 4096) if ON_GPU else (1000, 24)
    # a row per draw, half of them nearly flat, where a rejected round's midpoint often fails too (a jump:
    # the next candidates lie above the midpoint, and their per-chunk masses are the check's second set)
    probs = torch.cat([random_probs(vocab, rows=draws // 2, zero_fraction=0.3, scale=2.0),
                       random_probs(vocab, rows=draws - draws // 2, zero_fraction=0.3, scale=0.2)])
    indices = torch.arange(draws, device=DEVICE, dtype=torch.int32)
    args = _thresholds(probs, k, p, m)
    seed = int(torch.randint(0, 2**31, (1,)))
    row = _sample(probs, indices, *args, None, False, seed, 0, False, None, {"split": False, "chunked": False})
    chunked = _sample(probs, indices, *args, None, False, seed, 0, False, None, rounds_config(rounds_drawn, fused))
    differ = (chunked != row).nonzero().flatten()
    assert differ.numel() <= (draws // 100 if ON_GPU else 1), f"{name}: {differ.numel()} of {draws} draws differ"
    kept = R.filtered_distribution(probs.cpu().double(), k, p, m) > 0
    assert kept[indices.cpu().long(), chunked.cpu().long()].all(), f"{name}: a token outside the kept set"


def test_rounds_by_chunks_take_per_row_seeds_as_the_row_kernel():
    """Per-row seed and offset tensors (SEED_PER_ROW): the rounds path's uniforms are the row kernel's."""
    from aiter_ext.ops.sampling.api import _sample

    vocab, draws = (32000, 1024) if ON_GPU else (1000, 8)
    probs = random_probs(vocab, rows=draws, zero_fraction=0.3, scale=0.2)
    args = _thresholds(probs, 5, 0.9, None)
    seeds = torch.randint(0, 2**31, (draws,), device=DEVICE)
    offsets = torch.randint(0, 2**20, (draws,), device=DEVICE)
    row = _sample(probs, None, *args, None, False, seeds, offsets, False, None, {"split": False, "chunked": False})
    chunked = _sample(probs, None, *args, None, False, seeds, offsets, False, None, rounds_config(2))
    differ = int((chunked != row).sum())
    assert differ <= (draws // 100 if ON_GPU else 1), f"{differ} of {draws} draws differ"


def test_rounds_by_chunks_edges_and_indices_outside_the_rows():
    """Zero, NaN and out-of-range rows through the rounds path: token 0, invalid, nothing read past
    ``probs`` (guard rows around the view would give token vocab - 1); thresholds per source row."""
    from aiter_ext.ops.sampling.api import _sample

    vocab = 32000 if ON_GPU else 1000
    probs, indices = guarded_edge_rows(vocab)
    top_k = torch.tensor([1, 5, 5, 3], device=DEVICE)  # int64, as torch.full makes it
    no_top_k = torch.tensor([0, 5, 5, -1], device=DEVICE)  # k <= 0 in a tensor: no top-k filter on that row
    for k, p in ((top_k, None), (None, 0.9), (top_k, 0.9), (no_top_k, None), (None, 0.0)):
        args = _thresholds(probs, k, p, None)
        tokens, valid = _sample(probs, indices, *args, None, False, 11, 0, True, None, rounds_config(2))
        assert valid.cpu().tolist() == [True, False, False, True, False, False], (k, p)
        assert (tokens.cpu()[[1, 2, 4, 5]] == 0).all()
        k_ref = top_k[[0, 3]].cpu() if k is top_k else None
        kept = R.filtered_distribution(probs[[0, 3]].cpu().double(), k_ref, p, None) > 0
        assert kept[0, tokens[0]] and kept[1, tokens[3]], (k, p, tokens)


def test_rounds_by_chunks_routes(monkeypatch):
    """When the rounds path is taken: asked for by a config (top-k, top-p or joint, never with min-p or
    without a filter); by default only top-p alone at 2 to ROUNDS_MAX_ROWS rows of a large vocabulary
    (launchers._rounds_route), unless a config names another path. A public call takes it there."""
    from aiter_ext.ops.sampling import launchers, rounds_kernels
    from aiter_ext.ops.sampling.inputs import ABSENT
    from aiter_ext.ops.sampling.launchers import _rounds_launch, _rounds_route

    probs = random_probs(1000, rows=2)
    k, p, m = _thresholds(probs, 5, 0.9, 0.1)
    assert _rounds_launch(1000, None, k, p, ABSENT) is None
    assert _rounds_launch(1000, {"rounds": True}, k, p, ABSENT) is not None
    assert _rounds_launch(1000, {"rounds": True}, k, ABSENT, m) is None
    assert _rounds_launch(1000, {"rounds": True}, ABSENT, ABSENT, ABSENT) is None
    assert _rounds_route(128256, 32, False)["rounds"] == rounds_kernels.ROUNDS_DRAWN
    for vocab, rows in ((128256, 1), (128256, rounds_kernels.ROUNDS_MAX_ROWS + 1), (32000, 32)):
        assert _rounds_route(vocab, rows, False) is None, (vocab, rows)

    taken = []
    real = launchers.rounds_draw
    monkeypatch.setattr(launchers, "rounds_draw", lambda cfg, *a: taken.append(cfg) or real(cfg, *a))
    monkeypatch.setattr(rounds_kernels, "ROUNDS_MIN_VOCAB", 1000)
    _rounds_route.cache_clear()
    try:
        probs = random_probs(1000, rows=8, scale=2.0)
        tokens = S.top_p_sampling_from_probs(probs, 0.9, seed=5, offset=0)
        expected = 0 if ON_GPU else 1  # a GPU takes it only in CUDA graphs (launchers._graph_timed)
        assert len(taken) == expected and all(cfg["rounds"] == rounds_kernels.ROUNDS_DRAWN for cfg in taken)
        kept = R.filtered_distribution(probs.cpu().double(), None, 0.9, None) > 0
        assert kept[torch.arange(8), tokens.long().cpu()].all()
        S.top_k_sampling_from_probs(probs, 5)  # top-k keeps the row kernel
        S.top_p_sampling_from_probs(probs[:1], 0.9)  # one row: the split kernel's batch
        assert len(taken) == expected
    finally:
        _rounds_route.cache_clear()
    if ON_GPU:  # eagerly, the rounds path's launches' host time would lose: only a captured call takes it
        taken.clear()
        probs = random_probs(128256, rows=32)
        S.top_p_sampling_from_probs(probs, 0.9)
        assert len(taken) == 0
        taken.append({})
        graph = torch.cuda.CUDAGraph()
        S.top_p_sampling_from_probs(probs, 0.9)  # warm, outside the capture
        with torch.cuda.graph(graph):
            tokens = S.top_p_sampling_from_probs(probs, 0.9)
        graph.replay()
        assert len(taken) == 2
        kept = R.filtered_distribution(probs.cpu().double(), None, 0.9, None) > 0
        assert kept[torch.arange(32), tokens.long().cpu()].all()


@pytest.mark.skipif(not ON_GPU, reason="400k draws; on the CPU test_rounds_by_chunks_draw_the_row_kernels_tokens ties "
                                       "this path to the row kernel draw by draw")
@pytest.mark.parametrize("name", list(ROUNDS_FILTERS))
def test_rounds_by_chunks_frequencies(name):
    from aiter_ext.ops.sampling.api import _sample

    k, p, m = ROUNDS_FILTERS[name]
    vocab, rows = 128256, 256
    probs = random_probs(vocab, rows=1, zero_fraction=0.3, scale=3.0)
    args = _thresholds(probs, k, p, m)
    indices = torch.zeros(rows, dtype=torch.int32, device=DEVICE)
    counts = graph_replay_counts(lambda: _sample(probs, indices, *args, None, False, None, None, False, None,
                                                 rounds_config(2)), vocab, rows, 400_000)
    target = R.filtered_distribution(probs.cpu().double(), k, p, m)[0]
    outside = (counts > 0) & (target == 0)
    assert not outside.any(), f"rounds {name}: drew tokens outside the kept set {outside.nonzero().flatten()[:10]}"
    p_value = chi_square_p_value(counts, target)
    assert p_value > ALPHA, f"rounds {name}: chi-square p-value {p_value:.3g} over {int(counts.sum())} draws"


# --------------------------------------------------------------------------------------------------
# Chain speculative sampling

SPEC_DRAWS = grid(1_500, 200_000)  # the interpreter runs one program per request: ~30 ms each


def _speculative_case(batch, num_draft, vocab, one_hot_target=False):
    """Per-position draft and target distributions shared by every row, drafts drawn from the draft
    distribution (as a draft model would), so the emitted tokens must follow the target exactly."""
    q = random_probs(vocab, rows=num_draft, scale=1.5).cpu()
    p = random_probs(vocab, rows=num_draft + 1, scale=1.5).cpu()
    if one_hot_target:
        p = torch.nn.functional.one_hot(torch.randint(0, vocab, (num_draft + 1,)), vocab).float()
    drafts = torch.stack([torch.multinomial(q[i], batch, replacement=True) for i in range(num_draft)], 1)
    draft_probs = q.expand(batch, num_draft, vocab).contiguous().to(DEVICE)
    target_probs = p.expand(batch, num_draft + 1, vocab).contiguous().to(DEVICE)
    return draft_probs, drafts.to(torch.int32).to(DEVICE), target_probs, p


def check_speculative_is_lossless(draws: int) -> None:
    """Position 0 is always emitted and must follow target[0]; position 1, when emitted, target[1]."""
    draft_probs, drafts, target_probs, p = _speculative_case(draws, 2, 6)
    out, accepted, emitted = S.chain_speculative_sampling(draft_probs, drafts, target_probs, seed=11, offset=0)
    out = out.cpu()
    assert (out[:, 0] >= 0).all()
    check_distribution(out[:, 0], p[0].double(), "speculative position 0")
    second = out[:, 1][out[:, 1] >= 0]
    assert second.numel() > draws // 10
    check_distribution(second, p[1].double(), "speculative position 1")


def test_chain_speculative_is_lossless():
    check_speculative_is_lossless(SPEC_DRAWS)


@pytest.mark.parametrize("num_draft", [1, 3, 5, 7])
def test_chain_speculative_padding_and_counters(num_draft):
    batch, vocab = 64, 50
    draft_probs, drafts, target_probs, _ = _speculative_case(batch, num_draft, vocab)
    acc = torch.full((batch,), 5, dtype=torch.int32, device=DEVICE)  # counters accumulate (+=)
    emi = torch.full((batch,), 7, dtype=torch.int32, device=DEVICE)
    out, acc2, emi2 = S.chain_speculative_sampling(draft_probs, drafts, target_probs, acc, emi, seed=3, offset=9)
    assert acc2 is acc and emi2 is emi
    out, acc, emi = out.cpu(), acc.cpu() - 5, emi.cpu() - 7
    valid = out >= 0
    assert (valid.sum(1) == emi + 1).all(), "emitted + 1 must equal the number of output tokens"
    assert (valid[:, :-1].int() >= valid[:, 1:].int()).all(), "-1 only after the last token"
    assert ((acc >= emi) & (acc <= num_draft)).all()
    # accepted drafts are the drafts themselves
    for b in range(batch):
        e = int(emi[b])
        assert torch.equal(out[b, :e], drafts.cpu()[b, :e].to(out.dtype))
    # the same seed and offset reproduce; counters add up
    again, acc3, emi3 = S.chain_speculative_sampling(draft_probs, drafts, target_probs, seed=3, offset=9)
    assert torch.equal(again.cpu(), out) and torch.equal(acc3.cpu(), acc) and torch.equal(emi3.cpu(), emi)


def test_chain_speculative_rejects_zero_target_and_reproduces_one_hot_targets():
    batch, n, vocab = 256, 4, 32
    draft_probs, drafts, target_probs, p = _speculative_case(batch, n, vocab, one_hot_target=True)
    out, acc, emi = S.chain_speculative_sampling(draft_probs, drafts, target_probs, seed=5, offset=0)
    target_tokens = p.argmax(-1).to(torch.int32)
    out = out.cpu()
    for b in range(batch):
        e = int(emi[b])
        assert torch.equal(out[b, :e + 1], target_tokens[:e + 1]), "one-hot targets must be reproduced"
        # a draft is accepted iff it is the target's token (zero target probability is always rejected)
        match = (drafts.cpu()[b] == target_tokens[:n]).int()
        assert e == int(match.cumprod(0).sum())


@pytest.fixture
def speculative_block(monkeypatch):
    """``force(block)``: the chain speculative launches that follow take ``block``-wide chunks (None: the
    default, one chunk for every vocabulary of these tests under the interpreter)."""
    from aiter_ext.ops.sampling import speculative_kernels as K

    real = K.speculative_config

    def force(block):
        monkeypatch.setattr(K, "speculative_config",
                            lambda vocab, batch, interp=False, b=0, w=0: real(vocab, batch, interp, block or b, w))
    return force


def test_chain_speculative_is_lossless_by_chunks(speculative_block):
    """The same through the two-launch draw: 2 chunks of 4 at vocabulary 6 (the chunk sums pick the
    chunk, its prefix sums the token; the second chunk runs past the vocabulary). Fewer draws on the
    CPU, where each chunk is a program of ~15 ms; test_chain_speculative_chunked_draw_agrees_with_one_chunk
    ties this path to the one-chunk draw token by token."""
    speculative_block(4)
    check_speculative_is_lossless(grid(500, 200_000))


def test_chain_speculative_chunked_draw_agrees_with_one_chunk(speculative_block):
    """At one seed the chunked draw gives the one-chunk draw's tokens: the same walk (the counters match
    exactly) and the same uniform, placed by chunk sums then a chunk's prefix sums instead of one prefix
    sum. Only rounding may move a draw across a CDF boundary (GPU: at most 1% of draws; CPU: 1)."""
    batch, n, vocab = (32, 3, 512) if not ON_GPU else (4096, 3, 32000)
    x = torch.randn(batch, n + 1, vocab, device=DEVICE) * 2
    q = torch.softmax(x[:, :n] + 0.3 * torch.randn(batch, n, vocab, device=DEVICE), -1)
    p = torch.softmax(x, -1)
    ids = torch.multinomial(q.reshape(-1, vocab), 1).view(batch, n).int()
    results = []
    for block in (1 << 20, 64 if not ON_GPU else 2048):  # one chunk (the width is clamped to the vocabulary), chunks
        speculative_block(block)
        results.append(S.chain_speculative_sampling(q, ids, p, seed=21, offset=3))
    (one, acc1, emi1), (chunks, acc2, emi2) = [[t.cpu() for t in r] for r in results]
    assert torch.equal(acc1, acc2) and torch.equal(emi1, emi2)
    assert 0 < int(emi1.sum()) < batch * n, "the case must mix accepted and rejected drafts"
    differ = int((one != chunks).sum())
    assert differ <= (batch // 100 if ON_GPU else 1), f"{differ} of {batch} drawn tokens differ"
    drawn = chunks.gather(1, emi2.long()[:, None])[:, 0].long()
    at = emi2.long()
    weight = torch.where(at[:, None] < n, (p.cpu()[torch.arange(batch), at] - q.cpu()[torch.arange(batch),
                                                                                     at.clamp(max=n - 1)]).clamp(min=0),
                         p.cpu()[torch.arange(batch), at])
    assert (weight[torch.arange(batch), drawn] > 0).all(), "a drawn token outside relu(p - q)'s support"


def test_chain_speculative_bad_arguments():
    draft_probs, drafts, target_probs, _ = _speculative_case(4, 2, 16)
    with pytest.raises(ValueError, match="target_probs"):
        S.chain_speculative_sampling(draft_probs, drafts, target_probs[:, :2].contiguous())
    with pytest.raises(TypeError, match="maybe_output_accepted_token_num"):
        S.chain_speculative_sampling(draft_probs, drafts, target_probs,
                                     torch.zeros(4, dtype=torch.int64, device=DEVICE))
    with pytest.raises(TypeError, match="draft_token_ids"):
        S.chain_speculative_sampling(draft_probs, drafts.float(), target_probs)


# --------------------------------------------------------------------------------------------------
# Benchmark CLI: python op_tests/test_sampling.py  (GPU; beside FlashInfer when it is installed)


def _timed(fn, graph: bool):
    """time_us of ``fn``, eager or as a CUDA-graph replay; None if it cannot be captured."""
    from aiter_ext.core.bench import time_us

    try:
        return time_us(fn, graph=graph)
    except Exception as exc:  # e.g. a library whose seeding is not capturable
        print(f"  (graph capture failed: {type(exc).__name__}: {str(exc)[:80]})")
        return None


def _host_profile() -> int:
    """Where an eager call's host time goes (an experiment): the wall time per call of each piece,
    issued back to back without synchronizing, so a piece faster on the GPU than on the host shows
    its host cost."""
    from aiter_ext.core.bench import benchmark_setup, host_time_us, markdown_table, warm_up_gpu
    from aiter_ext.ops.sampling.chunked import _stats, _workspace, chunked_launch
    from aiter_ext.ops.sampling.chunked_kernels import MAX, SCALAR

    ok, fi = benchmark_setup(False)
    warm_up_gpu()
    probs = torch.softmax(torch.randn(1, 128256, device="cuda"), -1)
    cfg = chunked_launch("softmax", 128256, 1)
    stats = _workspace(1, cfg, probs.device, with_arg=False)
    pieces = {
        "torch.randint (device seed)": lambda: torch.randint(0, 2**62, (1,), device="cuda", dtype=torch.int64),
        "torch.empty x2": lambda: (torch.empty(1, 32, device="cuda"), torch.empty(1, 32, device="cuda")),
        "chunk_stats_kernel launch": lambda: _stats(probs, MAX, None, 0.0, SCALAR, stats, cfg),
        "sampling_from_probs (seed=1, offset=0)": lambda: S.sampling_from_probs(probs, seed=1, offset=0),
        "sampling_from_probs (generator)": lambda: S.sampling_from_probs(probs),
        "top_p_sampling_from_probs (generator)": lambda: S.top_p_sampling_from_probs(probs, 0.9),
        "sampling_from_logits (generator)": lambda: S.sampling_from_logits(probs),
    }
    if fi is not None:
        pieces["FlashInfer sampling_from_probs"] = lambda: fi.sampling.sampling_from_probs(probs)
    rows = [{"piece": name, "host us per call": host_time_us(fn)} for name, fn in pieces.items()]
    print(markdown_table(rows))
    return 0


def _bench_thresholds(name: str, extra: tuple, probs):
    """The benchmark's sampler ``name`` and arguments as the (top_k, top_p, min_p) Thresholds of _sample."""
    k = extra[0] if name.startswith("top_k") else None
    p = extra[-1] if name.startswith("top_p") or name.startswith("top_k_top_p") else None
    m = extra[0] if name.startswith("min_p") else None
    return _thresholds(probs, k, p, m)


def bench_main(argv=None) -> int:
    import argparse

    from aiter_ext.core.bench import (
        benchmark_setup, copy_bandwidth_gbs, git_commit, markdown_table, time_us, warm_up_gpu,
    )

    parser = argparse.ArgumentParser(description="sampling from probabilities, beside FlashInfer")
    parser.add_argument("--no-flashinfer", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="time launch configs instead (an experiment)")
    parser.add_argument("--sweep-split", action="store_true", help="only the split kernel's part of --sweep")
    parser.add_argument("--host", action="store_true", help="profile the host time of an eager call instead")
    parser.add_argument("--quick", action="store_true", help="skip renorm/mask and chain speculative sampling")
    parser.add_argument("--spec", action="store_true", help="with --quick: chain speculative sampling too")
    parser.add_argument("--rounds-route", action="store_true",
                        help="top-p's default route at 8-128 rows against the row kernel, other rounds and FlashInfer")
    parser.add_argument("--issue", action="store_true", help="only issue 12's table: eager and graph, beside FlashInfer")
    parser.add_argument("--sweep-rounds", action="store_true",
                        help="the rounds path (rounds_kernels.py) against the default route and FlashInfer")
    args = parser.parse_args(argv)
    if args.sweep_split:
        from aiter_ext.core.bench import warm_up_gpu

        warm_up_gpu()
        _sweep_split()
        return 0
    if args.sweep:
        return _sweep()
    if args.host:
        return _host_profile()
    ok, fi = benchmark_setup(args.no_flashinfer)
    if not ok:
        return 2
    from aiter_ext.ops.sampling.api import _sample
    from aiter_ext.ops.sampling.launchers import _split_launch

    warm_up_gpu()
    if args.issue:
        return _issue_rows(fi)
    if args.sweep_rounds:
        return _sweep_rounds(fi)
    if args.rounds_route:
        return _rounds_route_table(fi)
    copy_gbs = copy_bandwidth_gbs()
    print(f"device {torch.cuda.get_device_name()}, commit {git_commit()}, copy {copy_gbs:.0f} GB/s; fp32 probs "
          f"from softmax(N(0, 1) logits); floor = one read of the probabilities at the copy bandwidth")
    cases = [("sampling_from_probs", (), {}), ("top_k_sampling_from_probs", (50,), {}),
             ("top_p_sampling_from_probs", (0.9,), {}), ("min_p_sampling_from_probs", (0.1,), {}),
             ("top_k_top_p_sampling_from_probs", (50, 0.9), {"filter_apply_order": "joint"})]
    rows = []
    for vocab in (128256, 201088, 32000):  # the issue's shapes first
        for batch in (1, 32, 256):
            probs = torch.softmax(torch.randn(batch, vocab, device="cuda"), -1)
            floor_us = batch * vocab * 4 / (copy_gbs * 1e3)
            mult_us = time_us(lambda: torch.multinomial(probs, 1))
            for name, extra, kw in cases:
                ours = getattr(S, name)
                # a check before timing: every token inside its row's kept set
                tokens = ours(probs, *extra, **kw).long()
                if name.startswith("top_k"):
                    kth = probs.topk(extra[0], dim=-1).values[:, -1]
                    assert (probs.gather(1, tokens[:, None])[:, 0] >= kth).all(), name
                if name == "top_p_sampling_from_probs":  # FlashInfer's rule: the mass strictly above < p
                    picked = probs.gather(1, tokens[:, None])
                    assert ((probs * (probs > picked)).sum(-1) < extra[0]).all(), name
                if name == "min_p_sampling_from_probs":
                    assert (probs.gather(1, tokens[:, None])[:, 0] >= extra[0] * probs.max(-1).values).all(), name
                us = time_us(lambda: ours(probs, *extra, **kw))
                graph_us = _timed(lambda: ours(probs, *extra, **kw), graph=True)
                # at small batch the split kernel is the route: the row kernel's time beside it
                route = "split" if _split_launch(vocab, batch, None) is not None else "row/chunked"
                row_graph_us = None
                if route == "split":
                    thresholds = _bench_thresholds(name, extra, probs)
                    row_graph_us = _timed(lambda: _sample(probs, None, *thresholds, None, False, None, None, False,
                                                          None, {"split": False}), graph=True)
                # the row kernel's profile (issue 12): rejection rounds, and passes over the row (chunks
                # read / chunks in a row), so that bytes moved = passes x row bytes
                filters = {"top_k_sampling_from_probs": (extra[:1] + (None, None)),
                           "top_p_sampling_from_probs": (None,) + extra[:1] + (None,),
                           "min_p_sampling_from_probs": (None, None) + extra[:1],
                           "top_k_top_p_sampling_from_probs": extra[:2] + (None,)}.get(name, (None, None, None))
                _, rounds, passes = row_kernel_stats(probs, *filters)
                fi_us = fi_graph_us = None
                if fi is not None:
                    fi_fn = getattr(fi.sampling, name)
                    fi_us = time_us(lambda: fi_fn(probs, *extra, **kw))
                    fi_graph_us = _timed(lambda: fi_fn(probs, *extra, **kw), graph=True)
                moved_gbs = float(passes.mean()) * batch * vocab * 4 / (graph_us or us) / 1e3
                rows.append({"op": name, "batch": batch, "vocab": vocab, "route": route, "us": us,
                             "graph_us": graph_us, "row kernel graph_us": row_graph_us,
                             "rounds (row kernel)": float(rounds.double().mean()),
                             "passes/row": float(passes.mean()), "GB/s at passes": moved_gbs,
                             "floor_us": floor_us, "%floor": 100 * floor_us / us, "fi_us": fi_us,
                             "fi_graph_us": fi_graph_us, "fi/ours": fi_us / us if fi_us else None,
                             "fi/ours graph": fi_graph_us / graph_us if fi_graph_us and graph_us else None,
                             "multinomial_us": mult_us})
            print(markdown_table(rows[-len(cases):]), flush=True)  # a call cut short keeps what it measured
    print(markdown_table(rows))
    rows = []
    for vocab in (32000, 128256, 201088):
        for batch in (1, 32, 256):
            logits = torch.randn(batch, vocab, device="cuda")
            temps = torch.full((batch,), 0.7, device="cuda")
            nbytes = batch * vocab * 4
            probs = torch.softmax(logits, -1)
            for name, ours, theirs in (
                    ("softmax (temperature tensor)", lambda: S.softmax(logits, temps),
                     (lambda: fi.sampling.softmax(logits, temps)) if fi else None),
                    ("sampling_from_logits", lambda: S.sampling_from_logits(logits),
                     (lambda: fi.sampling.sampling_from_logits(logits)) if fi else None),
                    # FlashInfer's top-k renorm/mask may build its `topk` module, which did not finish
                    # building in 8 minutes on these machines (performance-anchors.md): ours alone
                    ("top_k_renorm_probs (50)", lambda: S.top_k_renorm_probs(probs, 50), None),
                    ("top_p_renorm_probs (0.9)", lambda: S.top_p_renorm_probs(probs, 0.9),
                     (lambda: fi.sampling.top_p_renorm_probs(probs, 0.9)) if fi else None),
                    ("top_k_mask_logits (50)", lambda: S.top_k_mask_logits(logits, 50), None))[:2 if args.quick else 5]:
                us = time_us(ours)
                graph_us = _timed(ours, graph=True)
                fi_us = time_us(theirs) if theirs else None
                fi_graph_us = _timed(theirs, graph=True) if theirs else None
                # floor: softmax and the renorm/mask ops read once and write once; sampling reads once
                moved = 2 * nbytes if not name.startswith("sampling") else nbytes
                rows.append({"op": name, "batch": batch, "vocab": vocab, "us": us, "graph_us": graph_us,
                             "floor_us": moved / (copy_gbs * 1e3), "%floor": 100 * moved / (copy_gbs * 1e3) / us,
                             "fi_us": fi_us, "fi_graph_us": fi_graph_us, "fi/ours": fi_us / us if fi_us else None})
    print(markdown_table(rows))
    if args.quick and not args.spec:
        return 0
    rows = []
    for vocab in (32000, 128256, 201088):
        for batch in (1, 32, 256):
            n = 4
            draft = torch.softmax(torch.randn(batch, n, vocab, device="cuda"), -1)
            target = torch.softmax(torch.randn(batch, n + 1, vocab, device="cuda"), -1)
            ids = torch.multinomial(draft.view(-1, vocab), 1).view(batch, n).to(torch.int32)
            out, acc, emi = S.chain_speculative_sampling(draft, ids, target)
            assert ((out >= 0).sum(1) == emi + 1).all()
            ours = lambda: S.chain_speculative_sampling(draft, ids, target)  # noqa: E731
            theirs = (lambda: fi.sampling.chain_speculative_sampling(draft, ids, target)) if fi else None  # noqa: E731
            us, graph_us = time_us(ours), _timed(ours, graph=True)
            fi_us = time_us(theirs) if theirs else None
            fi_graph_us = _timed(theirs, graph=True) if theirs else None
            # Unrelated draft and target rows: nearly every request rejects its first draft and draws from
            # relu(p - q) there, so one read of two rows per request is the floor.
            moved = batch * 2 * vocab * 4
            rows.append({"op": "chain_speculative_sampling (4 drafts)", "batch": batch, "vocab": vocab, "us": us,
                         "graph_us": graph_us, "fi_us": fi_us, "fi_graph_us": fi_graph_us,
                         "fi/ours": fi_us / us if fi_us else None,
                         "fi/ours graph": fi_graph_us / graph_us if fi_graph_us and graph_us else None,
                         "floor_us (2 rows)": moved / (copy_gbs * 1e3),
                         "GB/s at 2 rows": moved / (graph_us or us) / 1e3})
    print(markdown_table(rows))
    _sweep_speculative()
    return 0


def _sweep_rounds(fi) -> int:
    """Graph replays of top-k/top-p/joint by the rounds path (rounds drawn by chunks, chunk width, fused or
    not) against the default route and FlashInfer, printed row by row; the row kernel's rounds beside."""
    import itertools

    from aiter_ext.core.bench import git_commit
    from aiter_ext.ops.sampling.api import _sample

    print(f"device {torch.cuda.get_device_name()}, commit {git_commit()}; graph replays, us")
    configs = [(r, b, False) for r, b in itertools.product((1, 2, 3, 5), (2048, 4096))] + [(2, 2048, True),
                                                                                         (5, 2048, True)]
    print("| filter | shape | default | rounds (row kernel) | " +
          " | ".join(f"R{r}/{b}{' fused' if f else ''}" for r, b, f in configs) + " | FlashInfer |")
    print("|---" * (len(configs) + 5) + "|")
    for (batch, vocab), (name, k, p) in itertools.product(
            ((32, 128256), (256, 128256), (256, 32000), (32, 201088), (256, 201088)),
            (("top_p 0.9", None, 0.9), ("top_k 50", 50, None), ("joint 50/0.9", 50, 0.9))):
        probs = torch.softmax(torch.randn(batch, vocab, device="cuda"), -1)
        args = _thresholds(probs, k, p, None)

        def run(config):
            return _timed(lambda: _sample(probs, None, *args, None, False, None, None, False, None, config), graph=True)

        cells = [run(None)]
        _, rounds, _ = row_kernel_stats(probs, k, p, None)
        cells.append(float(rounds.double().mean()))
        for r, b, fused in configs:
            cells.append(run({"rounds": True, "rounds_drawn": r, "BLOCK": b, "fused": fused}))
        fi_us = None
        if fi is not None:
            fn = {"top_p 0.9": lambda: fi.sampling.top_p_sampling_from_probs(probs, p),
                  "top_k 50": lambda: fi.sampling.top_k_sampling_from_probs(probs, k),
                  "joint 50/0.9": lambda: fi.sampling.top_k_top_p_sampling_from_probs(probs, k, p,
                                                                                       filter_apply_order="joint")}
            fi_us = _timed(fn[name], graph=True)
        cells.append(fi_us)
        print(f"| {name} | {batch} x {vocab} | " + " | ".join(f"{c:.1f}" if c else "-" for c in cells) + " |",
              flush=True)
    return 0


def _rounds_route_table(fi) -> int:
    """Top-p (0.9) at the batches around the rounds path's default route (rounds_kernels.ROUNDS_MAX_ROWS):
    the public call (its route), the row kernel, two other rounds launches, and FlashInfer; eager and graph."""
    import itertools

    from aiter_ext.core.bench import git_commit, time_us
    from aiter_ext.ops.sampling.api import _sample

    print(f"device {torch.cuda.get_device_name()}, commit {git_commit()}; top-p 0.9, us as eager / graph")
    print("| shape | public call | row kernel | R2/2048 | R3/2048 fused | FlashInfer | FI/public graph |")
    print("|---|---|---|---|---|---|---|")
    for vocab, batch in itertools.product((128256, 201088), (8, 16, 32, 64, 96, 128)):
        probs = torch.softmax(torch.randn(batch, vocab, device="cuda"), -1)
        args = _thresholds(probs, None, 0.9, None)

        def forced(config):
            return lambda: _sample(probs, None, *args, None, False, None, None, False, None, config)

        fns = [lambda: S.top_p_sampling_from_probs(probs, 0.9), forced({"split": False}),
               forced({"rounds": True, "rounds_drawn": 2, "BLOCK": 2048}),
               forced({"rounds": True, "rounds_drawn": 3, "BLOCK": 2048, "fused": True})]
        if fi is not None:
            fns.append(lambda: fi.sampling.top_p_sampling_from_probs(probs, 0.9))
        cells = [(time_us(fn), _timed(fn, graph=True)) for fn in fns]
        ratio = f"{cells[-1][1] / cells[0][1]:.2f}" if fi is not None and cells[-1][1] and cells[0][1] else "-"
        print(f"| {batch} x {vocab} | " + " | ".join(f"{e:.1f} / {g:.1f}" if g else f"{e:.1f} / -" for e, g in cells)
              + f" | {ratio} |", flush=True)
    return 0


def _issue_rows(fi) -> int:
    """Issue 12's table: each row eager (GPU time of back-to-back calls, host launch cost included) and as
    graph replays, ours and FlashInfer's, printed as it is measured."""
    from aiter_ext.core.bench import git_commit, time_us

    print(f"device {torch.cuda.get_device_name()}, commit {git_commit()}; fp32 probs from softmax(N(0, 1) logits)")
    print("| op | shape | ours eager | ours graph | FI eager | FI graph | FI/ours eager | FI/ours graph |")
    print("|---|---|---|---|---|---|---|---|")
    cases = [("min_p_sampling_from_probs", (0.1,), 256, 128256), ("top_k_sampling_from_probs", (50,), 256, 128256),
             ("top_p_sampling_from_probs", (0.9,), 256, 128256), ("top_k_top_p_sampling_from_probs", (50, 0.9), 256,
                                                                   128256),
             ("min_p_sampling_from_probs", (0.1,), 1, 128256), ("top_k_sampling_from_probs", (50,), 1, 128256),
             ("top_p_sampling_from_probs", (0.9,), 1, 128256), ("min_p_sampling_from_probs", (0.1,), 32, 201088),
             ("top_k_sampling_from_probs", (50,), 32, 201088), ("top_p_sampling_from_probs", (0.9,), 32, 201088),
             ("chain_speculative_sampling", (), 256, 128256), ("softmax", (), 256, 128256)]
    for name, extra, batch, vocab in cases:
        if name == "chain_speculative_sampling":
            n = 4
            draft = torch.softmax(torch.randn(batch, n, vocab, device="cuda"), -1)
            target = torch.softmax(torch.randn(batch, n + 1, vocab, device="cuda"), -1)
            ids = torch.multinomial(draft.view(-1, vocab), 1).view(batch, n).to(torch.int32)
            args, kw = (draft, ids, target), {}
        elif name == "softmax":
            logits = torch.randn(batch, vocab, device="cuda")
            args, kw = (logits,), {"temperature": torch.full((batch,), 0.7, device="cuda")}
        else:
            args = (torch.softmax(torch.randn(batch, vocab, device="cuda"), -1),) + extra
            kw = {"filter_apply_order": "joint"} if name.startswith("top_k_top_p") else {}
        ours = getattr(S, name)
        theirs = getattr(fi.sampling, name) if fi is not None else None
        times = [time_us(lambda: ours(*args, **kw)), _timed(lambda: ours(*args, **kw), graph=True)]
        if theirs is not None:
            times += [time_us(lambda: theirs(*args, **kw)), _timed(lambda: theirs(*args, **kw), graph=True)]
        cells = [f"{t:.1f}" if t else "-" for t in times] + ["-"] * (4 - len(times))
        ratios = [f"{times[2] / times[0]:.2f}", f"{times[3] / times[1]:.2f}"] if theirs is not None and all(times) \
            else ["-", "-"]
        print(f"| {name} | {batch} x {vocab} | " + " | ".join(cells + ratios) + " |", flush=True)
    _top_p_tail_profile()
    return 0


def _top_p_tail_profile() -> None:
    """Where top-p's time goes at 256 x 128256 (the issue's hardest target): the row kernel's rounds and
    passes per row (mean and the slowest row), and graph times of the same draw at top_p 0.9 against
    top_p 1.0 (every row accepted in its first round: a draw scan and one check pass) and plain sampling
    (the draw scan alone). The copy-bandwidth time of the mean passes is the floor of a perfectly
    balanced launch; a slowest row far above the mean is what one program per row cannot spread."""
    from aiter_ext.core.bench import copy_bandwidth_gbs

    batch, vocab = 256, 128256
    probs = torch.softmax(torch.randn(batch, vocab, device="cuda"), -1)
    _, rounds, passes = row_kernel_stats(probs, top_p=0.9)
    copy_gbs = copy_bandwidth_gbs()
    floor_us = float(passes.mean()) * batch * vocab * 4 / copy_gbs / 1e3
    times = {label: _timed(fn, graph=True) for label, fn in (
        ("top_p 0.9", lambda: S.top_p_sampling_from_probs(probs, 0.9)),
        ("top_p 1.0", lambda: S.top_p_sampling_from_probs(probs, 1.0)),
        ("plain", lambda: S.sampling_from_probs(probs)))}
    print(f"top-p tail, {batch} x {vocab}: rounds mean {rounds.double().mean():.3f} max {int(rounds.max())}; "
          f"passes mean {passes.mean():.2f} max {passes.max():.2f}; floor at {copy_gbs:.0f} GB/s {floor_us:.1f} us; "
          + ", ".join(f"{k} {v:.1f} us" for k, v in times.items() if v), flush=True)


def _sweep_speculative() -> None:
    """Chain speculative sampling's chunk width and warps (graph replays of the launcher), 4 drafts."""
    import itertools

    from aiter_ext.core.bench import markdown_table
    from aiter_ext.ops.sampling import launchers

    rows = []
    for vocab, batch in ((128256, 1), (128256, 32), (128256, 256), (32000, 256)):
        n = 4
        draft = torch.softmax(torch.randn(batch, n, vocab, device="cuda"), -1)
        target = torch.softmax(torch.randn(batch, n + 1, vocab, device="cuda"), -1)
        ids = torch.multinomial(draft.view(-1, vocab), 1).view(batch, n).to(torch.int32)
        out = torch.empty(batch, n + 1, dtype=torch.int32, device="cuda")
        acc, emi = (torch.zeros(batch, dtype=torch.int32, device="cuda") for _ in range(2))
        seed, offset = (torch.ones(1, dtype=torch.int64, device="cuda") for _ in range(2))
        for block, warps in itertools.product((1024, 2048, 4096, 8192), (4, 8)):
            config = {"BLOCK": block, "num_warps": warps}
            us = _timed(lambda: launchers.chain_speculative(config, draft, ids, target, out, acc, emi, seed, offset,
                                                            False), graph=True)
            rows.append({"batch": batch, "vocab": vocab, "BLOCK": block, "warps": warps, "graph_us": us,
                         "GB/s at 2 rows": batch * 2 * vocab * 4 / us / 1e3 if us else None})
    print(markdown_table(rows))


def _sweep_split() -> None:
    """The split kernel's chunk width and warps against the row kernel at small batches (graph replays,
    seeds from the generator), to place the crossover between the two."""
    import itertools

    from aiter_ext.core.bench import markdown_table, time_us
    from aiter_ext.ops.sampling.api import _sample
    from aiter_ext.ops.sampling.launchers import _split_launch

    for vocab, batch in itertools.product((128256, 201088), (1, 4, 16, 32, 64)):
        probs = torch.softmax(torch.randn(batch, vocab, device="cuda"), -1)
        rows = []
        for name, k, p, m in (("top_p 0.9", None, 0.9, None), ("top_k 50", 50, None, None),
                              ("min_p 0.1", None, None, 0.1), ("plain", None, None, None)):
            args = _thresholds(probs, k, p, m)
            configs = [{"split": False}] + [{"split": True, "BLOCK": b, "num_warps": w}
                                             for b, w in itertools.product((2048, 4096, 8192), (4, 8, 16))]
            for cfg in configs:
                if cfg["split"] and _split_launch(vocab, batch, cfg) is None:
                    continue  # no split launch at this shape (it would time the row kernel)
                try:
                    us = time_us(lambda: _sample(probs, None, *args, None, False, None, None, False, None, cfg),
                                 graph=True)
                except Exception as exc:  # a config with no split launch at this shape, or that does not compile
                    us = f"{type(exc).__name__}: {str(exc)[:60]}"
                rows.append({"case": f"{name} {batch}x{vocab}", "config": str(cfg), "graph us": us})
        print(markdown_table(rows), flush=True)


def _sweep() -> int:
    """Launch configs against each other (an experiment): the chunked path's chunk widths and warps
    against one program per row, for the filters that can take either, and the row kernel's tiles
    for top-k/top-p (always one program per row)."""
    import itertools

    from aiter_ext.core.bench import markdown_table, time_us, warm_up_gpu
    from aiter_ext.ops.sampling.api import _sample
    from aiter_ext.ops.sampling.inputs import threshold
    from aiter_ext.ops.sampling.kernels import launch_config

    warm_up_gpu()
    _sweep_split()
    for batch, vocab in ((256, 128256), (1, 128256), (32, 32000)):
        probs = torch.softmax(torch.randn(batch, vocab, device="cuda"), -1)
        for name, k, p, m in (("top_p 0.9", None, 0.9, None), ("top_k 50", 50, None, None),
                              ("min_p 0.1", None, None, 0.1), ("plain", None, None, None)):
            default = launch_config(vocab, batch, "sm_90", top_p_only=name.startswith("top_p"))
            configs = [{"chunked": False, **default}]
            if m is not None:  # min-p can take the chunked path
                configs += [{"chunked": True, "BLOCK": b, "num_warps": w}
                            for b, w in itertools.product((2048, 4096), (4, 8))]
            # the row kernel's tiles, with and without loading a chunk ahead (kernels.load_ahead) and
            # per-lane sums (kernels.lane_zeros)
            configs += [{"chunked": False, "ROWS": 1, "BLOCK": b, "num_warps": w, "PREFETCH": f, "LANE_SUMS": lane}
                        for b, w, f, lane in itertools.product((4096, 8192), (4, 8, 16), (True, False), (True, False))
                        if not (lane and b // (32 * w) > 32)]  # at most 32 values a thread per sum
            results = []
            k_t, p_t = threshold("top_k", k, batch, probs.device, "top_k"), threshold("top_p", p, batch, probs.device, "unit")
            m_t = threshold("min_p", m, batch, probs.device, "unit")
            for cfg in configs:
                try:
                    # seeds from the generator, so that each replay draws anew: a fixed seed replays one
                    # draw (its rounds), and timed configs against that single draw (the H100 sweep of
                    # 2026-12-06 did: 26 us for top-p at 1 x 128256 there, 36 us averaged in the benchmark)
                    us = time_us(lambda: _sample(probs, None, k_t, p_t, m_t, None, False, None, None, False, None,
                                                 cfg), graph=True)
                except Exception as exc:  # a config that does not compile
                    results.append((float("inf"), f"{cfg}: {type(exc).__name__}"))
                    continue
                results.append((us, str(cfg)))
            default_us = results[0][0]
            results.sort()
            # all of them (PREFETCH and LANE_SUMS on against off at each tile), printed per case so that
            # a call cut short keeps what it measured
            print(markdown_table([{"case": f"{name} {batch}x{vocab}", "config": cfg, "graph us": us,
                                   "row-kernel default graph us": default_us} for us, cfg in results]), flush=True)
    # sampling from logits at a small vocabulary: Gumbel-max in one program per row against the chunked
    # inverse CDF (which wins from vocabulary 65536 up)
    from aiter_ext.ops.sampling.inputs import prepare_draw
    from aiter_ext.ops.sampling.launchers import logits_draw

    rows = []
    for batch, vocab in ((1, 32000), (32, 32000), (256, 32000), (1, 16384), (256, 16384)):
        logits = torch.randn(batch, vocab, device="cuda")
        draw = prepare_draw(logits, "logits", None, None, False, 1, 0)
        for cfg in [{"chunked": False}] + [{"chunked": True, "BLOCK": b, "num_warps": 4} for b in (1024, 2048, 4096)]:
            rows.append({"case": f"sampling_from_logits {batch}x{vocab}", "config": str(cfg),
                         "graph us": time_us(lambda: logits_draw(cfg, logits, None, draw), graph=True)})
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(bench_main())
