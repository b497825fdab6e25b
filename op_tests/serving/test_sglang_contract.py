"""aiter_ext's SGLang plugin against SGLang 0.5.23 itself (issue 15; serving-integration.md, section 7).
Runs in the serving contract environment (.ci/serving_env.sh); skipped elsewhere."""

from importlib.metadata import entry_points

import pytest
import torch
from serving_setup import sglang  # noqa: F401  (the fixture; importing it also fakes the MI300X)

from aiter_ext.core.testing import chi_square_p_value
from aiter_ext.ops.sampling import reference as R

ALPHA = 1e-4


def test_load_plugins_registers_the_backend_and_its_cli_choice(sglang):
    names = {ep.name: ep.value for ep in entry_points(group="sglang.srt.plugins")}
    assert names.get("aiter_ext") == "aiter_ext.integrations.sglang:register"
    from sglang.srt.arg_groups.choices import ATTENTION_BACKEND_CHOICES
    from sglang.srt.layers.attention.aiter_backend import AiterAttnBackend
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.plugins import load_plugins

    load_plugins()
    load_plugins()  # idempotent
    assert "aiter_ext" in ATTENTION_BACKENDS and "aiter_ext" in ATTENTION_BACKEND_CHOICES
    assert ATTENTION_BACKEND_CHOICES.count("aiter_ext") == 1
    from aiter_ext.integrations.sglang.backend import AiterExtAttnBackend

    assert issubclass(AiterExtAttnBackend, AiterAttnBackend)


def test_the_cli_parses_the_backend(sglang):
    import argparse

    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import ServerArgs

    load_plugins()
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    args = parser.parse_args(["--model-path", "dummy", "--attention-backend", "aiter_ext"])
    assert args.attention_backend == "aiter_ext"


# --------------------------------------------------------------------------------------------------
# The sampler: --sampling-backend aiter_ext (aiter_ext/integrations/sglang/sampler.py). Frequencies by
# Pearson's chi-square test (p-value above 1e-4) and no token outside the kept set.

ROWS, VOCAB = 20_000, 64


def _batch_info(rows, top_k, top_p, min_p, seed=None):
    """The fields of SGLang's SamplingBatchInfo that _sample_from_probs reads."""
    import types

    return types.SimpleNamespace(
        top_ks=torch.full((rows,), top_k, dtype=torch.int32), top_ps=torch.full((rows,), top_p),
        min_ps=torch.full((rows,), min_p), need_min_p_sampling=min_p > 0, need_top_k_sampling=top_k < VOCAB,
        need_top_p_sampling=top_p < 1, sampling_seed=seed, sampling_mask_batch_indices=None, max_top_k=top_k)


def _sampler():
    """An AiterExtSampler without its constructor (which wants SGLang's process groups): the drawing
    method reads nothing of the module's state."""
    from aiter_ext.integrations.sglang.sampler import AiterExtSampler

    return object.__new__(AiterExtSampler)


def test_the_sampling_backend_registers_and_parses(sglang):
    import argparse

    from sglang.srt.layers.sampler import _CUSTOM_SAMPLER_FACTORIES
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import ServerArgs

    load_plugins()
    load_plugins()
    assert "aiter_ext" in _CUSTOM_SAMPLER_FACTORIES
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    args = parser.parse_args(["--model-path", "dummy", "--sampling-backend", "aiter_ext"])
    assert args.sampling_backend == "aiter_ext"


@pytest.mark.parametrize("top_k, top_p, min_p", [(10, 0.8, 0.0), (VOCAB, 0.7, 0.0), (20, 1.0, 0.1)],
                         ids=["joint", "top_p", "top_k_min_p"])
def test_filtered_rows_follow_sglangs_distribution(sglang, monkeypatch, top_k, top_p, min_p):
    """SGLang's flashinfer backend: top-k and top-p jointly (both on the original distribution), or top-k
    renorm, top-p renorm, then min-p. aiter_ext's draws must follow that, and never fall back."""
    import aiter_ext.integrations.sglang.sampler as ours

    monkeypatch.setattr(ours, "sglang_pytorch_draw", lambda *a: pytest.fail("an unseeded batch fell back"))
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(VOCAB, dtype=torch.float64) * 2.0, -1)[None].float()
    if min_p:
        target = R.min_p_distribution(R.top_p_distribution(R.top_k_distribution(probs, top_k).float(), top_p).float(),
                                      min_p)
    else:
        target = R.joint_top_k_top_p_distribution(probs, top_k, top_p)
    batch = probs.expand(ROWS, VOCAB).contiguous()
    tokens, capture = _sampler()._sample_from_probs(batch, _batch_info(ROWS, top_k, top_p, min_p),
                                                    torch.zeros(ROWS, dtype=torch.int64), False)
    assert capture is None and tokens.shape == (ROWS,)
    counts = torch.bincount(tokens.long(), minlength=VOCAB)
    outside = (counts > 0) & (target[0] == 0)
    assert not outside.any(), f"tokens outside the kept set: {outside.nonzero().flatten().tolist()}"
    p_value = chi_square_p_value(counts, target[0].float())
    assert p_value > ALPHA, f"chi-square p-value {p_value:.3g} over {ROWS} draws"


@pytest.mark.parametrize("capture", [False, True], ids=["seeded", "seeded_with_mask_capture"])
def test_seeded_batches_take_sglangs_pytorch_sampler(sglang, monkeypatch, capture):
    """Seeded batches (and mask captures) are drawn by SGLang's own pytorch sampler with SGLang's arguments.
    (Its seeded draw itself needs sgl_kernel's hash, which has no CPU build: a stand-in records the call.)"""
    import aiter_ext.integrations.sglang.sampler as ours

    calls = []
    tokens = torch.arange(8, dtype=torch.int32)
    weights, token_ids, selected = torch.rand(8, VOCAB), torch.zeros(8, 1, dtype=torch.int64), torch.rand(8)

    def sglang_torch_sampler(*args, **kwargs):
        calls.append((args, kwargs))
        return (tokens, weights, token_ids, selected) if kwargs["return_filtered_probs"] else tokens

    monkeypatch.setattr(ours, "top_k_top_p_min_p_sampling_from_probs_torch", sglang_torch_sampler)
    monkeypatch.setattr(ours, "draw", lambda *a: pytest.fail("a seeded batch was drawn by aiter_ext"))
    probs = torch.softmax(torch.randn(8, VOCAB), -1)
    info = _batch_info(8, 5, 0.9, 0.0, seed=torch.arange(8, dtype=torch.int64) + 11)
    if capture:
        info.sampling_mask_batch_indices = torch.tensor([1, 4])
    positions = torch.arange(8, dtype=torch.int64)
    out, mask = _sampler()._sample_from_probs(probs, info, positions, False)
    assert out is tokens and len(calls) == 1
    args, kwargs = calls[0]
    assert args[0] is probs and args[5] is info.sampling_seed and args[6] is positions
    assert kwargs == {"return_filtered_probs": capture, "max_top_k": 5}
    if capture:
        assert torch.equal(mask.weights, weights[[1, 4]]) and torch.equal(mask.selected_weight, selected[[1, 4]])
        assert mask.batch_rows is info.sampling_mask_batch_indices
    else:
        assert mask is None
