"""The ``aiter_ext`` SGLang backend's cascade (aiter_ext/integrations/sglang/backend.py, AITER_EXT_CASCADE=1)
against SGLang 0.5.23 itself on CPU: when a decode step plans it (SGLang's token-level ``req_to_token``),
which layers take it, and the decode on SGLang's KV pool against fp32 attention over each request's
whole sequence, the step's new token included (written through SGLang's own KVWriteLoc).
Runs in the serving contract environment (.ci/serving_env.sh); skipped elsewhere.

The backend is made without its constructor (which wants a whole ModelRunner and AITER's kernels) and
its parent's init_forward_metadata / forward_decode are replaced: what is tested is our routing on
SGLang's types."""

import types

import pytest
import torch
from serving_setup import sglang  # noqa: F401  (the fixture; importing it also fakes the MI300X)

from aiter_ext.core.testing import assert_close
from aiter_ext.ops.attention.reference import single_attention_ref

HQ, HKV, DIM, SCALE = 8, 2, 64, 0.125
SHARED = 3072  # tokens: the smallest prefix the measured cascade rule takes at 9 requests
DTYPE = torch.float16  # the interpreter's bf16 dot is wrong (op_tests/test_serving_prefix.py)


class FakePool:
    """SGLang's MHA token pool as the backend uses it: K/V buffers ``[slots, Hkv, D]`` per layer."""

    def __init__(self, slots, layers=2):
        self.k = [torch.randn(slots, HKV, DIM).to(DTYPE) for _ in range(layers)]
        self.v = [torch.randn(slots, HKV, DIM).to(DTYPE) for _ in range(layers)]
        self.writes = 0

    def get_kv_buffer(self, layer_id):
        return self.k[layer_id], self.v[layer_id]

    def set_kv_buffer(self, layer, loc, k, v, k_scale, v_scale):
        assert loc.swa_loc is None and k_scale is None and v_scale is None
        self.k[layer.layer_id][loc.loc] = k.view(-1, HKV, DIM)
        self.v[layer.layer_id][loc.loc] = v.view(-1, HKV, DIM)
        self.writes += 1


def _layer(layer_id=0, **overrides):
    kw = dict(layer_id=layer_id, tp_q_head_num=HQ, tp_k_head_num=HKV, tp_v_head_num=HKV, qk_head_dim=DIM,
              v_head_dim=DIM, scaling=SCALE, logit_cap=0.0, sliding_window_size=-1, is_cross_attention=False)
    kw.update(overrides)
    return types.SimpleNamespace(**kw)


def _batch(num_reqs, shared, seed=0):
    """A decode step whose requests share their first ``shared`` tokens' slots (the radix cache's
    doing), each with 1-40 tokens of its own, the last being this step's new token; slots shuffled over
    the pool and requests on scattered req_to_token rows. Returns (forward_batch, req_to_token, slots)."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    gen = torch.Generator().manual_seed(seed)
    own = torch.randint(1, 41, (num_reqs,), generator=gen)
    lens = own + shared
    total_slots = shared + int(own.sum()) + 50
    perm = torch.randperm(total_slots, generator=gen).to(torch.int32)
    req_to_token = torch.full((num_reqs + 3, int(lens.max()) + 8), -1, dtype=torch.int32)
    rows = torch.randperm(num_reqs + 3, generator=gen)[:num_reqs]
    next_slot = shared
    for b in range(num_reqs):
        req_to_token[rows[b], :shared] = perm[:shared]
        req_to_token[rows[b], shared:lens[b]] = perm[next_slot:next_slot + own[b]]
        next_slot += int(own[b])
    batch = types.SimpleNamespace(
        forward_mode=ForwardMode.DECODE, batch_size=num_reqs, spec_info=None, req_pool_indices=rows,
        seq_lens=lens.clone(), seq_lens_cpu=lens.clone(), out_cache_loc=req_to_token[rows, lens - 1].long(),
        out_cache_loc_is_physical=False)
    return batch, req_to_token, total_slots


@pytest.fixture
def backend(sglang, monkeypatch):
    from sglang.kernels.ops.quantization.fp8_kernel import fp8_dtype  # noqa: F401
    from sglang.srt.layers.attention.aiter_backend import AiterAttnBackend

    from aiter_ext.integrations.sglang.backend import AiterExtAttnBackend

    monkeypatch.setenv("AITER_EXT_CASCADE", "1")
    monkeypatch.setattr(AiterAttnBackend, "init_forward_metadata",
                        lambda self, fb: setattr(self, "forward_metadata", types.SimpleNamespace(swa_out_cache_loc=None)))
    monkeypatch.setattr(AiterAttnBackend, "forward_decode", lambda self, *a, **k: "sglang's path")
    b = object.__new__(AiterExtAttnBackend)
    b.__dict__.update(use_mla=False, kv_cache_is_vectorized_5d=False, use_triton_unified_attention=False,
                      use_sliding_window_kv_pool=False, kv_cache_dtype=DTYPE, input_dtype=DTYPE,
                      device=torch.device("cpu"), _cascade=None, _step_cascade=None, _step_batch=None)
    return b


def _step(backend, num_reqs=9, shared=SHARED, seed=0):
    batch, req_to_token, slots = _batch(num_reqs, shared, seed)
    backend.req_to_token = req_to_token
    backend.token_to_kv_pool = FakePool(slots)
    backend.init_forward_metadata(batch)
    return batch


@pytest.mark.parametrize("sinks", [False, True])
def test_a_shared_prefix_step_runs_the_cascade_on_sglangs_pool(backend, sinks):
    batch = _step(backend)
    assert backend._step_cascade is not None, "a 3072-token prefix over 9 requests should take the cascade"
    pool = backend.token_to_kv_pool
    old_k = [t.clone() for t in pool.k]
    n = batch.batch_size
    q = torch.randn(n, HQ * DIM).to(DTYPE)
    k_new, v_new = torch.randn(n, HKV * DIM).to(DTYPE), torch.randn(n, HKV * DIM).to(DTYPE)
    sink = (torch.randn(HQ) * 3).to(torch.bfloat16) if sinks else None  # gpt-oss keeps them as a bf16 parameter
    layer = _layer()
    out = backend.forward_decode(q, k_new, v_new, layer, batch, sinks=sink)
    assert isinstance(out, torch.Tensor) and out.shape == (n, HQ * DIM)
    assert pool.writes == 1 and not torch.equal(pool.k[0], old_k[0]), "the new token's K/V were not written"
    for b in range(n):
        slots = backend.req_to_token[batch.req_pool_indices[b], :batch.seq_lens[b]].long()
        k, v = pool.k[0][slots].clone(), pool.v[0][slots].clone()
        assert torch.equal(k[-1], k_new[b].view(HKV, DIM))
        ref = single_attention_ref(q[b].view(1, HQ, DIM), k, v, sm_scale=SCALE,
                                   sinks=sink.float() if sinks else None)[0]
        assert_close(out[b].view(1, HQ, DIM), ref, DTYPE, name=f"request {b}")
    # a second layer with the same parameters reuses the plan; one that differs takes SGLang's path
    planned = backend._step_cascade.planned_for
    assert isinstance(backend.forward_decode(q, k_new, v_new, _layer(1), batch), torch.Tensor)
    assert backend._step_cascade.planned_for == planned
    assert backend.forward_decode(q, k_new, v_new, _layer(1, scaling=0.2), batch) == "sglang's path"


def test_steps_and_layers_the_cascade_does_not_serve(backend, monkeypatch):
    q = k = v = torch.zeros(1)
    # too few requests, too short a prefix: nothing planned
    assert _step(backend, num_reqs=7) and backend._step_cascade is None
    assert _step(backend, shared=512) and backend._step_cascade is None
    batch = _step(backend)
    assert backend._step_cascade is not None
    # a sliding-window layer, a layer of other head dims, and a batch other than the planned one
    # (SGLang's CUDA-graph replays pass their own) take SGLang's path
    assert backend.forward_decode(q, k, v, _layer(sliding_window_size=128), batch) == "sglang's path"
    assert backend.forward_decode(q, k, v, _layer(v_head_dim=32), batch) == "sglang's path"
    other, _, _ = _batch(9, SHARED)
    assert backend.forward_decode(q, k, v, _layer(), other) == "sglang's path"
    # pools it does not read, and the flag off
    for name, value in (("kv_cache_is_vectorized_5d", True), ("use_sliding_window_kv_pool", True), ("use_mla", True)):
        monkeypatch.setattr(backend, name, value, raising=False)
        assert _step(backend) and backend._step_cascade is None, name
        monkeypatch.setattr(backend, name, False, raising=False)
    monkeypatch.setenv("AITER_EXT_CASCADE", "0")
    assert _step(backend) and backend._step_cascade is None
