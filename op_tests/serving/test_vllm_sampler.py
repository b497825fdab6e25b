"""aiter_ext's samplers inside vLLM 0.33's TopKTopPSampler (aiter_ext/integrations/vllm/sampler.py), against
vLLM itself on CPU. Runs in the serving contract environment (.ci/serving_env.sh); skipped elsewhere.

Frequencies are checked with Pearson's chi-square test (p-value above 1e-4, as op_tests/test_sampling.py),
and no token outside the kept set may appear."""

import types

import pytest
import torch
from serving_setup import assert_vllm_flag_switches, vllm  # noqa: F401  (the fixture; importing it also fakes the MI300X)

from aiter_ext.core.testing import chi_square_p_value
from aiter_ext.ops.sampling import reference as R

ALPHA = 1e-4
ROWS, VOCAB = 20_000, 64  # one draw per row: vLLM's sampler takes a batch of requests


@pytest.fixture()
def installed(vllm, monkeypatch):
    """The plugin's register() with AITER_EXT_SAMPLER=1 (it wraps the class once per process)."""
    from aiter_ext.integrations import vllm as plugin

    monkeypatch.setenv("AITER_EXT_SAMPLER", "1")
    plugin.register()
    from vllm.v1.sample.ops.topk_topp_sampler import TopKTopPSampler

    return TopKTopPSampler


def test_register_installs_the_sampler_only_when_asked(vllm):
    """In a fresh process each, as vLLM's workers load plugins: AITER_EXT_SAMPLER=1 wraps the sampler, 0 does not."""
    assert_vllm_flag_switches("AITER_EXT_SAMPLER", "from vllm.v1.sample.ops.topk_topp_sampler import TopKTopPSampler as T; "
                              "from aiter_ext.integrations.vllm.sampler import forward_aiter_ext as f",
                              "getattr(T().forward, '__func__', None) is f")


def test_processed_logprobs_modes_keep_vllms_forward(installed):
    from aiter_ext.integrations.vllm.sampler import forward_aiter_ext

    assert installed(logprobs_mode="raw_logprobs").forward.__func__ is forward_aiter_ext
    assert getattr(installed(logprobs_mode="processed_logprobs").forward, "__func__", None) is not forward_aiter_ext


def _v2_fused_draw(logits, k, p):
    """The V2 runner's fused draw (Sampler._sample_random with use_fused_sampler), on a Sampler made without
    its constructor (which wants the runner's states): the branch reads only use_flashinfer."""
    import vllm.v1.worker.gpu.sample.sampler as v2

    sampler = object.__new__(v2.Sampler)
    sampler.use_flashinfer, sampler.use_xpu_sampler = True, False
    tokens, _ = sampler._sample_random(logits, None, None, None, k, p, False, True)
    assert tokens.dtype == torch.int64
    return tokens


@pytest.mark.parametrize("runner", ["v1", "v2"])
@pytest.mark.parametrize("k, p", [(10, None), (None, 0.8), (10, 0.8)], ids=["top_k", "top_p", "top_k_top_p"])
def test_filtered_rows_follow_vllms_distribution(installed, runner, k, p):
    """vLLM applies top-k, then top-p on what top-k kept (apply_top_k_top_p), then samples: the frequencies
    of aiter_ext's draws must be that distribution, with the thresholds as vLLM passes them (int64 k and
    fp32 p tensors, one per request), through V1's TopKTopPSampler and V2's fused draw."""
    torch.manual_seed(0)
    logits = torch.randn(VOCAB, dtype=torch.float64) * 2.0
    probs = torch.softmax(logits, -1)[None].float()
    target = probs
    if k is not None:
        target = R.top_k_distribution(target, k).float()
    if p is not None:
        target = R.top_p_distribution(target, p).float()
    k_t = torch.full((ROWS,), k, dtype=torch.int64) if k is not None else None
    p_t = torch.full((ROWS,), p, dtype=torch.float32) if p is not None else None
    batch = logits.float().expand(ROWS, VOCAB).contiguous()
    if runner == "v1":
        sampler = installed()
        sampler.forward_native = lambda *args: pytest.fail("filtered rows without generators must not fall back")
        tokens, returned_logits = sampler.forward(batch, {}, k_t, p_t)
        assert returned_logits is None
    else:
        tokens = _v2_fused_draw(batch, k_t, p_t)
    assert tokens.shape == (ROWS,)
    counts = torch.bincount(tokens.long(), minlength=VOCAB)
    outside = (counts > 0) & (target[0] == 0)
    assert not outside.any(), f"tokens outside the kept set: {outside.nonzero().flatten().tolist()}"
    p_value = chi_square_p_value(counts, target[0])
    assert p_value > ALPHA, f"chi-square p-value {p_value:.3g} over {ROWS} draws"


def test_seeded_and_unfiltered_rows_are_vllms_own(installed):
    """Per-request generators (seeded requests) and rows with no filter go to vLLM's forward_native: the
    same tokens as vLLM draws from the same generator states."""
    sampler = installed()
    logits = torch.randn(8, VOCAB)
    k = torch.full((8,), 5, dtype=torch.int64)
    for generators_seed, k_t in ((1234, k), (None, None)):
        def generators():
            return {} if generators_seed is None else {
                i: torch.Generator().manual_seed(generators_seed + i) for i in range(8)}

        torch.manual_seed(7)
        ours, _ = sampler.forward(logits.clone(), generators(), k_t, None)
        torch.manual_seed(7)
        theirs, _ = sampler.forward_native(logits.clone(), generators(), k_t, None)
        assert torch.equal(ours, theirs)


def test_v2_install_points_the_fused_draw_at_aiter_ext(installed):
    import vllm.v1.worker.gpu.sample.sampler as v2

    from aiter_ext.integrations.vllm.sampler import install_v2, sample

    assert v2.flashinfer_sample is sample

    class Runner:  # the part of V2's Sampler that install_v2 touches
        def __init__(self, return_sampling_mask=False):
            self.return_sampling_mask, self.use_flashinfer = return_sampling_mask, False

    module = types.SimpleNamespace(Sampler=Runner, flashinfer_sample=None)
    assert install_v2(module) and not install_v2(module)
    assert module.flashinfer_sample is sample
    assert Runner().use_flashinfer and not Runner(return_sampling_mask=True).use_flashinfer
