"""aiter_ext's LoRA shrink/expand inside vLLM 0.33's PunicaWrapperGPU (aiter_ext/integrations/vllm/lora.py),
against an fp32 reference of vLLM's documented semantics, on CPU (the kernels on Triton's interpreter).
Runs in the serving contract environment (.ci/serving_env.sh); skipped elsewhere.

The environment has no Triton for vLLM itself: vLLM's punica module then binds neither its kernels nor
``LoRAKernelMeta``, so the test gives it the metadata class (pure torch) and leaves the kernels to the plugin."""


import pytest
import torch
from serving_setup import assert_vllm_flag_switches, vllm  # noqa: F401  (the fixture; importing it also fakes the MI300X)

from aiter_ext.core.testing import assert_close

DTYPE = torch.float16  # the interpreter's dots are right in fp16 (not bf16)


def test_register_routes_lora_only_when_asked(vllm):
    """In a fresh process each, as vLLM's workers load plugins: AITER_EXT_LORA=1 routes, 0 does not."""
    assert_vllm_flag_switches("AITER_EXT_LORA", "import vllm.lora.punica_wrapper.punica_gpu as m; import aiter_ext",
                              "getattr(m, 'lora_shrink', None) is aiter_ext.lora_shrink and "
                              "getattr(m, 'lora_expand', None) is aiter_ext.lora_expand")


@pytest.fixture()
def punica(vllm, monkeypatch):
    """vLLM's PunicaWrapperGPU on the CPU with the plugin's routing installed."""
    import vllm.lora.punica_wrapper.punica_gpu as punica_gpu
    import vllm.utils.torch_utils as torch_utils
    from vllm.lora.ops.triton_ops.lora_kernel_metadata import LoRAKernelMeta

    from aiter_ext.integrations.vllm import lora

    monkeypatch.setattr(torch_utils, "PIN_MEMORY", False)  # no pinned memory without a driver
    monkeypatch.setattr(punica_gpu, "LoRAKernelMeta", LoRAKernelMeta, raising=False)
    for name in ("lora_shrink", "lora_expand"):
        monkeypatch.setattr(punica_gpu, name, None, raising=False)  # undone after the test
    lora.install(punica_gpu)
    return punica_gpu


def test_add_lora_linear_through_vllms_wrapper(punica):
    from vllm.config.lora import LoRAConfig
    from vllm.lora.layers import LoRAMapping

    gen = torch.Generator().manual_seed(17)
    max_loras, rank, hidden, slices, scale = 3, 16, 64, (48, 16, 16), 0.5
    lora_ids = [7, 8, 9]  # slot i holds adapter lora_ids[i]; a token names its adapter's id (0: none)
    token_ids = [8, 9, 0, 8, 7, 0, 9, 9, 7, 8, 0]
    wrapper = punica.PunicaWrapperGPU(64, 8, "cpu", lora_config=LoRAConfig(max_loras=max_loras, max_lora_rank=rank))
    wrapper.update_metadata(LoRAMapping(index_mapping=tuple(token_ids), prompt_mapping=tuple(token_ids),
                                        is_prefill=True), lora_ids, max_loras, 32000)
    tokens = len(token_ids)
    x = torch.randn(tokens, hidden, generator=gen).to(DTYPE)
    lora_a = tuple((torch.randn(max_loras, 1, rank, hidden, generator=gen) / 8).to(DTYPE) for _ in slices)
    lora_b = tuple((torch.randn(max_loras, 1, h, rank, generator=gen) / 4).to(DTYPE) for h in slices)
    base = torch.randn(tokens, sum(slices), generator=gen).to(DTYPE)
    y = base.clone()
    wrapper.add_lora_linear(y, x, lora_a, lora_b, scale, slices)
    want, col = base.float().clone(), 0
    for s, h in enumerate(slices):
        for t, adapter in enumerate(token_ids):
            if adapter:
                slot = lora_ids.index(adapter)
                shrunk = scale * x[t].float() @ lora_a[s][slot, 0].float().t()
                want[t, col:col + h] += shrunk @ lora_b[s][slot, 0].float().t()
        col += h
    assert_close(y, want, DTYPE, name="add_lora_linear")
    assert torch.equal(y[2], base[2]) and torch.equal(y[5], base[5]), "tokens without an adapter were changed"
