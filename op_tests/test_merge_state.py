"""merge_state, merge_state_in_place, merge_states, variable_length_merge_states.

pytest: every backend that can run here against the fp32 reference, on fresh random inputs with
empty (-inf) states mixed in, outputs poisoned first; bad inputs; torch.compile and graph capture.
CLI (``python op_tests/test_merge_state.py``): the benchmark, beside FlashInfer when it is installed.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import DEVICE, backend_params, grid  # noqa: E402

import aiter_ext  # noqa: E402
from aiter_ext.core.backend import BackendUnavailableError  # noqa: E402
from aiter_ext.core.testing import assert_close, poisoned_like  # noqa: E402
from aiter_ext.ops.merge_state import api  # noqa: E402
from aiter_ext.ops.merge_state.backends import MERGE_STATE, MERGE_STATES  # noqa: E402
from aiter_ext.ops.merge_state.reference import (  # noqa: E402
    merge_state_in_place_ref, merge_state_ref, merge_states_ref, variable_length_merge_states_ref,
)

NEG_INF = float("-inf")
DTYPES = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]


def random_state(*lead, num_heads, head_dim, dtype, empty_frac=0.15):
    """v ~ N(0, 1), s ~ N(0, 5^2) with a fraction of states empty (s = -inf)."""
    v = torch.randn(*lead, num_heads, head_dim, device=DEVICE).to(dtype)
    s = torch.randn(*lead, num_heads, device=DEVICE) * 5
    s[torch.rand(s.shape, device=DEVICE) < empty_frac] = NEG_INF
    return v, s


# --------------------------------------------------------------------------------------------------
# merge_state / merge_state_in_place


@pytest.mark.parametrize("backend", backend_params(MERGE_STATE))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("seq_len,num_heads", grid([(1, 3), (17, 4)], [(1, 3), (17, 4), (2048, 32), (4097, 8)]))
def test_merge_state(backend, dtype, head_dim, seq_len, num_heads):
    v_a, s_a = random_state(seq_len, num_heads=num_heads, head_dim=head_dim, dtype=dtype)
    v_b, s_b = random_state(seq_len, num_heads=num_heads, head_dim=head_dim, dtype=dtype)
    s_a[0, 0] = s_b[0, 0] = NEG_INF  # at least one row where both states are empty
    v_ref, s_ref = merge_state_ref(v_a, s_a, v_b, s_b)

    v_out, s_out = poisoned_like(v_a), poisoned_like(s_a)  # any element left unwritten shows as NaN
    api._merge_pair_out(v_a, s_a, v_b, s_b, v_out, s_out, None, backend)
    assert_close(v_out, v_ref, name="v")
    assert_close(s_out, s_ref, torch.float32, name="s", atol=1e-5, rtol=1e-5)
    assert not torch.isnan(v_out).any()
    assert torch.all(v_out[0, 0] == 0) and s_out[0, 0] == NEG_INF  # two empty states: v = 0, s = -inf

    v, s = aiter_ext.merge_state(v_a, s_a, v_b, s_b, backend=backend)  # the public, allocating form
    assert_close(v, v_ref, name="v")
    assert_close(s, s_ref, torch.float32, name="s")


@pytest.mark.parametrize("backend", backend_params(MERGE_STATE))
@pytest.mark.parametrize("dtype", DTYPES)
def test_merge_with_empty_state_is_identity(backend, dtype):
    v_a, s_a = random_state(9, num_heads=4, head_dim=128, dtype=dtype, empty_frac=0.0)
    v_b, _ = random_state(9, num_heads=4, head_dim=128, dtype=dtype)
    s_b = torch.full_like(s_a, NEG_INF)
    v, s = aiter_ext.merge_state(v_a, s_a, v_b, s_b, backend=backend)
    assert torch.equal(v, v_a) and torch.equal(s, s_a)
    v2, s2 = aiter_ext.merge_state(v_b, s_b, v_a, s_a, backend=backend)  # and from the other side
    assert torch.equal(v2, v_a) and torch.equal(s2, s_a)


@pytest.mark.parametrize("backend", backend_params(MERGE_STATE))
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_state_is_ignored_even_if_its_v_is_nan(backend, dtype):
    """An empty state (s = -inf) may carry garbage, e.g. NaN from a 0/0 upstream: it must not leak."""
    v_a, s_a = random_state(7, num_heads=2, head_dim=64, dtype=dtype, empty_frac=0.0)
    v_b, s_b = random_state(7, num_heads=2, head_dim=64, dtype=dtype, empty_frac=0.0)
    s_b[:3] = NEG_INF
    v_b[:3] = float("nan")
    v, s = aiter_ext.merge_state(v_a, s_a, v_b, s_b, backend=backend)
    assert torch.equal(v[:3], v_a[:3]) and torch.equal(s[:3], s_a[:3])
    assert not torch.isnan(v).any()


@pytest.mark.parametrize("backend", backend_params(MERGE_STATE))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_kind", ["none", "ones", "zeros", "random-bool", "random-uint8"])
@pytest.mark.parametrize("seq_len", grid([13], [13, 512]))
def test_merge_state_in_place(backend, dtype, mask_kind, seq_len):
    num_heads, head_dim = (3, 128) if seq_len < 100 else (32, 128)
    v, s = random_state(seq_len, num_heads=num_heads, head_dim=head_dim, dtype=dtype)
    v_o, s_o = random_state(seq_len, num_heads=num_heads, head_dim=head_dim, dtype=dtype)
    mask = {
        "none": None,
        "ones": torch.ones(seq_len, dtype=torch.bool, device=DEVICE),
        "zeros": torch.zeros(seq_len, dtype=torch.bool, device=DEVICE),
        "random-bool": torch.rand(seq_len, device=DEVICE) < 0.5,
        "random-uint8": (torch.rand(seq_len, device=DEVICE) < 0.5).to(torch.uint8) * 7,  # any nonzero byte
    }[mask_kind]
    v_ref, s_ref = v.clone(), s.clone()
    merge_state_in_place_ref(v_ref, s_ref, v_o, s_o, mask)
    v_before, s_before = v.clone(), s.clone()

    aiter_ext.merge_state_in_place(v, s, v_o, s_o, mask=mask, backend=backend)
    assert_close(v, v_ref, name="v")
    assert_close(s, s_ref, torch.float32, name="s")
    if mask is not None:  # untouched rows are bit-identical, LSE included
        keep = mask.bool()
        assert torch.equal(v[~keep], v_before[~keep]) and torch.equal(s[~keep], s_before[~keep])


# --------------------------------------------------------------------------------------------------
# merge_states / variable_length_merge_states


@pytest.mark.parametrize("backend", backend_params(MERGE_STATES, ("torch", "triton")))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_states", grid([0, 1, 3, 8], [0, 1, 3, 8, 100]))
@pytest.mark.parametrize("head_dim", [64, 256])
def test_merge_states(backend, dtype, num_states, head_dim):
    seq_len, num_heads = grid((5, 2), (2048, 32))
    v, s = random_state(seq_len, num_states, num_heads=num_heads, head_dim=head_dim, dtype=dtype)
    v_ref, s_ref = merge_states_ref(v, s)
    v_out, s_out = poisoned_like(v_ref), poisoned_like(s_ref)
    api._merge_many_out(v, s, None, v_out, s_out, backend)
    assert_close(v_out, v_ref, name="v")
    assert_close(s_out, s_ref, torch.float32, name="s")
    if num_states == 0:
        assert torch.all(v_out == 0) and torch.all(s_out == NEG_INF)


@pytest.mark.parametrize("backend", backend_params(MERGE_STATES, ("torch", "triton")))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_variable_length_merge_states(backend, dtype, index_dtype):
    seq_len, num_heads, head_dim, max_len = grid((9, 2, 128, 6), (2048, 32, 128, 512))
    lengths = torch.randint(0, max_len, (seq_len,))
    lengths[0] = 0  # an empty segment: v = 0, s = -inf
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(index_dtype)
    v, s = random_state(int(indptr[-1]), num_heads=num_heads, head_dim=head_dim, dtype=dtype)
    v_ref, s_ref = variable_length_merge_states_ref(v, s, indptr)
    v_out, s_out = poisoned_like(v_ref), poisoned_like(s_ref)
    api._merge_many_out(v, s, indptr.to(DEVICE), v_out, s_out, backend)
    assert_close(v_out, v_ref, name="v")
    assert_close(s_out, s_ref, torch.float32, name="s")
    assert torch.all(v_out[0] == 0) and torch.all(s_out[0] == NEG_INF)
    out, lse = aiter_ext.variable_length_merge_states(v, s, indptr.to(DEVICE), backend=backend)
    assert_close(out, v_ref, name="v")


@pytest.mark.parametrize("backend", backend_params(MERGE_STATES, ("triton",)))
def test_malformed_device_indptr_reads_nothing_outside_v(backend):
    """A device indptr is not checked on the host (that would synchronize); the kernel must still stay
    inside v: segments past the end or with negative length merge nothing (v = 0, s = -inf)."""
    v, s = random_state(4, num_heads=2, head_dim=64, dtype=torch.float16, empty_frac=0.0)
    indptr = torch.tensor([0, 2, 1, 4, 100, 1 << 20], dtype=torch.int32, device=DEVICE)
    v_out, s_out = poisoned_like(v[:1].expand(5, -1, -1).contiguous()), poisoned_like(s[:1].expand(5, -1).contiguous())
    api._merge_many_out(v, s, indptr, v_out, s_out, backend)
    v_ref, s_ref = merge_states_ref(v[:2][None].transpose(0, 1).reshape(1, 2, 2, 64), s[:2].reshape(1, 2, 2))
    assert_close(v_out[0], v_ref[0], name="segment 0")
    assert torch.all(v_out[1] == 0) and torch.all(s_out[1] == NEG_INF)  # negative length: empty
    assert_close(v_out[2], merge_states_ref(v[1:4][None], s[1:4][None])[0][0], name="segment 2")
    assert torch.all(v_out[3:] == 0) and torch.all(s_out[3:] == NEG_INF)  # wholly past the end: empty


def test_merge_states_agrees_with_pairwise_merges():
    """Merging 4 states at once equals three pairwise merges (the cascade's use)."""
    v, s = random_state(6, 4, num_heads=2, head_dim=64, dtype=torch.float32)
    v_all, s_all = aiter_ext.merge_states(v, s)
    v_acc, s_acc = v[:, 0].clone(), s[:, 0].clone()
    for i in range(1, 4):
        aiter_ext.merge_state_in_place(v_acc, s_acc, v[:, i].contiguous(), s[:, i].contiguous())
    assert_close(v_acc, v_all, torch.float32, atol=1e-5, rtol=1e-4)  # fp32, different summation order
    assert_close(s_acc, s_all, torch.float32, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument, and nothing written.


def _pair(n=4, h=2, d=64, dtype=torch.float16):
    return random_state(n, num_heads=h, head_dim=d, dtype=dtype) + random_state(n, num_heads=h, head_dim=d, dtype=dtype)


@pytest.mark.parametrize("case,exc,match", [
    ("v_b shape", ValueError, "v_b must have shape"),
    ("s_a dtype", TypeError, "s_a must be fp32"),
    ("v_a dtype", TypeError, "v_a must be fp16, bf16, fp32"),
    ("dtype mismatch", TypeError, "v_b is bf16 but v_a is fp16"),
    ("s_a shape", ValueError, "s_a must have shape"),
    ("v_a ndim", ValueError, "v_a must have 3 dimensions"),
    ("v_a layout", ValueError, "v_a must be contiguous in its last 2"),
    ("device", ValueError, "s_b is on meta"),
    ("backend", BackendUnavailableError, "'nope' was requested"),
])
def test_merge_state_bad_input(case, exc, match):
    v_a, s_a, v_b, s_b = _pair()
    kwargs = {}
    if case == "v_b shape":
        v_b = v_b[:3]
    elif case == "s_a dtype":
        s_a = s_a.half()
    elif case == "v_a dtype":
        v_a = v_a.to(torch.int16)
    elif case == "dtype mismatch":
        v_b = v_b.bfloat16()
    elif case == "s_a shape":
        s_a = s_a[:, :1]
    elif case == "v_a ndim":
        v_a = v_a[None]
    elif case == "v_a layout":
        v_a = v_a.transpose(1, 2).contiguous().transpose(1, 2)  # heads not packed
    elif case == "device":
        s_b = s_b.to("meta")
    elif case == "backend":
        kwargs["backend"] = "nope"
    with pytest.raises(exc, match=match):
        aiter_ext.merge_state(v_a, s_a, v_b, s_b, **kwargs)


@pytest.mark.parametrize("case,exc,match", [
    ("s fp16", TypeError, "s must be fp32"),
    ("mask int32", TypeError, "mask must be bool, uint8"),
    ("mask shape", ValueError, "mask must have shape"),
])
def test_merge_state_in_place_bad_input_writes_nothing(case, exc, match):
    v, s, v_o, s_o = _pair()
    mask = None
    if case == "s fp16":
        s = s.half()
    elif case == "mask int32":
        mask = torch.ones(4, dtype=torch.int32, device=DEVICE)
    elif case == "mask shape":
        mask = torch.ones(5, dtype=torch.bool, device=DEVICE)
    v_before, s_before = v.clone(), s.clone()
    with pytest.raises(exc, match=match):
        aiter_ext.merge_state_in_place(v, s, v_o, s_o, mask=mask)
    assert torch.equal(v, v_before) and torch.equal(s, s_before)


@pytest.mark.parametrize("indptr,match", [
    ([1, 2, 4], "indptr must start at 0"),
    ([0, 3, 2, 4], "indptr must be nondecreasing"),
    ([0, 2, 3], "indptr\\[-1\\] = 3 must equal the number of states"),
])
def test_variable_length_bad_indptr(indptr, match):
    # values are checked where indptr is on the CPU (free); so these run with CPU tensors everywhere
    v, s = torch.randn(4, 2, 64, dtype=torch.float16), torch.randn(4, 2)
    with pytest.raises(ValueError, match=match):
        aiter_ext.variable_length_merge_states(v, s, torch.tensor(indptr, dtype=torch.int32))


def test_unavailable_explicit_backend_raises_with_reason():
    ok, reason = MERGE_STATE.usable("ck", {"num_tokens": 4, "num_heads": 2, "head_dim": 64, "dtype": "fp16",
                                           "has_mask": False, "contiguous": True})
    if ok:
        pytest.skip("ck can run here; this test is about a machine where it cannot")
    v_a, s_a, v_b, s_b = _pair()
    with pytest.raises(BackendUnavailableError, match="ck"):
        aiter_ext.merge_state(v_a, s_a, v_b, s_b, backend="ck")


# --------------------------------------------------------------------------------------------------
# torch.compile and graph capture.


def test_torch_compile_fullgraph():
    v_a, s_a, v_b, s_b = _pair(5, 2, 64, torch.float16)

    def f(v_a, s_a, v_b, s_b):
        v, s = aiter_ext.merge_state(v_a, s_a, v_b, s_b)
        aiter_ext.merge_state_in_place(v, s, v_b, s_b)
        return v, s

    v_ref, s_ref = merge_state_ref(v_a, s_a, v_b, s_b)
    merge_state_in_place_ref(v_ref, s_ref, v_b, s_b)
    v, s = torch.compile(f, fullgraph=True, backend="aot_eager")(v_a, s_a, v_b, s_b)
    assert_close(v, v_ref, name="v")
    assert_close(s, s_ref, torch.float32, name="s")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="graph capture needs a GPU (covered on the lent GPU)")
@pytest.mark.parametrize("backend", backend_params(MERGE_STATE, ("triton", "ck")))
def test_cuda_graph_capture(backend):
    v, s, v_o, s_o = _pair(300, 8, 128, torch.bfloat16)
    v_ref, s_ref = v.clone(), s.clone()
    merge_state_in_place_ref(v_ref, s_ref, v_o, s_o)
    v_work, s_work = v.clone(), s.clone()
    aiter_ext.merge_state_in_place(v_work, s_work, v_o, s_o, backend=backend)  # warm-up: compile/build
    v_work.copy_(v), s_work.copy_(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        aiter_ext.merge_state_in_place(v_work, s_work, v_o, s_o, backend=backend)
    v_work.copy_(v), s_work.copy_(s)
    graph.replay()
    torch.cuda.synchronize()
    assert_close(v_work, v_ref, name="v")
    assert_close(s_work, s_ref, torch.float32, name="s")


# --------------------------------------------------------------------------------------------------
# Benchmark CLI: python op_tests/test_merge_state.py [--tokens ...] [--backend ...]


def _bench_rows(kind, n, h, d, dtype, num_states, backends, fi, copy_gbs, graph):
    """Time one case on every backend and on FlashInfer; every provider's output is checked first."""
    from aiter_ext.core.bench import copy_time_us, time_us
    from aiter_ext.core.testing import max_error

    esize = torch.empty((), dtype=dtype).element_size()
    if kind == "merge_states":
        v, s = random_state(n, num_states, num_heads=h, head_dim=d, dtype=dtype, empty_frac=0.0)
        v_ref, s_ref = merge_states_ref(v, s)
        nbytes = (num_states + 1) * n * h * (d * esize + 4)
        ours = lambda b: aiter_ext.merge_states(v, s, backend=b)  # noqa: E731
        theirs = (lambda: fi.merge_states(v, s)) if fi else None
    else:
        v_a, s_a = random_state(n, num_heads=h, head_dim=d, dtype=dtype, empty_frac=0.0)
        v_b, s_b = random_state(n, num_heads=h, head_dim=d, dtype=dtype, empty_frac=0.0)
        v_ref, s_ref = merge_state_ref(v_a, s_a, v_b, s_b)
        nbytes = 3 * n * h * (d * esize + 4)
        if kind == "merge_state":
            ours = lambda b: aiter_ext.merge_state(v_a, s_a, v_b, s_b, backend=b)  # noqa: E731
            theirs = (lambda: fi.merge_state(v_a, s_a, v_b, s_b)) if fi else None
        else:  # in place: check on a copy, time on the live tensors (values stay finite)
            v_w, s_w = v_a.clone(), s_a.clone()

            def ours(b):
                v_c, s_c = v_a.clone(), s_a.clone()
                aiter_ext.merge_state_in_place(v_c, s_c, v_b, s_b, backend=b)
                return v_c, s_c
            theirs = (lambda: fi.merge_state_in_place(v_w, s_w, v_b, s_b)) if fi else None

    fi_us = fi_err = fi_graph_us = None
    if theirs is not None:
        if kind == "merge_state_in_place":
            v_w.copy_(v_a), s_w.copy_(s_a)
            theirs()
            fi_err = max_error(v_w, v_ref)
        else:
            fi_err = max_error(theirs()[0], v_ref)
        fi_us = time_us(theirs)
        fi_graph_us = time_us(theirs, graph=True) if graph else None
    rows = []
    for b in backends:
        if not MERGE_STATE.usable(b, {"num_tokens": n, "num_heads": h, "head_dim": d,
                                       "dtype": {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype],
                                       "device": "cuda", "has_mask": False, "contiguous": True,
                                       "varlen": False})[0]:
            continue
        if kind == "merge_states" and b not in MERGE_STATES.impls:
            continue
        out_v, out_s = ours(b)
        err_v, err_s = max_error(out_v, v_ref), max_error(out_s, s_ref)
        assert_close(out_v, v_ref, name=f"{kind} {b} v")
        assert_close(out_s, s_ref, torch.float32, name=f"{kind} {b} s", atol=1e-4, rtol=1e-5)
        if kind == "merge_state_in_place":
            v_w.copy_(v_a), s_w.copy_(s_a)
            us = time_us(lambda: aiter_ext.merge_state_in_place(v_w, s_w, v_b, s_b, backend=b))
            g_us = time_us(lambda: aiter_ext.merge_state_in_place(v_w, s_w, v_b, s_b, backend=b), graph=True) if graph else None
        else:
            us = time_us(lambda: ours(b))
            g_us = time_us(lambda: ours(b), graph=True) if graph else None
        gbs = nbytes / us / 1e3
        same_size_copy_us = copy_time_us(nbytes)
        rows.append({"op": kind, "tokens": n, "heads": h, "head_dim": d, "states": num_states if kind == "merge_states" else 2,
                     "dtype": str(dtype).replace("torch.", ""), "backend": b, "us": us, "graph_us": g_us, "fi_graph_us": fi_graph_us,
                     "GB/s": gbs, "%copy_bw": 100 * gbs / copy_gbs,
                     "%same_size_copy": 100 * same_size_copy_us / us, "flashinfer_us": fi_us,
                     "vs_flashinfer": (fi_us / us) if fi_us else None, "err": max(err_v, err_s), "fi_err": fi_err})
    return rows


def bench_main(argv=None) -> int:
    import argparse

    from aiter_ext.core.arch import device_info
    from aiter_ext.core.bench import benchmark_setup, copy_bandwidth_gbs, git_commit, markdown_table, warm_up_gpu

    parser = argparse.ArgumentParser(description="merge_state benchmark (beside FlashInfer when installed)")
    parser.add_argument("--tokens", type=int, nargs="*", default=[1, 64, 512, 4096, 16384, 65536])
    parser.add_argument("--heads", type=int, nargs="*", default=[32])
    parser.add_argument("--head-dim", type=int, nargs="*", default=[128])
    parser.add_argument("--dtype", nargs="*", default=["bf16"], choices=["bf16", "fp16"])
    parser.add_argument("--backend", nargs="*", default=["triton", "ck"])
    parser.add_argument("--ops", nargs="*", default=["merge_state", "merge_state_in_place", "merge_states"],
                        help="merge_states runs with 4 states per token at the largest token count <= 4096")
    parser.add_argument("--no-flashinfer", action="store_true")
    parser.add_argument("--graph", action="store_true", help="also time CUDA-graph replays (no launch overhead)")
    args = parser.parse_args(argv)
    ok, fi = benchmark_setup(args.no_flashinfer)
    if not ok:
        return 2
    if fi is not None:  # build FlashInfer's kernels now, not inside the first timed case
        v1, s1 = random_state(4, 2, num_heads=2, head_dim=128, dtype=torch.bfloat16)
        fi.merge_state(*(t.contiguous() for t in (v1[:, 0], s1[:, 0], v1[:, 1], s1[:, 1])))
        fi.merge_states(v1, s1)
    warm_up_gpu()
    info = device_info()
    copy_gbs = copy_bandwidth_gbs()
    print(f"device {info.name} ({info.arch}, {info.cu_num} CUs), commit {git_commit()}, "
          f"FlashInfer {getattr(fi, '__version__', 'absent')}, measured copy bandwidth {copy_gbs:.0f} GB/s")
    print("us: median of triton.testing.do_bench (L2 cleared before each call), public API call incl. allocation;\n"
          "graph_us: median of CUDA-graph replays (no launch overhead, L2 not cleared between replays);\n"
          "%same_size_copy: a device copy moving the same bytes, over this time (what a copy reaches at this size)")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    rows = []
    for kind in args.ops:
        tokens = args.tokens if kind != "merge_states" else [max(t for t in args.tokens if t <= 4096)]
        for dt in args.dtype:
            for h in args.heads:
                for d in args.head_dim:
                    for n in tokens:
                        rows += _bench_rows(kind, n, h, d, dtypes[dt], 4, args.backend, fi, copy_gbs, args.graph)
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(bench_main())
