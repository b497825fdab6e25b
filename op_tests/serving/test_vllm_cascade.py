"""The CUSTOM backend's cascade (aiter_ext/integrations/vllm/backend.py, AITER_EXT_CASCADE=1) against vLLM 0.33
itself on CPU: which layers can take it, when the builder plans it (vLLM's own CommonAttentionMetadata), and
the impl's forward on vLLM's KV cache layout against fp32 attention over each request's whole sequence.
Runs in the serving contract environment (.ci/serving_env.sh); skipped elsewhere.

The builder is made without its constructor (which wants a whole VllmConfig and model) and its parent's
build() is replaced by the fields the cascade reads: what is tested is our planning on vLLM's types."""

import types

import pytest
import torch
from serving_setup import vllm  # noqa: F401  (the fixture; importing it also fakes the MI300X)

from aiter_ext.core.testing import assert_close
from aiter_ext.ops.attention.reference import single_attention_ref

HQ, HKV, DIM, BLOCK, SCALE = 8, 2, 64, 16, 0.125
SHARED = 192  # blocks: the smallest prefix the measured cascade rule takes at 9 requests
DTYPE = torch.float16  # the interpreter's bf16 dot is wrong (op_tests/test_serving_prefix.py)


def _impl(**overrides):
    from aiter_ext.integrations.vllm.backend import AiterExtImpl

    kw = dict(num_heads=HQ, head_size=DIM, scale=SCALE, num_kv_heads=HKV, alibi_slopes=None, sliding_window=None,
              kv_cache_dtype="auto")
    kw.update(overrides)
    return AiterExtImpl(**kw)


def test_cascade_params_take_only_layers_the_cascade_serves(vllm):
    from aiter_ext.integrations.vllm.backend import CascadeParams, cascade_params

    assert cascade_params([_impl(), _impl()]) == CascadeParams(SCALE, None)
    assert cascade_params([_impl(logits_soft_cap=30.0)]) == CascadeParams(SCALE, 30.0)
    assert cascade_params([_impl(), _impl(scale=0.2)]) is None  # layers disagree
    assert cascade_params([_impl(), _impl(sinks=torch.zeros(HQ))]) == CascadeParams(SCALE, None)  # sinks: at run
    assert cascade_params([_impl(sliding_window=128)]) is None
    assert cascade_params([_impl(alibi_slopes=[0.5] * HQ)]) is None
    assert cascade_params([_impl(kv_cache_dtype="fp8")]) == CascadeParams(SCALE, None, True)  # scales: at run
    assert cascade_params([_impl(kv_cache_dtype="fp8_e5m2")]) is None  # the engine takes e4m3 only
    assert cascade_params([_impl(), _impl(kv_cache_dtype="fp8")]) is None  # one plan, one cache format


def _batch(num_reqs, shared_blocks, seed=0):
    """vLLM's CommonAttentionMetadata of a decode step whose requests share ``shared_blocks`` leading blocks,
    with a block table wider than needed (its tail holds a block id no request uses)."""
    from vllm.v1.attention.backend import CommonAttentionMetadata

    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 3 * BLOCK, (num_reqs,), generator=g) + shared_blocks * BLOCK
    used = (lens + BLOCK - 1) // BLOCK
    ids = torch.randperm(4 + shared_blocks + int(used.sum()), generator=g)
    table = torch.full((num_reqs + 3, int(used.max()) + 4), int(ids[-1]), dtype=torch.int32)
    table[:, :shared_blocks] = ids[:shared_blocks]
    nxt = shared_blocks
    for b in range(num_reqs):
        table[b, shared_blocks:used[b]] = ids[nxt:nxt + used[b] - shared_blocks]
        nxt += int(used[b]) - shared_blocks
    qsl = torch.arange(num_reqs + 1, dtype=torch.int32)
    cam = CommonAttentionMetadata(
        query_start_loc=qsl, query_start_loc_cpu=qsl.clone(), seq_lens=lens.to(torch.int32), num_reqs=num_reqs,
        num_actual_tokens=num_reqs, max_query_len=1, max_seq_len=int(lens.max()), block_table_tensor=table,
        slot_mapping=torch.zeros(num_reqs, dtype=torch.int64), seq_lens_cpu_upper_bound=lens.to(torch.int32))
    return cam, len(ids)


@pytest.fixture()
def builder(vllm, monkeypatch):
    from vllm.v1.attention.backends.rocm_aiter_fa import AiterFlashAttentionMetadataBuilder

    from aiter_ext.integrations.vllm.backend import AiterExtMetadataBuilder, CascadeParams

    def parent_build(self, common_prefix_len, cam, fast_build=False):
        return types.SimpleNamespace(num_prefills=self.test_prefills, num_extends=0,
                                     num_actual_tokens=cam.num_actual_tokens)

    monkeypatch.setattr(AiterFlashAttentionMetadataBuilder, "build", parent_build)
    b = object.__new__(AiterExtMetadataBuilder)
    b.block_size, b.device, b.num_heads_q, b.test_prefills = BLOCK, torch.device("cpu"), HQ, 0
    b.kv_cache_spec = types.SimpleNamespace(num_kv_heads=HKV, head_size=DIM, dtype=DTYPE)
    b.model_config = types.SimpleNamespace(dtype=DTYPE)
    b._cascade, b._cascade_params = None, CascadeParams(SCALE, None)
    return b


def test_the_builder_plans_cascade_only_for_a_shared_prefix_worth_it(builder):
    # integrations.prefix.should_use_cascade: 192 blocks x 16 = 3072 shared tokens saved 8 times = 24576
    cam, _ = _batch(9, shared_blocks=SHARED)
    planned = builder.build(0, cam).aiter_ext_cascade
    assert planned is not None and planned.decode.shared_blocks == SHARED
    assert builder.build(0, _batch(9, shared_blocks=0)[0]).aiter_ext_cascade is None  # nothing shared
    assert builder.build(0, _batch(9, shared_blocks=SHARED - 2)[0]).aiter_ext_cascade is None  # saves too little
    assert builder.build(0, _batch(7, shared_blocks=4 * SHARED)[0]).aiter_ext_cascade is None  # too few requests
    builder.test_prefills = 1
    assert builder.build(0, cam).aiter_ext_cascade is None  # not decode only
    builder.test_prefills = 0
    builder._cascade_params = None  # some layer cannot take it
    assert builder.build(0, cam).aiter_ext_cascade is None


def test_no_cascade_on_the_shuffled_cache_layout(builder, monkeypatch):
    """VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT swizzles the cache for AITER's kernels: the cascade, which reads
    the plain layout, must not be planned then (it would read wrong keys silently)."""
    import vllm._aiter_ops as aiter_ops

    cam, _ = _batch(9, shared_blocks=SHARED)
    assert builder.build(0, cam).aiter_ext_cascade is not None
    # as on an MI300X with AITER installed (here its query answers None, AITER being absent)
    monkeypatch.setattr(aiter_ops, "is_aiter_found_and_supported", lambda: True)
    assert builder.build(0, cam).aiter_ext_cascade is not None  # the flag is off by default
    monkeypatch.setattr(aiter_ops.rocm_aiter_ops, "_SHUFFLE_KV_CACHE_ENABLED", True)
    assert builder.build(0, cam).aiter_ext_cascade is None


@pytest.mark.parametrize("variant", ["plain", "sinks", "fp8"])
def test_the_impl_runs_the_planned_cascade_on_vllms_cache_layout(builder, monkeypatch, variant):
    """Against fp32 attention over each request's whole sequence; with gpt-oss's attention sinks (a
    layer's own [Hq] logits, bf16 as its parameter is), counted once across the two levels; with an fp8
    cache as vLLM keeps it (bytes of the platform's fp8 dtype, the layer's host k_scale/v_scale)."""
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.rocm_aiter_fa import AiterFlashAttentionImpl

    from aiter_ext.integrations.vllm.backend import CascadeParams

    fp8 = variant == "fp8"
    builder._cascade_params = CascadeParams(SCALE, None, fp8)
    cam, num_blocks = _batch(9, shared_blocks=SHARED, seed=1)
    metadata = builder.build(0, cam)
    assert metadata.aiter_ext_cascade is not None
    sinks = (torch.randn(HQ) * 3).to(torch.bfloat16) if variant == "sinks" else None
    impl = _impl(sinks=sinks, kv_cache_dtype="fp8" if fp8 else "auto")
    # vLLM's cache for this backend: [blocks, kv_heads, block_size, 2 * head_dim], K and V split as views
    kv_cache = torch.randn(num_blocks, HKV, BLOCK, 2 * DIM).to(DTYPE)
    layer = None
    if fp8:  # the cache holds fp8 bytes; dequantized, K = value * k_scale and V = value * v_scale
        kv_cache = kv_cache.to(current_platform.fp8_dtype()).view(torch.uint8)
        layer = types.SimpleNamespace(_k_scale_float=0.3, _v_scale_float=2.0)
    query = torch.randn(12, HQ, DIM).to(DTYPE)  # 9 requests padded to 12 tokens, as vLLM pads
    output = torch.full((12, HQ * DIM), float("nan"), dtype=DTYPE)
    monkeypatch.setattr(AiterFlashAttentionImpl, "forward", lambda *a, **k: pytest.fail("fell back to vLLM's path"))
    impl.forward(layer, query, None, None, kv_cache, metadata, output)
    k_cache, v_cache = impl._split_kv_cache(kv_cache)
    if fp8:
        k_cache = k_cache.view(current_platform.fp8_dtype()).float() * layer._k_scale_float
        v_cache = v_cache.view(current_platform.fp8_dtype()).float() * layer._v_scale_float
    lens, table = cam.seq_lens, cam.block_table_tensor
    for b in range(9):
        pages = table[b, :(int(lens[b]) + BLOCK - 1) // BLOCK].long()
        k = k_cache[pages].reshape(-1, HKV, DIM)[:lens[b]]
        v = v_cache[pages].reshape(-1, HKV, DIM)[:lens[b]]
        ref = single_attention_ref(query[b:b + 1], k, v, sm_scale=SCALE,
                                   sinks=sinks.float() if sinks is not None else None)[0]
        assert_close(output[b].view(1, HQ, DIM), ref, DTYPE, name=f"request {b}")
    assert output[9:].isnan().all(), "the padding rows are not ours to write"


def test_layers_the_plan_does_not_fit_take_vllms_path(builder, monkeypatch):
    from vllm.v1.attention.backends.rocm_aiter_fa import AiterFlashAttentionImpl

    cam, num_blocks = _batch(9, shared_blocks=SHARED, seed=2)
    metadata = builder.build(0, cam)
    calls = []
    monkeypatch.setattr(AiterFlashAttentionImpl, "forward", lambda self, *a: calls.append(self))
    for impl in (_impl(scale=0.2), _impl(sliding_window=64), _impl(kv_cache_dtype="fp8")):  # fp8: not this plan
        impl.forward(None, torch.randn(9, HQ, DIM).to(DTYPE), None, None,
                     torch.randn(num_blocks, HKV, BLOCK, 2 * DIM).to(DTYPE), metadata,
                     torch.empty(9, HQ * DIM, dtype=DTYPE))
    assert len(calls) == 3


def test_cascade_turns_full_cuda_graphs_off(vllm, monkeypatch):
    from vllm.v1.attention.backend import AttentionCGSupport

    from aiter_ext.integrations.vllm.backend import AiterExtMetadataBuilder

    monkeypatch.setenv("AITER_EXT_CASCADE", "1")
    assert AiterExtMetadataBuilder.get_cudagraph_support(None, None) == AttentionCGSupport.NEVER
    monkeypatch.setenv("AITER_EXT_CASCADE", "0")
    assert AiterExtMetadataBuilder.get_cudagraph_support(None, None) == AttentionCGSupport.UNIFORM_BATCH
