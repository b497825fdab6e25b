"""aiter_ext's dense LoRA GEMMs inside SGLang 0.5.23's triton LoRA backend (aiter_ext/integrations/sglang/lora.py),
against SGLang's own kernels and an fp32 reference, on CPU (both on Triton's interpreter). Runs in the
serving contract environment (.ci/serving_env.sh); skipped elsewhere."""

import pytest
import torch
from serving_setup import last_line_in_fresh_process, sglang  # noqa: F401  (the fixture; also fakes the MI300X)

from aiter_ext.core.testing import assert_close

DTYPE = torch.float16  # the interpreter's dots are right in fp16 (not bf16)
MAX_R, HIDDEN, TOKENS = 16, 64, 23
RANKS = [16, 0, 8, 4]  # pool slots; slot 1 is "no adapter"
SCALINGS = [0.5, 2.0, 1.0, 0.25]


def test_the_flag_puts_aiter_ext_behind_lora_backend_triton(sglang):
    """In a fresh process each, as SGLang's workers load plugins: AITER_EXT_LORA=1 registers the backend over
    'triton', 0 leaves SGLang's."""
    code = ("from sglang.srt.plugins import load_plugins; load_plugins(); "
            "from sglang.srt.lora.backend.lora_registry import get_backend_from_name; "
            "print(get_backend_from_name('triton').__name__)")
    assert last_line_in_fresh_process(code, AITER_EXT_LORA="1") == "AiterExtLoRABackend"
    assert last_line_in_fresh_process(code, AITER_EXT_LORA="0") == "TritonLoRABackend"


@pytest.fixture()
def backends(sglang):
    """(aiter_ext's, SGLang's) backend over one batch: 5 segments of tokens gathered through a permutation
    (one empty, one on the rank-0 slot)."""
    from sglang.srt.lora.backend.triton_backend import TritonLoRABackend
    from sglang.srt.lora.utils import LoRABatchInfo

    from aiter_ext.integrations.sglang.lora import backend_class

    gen = torch.Generator().manual_seed(5)
    info = LoRABatchInfo(use_cuda_graph=False, bs=5, num_segments=5,
                         seg_indptr=torch.tensor([0, 5, 5, 12, 17, 23], dtype=torch.int32),
                         weight_indices=torch.tensor([2, 0, 1, 3, 0], dtype=torch.int32),
                         lora_ranks=torch.tensor(RANKS, dtype=torch.int32), scalings=torch.tensor(SCALINGS),
                         max_len=7, seg_lens=torch.tensor([5, 0, 7, 5, 6], dtype=torch.int32),
                         permutation=torch.randperm(TOKENS, generator=gen).to(torch.int32))
    ours, theirs = backend_class()(4, torch.device("cpu")), TritonLoRABackend(4, torch.device("cpu"))
    for b in (ours, theirs):
        b.batch_info = info
    return ours, theirs, info, gen


def _pools(gen, slices, widths):
    """SGLang's pool buffers: A packed by each slot's rank with stale rows past it, B with stale columns."""
    a = (torch.randn(4, slices * MAX_R, HIDDEN, generator=gen) / 8).to(DTYPE)
    b = (torch.randn(4, sum(widths), MAX_R, generator=gen) / 4).to(DTYPE)
    return a, b


def _reference(x, a_pool, b_pool, base, info, offsets):
    """base + scalings[slot] * (x @ A_j^T) @ B_j^T per slice j, each slot's rank r: A_j = A rows [j r, (j+1) r),
    B_j = B[offsets j..j+1, :r]; tokens of rank-0 slots keep the base."""
    want = base.float().clone()
    for seg in range(info.bs):
        slot = int(info.weight_indices[seg])
        r = RANKS[slot]
        for pos in range(int(info.seg_indptr[seg]), int(info.seg_indptr[seg + 1])):
            t = int(info.permutation[pos])
            for j in range(len(offsets) - 1):
                if r == 0:
                    continue
                h = (x[t].float() @ a_pool[slot, j * r:(j + 1) * r].float().t()).to(DTYPE).float()
                want[t, offsets[j]:offsets[j + 1]] += SCALINGS[slot] * (
                    h @ b_pool[slot, offsets[j]:offsets[j + 1], :r].float().t())
    return want


def test_qkv_lora_matches_sglangs_kernels(backends):
    ours, theirs, info, gen = backends
    widths, offsets = (32, 16, 16), [0, 32, 48, 64]
    a_pool, b_pool = _pools(gen, 3, widths)
    x = torch.randn(TOKENS, HIDDEN, generator=gen).to(DTYPE)
    base = torch.randn(TOKENS, sum(widths), generator=gen).to(DTYPE)
    kw = dict(output_offset=torch.tensor(offsets, dtype=torch.int32), max_qkv_out_dim=32,
              output_offset_cpu=torch.tensor(offsets, dtype=torch.int32))
    got = ours.run_qkv_lora(x, a_pool, b_pool, base_output=base.clone(), **kw)
    sglangs = theirs.run_qkv_lora(x, a_pool, b_pool, base_output=base.clone(), **kw)
    want = _reference(x, a_pool, b_pool, base, info, offsets)
    assert_close(got, want, DTYPE, name="aiter_ext's QKV LoRA")
    assert_close(sglangs, want, DTYPE, name="SGLang's QKV LoRA (the reference's reading of it)")
    no_adapter = info.permutation[5:12].long()
    assert torch.equal(got[no_adapter], base[no_adapter])
    # no base output: SGLang's zeros, the LoRA term alone
    alone = ours.run_qkv_lora(x, a_pool, b_pool, **kw)
    assert_close(alone, want - base.float(), DTYPE, name="QKV LoRA without a base")


def test_gate_up_and_the_single_gemms_match_sglangs_kernels(backends):
    ours, theirs, info, gen = backends
    a_pool, b_pool = _pools(gen, 2, (48, 48))
    x = torch.randn(TOKENS, HIDDEN, generator=gen).to(DTYPE)
    base = torch.randn(TOKENS, 96, generator=gen).to(DTYPE)
    got = ours.run_gate_up_lora(x, a_pool, b_pool, base_output=base.clone())
    want = _reference(x, a_pool, b_pool, base, info, [0, 48, 96])
    assert_close(got, want, DTYPE, name="aiter_ext's gate/up LoRA")
    assert_close(theirs.run_gate_up_lora(x, a_pool, b_pool, base_output=base.clone()), want, DTYPE,
                 name="SGLang's gate/up LoRA")
    # one slice: run_lora_a_sgemm then run_lora_b_sgemm (SGLang's forward_with_base), A's used columns and B
    a1, b1 = a_pool[:, :MAX_R].contiguous(), b_pool[:, :48].contiguous()
    h_ours, h_theirs = ours.run_lora_a_sgemm(x, a1), theirs.run_lora_a_sgemm(x, a1)
    for seg in range(info.bs):
        r = RANKS[int(info.weight_indices[seg])]
        rows = info.permutation[int(info.seg_indptr[seg]):int(info.seg_indptr[seg + 1])].long()
        assert_close(h_ours[rows, :r], h_theirs[rows, :r], DTYPE, name="LoRA A, the rank's columns")
    out = ours.run_lora_b_sgemm(h_ours, b1, base_output=base[:, :48].clone())
    assert_close(out, _reference(x, a1, b1, base[:, :48], info, [0, 48]), DTYPE, name="LoRA B")
