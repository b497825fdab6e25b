"""Segment GEMM (issue 17): FlashInfer 0.7.2's SegmentGEMMWrapper against per-segment fp32 matmuls on fresh
random inputs, the output poisoned first: empty and one-row segments, segments longer than a tile,
repeated and out-of-order weight indices, LoRA ranks, row- and column-major weights, seg_lens or
seg_indptr (exact where FlashInfer rounds them through x's dtype); bad arguments refused by name, and
device indices past the weights never read outside them."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import DEVICE  # noqa: E402

import aiter_ext  # noqa: E402
from aiter_ext.core.testing import assert_close  # noqa: E402
from aiter_ext.ops.segment_gemm.reference import segment_gemm_ref  # noqa: E402

DTYPE = torch.float16 if DEVICE.type == "cpu" else torch.bfloat16
ON_GPU = DEVICE.type == "cuda"
# (d_in, d_out): LoRA shrink and expand at ranks 8-128, and a square GEMM; real hidden sizes on the GPU
SHAPES = [(64, 8), (64, 16), (16, 96), (128, 128), (80, 40)] if not ON_GPU else \
    [(4096, 8), (4096, 16), (4096, 64), (8192, 128), (16, 4096), (128, 8192), (4096, 4096)]
SEG_LENS = [0, 1, 70, 3, 0, 130, 17]  # empty, one-row and longer-than-a-tile segments


def _ws():
    return torch.empty(1 << 20, dtype=torch.int8, device=DEVICE)  # FlashInfer users pass int8 or uint8


@pytest.mark.parametrize("d_in,d_out", SHAPES)
@pytest.mark.parametrize("column_major", [False, True])
@pytest.mark.parametrize("indices", ["none", "shuffled"])
def test_segment_gemm_matches_per_segment_matmuls(d_in, d_out, column_major, indices):
    gen = torch.Generator().manual_seed(d_in * 7 + d_out + column_major)
    seg_lens = torch.tensor(SEG_LENS, dtype=torch.int64)
    batch = len(SEG_LENS)
    rows = int(seg_lens.sum()) + 5  # 5 rows outside every segment
    x = torch.randn(rows, d_in, generator=gen).to(DTYPE).to(DEVICE)
    num_weights = batch if indices == "none" else 3
    shape = (num_weights, d_out, d_in) if column_major else (num_weights, d_in, d_out)
    weights = (torch.randn(shape, generator=gen) / d_in ** 0.5).to(DTYPE).to(DEVICE)
    index = None if indices == "none" else torch.tensor([2, 0, 2, 1, 0, 1, 2], dtype=torch.int64)  # repeated, unordered
    out = torch.full((rows, d_out), float("nan"), dtype=DTYPE, device=DEVICE)
    out[-5:] = 7.0  # rows outside every segment: left as they are
    w = aiter_ext.SegmentGEMMWrapper(_ws())
    got = w.run(x, weights, batch, column_major, out=out, seg_lens=seg_lens.to(DEVICE),
                weight_indices=index.to(DEVICE) if index is not None else None)
    assert got is out
    indptr = [0] + seg_lens.cumsum(0).tolist()
    ref = segment_gemm_ref(x, weights, indptr, index, column_major, out=torch.full_like(out, 7.0))
    assert_close(out[:indptr[-1]], ref[:indptr[-1]], DTYPE, name="segment rows")
    assert bool((out[indptr[-1]:] == 7.0).all()), "rows outside the segments were written"
    # seg_indptr instead of seg_lens, and an output allocated here: zeros outside the segments
    fresh = w.run(x, weights, batch, column_major, seg_indptr=torch.tensor(indptr, device=DEVICE),
                  weight_indices=index)
    assert torch.equal(fresh[:indptr[-1]], out[:indptr[-1]]) and bool((fresh[indptr[-1]:] == 0).all())


@pytest.mark.parametrize("column_major", [False, True])
def test_skinny_product_splits_k_through_the_workspace(monkeypatch, column_major):
    """FlashInfer's form with few output tiles (a rank-16 shrink): SegmentGEMMWrapper splits K into fp32 slabs
    of its workspace, then sums them into the 16-bit output (kernels.py, PARTIALS / SUM_PARTIALS). Rows
    outside the segments stay as they were; empty and one-row segments, repeated unordered weights. A
    workspace too small for the slabs means one pass, with the same result; the functional form (no
    workspace) never splits."""
    from aiter_ext.ops.segment_gemm import kernels

    monkeypatch.setenv("AITER_EXT_CU_NUM", "32")  # as on a GPU: too few row tiles to fill its CUs
    gen = torch.Generator().manual_seed(77)
    d_in, d_out = 2048, 16  # 4 splits keep the slabs within 1/8 of x's traffic (kernels.split_k)
    seg_lens = torch.tensor([0, 1, 70, 3, 0, 50])
    rows = int(seg_lens.sum()) + 4
    x = torch.randn(rows, d_in, generator=gen).to(DTYPE).to(DEVICE)
    shape = (3, d_out, d_in) if column_major else (3, d_in, d_out)
    weights = (torch.randn(shape, generator=gen) / 45).to(DTYPE).to(DEVICE)
    index = torch.tensor([2, 0, 2, 1, 0, 2])
    bounds = [0] + seg_lens.cumsum(0).tolist()
    ref = segment_gemm_ref(x, weights, bounds, index, column_major)
    splits = []
    real = kernels.launch
    monkeypatch.setattr(kernels, "launch", lambda *a, **k: splits.append(a[7]["SPLIT_K"]) or real(*a, **k))
    for workspace_bytes, want_split in ((1 << 20, 4), (4096, 1)):
        out = torch.full((rows, d_out), float("nan"), dtype=DTYPE, device=DEVICE)
        out[-4:] = 7.0
        workspace = torch.full((workspace_bytes,), 99, dtype=torch.int8, device=DEVICE)
        aiter_ext.SegmentGEMMWrapper(workspace).run(x, weights, 6, column_major, out=out, seg_lens=seg_lens.to(DEVICE),
                                                    weight_indices=index.to(DEVICE))
        assert splits[-1] == want_split
        assert_close(out[:-4], ref[:-4], DTYPE, name=f"split {want_split}")
        assert bool((out[-4:] == 7.0).all()), "rows outside the segments were written"
    aiter_ext.segment_gemm(x, weights, 6, column_major, seg_lens=seg_lens, weight_indices=index)
    assert splits[-1] == 1


def test_split_choice_on_an_h100_sized_gpu():
    """kernels.split_k at the benchmark's shapes on 132 compute units: a rank-16 shrink of 4096 tokens splits
    8 ways (17.2 us on an H100, 26.6 unsplit); rank 64 only 2 through slabs (split 8, their traffic made it
    lose to no split), 8 with atomics; a product of many tiles and an expand (K = the rank) do not split;
    a tuned SPLIT_K wins where it fits d_in."""
    from aiter_ext.ops.segment_gemm.kernels import split_k

    assert split_k(4096, 4096, 16, {}, 132, slabs=True) == 8
    assert split_k(4096, 4096, 64, {}, 132, slabs=True) == 2
    assert split_k(4096, 4096, 64, {}, 132) == 8
    assert split_k(256, 4096, 16, {}, 132, slabs=True) == 8
    assert split_k(4096, 4096, 4096, {}, 132, slabs=True) == 1
    assert split_k(4096, 16, 4096, {}, 132, slabs=True) == 1
    assert split_k(4096, 4096, 16, {"SPLIT_K": 2}, 132, slabs=True) == 2
    assert split_k(4096, 4096, 16, {"SPLIT_K": 128}, 132, slabs=True) == 1


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs: the GPU run")
def test_calls_replay_in_a_cuda_graph():
    """Graph capture (serving engines replay LoRA layers in graphs): FlashInfer's form with device seg_lens and a
    K split through the workspace (two launches), and vLLM's LoRA shrink (split, one launch for three
    slices) then expand. Replays after new inputs are written in place give the eager results exactly, and
    agree with the fp32 reference."""
    gen = torch.Generator().manual_seed(53)
    x = torch.randn(4096, 4096, generator=gen).to(DTYPE).to(DEVICE)
    weights = (torch.randn(8, 16, 4096, generator=gen) / 64).to(DTYPE).to(DEVICE)
    seg_lens = torch.tensor([512, 0, 1, 1023, 512, 1536, 256, 200], device=DEVICE)
    wrapper = aiter_ext.SegmentGEMMWrapper(torch.empty(128 << 20, dtype=torch.int8, device=DEVICE))
    run = lambda: wrapper.run(x, weights, 8, True, seg_lens=seg_lens)  # noqa: E731
    run()  # compile outside the capture
    mapping = torch.randint(-1, 4, (64,), generator=gen)
    meta = _vllm_metadata(mapping, 4)
    h = torch.randn(64, 4096, generator=gen).to(DTYPE).to(DEVICE)
    lora_a = [(torch.randn(4, 16, 4096, generator=gen) / 64).to(DTYPE).to(DEVICE) for _ in range(3)]
    lora_b = [(torch.randn(4, n, 16, generator=gen) / 4).to(DTYPE).to(DEVICE) for n in (4096, 1024, 1024)]
    shrunk = torch.zeros(3, 64, 16, device=DEVICE)
    layer_out = torch.zeros(64, 6144, dtype=DTYPE, device=DEVICE)

    def lora():
        aiter_ext.lora_shrink(h, lora_a, shrunk, *meta, torch.tensor([False]), torch.tensor([4]), 0.5)
        aiter_ext.lora_expand(shrunk, lora_b, layer_out, *meta, torch.tensor([False]), torch.tensor([4]),
                              offset_start=0, add_inputs=True)

    lora()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
        lora()
    x.copy_(torch.randn(x.shape, generator=gen).to(DTYPE))
    h.copy_(torch.randn(h.shape, generator=gen).to(DTYPE))
    layer_out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    replayed = (out.clone(), shrunk.clone(), layer_out.clone())
    layer_out.zero_()
    lora()
    assert torch.equal(replayed[0], run())  # the slabs are summed in a fixed order
    # the shrink's splits add with atomics, in any order: equal to rounding
    assert_close(replayed[1], shrunk, torch.float32, name="shrink replayed")
    assert_close(replayed[2], layer_out.float(), DTYPE, name="expand replayed")
    bounds = [0] + seg_lens.cumsum(0).tolist()
    assert_close(replayed[0][:bounds[-1]], segment_gemm_ref(x, weights, bounds, None, True)[:bounds[-1]], DTYPE,
                 name="split product replayed")


def test_many_segments_past_one_search_chunk():
    """150 segments (the kernel finds a tile's segment 64 segments at a time), many empty, weights reused."""
    gen = torch.Generator().manual_seed(8)
    seg_lens = torch.randint(0, 4, (150,), generator=gen) * torch.randint(0, 2, (150,), generator=gen)
    seg_lens[-1] = 70  # the last chunk's last segment, longer than a tile
    x = torch.randn(int(seg_lens.sum()), 32, generator=gen).to(DTYPE).to(DEVICE)
    weights = (torch.randn(5, 32, 16, generator=gen) / 6).to(DTYPE).to(DEVICE)
    index = torch.randint(0, 5, (150,), generator=gen)
    out = torch.full((x.shape[0], 16), float("nan"), dtype=DTYPE, device=DEVICE)
    aiter_ext.segment_gemm(x, weights, 150, False, out=out, seg_lens=seg_lens.to(DEVICE), weight_indices=index.to(DEVICE))
    bounds = [0] + seg_lens.cumsum(0).tolist()
    assert_close(out, segment_gemm_ref(x, weights, bounds, index, False), DTYPE, name="150 segments")


def test_segment_lengths_stay_exact():
    """FlashInfer converts seg_lens through x's dtype: in bf16, 257 rows would become 256."""
    x = torch.randn(257 + 3, 32).to(DTYPE).to(DEVICE)
    weights = torch.randn(2, 32, 16).to(DTYPE).to(DEVICE)
    out = aiter_ext.segment_gemm(x, weights, 2, False, seg_lens=torch.tensor([257, 3], device=DEVICE))
    ref = segment_gemm_ref(x, weights, [0, 257, 260], None, False)
    assert_close(out, ref, DTYPE, name="257-row segment")


def test_bad_arguments_name_themselves_and_write_nothing():
    x = torch.randn(10, 32).to(DTYPE).to(DEVICE)
    weights = torch.randn(2, 32, 16).to(DTYPE).to(DEVICE)
    w = aiter_ext.SegmentGEMMWrapper(_ws())
    out = torch.full((10, 16), 3.0, dtype=DTYPE, device=DEVICE)
    cases = [
        (dict(seg_lens=None, seg_indptr=None), "seg_lens or seg_indptr"),
        (dict(seg_lens=torch.tensor([4, 4, 2])), "seg_lens must have 2"),
        (dict(seg_indptr=torch.tensor([0, 6, 3])), "nondecreasing"),
        (dict(seg_indptr=torch.tensor([0, 6, 11])), "within x's 10 rows"),
        (dict(seg_lens=torch.tensor([5, 5]), weight_indices=torch.tensor([0, 2])), r"weight_indices must lie in \[0, 2\)"),
        (dict(seg_lens=torch.tensor([5, 5]), weight_indices=torch.tensor([0])), "weight_indices must have"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            w.run(x, weights, 2, False, out=out, **kwargs)
    with pytest.raises(ValueError, match="x has 32 columns"):
        w.run(x, weights, 2, True, out=out, seg_lens=torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="without weight_indices"):
        w.run(x, weights, 3, False, out=out, seg_lens=torch.tensor([5, 3, 2]))
    with pytest.raises(ValueError, match="weights must be contiguous"):
        w.run(x, weights.transpose(1, 2).contiguous().transpose(1, 2), 2, False, out=out, seg_lens=torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="backend"):
        aiter_ext.SegmentGEMMWrapper(_ws(), backend="cutlass")
    assert bool((out == 3.0).all()), "a refused call wrote out"


def test_device_indices_past_the_weights_stay_inside_them():
    """Device weight indices are not read back (that would be a sync): one past the weights is clamped to
    the last weight in the kernel, so nothing outside the weights is read."""
    from aiter_ext.ops.segment_gemm import kernels

    x = torch.randn(8, 32).to(DTYPE).to(DEVICE)
    weights = torch.randn(2, 32, 16).to(DTYPE).to(DEVICE)
    indptr = torch.tensor([0, 4, 8], device=DEVICE)
    out = torch.full((8, 16), float("nan"), dtype=DTYPE, device=DEVICE)
    # the kernel as the API launches it for device indices (on the CPU the API checks them instead)
    kernels.launch(x, weights, out, indptr, torch.tensor([0, 5], device=DEVICE), 2, False, {})
    assert_close(out, segment_gemm_ref(x, weights, [0, 4, 8], [0, 1], False), DTYPE, name="clamped index")


# --------------------------------------------------------------------------------------------------
# vLLM's punica-style lora_shrink / lora_expand


def _vllm_metadata(mapping: torch.Tensor, max_loras: int):
    """vLLM's LoRA kernel metadata for ``mapping`` (a token's adapter, -1 none), as its LoRAKernelMeta builds
    it: tokens sorted by adapter, and per run its adapter (padded with -1), token count and start."""
    order = torch.sort(mapping, stable=True).indices
    ids, counts = torch.unique(mapping, sorted=True, return_counts=True)
    lora_ids = torch.full((max_loras + 1,), -1, dtype=torch.int32)
    per_lora = torch.zeros(max_loras + 1, dtype=torch.int32)
    lora_ids[:ids.numel()] = ids.to(torch.int32)
    per_lora[:ids.numel()] = counts.to(torch.int32)
    start = torch.zeros(max_loras + 2, dtype=torch.int32)
    start[1:] = per_lora.cumsum(0)
    return [t.to(DEVICE) for t in (mapping, order, per_lora, start, lora_ids)]


def test_lora_shrink_and_expand_match_per_token_matmuls():
    gen = torch.Generator().manual_seed(21)
    tokens, hidden, rank, max_loras = 37, 64, 16, 4
    slices = (48, 32, 32)  # fused QKV: q then k then v columns
    mapping = torch.tensor([-1, 2, 0, 2, 3, -1, 1, 0] * 4 + [2, 2, -1, 0, 3])  # unordered, repeated, none
    meta = _vllm_metadata(mapping, max_loras)
    x = torch.randn(tokens, hidden, generator=gen).to(DTYPE).to(DEVICE)
    lora_a = [(torch.randn(max_loras, rank, hidden, generator=gen) / hidden ** 0.5).to(DTYPE).to(DEVICE)
              for _ in slices]
    lora_b = [(torch.randn(max_loras, h, rank, generator=gen) / rank ** 0.5).to(DTYPE).to(DEVICE) for h in slices]
    shrunk = torch.full((len(slices), tokens, rank), float("nan"), dtype=torch.float32, device=DEVICE)
    no_lora, active = torch.tensor([False]), torch.tensor([4])
    aiter_ext.lora_shrink(x, lora_a, shrunk, *meta, no_lora, active, 0.5)
    want = torch.zeros(len(slices), tokens, rank, device=DEVICE)
    for s in range(len(slices)):
        for t in range(tokens):
            if mapping[t] >= 0:
                want[s, t] = 0.5 * x[t].float() @ lora_a[s][mapping[t]].float().t()
    assert_close(shrunk, want, DTYPE, name="lora_shrink")
    offset = 8
    base = torch.randn(tokens, offset + sum(slices) + 4, generator=gen).to(DTYPE).to(DEVICE)
    for add in (False, True):
        out = base.clone()
        aiter_ext.lora_expand(shrunk, lora_b, out, *meta, no_lora, active, offset_start=offset, add_inputs=add)
        ref = base.float().clone()
        col = offset
        for s, h in enumerate(slices):
            for t in range(tokens):
                if mapping[t] >= 0:
                    prod = shrunk[s, t].to(DTYPE).float() @ lora_b[s][mapping[t]].float().t()
                    ref[t, col:col + h] = prod + (ref[t, col:col + h] if add else 0)
            col += h
        assert_close(out, ref, DTYPE, name=f"lora_expand(add_inputs={add})")
    # no adapter anywhere: both leave their outputs alone
    untouched = base.clone()
    aiter_ext.lora_expand(shrunk, lora_b, untouched, *meta, torch.tensor([True]), active)
    assert torch.equal(untouched, base)


def test_lora_ops_trace_under_torch_compile_fullgraph():
    """vLLM compiles its models with its LoRA ops inside: ours are custom ops (aiter_ext::lora_shrink/expand), so
    a fullgraph trace goes through them, with vLLM's tuple of weights, and gives the eager result."""
    gen = torch.Generator().manual_seed(5)
    tokens, hidden, rank, max_loras = 19, 64, 8, 3
    mapping = torch.tensor([0, 2, -1, 1, 2] * 3 + [1, 0, -1, 2])
    meta = _vllm_metadata(mapping, max_loras)
    x = torch.randn(tokens, hidden, generator=gen).to(DTYPE).to(DEVICE)
    lora_a = tuple((torch.randn(max_loras, 1, rank, hidden, generator=gen) / 8).to(DTYPE).to(DEVICE) for _ in range(2))
    lora_b = tuple((torch.randn(max_loras, 1, 32, rank, generator=gen) / 3).to(DTYPE).to(DEVICE) for _ in range(2))
    flags = torch.tensor([False]), torch.tensor([3])

    def layer(x, y):
        shrunk = torch.empty(2, tokens, rank, dtype=torch.float32, device=x.device)
        aiter_ext.lora_shrink(x, lora_a, shrunk, *meta, *flags, 0.25)
        aiter_ext.lora_expand(shrunk, lora_b, y, *meta, *flags, offset_start=0, add_inputs=True)
        return y

    base = torch.randn(tokens, 64, generator=gen).to(DTYPE).to(DEVICE)
    eager = layer(x, base.clone())
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")(x, base.clone())
    assert torch.equal(compiled, eager) and not torch.equal(eager, base)


def test_lora_shrink_split_over_k_adds_the_splits(monkeypatch):
    """A few tokens over a long hidden size: the shrink splits K (kernels.split_k) and the splits add into the
    fp32 buffer with atomics; the result is the unsplit product. Also the kernel's split form directly, into
    a buffer that already holds values (the splits add to them), and its refusal of a 16-bit output without
    a workspace."""
    from aiter_ext.core.arch import device_info
    from aiter_ext.ops.segment_gemm import kernels

    monkeypatch.setenv("AITER_EXT_CU_NUM", "32")  # as on a GPU: too few row tiles to fill its CUs
    gen = torch.Generator().manual_seed(41)
    tokens, hidden, rank, max_loras = 9, 1024, 16, 3
    assert kernels.split_k(tokens, hidden, rank, {}, device_info().cu_num) == 4
    mapping = torch.tensor([2, 0, -1, 2, 1, 0, 0, 2, -1])
    meta = _vllm_metadata(mapping, max_loras)
    x = torch.randn(tokens, hidden, generator=gen).to(DTYPE).to(DEVICE)
    lora_a = [(torch.randn(max_loras, rank, hidden, generator=gen) / 32).to(DTYPE).to(DEVICE) for _ in range(2)]
    shrunk = torch.full((2, tokens, rank), float("nan"), device=DEVICE)
    aiter_ext.lora_shrink(x, lora_a, shrunk, *meta, torch.tensor([False]), torch.tensor([3]), 0.5)
    want = torch.zeros(2, tokens, rank, device=DEVICE)
    for s in range(2):
        for t in range(tokens):
            if mapping[t] >= 0:
                want[s, t] = 0.5 * x[t].float() @ lora_a[s][mapping[t]].float().t()
    assert_close(shrunk, want, DTYPE, name="split-K lora_shrink")
    weights = (torch.randn(2, rank, hidden, generator=gen) / 32).to(DTYPE).to(DEVICE)
    y = torch.full((tokens, rank), 1.5, device=DEVICE)
    kernels.launch(x, weights, y, torch.tensor([0, 4, 9], device=DEVICE), None, 2, True,
                   {"BLOCK_K": 64, "SPLIT_K": 8})
    ref = segment_gemm_ref(x, weights, [0, 4, 9], None, True).float() + 1.5
    assert_close(y, ref, DTYPE, name="split-K into a filled buffer")
    with pytest.raises(ValueError, match="SPLIT_K=8 into a torch.* y needs one slice and a workspace"):
        kernels.launch(x, weights, y.to(DTYPE), torch.tensor([0, 4, 9], device=DEVICE), None, 2, True,
                       {"BLOCK_K": 64, "SPLIT_K": 8})


def test_lora_shrink_of_fused_slices_is_one_launch(monkeypatch):
    """Contiguous slices (fused QKV's lora_a) go in one launch through an address table, made once per set of
    weights; a non-contiguous slice makes the call launch slice by slice. Both give the per-slice products."""
    from aiter_ext.ops.segment_gemm import kernels

    launches = []
    real = kernels.launch
    monkeypatch.setattr(kernels, "launch", lambda *a, **k: launches.append(k.get("weight_table")) or real(*a, **k))
    gen = torch.Generator().manual_seed(43)
    mapping = torch.tensor([1, 0, -1, 1, 1, 0, 2])
    meta = _vllm_metadata(mapping, 3)
    x = torch.randn(7, 64, generator=gen).to(DTYPE).to(DEVICE)
    flags = torch.tensor([False]), torch.tensor([3])
    lora_a = [(torch.randn(3, 8, 64, generator=gen) / 8).to(DTYPE).to(DEVICE) for _ in range(3)]
    strided = [lora_a[0], lora_a[1].transpose(1, 2).contiguous().transpose(1, 2), lora_a[2]]  # same values
    for weights, expected in ((lora_a, 1), (lora_a, 1), (strided, 3)):
        out = torch.full((3, 7, 8), float("nan"), device=DEVICE)
        launches.clear()
        aiter_ext.lora_shrink(x, weights, out, *meta, *flags, 1.0)
        assert len(launches) == expected and all((t is None) == (expected == 3) for t in launches)
        for s, wa in enumerate(lora_a):
            want = torch.stack([x[t].float() @ wa[mapping[t]].float().t() if mapping[t] >= 0
                                else torch.zeros(8, device=DEVICE) for t in range(7)])
            assert_close(out[s], want.to(DEVICE), DTYPE, name=f"slice {s}")
        if expected == 1:
            table = launches[0]
    aiter_ext.lora_shrink(x, lora_a, out, *meta, *flags, 1.0)
    assert launches[-1] is table, "the address table is made once per set of weights"


def test_ranked_lora_as_sglang_calls_it():
    """SGLang's LoRA forms (ranked.py): pool slots of max rank 16 holding adapters of ranks 16, 0, 8 and 4, their
    stacked QKV A packed by rank (slice j at rows j*r) with stale rows past 3r, B with stale columns past r;
    segments of tokens gathered through a permutation, one empty. Each slice's B adds scalings[slot] * its
    rank's columns of A's output into a column slice of the base output; tokens of the rank-0 slot keep the
    base exactly. Against per-token fp32 products. On the GPU at Llama-3.1-8B's QKV sizes."""
    from aiter_ext.ops.segment_gemm import ranked

    gen = torch.Generator().manual_seed(71)
    tokens, hidden, max_r, widths = (23, 64, 16, (32, 16, 16)) if not ON_GPU else (257, 4096, 16, (4096, 1024, 1024))
    ranks = torch.tensor([16, 0, 8, 4], dtype=torch.int32)
    scalings = torch.tensor([0.5, 2.0, 1.0, 0.25])
    x = torch.randn(tokens, hidden, generator=gen).to(DTYPE).to(DEVICE)
    a_pool = (torch.randn(4, 3 * max_r, hidden, generator=gen) / hidden ** 0.5).to(DTYPE).to(DEVICE)
    b_pool = (torch.randn(4, sum(widths), max_r, generator=gen) / 4).to(DTYPE).to(DEVICE)
    perm = torch.randperm(tokens, generator=gen).to(torch.int32)
    bounds = [0, 5, 5, 12, 17, 23] if not ON_GPU else [0, 60, 60, 140, 200, 257]
    seg_indptr = torch.tensor(bounds, dtype=torch.int32)
    slots = torch.tensor([2, 0, 1, 3, 0], dtype=torch.int32)
    tables = [t.to(DEVICE) for t in (seg_indptr, slots, ranks)]
    a_out = ranked.lora_a(x, a_pool, *tables, 5, permutation=perm.to(DEVICE))
    base = torch.randn(tokens, sum(widths), generator=gen).to(DTYPE).to(DEVICE)
    out = base.clone()
    offsets = [0, widths[0], widths[0] + widths[1], sum(widths)]
    for j in range(3):
        ranked.lora_b(a_out, b_pool[:, offsets[j]:offsets[j + 1]], out[:, offsets[j]:offsets[j + 1]], *tables,
                      scalings.to(DEVICE), 5, permutation=perm.to(DEVICE), x_slice=j)
    want = base.float().clone()
    for seg in range(5):
        slot = int(slots[seg])
        r = int(ranks[slot])
        for pos in range(int(seg_indptr[seg]), int(seg_indptr[seg + 1])):
            t = int(perm[pos])
            if r == 0:
                continue
            a_row = x[t].float() @ a_pool[slot].float().t()
            assert_close(a_out[t, :3 * r], a_row[:3 * r], DTYPE, name=f"A output, token {t}")
            for j in range(3):
                h = a_out[t, j * r:(j + 1) * r].float()
                want[t, offsets[j]:offsets[j + 1]] += float(scalings[slot]) * (
                    h @ b_pool[slot, offsets[j]:offsets[j + 1], :r].float().t())
    assert_close(out, want, DTYPE, name="B added into the base")
    no_adapter = perm[bounds[2]:bounds[3]].long()  # the rank-0 slot's tokens: untouched
    assert torch.equal(out[no_adapter], base[no_adapter])
    q = slice(0, widths[0])
    with pytest.raises(ValueError, match="x_slice=3 of max rank 16 needs x of >= 64 columns"):
        ranked.lora_b(a_out, b_pool[:, q], out[:, q], *tables, scalings.to(DEVICE), 5, x_slice=3)
    with pytest.raises(TypeError, match="scalings must be fp32"):
        ranked.lora_b(a_out, b_pool[:, q], out[:, q], *tables, scalings.to(DEVICE).double(), 5)


def test_lora_ops_refuse_bad_metadata():
    x = torch.randn(4, 32).to(DTYPE).to(DEVICE)
    a = [torch.randn(2, 8, 32).to(DTYPE).to(DEVICE)]
    out = torch.zeros(1, 4, 8, device=DEVICE)
    meta = _vllm_metadata(torch.tensor([0, 1, -1, 0]), 2)
    with pytest.raises(ValueError, match="token_lora_mapping must have one entry per token"):
        aiter_ext.lora_shrink(x, a, out, meta[0][:3], *meta[1:], torch.tensor([False]), torch.tensor([2]), 1.0)
    with pytest.raises(ValueError, match=r"lora_a_weights\[0\] must be"):
        aiter_ext.lora_shrink(x, [a[0][:, :4]], out, *meta, torch.tensor([False]), torch.tensor([2]), 1.0)


def test_tuner_writes_a_measured_row(tmp_path):
    """`aiter-ext tune segment_gemm` plumbing on the CPU interpreter (a scratch file, not a tuned row): every
    candidate is checked against the reference before it is timed, and the fastest passing one is written."""
    import json

    from aiter_ext.core.tuner import tune
    from aiter_ext.ops.segment_gemm.backends import TRITON_TUNE_CONFIGS

    untuned = tmp_path / "u.csv"
    untuned.write_text("num_rows,d_in,d_out,dtype\n20,32,16,fp16\n")
    lines = []
    rows = tune("segment_gemm", untuned, tmp_path / "t.csv", backends=["triton"], allow_cpu=True, log=lines.append)
    assert len(rows) == 1 and float(rows[0]["err"]) <= 1.0
    assert json.loads(rows[0]["config"]) in TRITON_TUNE_CONFIGS
    assert not any("REJECTED" in line or "failed" in line for line in lines), [l for l in lines if "REJECTED" in l or "failed" in l]


def test_lora_ops_launch_the_tuned_config(monkeypatch):
    """lora_shrink/lora_expand take their tiles from the segment-GEMM tuned CSV's bucket (as segment_gemm does)."""
    import types

    from aiter_ext.ops.segment_gemm import backends, kernels

    tuned = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 64, "num_warps": 4}
    asked, used = [], []
    monkeypatch.setattr(backends.SEGMENT_GEMM, "select",
                        lambda call, backend=None: asked.append(call) or types.SimpleNamespace(config=tuned))
    real = kernels.launch
    monkeypatch.setattr(kernels, "launch", lambda *a, **k: used.append(a[7]) or real(*a, **k))
    x = torch.randn(6, 32).to(DTYPE).to(DEVICE)
    meta = _vllm_metadata(torch.tensor([0, 1, -1, 0, 1, 1]), 2)
    out = torch.zeros(1, 6, 16, device=DEVICE)
    aiter_ext.lora_shrink(x, [torch.randn(2, 16, 32).to(DTYPE).to(DEVICE)], out, *meta, torch.tensor([False]),
                          torch.tensor([2]), 1.0)
    # the fp32 shrink buffer adds the K split (1 here: 32 is a single K step) to the tuned tiles
    assert used == [{**tuned, "SPLIT_K": 1}] and asked[0]["num_rows"] == 6
    assert (asked[0]["d_in"], asked[0]["d_out"]) == (32, 16)


def test_lora_ops_take_a_tuned_k_split_only_where_it_fits(monkeypatch):
    """A tuned bucket's row may come from another shape: the H100's row for 4096 x 4096 -> 16 splits K in 4,
    and was applied to rank-16 expands (K = 16) and a 32-wide shrink, which failed on the GPU. The split is
    re-decided per launch: kept for an fp32 shrink whose K holds it, else 1; the results stay right."""
    import types

    from aiter_ext.ops.segment_gemm import backends, kernels

    tuned = {"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 4, "SPLIT_K": 4}
    monkeypatch.setattr(backends.SEGMENT_GEMM, "select", lambda call, backend=None: types.SimpleNamespace(config=tuned))
    used = []
    real = kernels.launch
    monkeypatch.setattr(kernels, "launch", lambda *a, **k: used.append(a[7]["SPLIT_K"]) or real(*a, **k))
    gen = torch.Generator().manual_seed(41)
    mapping = torch.tensor([0, 1, -1, 0, 1, 1])
    meta = _vllm_metadata(mapping, 2)
    flags = (torch.tensor([False]), torch.tensor([2]))
    for hidden, split in ((64, 4), (32, 1)):  # 64 = 4 K steps of 16; 32 holds only 2
        x = torch.randn(6, hidden, generator=gen).to(DTYPE).to(DEVICE)
        wa = (torch.randn(2, 16, hidden, generator=gen) / hidden ** 0.5).to(DTYPE).to(DEVICE)
        shrunk = torch.full((1, 6, 16), float("nan"), device=DEVICE)
        used.clear()
        aiter_ext.lora_shrink(x, [wa], shrunk, *meta, *flags, 1.0)
        assert used == [split]
        want = torch.stack([x[t].float() @ wa[m].float().t() if m >= 0 else torch.zeros(16, device=DEVICE)
                            for t, m in enumerate(mapping.tolist())])
        assert_close(shrunk[0], want, DTYPE, name=f"lora_shrink hidden {hidden}")
    wb = (torch.randn(2, 24, 16, generator=gen) / 4).to(DTYPE).to(DEVICE)
    out = torch.full((6, 24), float("nan"), dtype=DTYPE, device=DEVICE)
    used.clear()
    aiter_ext.lora_expand(shrunk.to(DTYPE), [wb], out, *meta, *flags)  # a bf16 output takes no atomics
    assert used == [1]
    want = torch.stack([shrunk[0, t].to(DTYPE).float() @ wb[m].float().t() if m >= 0 else torch.zeros(24, device=DEVICE)
                        for t, m in enumerate(mapping.tolist())])
    rows = mapping >= 0  # rows of no adapter are left as they were
    assert_close(out[rows], want[rows], DTYPE, name="lora_expand")


def test_device_tables_that_disagree_with_x_stay_inside_every_tensor():
    """Device segment tables are not read back, so the kernel bounds them: a segment starting before x's
    rows starts at its first, one ending past them stops at its last row, a weight index past the weights takes the last weight, a token index past x
    takes its last row. The output is a column slice of a guarded buffer (as LoRA expand writes QKV
    slices): nothing around it changes."""
    from aiter_ext.ops.segment_gemm import kernels

    gen = torch.Generator().manual_seed(31)
    x = torch.randn(8, 32, generator=gen).to(DTYPE).to(DEVICE)
    weights = torch.randn(2, 32, 16, generator=gen).to(DTYPE).to(DEVICE)
    guarded = torch.full((8 + 4, 40), 9.0, dtype=DTYPE, device=DEVICE)
    y = guarded[2:10, 8:24]  # 8 rows x 16 columns, guard rows above and below, guard columns either side
    indptr = torch.tensor([-2, 5, 100], device=DEVICE)  # the segments claim rows before and past x
    kernels.launch(x, weights, y, indptr, torch.tensor([1, 7], device=DEVICE), 2, False, {})
    ref = segment_gemm_ref(x, weights, [0, 5, 8], [1, 1], False)
    assert_close(y, ref, DTYPE, name="bounded segments")
    inside = torch.zeros_like(guarded, dtype=torch.bool)
    inside[2:10, 8:24] = True
    assert bool((guarded[~inside] == 9.0).all()), "the kernel wrote outside its output slice"
    # the same through lengths (FlashInfer's seg_lens, summed in the kernel): a negative length is empty, a
    # length past x's rows stops at its last row
    y.fill_(0)
    kernels.launch(x, weights, y, torch.tensor([3, -4, 2, 100], device=DEVICE), torch.tensor([0, 1, 1, 0], device=DEVICE),
                   4, False, {}, seg_lens=True)
    assert_close(y, segment_gemm_ref(x, weights, [0, 3, 3, 5, 8], [0, 1, 1, 0], False), DTYPE, name="bounded lengths")
    assert bool((guarded[~inside] == 9.0).all()), "the kernel wrote outside its output slice"
    # gathered rows (the LoRA form): a token index past x reads and writes its last row only
    y2 = guarded[2:10, 8:24]
    y2.fill_(0)
    kernels.launch(x, weights, y2, torch.tensor([0, 2], device=DEVICE), torch.tensor([0], device=DEVICE), 1, False, {},
                   row_index=torch.tensor([3, 50], device=DEVICE), skip_negative=True)
    want = torch.zeros(8, 16, device=DEVICE)
    want[3] = x[3].float() @ weights[0].float()
    want[7] = x[7].float() @ weights[0].float()
    assert_close(y2, want, DTYPE, name="clamped token index")
    assert bool((guarded[~inside] == 9.0).all()), "the kernel wrote outside its output slice"
