"""Call plans (aiter_ext/core/plans.py): eager calls replayed from a recorded call of the same kind.

On the CPU: the key (``launch.cpp``'s call_key) tells apart every argument difference a launch can depend
on, through a stand-in tensor type (CPU tensors have no key); a recorded call's plan, walked by the C side
without a driver (``explain_plan``), gives a later call's tensors the same launches, pointers moved; and a
recording is refused for what a plan cannot hold. On the GPU: each op that has plans gives the same bytes
through its plan as through its usual path, on fresh tensors, aliased outputs and strided views, and a
CUDA graph captured from a replay.
"""

from __future__ import annotations

import struct

import pytest
import torch

from aiter_ext.core import plans, thin
from aiter_ext.core.launch import raw_stream_getter

ON_GPU = torch.cuda.is_available()
gpu_only = pytest.mark.skipif(not ON_GPU, reason="launches compiled kernels (the lent GPU)")


def _native():
    import shutil

    if shutil.which("c++") is None:
        pytest.skip("no host C++ compiler to build the launcher extension")
    return thin.native()


class _Like:
    """What call_key reads from a tensor (dtype, get_device, data_ptr, shape, stride), without a GPU."""

    def __init__(self, shape, stride=None, dtype=torch.float16, device=0, ptr=1 << 20):
        self.shape, self.dtype, self._device, self._ptr = tuple(shape), dtype, device, ptr
        self._stride = tuple(stride) if stride is not None else tuple(
            int(torch.tensor(shape[i + 1:]).prod()) for i in range(len(shape)))

    def get_device(self):
        return self._device

    def data_ptr(self):
        return self._ptr

    def stride(self):
        return self._stride


@pytest.fixture
def key_of():
    native = _native()
    native.use_types((_Like,), raw_stream_getter())
    try:
        yield native.call_key
    finally:
        native.use_types((torch.Tensor, torch.nn.Parameter), raw_stream_getter())


def test_call_key_tells_apart_what_a_launch_can_depend_on(key_of):
    base = _Like((4, 64))
    key = key_of(base, 1e-6, None, True, "triton")
    assert key == key_of(_Like((4, 64), ptr=5 << 20), 1e-6, None, True, "triton")  # only the address moved
    differ = [
        (_Like((4, 64), dtype=torch.bfloat16), 1e-6, None, True, "triton"),
        (_Like((4, 65)), 1e-6, None, True, "triton"),
        (_Like((4, 64), stride=(128, 1)), 1e-6, None, True, "triton"),
        (_Like((4, 64), device=1), 1e-6, None, True, "triton"),
        (_Like((4, 64), ptr=(1 << 20) + 2), 1e-6, None, True, "triton"),  # not 16-byte aligned
        (base, 1e-5, None, True, "triton"),
        (base, 1e-6, 0, True, "triton"),
        (base, 1e-6, None, False, "triton"),
        (base, 1e-6, None, True, "torch"),
        (base, 1e-6, None, 1, "triton"),  # an int is not a bool
    ]
    for args in differ:
        assert key_of(*args) != key, args


def test_call_key_carries_aliasing():
    """The same two tensors' metadata, aliased or apart, give different keys (an op may launch differently,
    such as RoPE's copy pass when q_out is not q); apart at any distance, one key."""
    native = _native()
    native.use_types((_Like,), raw_stream_getter())
    try:
        key = native.call_key
        x = _Like((4, 64), ptr=1 << 20)
        apart = key(x, _Like((4, 64), ptr=2 << 20))
        assert apart == key(x, _Like((4, 64), ptr=9 << 20))
        assert key(x, x) != apart  # out is input
        # fresh tensors side by side (the allocator's usual placement) do not overlap: one key at any distance
        assert key(x, _Like((4, 64), ptr=(1 << 20) + 4 * 64 * 2)) == apart
        assert key(x, _Like((4, 64), ptr=(1 << 20) + 4 * 64 * 2 - 16)) != apart  # the last 8 elements shared
        assert key(x, _Like((2, 64), ptr=(1 << 20) + 256)) != key(x, _Like((2, 64), ptr=3 << 20))  # a view inside x
    finally:
        native.use_types((torch.Tensor, torch.nn.Parameter), raw_stream_getter())


def test_no_key_for_what_a_plan_cannot_serve(key_of):
    assert key_of(_Like((4,), device=-1)) is None  # a CPU tensor
    assert key_of(torch.zeros(4)) is None  # a type not registered (a tensor subclass, a fake tensor)
    assert key_of([1, 2]) is None and key_of(object()) is None
    assert key_of(2 ** 70) is None
    assert key_of(2 ** 62) is not None


class _FakeRecord:
    """A launch record (thin._Record's fields that a plan reads)."""

    def __init__(self, fmt: bytes, function=0xABC0, threads=128, shared=0, device=0):
        self.function, self.threads, self.shared, self.fmt = function, threads, shared, fmt
        self.trailing, self.device = (0, 0), device


def _bits_f32(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0]


def test_a_plan_gives_other_tensors_the_same_launches():
    native = _native()
    x, w, out = torch.randn(8, 64), torch.randn(64), torch.empty(8, 64)
    rec = plans._Recording((x, w, out, None))
    rec.launch(_FakeRecord(b"pppilfpp"), (3, 1, 1), (x, w, out, -5, 2 ** 40, 0.25))
    rec.launch(_FakeRecord(b"pppipp", function=0xDEF0, threads=64, shared=1024), (1, 2, 3),
               (x[2:, 8:], None, out[1], 7))  # views inside the slots, and a NULL pointer
    blob = rec.plan()
    x2, w2, out2 = torch.randn(8, 64), torch.randn(64), torch.empty(8, 64)
    first, second = native.explain_plan(blob, x2, w2, out2, None)
    assert first == (0xABC0, 3, 1, 1, 128, 0, (x2.data_ptr(), w2.data_ptr(), out2.data_ptr(), (-5) & 0xFFFFFFFF,
                                                 2 ** 40, _bits_f32(0.25), 0, 0))
    assert second == (0xDEF0, 1, 2, 3, 64, 1024, (x2.data_ptr() + (2 * 64 + 8) * 4, 0, out2.data_ptr() + 64 * 4, 7,
                                                   0, 0))
    with pytest.raises(TypeError, match="takes 4 slots"):
        native.explain_plan(blob, x2, w2, out2)


def test_a_recording_with_a_tensor_from_elsewhere_is_refused():
    x, scratch = torch.randn(8), torch.randn(8)
    rec = plans._Recording((x,))
    rec.launch(_FakeRecord(b"pppp"), (1, 1, 1), (x, scratch))
    with pytest.raises(plans._Refused, match="not among the call's slots"):
        rec.plan()
    with pytest.raises(plans._Refused, match="no kernel was launched"):
        plans._Recording((x,)).plan()


def _record_with(monkeypatch, body):
    """Run ``body`` as the recorded second call of one key; the plan kept (its blob) or False."""
    monkeypatch.setattr(plans, "_replay", lambda blob, recording: blob)
    cp = plans.CallPlans("test")
    key = b"k"
    x = torch.randn(8)
    cp.recorded(key, (x,), lambda: None)  # the first call of a key is not recorded
    assert cp._plans[key] is plans._SEEN
    cp.recorded(key, (x,), body, x)
    return cp._plans[key]


def test_a_recording_keeps_only_thin_launches_and_views(monkeypatch):
    def thin_launch_through_a_view(x):
        v = x.view(2, 4)  # a view: allowed
        plans.ACTIVE.launch(_FakeRecord(b"ppp"), (1, 1, 1), (v,))

    assert isinstance(_record_with(monkeypatch, thin_launch_through_a_view), bytes)

    def writes_with_torch(x):
        x.add_(1)
        plans.ACTIVE.launch(_FakeRecord(b"ppp"), (1, 1, 1), (x,))

    assert _record_with(monkeypatch, writes_with_torch) is False

    def allocates(x):
        plans.ACTIVE.launch(_FakeRecord(b"ppp"), (1, 1, 1), (torch.empty_like(x),))

    assert _record_with(monkeypatch, allocates) is False


def test_a_recording_refuses_another_backend_and_triton_launches(monkeypatch):
    from aiter_ext.core.backend import define_op

    op = define_op("plans_test_op", ("n",), lambda call: (call["n"],))
    op.register("torch", lambda: None)

    def chooses_torch(x):
        op.select({"n": 1, "device": "cpu"}, "torch")
        plans.ACTIVE.launch(_FakeRecord(b"ppp"), (1, 1, 1), (x,))

    assert _record_with(monkeypatch, chooses_torch) is False

    pytest.importorskip("triton")
    import triton.runtime.jit as jit

    from aiter_ext.core import lazy_triton

    lazy_triton.load()  # a loaded Triton is what the recording watches (before it, loading it refuses the recording)

    def _kernel(x):
        pass

    kernel = jit.JITFunction(_kernel)
    monkeypatch.setattr(jit.JITFunction, "run", lambda self, *args, **kwargs: None)  # no compile, no launch

    def compiles_only(x):
        kernel.run(x, grid=(1,), warmup=True)  # what the thin path's first launch of a signature does
        plans.ACTIVE.launch(_FakeRecord(b"ppp"), (1, 1, 1), (x,))

    assert isinstance(_record_with(monkeypatch, compiles_only), bytes)

    def launches_through_triton(x):
        kernel[(1,)](x)
        plans.ACTIVE.launch(_FakeRecord(b"ppp"), (1, 1, 1), (x,))

    assert _record_with(monkeypatch, launches_through_triton) is False
    assert jit.JITFunction.run.__qualname__.endswith("triton_launches.<locals>.<lambda>")  # the stub, restored


def test_the_chunked_draw_refuses_a_recording(monkeypatch):
    from aiter_ext.ops.sampling import chunked

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):  # the route stopped before its launches: only the refusal is under test
        raise Stop

    recording = plans._Recording(())
    monkeypatch.setattr(plans, "ACTIVE", recording)
    monkeypatch.setattr(chunked, "_workspace", stop)
    with pytest.raises(Stop):
        chunked.draw_by_chunks(torch.randn(1, 64), 3, None, None, None, {})
    assert recording.refused == chunked.CHUNKED_DRAW_UNPLANNED
    monkeypatch.setattr(plans, "ACTIVE", None)
    plans.refuse("outside a recording: nothing to refuse")  # does nothing, raises nothing


def test_a_workspace_becomes_a_slot_that_each_replay_allocates_anew(monkeypatch):
    native = _native()
    launched = []
    monkeypatch.setattr(thin, "launcher", lambda: type("L", (), {"run_plan": staticmethod(
        lambda blob, *slots: launched.append((native.explain_plan(blob, *slots), slots)))}))
    assert plans.scratch(4, torch.int32, "cpu", zeroed=True).tolist() == [0] * 4  # outside a recording

    def launches_with_workspaces(x):
        counters = plans.scratch(6, torch.int32, x.device, zeroed=True)
        stats = plans.scratch((2, 3), torch.float32, x.device, zeroed=False)
        plans.ACTIVE.launch(_FakeRecord(b"ppppp"), (1, 1, 1), (x, counters[2:], stats))

    cp = plans.CallPlans("test")
    x = torch.randn(8)
    cp.recorded(b"k", (x,), lambda: None)
    cp.recorded(b"k", (x,), launches_with_workspaces, x)
    assert cp._plans[b"k"]  # the workspaces did not refuse the recording
    x2 = torch.randn(8)
    cp._plans[b"k"](x2)
    cp._plans[b"k"](x2)
    (first, slots1), (second, slots2) = launched
    for (memset, launch), (_, counters, stats) in ((first, slots1), (second, slots2)):
        assert counters.shape == (6,) and counters.dtype == torch.int32
        assert stats.shape == (2, 3) and stats.dtype == torch.float32
        assert memset == (0, 6, 1, 1, 0, 0, (counters.data_ptr(),))  # the counters zeroed on the stream, first
        assert launch[6][:3] == (x2.data_ptr(), counters.data_ptr() + 2 * 4, stats.data_ptr())
    assert slots1[1].data_ptr() != slots2[1].data_ptr()  # a new workspace per call (both still alive here)

    def zeroes_odd_bytes(x):
        plans.ACTIVE.launch(_FakeRecord(b"pp"), (1, 1, 1), (plans.scratch(3, torch.int8, x.device, zeroed=True),))

    monkeypatch.setattr(plans, "_replay", lambda blob, recording: blob)
    assert _record_with(monkeypatch, zeroes_odd_bytes) is False  # the memset writes whole 32-bit words


def test_a_failed_call_keeps_nothing(monkeypatch):
    monkeypatch.setattr(plans, "_replay", lambda blob, recording: blob)
    cp = plans.CallPlans("test")
    cp.recorded(b"k", (), lambda: None)

    def fails():
        plans.ACTIVE.launch(_FakeRecord(b"pp"), (1, 1, 1), ())
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        cp.recorded(b"k", (), fails)
    assert cp._plans[b"k"] is plans._SEEN and plans.ACTIVE is None


def test_plans_are_dropped_when_their_decisions_may_change(monkeypatch):
    cp = plans.CallPlans("test")
    cp._plans[b"k"] = "a plan"
    monkeypatch.setattr(plans, "_call_key", lambda *args: b"k")
    assert cp.find(1) == (b"k", "a plan")
    monkeypatch.setenv("AITER_EXT_BACKEND", "torch")
    assert cp.find(1) == (b"k", None)
    cp._plans[b"k"] = "a plan"
    previous = thin.set_mode(thin.mode())
    assert cp.find(1) == (b"k", None) and previous == thin.mode()
    cp._plans[b"k"] = "a plan"
    previous = plans.set_enabled(False)
    try:
        assert cp.find(1) == (None, False)
    finally:
        plans.set_enabled(previous)


# --------------------------------------------------------------------------------------------------
# On the GPU: through the ops.


def _bf16(*shape):
    return torch.randn(*shape, device="cuda").to(torch.bfloat16)


def _cases():
    import aiter_ext

    def rmsnorm_new():
        x, w = _bf16(37, 4096), _bf16(4096)
        return lambda: aiter_ext.rmsnorm(x, w), (x, w)

    def rmsnorm_into_input():
        x, w = _bf16(16, 3584), _bf16(3584)
        return lambda: (aiter_ext.rmsnorm(x, w, 1e-5, out=x), x)[1], (x, w)

    def qk_norm_strided():
        qkv, w = _bf16(33, 48, 128), _bf16(128)
        q = qkv[:, :32]
        return lambda: aiter_ext.gemma_rmsnorm(q, w), (qkv, w)

    def fused():
        x, r, w = _bf16(256, 4096), _bf16(256, 4096), _bf16(4096)
        return lambda: (aiter_ext.fused_add_rmsnorm(x, r, w), torch.cat([x, r]))[1], (x, r, w)

    def llama31_rope():
        qkv = _bf16(300, 48, 128)
        q, k = qkv[:, :32], qkv[:, 32:40]
        indptr = torch.tensor([0, 100, 300], dtype=torch.int32, device="cuda")
        offsets = torch.tensor([7, 4000], dtype=torch.int32, device="cuda")
        return lambda: torch.cat(aiter_ext.apply_llama31_rope(q, k, indptr, offsets), 1), (qkv,)

    def rope_pos_ids_inplace_partial():
        q, k = _bf16(77, 8, 128), _bf16(77, 2, 128)
        pos = torch.randint(0, 8192, (77,), dtype=torch.int32, device="cuda")
        return lambda: (aiter_ext.apply_rope_pos_ids_inplace(q, k, pos, rotary_dim=64), torch.cat([q, k], 1))[1], (q, k)

    def merge():
        va, vb = _bf16(64, 32, 128), _bf16(64, 32, 128)
        sa, sb = torch.randn(64, 32, device="cuda"), torch.randn(64, 32, device="cuda")
        return lambda: torch.cat([t.float().flatten() for t in aiter_ext.merge_state(va, sa, vb, sb)]), (va, sa, vb, sb)

    def merge_in_place_masked():
        v, vo = _bf16(50, 8, 64), _bf16(50, 8, 64)
        s, so = torch.randn(50, 8, device="cuda"), torch.randn(50, 8, device="cuda")
        mask = torch.rand(50, device="cuda") < 0.5
        return (lambda: (aiter_ext.merge_state_in_place(v, s, vo, so, mask),
                         torch.cat([v.float().flatten(), s.flatten()]))[1], (v, s))

    def fp4_swizzled():
        x, w = _bf16(300, 4096), _bf16(4096)
        gs = torch.rand(1, device="cuda") * 100 + 1

        def call():
            y, sf = aiter_ext.rmsnorm_fp4quant(x, w, global_scale=gs, is_sf_swizzled_layout=True)
            return torch.cat([y.view(torch.uint8).flatten(), sf.view(torch.uint8).flatten()])
        return call, (x, w)

    def min_p_sampling():
        probs = torch.softmax(torch.randn(4, 32000, device="cuda") * 3, -1)
        return lambda: aiter_ext.min_p_sampling_from_probs(probs, 0.1, seed=7, offset=3), (probs,)

    def min_p_sampling_one_row():  # batch 1 at 128256: the split kernel, with a zeroed workspace per call
        probs = torch.softmax(torch.randn(1, 128256, device="cuda") * 3, -1)
        return lambda: aiter_ext.min_p_sampling_from_probs(probs, 0.05, seed=11, offset=2), (probs,)

    def sampling_with_the_generators_seed():  # no seed given: one from seeds.py's pool, a slot of the plan
        probs = torch.softmax(torch.randn(1, 128256, device="cuda") * 3, -1)

        def call():
            torch.manual_seed(123)  # the same pool (a new one each call), so the same seed with plans on and off
            return aiter_ext.sampling_from_probs(probs)
        return call, (probs,)

    def top_p_sampling_per_row():
        probs = torch.softmax(torch.randn(8, 128256, device="cuda") * 3, -1)
        top_p = torch.rand(8, device="cuda")
        seeds = torch.randint(0, 2 ** 40, (8,), device="cuda")
        return lambda: aiter_ext.top_p_sampling_from_probs(probs, top_p, seed=seeds, offset=5), (probs,)

    def logits_one_row():  # batch 1 at 128256: the chunked draw, with its workspaces per call
        logits = torch.randn(1, 128256, device="cuda") * 3
        return lambda: aiter_ext.sampling_from_logits(logits, seed=5, offset=1), (logits,)

    def logits_rows_with_indices():  # 64 draws from 16 bf16 rows by indices (the route the policy or a tuned row picks)
        logits = (torch.randn(16, 32000, device="cuda") * 3).to(torch.bfloat16)
        indices = torch.randint(0, 16, (64,), dtype=torch.int32, device="cuda")
        return lambda: aiter_ext.sampling_from_logits(logits, indices, seed=9, offset=4), (logits,)

    return {"min_p_sampling_from_probs": min_p_sampling, "min_p_sampling_from_probs, one row": min_p_sampling_one_row,
            "sampling_from_logits, one row": logits_one_row,
            "sampling_from_logits, bf16 rows by indices": logits_rows_with_indices,
            "sampling_from_probs, the generator's seed": sampling_with_the_generators_seed,
            "top_p_sampling_from_probs, per-row top_p and seeds": top_p_sampling_per_row,
            "rmsnorm_fp4quant, swizzled scales": fp4_swizzled, "rmsnorm": rmsnorm_new,
            "rmsnorm out=input": rmsnorm_into_input, "gemma QK-norm of a view": qk_norm_strided,
            "fused_add_rmsnorm": fused, "apply_llama31_rope on views": llama31_rope,
            "apply_rope_pos_ids_inplace, rotary_dim 64": rope_pos_ids_inplace_partial, "merge_state": merge,
            "merge_state_in_place with a mask": merge_in_place_masked}


def _plans_of(name: str):
    """The CallPlans of the op a case calls."""
    from aiter_ext.ops.merge_state.api import PLANS as MERGE
    from aiter_ext.ops.norm.api import PLANS as NORM
    from aiter_ext.ops.norm_fp4.api import PLANS as FP4
    from aiter_ext.ops.rope.api import PLANS as ROPE
    from aiter_ext.ops.sampling.api import PLANS as SAMPLING
    from aiter_ext.ops.sampling.logits import PLANS as LOGITS

    for word, owner in (("fp4", FP4), ("from_logits", LOGITS), ("sampling", SAMPLING), ("rope", ROPE),
                        ("merge", MERGE)):
        if word in name:
            return owner
    return NORM


#: Cases whose route keeps no plan: the chunked draw (sampling/chunked.py, CHUNKED_DRAW_UNPLANNED). Its plan failed
#: this test on an H100 (2026-12-07) for a reason whose log did not come back; until it is found, no plan.
_UNPLANNED = {"sampling_from_logits, one row"}


@gpu_only
@pytest.mark.parametrize("name", ["rmsnorm", "rmsnorm out=input", "gemma QK-norm of a view", "fused_add_rmsnorm",
                                  "apply_llama31_rope on views", "apply_rope_pos_ids_inplace, rotary_dim 64",
                                  "merge_state", "merge_state_in_place with a mask",
                                  "rmsnorm_fp4quant, swizzled scales",
                                  "min_p_sampling_from_probs", "min_p_sampling_from_probs, one row",
                                  "sampling_from_probs, the generator's seed",
                                  "top_p_sampling_from_probs, per-row top_p and seeds",
                                  "sampling_from_logits, one row", "sampling_from_logits, bf16 rows by indices"])
def test_a_plan_gives_the_usual_paths_bytes(name, monkeypatch):
    """Four calls per case on fresh inputs, each beside the usual path (plans off) on the same inputs: the first
    is seen, the second recorded, the rest replayed; every output bit-equal, and the replays really from a plan
    (the samplers' routes that need a workspace included: plans.scratch)."""
    make = _cases()[name]
    replays = _count_replays(monkeypatch)
    previous = plans.set_enabled(True)
    plans.invalidate()  # plans made before (another case of the op) do not count
    try:
        for attempt in range(4):  # the first call is seen, the second recorded, the rest replayed
            torch.manual_seed(attempt)
            call, inputs = make()
            saved = [t.clone() for t in inputs]
            got = call().clone()
            for t, s in zip(inputs, saved):
                t.copy_(s)
            plans.set_enabled(False)
            try:
                want = call()
            finally:
                plans.set_enabled(True)
            assert torch.equal(got, want), (name, attempt)
        states = list(_plans_of(name)._plans.values())
        assert len(states) == 1, f"{name}: {len(states)} keys for four calls of one kind on fresh tensors"
        if name in _UNPLANNED:  # its route refuses every recording: the usual path each call
            assert states == [False] and not replays, f"{name}: a plan kept ({states}, {len(replays)} replays)"
        else:
            assert len(replays) == 2, f"{name}: {len(replays)} replays of 4 calls (the log says why a plan was refused)"
    finally:
        plans.set_enabled(previous)


@gpu_only
def test_a_replayed_call_captures_into_a_cuda_graph():
    import aiter_ext
    from aiter_ext.ops.norm.api import PLANS

    x, w = _bf16(64, 4096), _bf16(4096)
    for _ in range(3):
        aiter_ext.rmsnorm(x, w)
    assert PLANS.find(x, w, None, 1e-6, False, None)[1]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = aiter_ext.rmsnorm(x, w)
    x.copy_(_bf16(64, 4096))
    graph.replay()
    torch.cuda.synchronize()
    plans.set_enabled(False)
    try:
        assert torch.equal(out, aiter_ext.rmsnorm(x, w))
    finally:
        plans.set_enabled(True)


# --------------------------------------------------------------------------------------------------
# On the CPU: each op's replay branch, with a stand-in plan (the real one launches on a GPU). What it checks:
# the op hands the plan its tensors in the order its recording named them, and returns the outputs it gave
# the plan.


def _hit(monkeypatch, plans_of_op):
    """Make every find of ``plans_of_op`` a hit with a stand-in plan that keeps the slots it is given."""
    given = []
    monkeypatch.setattr(plans_of_op, "find", lambda *args: (b"key", lambda *slots: given.append(slots)))
    return given


def test_each_op_gives_its_plan_the_slots_it_recorded(monkeypatch):
    import aiter_ext
    from aiter_ext.ops.merge_state.api import PLANS as MERGE
    from aiter_ext.ops.norm.api import PLANS as NORM
    from aiter_ext.ops.norm_fp4.api import PLANS as FP4
    from aiter_ext.ops.rope.api import PLANS as ROPE
    from aiter_ext.ops.sampling.api import PLANS as SAMPLING

    x, w, r = torch.randn(4, 64), torch.randn(64), torch.randn(4, 64)
    given = _hit(monkeypatch, NORM)
    out = aiter_ext.rmsnorm(x, w)
    assert given[-1][:2] == (x, w) and given[-1][2] is out and out.shape == x.shape
    aiter_ext.fused_add_rmsnorm(x, r, w)
    assert given[-1] == (x, r, w)

    q, k = torch.randn(5, 4, 32, dtype=torch.float16), torch.randn(5, 2, 32, dtype=torch.float16)
    pos = torch.arange(5, dtype=torch.int32)
    given = _hit(monkeypatch, ROPE)
    q_out, k_out = aiter_ext.apply_rope_pos_ids(q, k, pos)
    assert given[-1][:5] == (q, k, pos, None, None) and given[-1][5] is q_out and given[-1][6] is k_out
    assert q_out.shape == q.shape and k_out.shape == k.shape
    aiter_ext.apply_rope_pos_ids_inplace(q, k, pos)
    assert given[-1] == (q, k, pos, None, None, None, None)

    va, vb, sa, sb = torch.randn(3, 2, 16), torch.randn(3, 2, 16), torch.randn(3, 2), torch.randn(3, 2)
    given = _hit(monkeypatch, MERGE)
    v, s = aiter_ext.merge_state(va, sa, vb, sb)
    assert given[-1][:4] == (va, sa, vb, sb) and given[-1][4] is v and given[-1][5] is s
    assert v.shape == va.shape and s.dtype == torch.float32
    mask = torch.ones(3, dtype=torch.bool)
    aiter_ext.merge_state_in_place(va, sa, vb, sb, mask)
    assert given[-1] == (va, sa, vb, sb, mask)

    xb, wb = torch.randn(2, 64, dtype=torch.bfloat16), torch.randn(64, dtype=torch.bfloat16)
    given = _hit(monkeypatch, FP4)
    y, sf = aiter_ext.rmsnorm_fp4quant(xb, wb)
    assert given[-1][:2] == (xb, wb) and given[-1][3] is y and given[-1][4] is sf
    assert given[-1][2].shape == (1,)  # NVFP4's default global scale, made for the call

    probs = torch.softmax(torch.randn(3, 50), -1)
    given = _hit(monkeypatch, SAMPLING)
    tokens = aiter_ext.min_p_sampling_from_probs(probs, 0.1, seed=1, offset=2)
    slots = given[-1]
    assert slots[0] is probs and slots[1] is None and slots[7] is tokens and tokens.shape == (3,)
    assert slots[5].tolist() == [1] and slots[6].tolist() == [2]  # the seed and offset, as tensors

    from aiter_ext.ops.sampling.logits import PLANS as LOGITS

    logits, indices = torch.randn(3, 50), torch.tensor([2, 0, 2, 1], dtype=torch.int32)
    given = _hit(monkeypatch, LOGITS)
    tokens, valid = aiter_ext.sampling_from_logits(logits, indices, seed=4, offset=6, return_valid=True)
    slots = given[-1]
    assert slots[0] is logits and slots[1] is indices and slots[4] is tokens
    assert slots[5].shape == (4,) and torch.equal(slots[5].bool(), valid)  # the flags the plan writes, returned
    assert tokens.shape == (4,) and slots[2].tolist() == [4] and slots[3].tolist() == [6]


# --------------------------------------------------------------------------------------------------
# Cascade run(): call plans of a wrapper, made anew by each plan().


def _count_replays(monkeypatch) -> list:
    """A list that every replay of a plan made from here on appends to."""
    replays = []
    real = plans._replay

    def counted(blob, recording):
        run = real(blob, recording)
        return lambda *slots: (replays.append(1), run(*slots))

    monkeypatch.setattr(plans, "_replay", counted)
    return replays


def _record_slots(monkeypatch, calls) -> list:
    """Every run of ``calls``' op takes the recording branch (a key, no plan yet) and its slots are kept; the
    usual path still runs (a recording needs the thin launch path, which the CPU has not)."""
    recorded = []
    real = calls.recorded

    def recording(key, slots, fn, *args):
        recorded.append(slots() if callable(slots) else slots)
        return real(None, slots, fn, *args)

    monkeypatch.setattr(calls, "find", lambda *args: (b"key", None))
    monkeypatch.setattr(calls, "recorded", recording)
    return recorded


def _check_recorded_slots(monkeypatch, wrapper, calls, q, cache) -> tuple:
    """A wrapper's run through the recording branch names the slots (q, cache, out, lse, sinks, *held) and
    returns what the usual path returns; the held tensors are a stand-in, returned for the replay's check."""
    want_out, want_lse = wrapper.run(q, cache, return_lse=True)  # the usual path (no key on the CPU)
    sentinel = (torch.empty(3, device="meta"),)
    monkeypatch.setattr(wrapper, "_held", sentinel)
    recorded = _record_slots(monkeypatch, calls)
    out, lse = wrapper.run(q, cache, return_lse=True)
    slots = recorded[-1]
    assert slots[0] is q and slots[1] is cache and slots[2] is out and slots[3] is lse and slots[4] is None
    assert slots[5:] == sentinel
    assert torch.equal(out, want_out) and torch.equal(lse, want_lse)
    return sentinel


def _small_cascade(device: str = "cpu"):
    """The docstring's two-level cascade (3 requests sharing 2 pages, 1-2 pages of their own), fp16."""
    import aiter_ext

    page, heads, dim = 4, 2, 64
    i32 = lambda *x: torch.tensor(x, dtype=torch.int32, device=device)  # noqa: E731
    wrapper = aiter_ext.MultiLevelCascadeAttentionWrapper(2, torch.empty(1 << 20, dtype=torch.uint8, device=device))
    wrapper.plan([i32(0, 3), i32(0, 1, 2, 3)], [i32(0, 2), i32(0, 1, 2, 3)], [i32(0, 1), i32(2, 3, 4)],
                 [i32(4), i32(2, 4, 1)], heads, heads, dim, page)
    cache = torch.randn(6, 2, page, heads, dim, device=device).half()
    q = torch.randn(3, heads, dim, device=device).half()
    return wrapper, q, cache


def test_held_device_tensors_walks_plans_once_each_in_order():
    from dataclasses import dataclass

    from aiter_ext.ops.attention.engine import held_device_tensors

    @dataclass(frozen=True)
    class Inner:
        a: torch.Tensor
        rows: int

    @dataclass
    class Outer:
        inner: Inner
        many: tuple
        extra: dict
        host: torch.Tensor

    t1, t2, t3 = (torch.empty(4, device="meta") for _ in range(3))
    outer = Outer(Inner(t1, 3), (t2, [t1, 5]), {"x": t3, "y": None}, torch.empty(2))
    held = held_device_tensors(outer, [Inner(t2, 1)])
    assert len(held) == 3 and held[0] is t1 and held[1] is t2 and held[2] is t3  # CPU tensors left out


def test_cascade_run_gives_its_plan_the_slots_it_records(monkeypatch):
    wrapper, q, cache = _small_cascade()
    if wrapper._call_plans is None:
        pytest.skip("built on the CPU, whose backend here is not Triton (no TRITON_INTERPRET=1): no call plans; CI runs this")
    sentinel = _check_recorded_slots(monkeypatch, wrapper, wrapper._call_plans, q, cache)

    given = []
    monkeypatch.setattr(wrapper._call_plans, "find", lambda *args: (b"key", lambda *s: given.append(s)))
    sinks = torch.randn(2)
    out = wrapper.run(q, (cache[:, 0], cache[:, 1]), sinks=sinks)
    slots = given[-1]
    assert slots[0] is q and slots[3] is out and slots[5] is sinks and slots[6:] == sentinel
    assert slots[4].shape == (3, 2) and slots[4].dtype == torch.float32 and out.shape == q.shape


def test_cascade_run_refuses_bad_input_before_a_plan_is_asked(monkeypatch):
    wrapper, q, cache = _small_cascade()
    if wrapper._call_plans is None:
        pytest.skip("built on the CPU, whose backend here is not Triton (no TRITON_INTERPRET=1): no call plans; CI runs this")
    with pytest.raises(TypeError, match="v_scale"):
        wrapper.run(q, cache, v_scale="2")
    monkeypatch.setattr(wrapper._call_plans, "find", lambda *args: (b"key", None))
    with pytest.raises(TypeError, match="k_scale"):
        wrapper.run(q, cache, k_scale=torch.ones(2))
    with pytest.raises(ValueError, match="paged_kv_cache has 2 pages"):
        wrapper.run(q, cache[:2])


# --------------------------------------------------------------------------------------------------
# Paged decode and prefill run(): call plans of a wrapper's current plan.


def _small_decode(device: str = "cpu"):
    import aiter_ext

    batch, pages_per, page, heads, kv_heads, dim = 3, 2, 4, 4, 2, 64
    cache = torch.randn(batch * pages_per, 2, page, kv_heads, dim, device=device).half()
    indptr = torch.arange(0, batch * pages_per + 1, pages_per, dtype=torch.int32, device=device)
    indices = torch.randperm(batch * pages_per).int().to(device)
    last = torch.tensor([4, 2, 3], dtype=torch.int32, device=device)
    wrapper = aiter_ext.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1 << 20, dtype=torch.uint8, device=device))
    wrapper.plan(indptr, indices, last, heads, kv_heads, dim, page, q_data_type=torch.float16,
                 kv_data_type=torch.float16)
    return wrapper, torch.randn(batch, heads, dim, device=device).half(), cache


def test_decode_run_gives_its_plan_the_slots_it_records(monkeypatch):
    wrapper, q, cache = _small_decode()
    calls = wrapper._run_plans()
    if calls is None:
        pytest.skip("built on the CPU, whose backend here is not Triton (no TRITON_INTERPRET=1): no call plans; CI runs this")
    assert wrapper._run_plans() is calls  # the same plan: the same call plans
    sentinel = _check_recorded_slots(monkeypatch, wrapper, calls, q, cache)

    given = []
    monkeypatch.setattr(calls, "find", lambda *args: (b"key", lambda *s: given.append(s)))
    lse_given = torch.empty(3, 4)
    out = wrapper.run(q, (cache[:, 0], cache[:, 1]), lse=lse_given)
    slots = given[-1]
    assert slots[0] is q and slots[3] is out and slots[4] is lse_given and slots[5] is None
    assert slots[6:] == sentinel and out.shape == q.shape
    # another LSE base is converted after the kernel by torch: no plan is asked for
    given.clear()
    wrapper.run(q, cache, return_lse=True, lse_base="ln")
    assert not given


def test_a_new_plan_gets_new_call_plans():
    wrapper, q, cache = _small_decode()
    calls = wrapper._run_plans()
    if calls is None:
        pytest.skip("built on the CPU, whose backend here is not Triton (no TRITON_INTERPRET=1): no call plans; CI runs this")
    wrapper._held_tensors()
    wrapper.plan(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0], dtype=torch.int32),
                 torch.tensor([3], dtype=torch.int32), 4, 2, 64, 4, q_data_type=torch.float16,
                 kv_data_type=torch.float16)
    assert wrapper._run_plans() is not calls and wrapper._held is None


@gpu_only
@pytest.mark.parametrize("form", ["cascade", "decode", "decode, K and V apart, lse given"])
def test_a_wrapper_plan_gives_the_usual_paths_bytes(form, monkeypatch):
    """Four runs of one planned wrapper on fresh q and cache: the first seen, the second recorded, the last two
    replayed; each bit-equal to the usual path (plans off) on the same inputs, the LSE included."""
    replays = _count_replays(monkeypatch)
    previous = plans.set_enabled(True)
    try:
        wrapper, q, cache = (_small_cascade if form == "cascade" else _small_decode)("cuda")
        calls = wrapper._call_plans if form == "cascade" else wrapper._run_plans()
        assert calls is not None
        apart = "apart" in form
        for attempt in range(4):
            q.copy_(torch.randn_like(q, dtype=torch.float32))
            cache.copy_(torch.randn_like(cache, dtype=torch.float32))
            kv = (cache[:, 0], cache[:, 1]) if apart else cache
            lse = torch.full((q.shape[0], q.shape[1]), float("nan"), device="cuda") if apart else None
            extra = {"lse": lse} if apart else {}
            got_out, got_lse = (t.clone() for t in wrapper.run(q, kv, return_lse=True, **extra))
            plans.set_enabled(False)
            try:
                want_out, want_lse = wrapper.run(q, kv, return_lse=True)
            finally:
                plans.set_enabled(True)
            assert torch.equal(got_out, want_out) and torch.equal(got_lse, want_lse), attempt
        assert len(calls) == 1 and len(replays) == 2, (len(calls), len(replays))
    finally:
        plans.set_enabled(previous)


def test_slots_given_as_a_function_are_gathered_for_the_recording_only():
    calls, gathered, ran = plans.CallPlans("test"), [], []

    def slots():
        gathered.append(1)
        return (torch.empty(2),)

    for _ in range(4):  # seen, recorded (nothing launched on the CPU: no plan), then the usual path
        calls.recorded(b"key", slots, lambda: ran.append(1))
    assert len(ran) == 4 and len(gathered) == 1 and calls._plans[b"key"] is False
