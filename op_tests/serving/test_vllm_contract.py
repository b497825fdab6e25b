"""aiter_ext's vLLM plugin against vLLM 0.33.0 itself (issue 15; serving-integration.md, section 7).
Runs in the serving contract environment (.ci/serving_env.sh); skipped elsewhere."""

import inspect
import pickle
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import torch
from serving_setup import vllm  # noqa: F401  (the fixture; importing it also fakes the MI300X)

from aiter_ext.integrations.vllm import BACKEND_PATH


def test_the_entry_point_registers_custom(vllm):
    names = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert names.get("aiter_ext") == "aiter_ext.integrations.vllm:register"
    from vllm.plugins import load_general_plugins
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    assert current_platform.is_rocm(), "the amdsmi stand-in should make vLLM's platform ROCm"
    load_general_plugins()
    assert AttentionBackendEnum.CUSTOM.get_path() == BACKEND_PATH
    from aiter_ext.integrations.vllm.backend import AiterExtBackend

    assert AttentionBackendEnum.CUSTOM.get_class() is AiterExtBackend
    assert AttentionBackendEnum[AiterExtBackend.get_name()] is AttentionBackendEnum.CUSTOM


def test_backend_impl_and_builder_are_vllms_kinds(vllm):
    from vllm.v1.attention.backend import AttentionBackend, AttentionImpl, AttentionMetadataBuilder

    from aiter_ext.integrations.vllm.backend import AiterExtBackend, AiterExtImpl, AiterExtMetadataBuilder

    for cls, base in ((AiterExtBackend, AttentionBackend), (AiterExtImpl, AttentionImpl),
                      (AiterExtMetadataBuilder, AttentionMetadataBuilder)):
        assert issubclass(cls, base) and not inspect.isabstract(cls), cls
    assert AiterExtBackend.get_impl_cls() is AiterExtImpl
    assert AiterExtBackend.get_builder_cls() is AiterExtMetadataBuilder
    # signature drift: ours accept every parameter of the ABCs' methods
    for ours, theirs in ((AiterExtImpl.forward, AttentionImpl.forward), (AiterExtImpl.__init__, AttentionImpl.__init__),
                         (AiterExtMetadataBuilder.build, AttentionMetadataBuilder.build)):
        accepted = inspect.signature(ours).parameters
        for name in inspect.signature(theirs).parameters:
            assert name in accepted or any(p.kind == p.VAR_KEYWORD for p in accepted.values()), (ours, name)


def test_validate_configuration_accepts_a_gpt_oss_layer(vllm):
    from vllm.platforms.interface import DeviceCapability

    from aiter_ext.integrations.vllm.backend import AiterExtBackend

    reasons = AiterExtBackend.validate_configuration(
        head_size=128, dtype=torch.bfloat16, kv_cache_dtype="auto", block_size=16, use_mla=False, has_sink=True,
        use_sparse=False, use_mm_prefix=False, use_per_head_quant_scales=False,
        device_capability=DeviceCapability(9, 4), attn_type="decoder")
    assert reasons == []


def test_custom_unpickles_in_a_process_that_has_not_loaded_plugins(vllm):
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    blob = pickle.dumps(AttentionBackendEnum.CUSTOM)
    code = "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read()).name)"
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True)
    assert out.stdout.decode().strip() == "CUSTOM"


def test_register_is_idempotent_and_quiet_without_rocm(vllm, monkeypatch):
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from aiter_ext.integrations import vllm as plugin

    plugin.register()
    plugin.register()
    assert AttentionBackendEnum.CUSTOM.get_path() == BACKEND_PATH
    AttentionBackendEnum.CUSTOM.clear_override()
    monkeypatch.setattr(type(current_platform), "is_rocm", lambda self: False)
    plugin.register()
    with pytest.raises(ValueError):
        AttentionBackendEnum.CUSTOM.get_path()
    monkeypatch.undo()
    plugin.register()
