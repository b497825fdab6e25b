"""The ``aiter`` attention backend without ROCm.

``import aiter`` needs ROCm, so two things are tested here instead of running AITER:
1. the contract: the installed ``amd-aiter`` source (read with ``ast``, never imported) still has
   ``mha_batch_prefill_func`` with the arguments the backend passes, returns the LSE it reads, and lays
   it out as ``[num_heads, total_q]``;
2. the adapter: with a stand-in ``aiter`` package that implements that contract with the fp32
   reference (natural-log LSE, token-level page table), the backend's page-to-token expansion, K/V
   views and LSE conversion must reproduce FlashInfer's outputs and base-2 LSE.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from attention_utils import indptr_of, random_paged_kv  # noqa: E402
from conftest import DEVICE  # noqa: E402

import aiter_ext  # noqa: E402
from aiter_ext.core import backend as backend_mod  # noqa: E402
from aiter_ext.core.testing import assert_close  # noqa: E402
from aiter_ext.ops.attention.reference import batch_attention_ref, gather_paged_kv  # noqa: E402

USED_POSITIONAL = ["q", "k", "v", "cu_seqlens_q", "kv_indptr", "kv_page_indices", "max_seqlen_q", "max_seqlen_k"]
USED_KEYWORDS = ["softmax_scale", "logits_soft_cap", "causal", "window_size", "return_lse", "out"]


def _installed_mha_source() -> str:
    spec = importlib.util.find_spec("aiter")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        message = "amd-aiter is not installed (CI installs it with pip install --no-deps amd-aiter)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must check the contract, never skip it
        pytest.skip(message)
    return (Path(list(spec.submodule_search_locations)[0]) / "ops" / "mha.py").read_text()


def test_installed_aiter_has_the_batch_prefill_contract():
    source = _installed_mha_source()
    funcs = {n.name: n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)}
    assert "mha_batch_prefill_func" in funcs, "aiter.ops.mha.mha_batch_prefill_func is gone"
    fn = funcs["mha_batch_prefill_func"]
    params = [a.arg for a in fn.args.args + fn.args.kwonlyargs]
    assert params[:len(USED_POSITIONAL)] == USED_POSITIONAL, params
    missing = [k for k in USED_KEYWORDS if k not in params]
    assert not missing, f"mha_batch_prefill_func no longer takes {missing}"
    body = ast.get_source_segment(source, fn)
    assert "if return_lse:" in body and "softmax_lse" in body, "the LSE is no longer returned after the output"
    # The LSE layout the backend transposes: [num_heads, total_q] (the fake-tensor shapes say so).
    fake = ast.get_source_segment(source, funcs["mha_batch_prefill_fake_tensors"])
    assert "(num_heads, total_q)" in fake


_FAKE_AITER = '''
import math, torch
from aiter_ext.ops.attention.reference import single_attention_ref

CALLS = []

def mha_batch_prefill_func(q, k, v, cu_seqlens_q, kv_indptr, kv_page_indices, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, logits_soft_cap=0.0, causal=False,
                           window_size=(-1, -1), alibi_slopes=None, deterministic=False, return_lse=False,
                           return_attn_probs=False, out=None):
    """AITER's contract, computed with the reference: token-level pages, natural-log LSE [Hq, total_q]."""
    assert kv_indptr.dtype == torch.int32 and kv_page_indices.dtype == torch.int32
    CALLS.append(dict(max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, window_size=window_size))
    qo, kvp, ids = cu_seqlens_q.tolist(), kv_indptr.tolist(), kv_page_indices.long()
    outs, lses = [], []
    for b in range(len(qo) - 1):
        rows = ids[kvp[b]:kvp[b + 1]]
        o, lse2 = single_attention_ref(q[qo[b]:qo[b + 1]], k[rows], v[rows], causal, softmax_scale,
                                       window_size[0], logits_soft_cap or None)
        outs.append(o)
        lses.append(lse2 * math.log(2.0))
    result = torch.cat(outs)
    if out is not None:
        out.copy_(result)
        result = out
    return (result, torch.cat(lses).transpose(0, 1).contiguous()) if return_lse else result
'''


@pytest.fixture
def fake_aiter(tmp_path, monkeypatch):
    pkg = tmp_path / "aiter"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ops" / "__init__.py").write_text("")
    (pkg / "ops" / "mha.py").write_text(textwrap.dedent(_FAKE_AITER))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "aiter" or m.startswith("aiter.")]:
        monkeypatch.delitem(sys.modules, name)
    # Pretend to be on ROCm for the backend checks only; the stand-in runs on the CPU.
    monkeypatch.setattr(backend_mod, "backend_status", lambda name: (True, "test"))
    monkeypatch.setattr(backend_mod, "_device_ok", lambda name, device: (True, ""))
    yield
    for name in [m for m in sys.modules if m == "aiter" or m.startswith("aiter.")]:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("causal,window", [(False, -1), (True, -1), (True, 5)])
def test_adapter_matches_flashinfer_semantics(fake_aiter, causal, window):
    kv_lens, qo_lens, heads, kv_heads, dim, page = [20, 7, 33, 0], [3, 7, 1, 2], 8, 2, 64, 16
    cache, kv_indptr, kv_indices, last = random_paged_kv(kv_lens, kv_heads, dim, page, torch.float16)
    k_cache, v_cache = cache[:, 0].contiguous(), cache[:, 1].contiguous()  # a tuple cache: token rows
    qo_indptr = indptr_of(qo_lens)
    q = torch.randn(int(qo_indptr[-1]), heads, dim, device=DEVICE).half()
    w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(torch.empty(1 << 20, dtype=torch.uint8, device=DEVICE),
                                                      backend="aiter")
    w.plan(qo_indptr, kv_indptr, kv_indices, last, heads, kv_heads, dim, page, causal=causal, window_left=window,
           q_data_type=torch.float16)
    out, lse = w.run(q, (k_cache, v_cache), return_lse=True)
    ref_out, ref_lse = batch_attention_ref(q, qo_indptr, gather_paged_kv(k_cache, v_cache, kv_indptr, kv_indices, last),
                                           causal, None, window)
    assert_close(out, ref_out, torch.float16, name="out")
    assert_close(lse, ref_lse, torch.float32, name="lse (base 2)", atol=1e-5, rtol=1e-5)
    import aiter.ops.mha as mha

    assert mha.CALLS[-1] == {"max_seqlen_q": 7, "max_seqlen_k": 33, "window_size": (window, 0 if causal else -1)}


def test_interleaved_cache_is_refused_clearly(fake_aiter):
    cache, kv_indptr, kv_indices, last = random_paged_kv([20], 2, 64, 16, torch.float16)
    w = aiter_ext.BatchPrefillWithPagedKVCacheWrapper(torch.empty(1 << 20, dtype=torch.uint8, device=DEVICE),
                                                      backend="aiter")
    w.plan(indptr_of([2]), kv_indptr, kv_indices, last, 4, 2, 64, 16, q_data_type=torch.float16)
    with pytest.raises(ValueError, match="each page's slots must be consecutive rows"):
        w.run(torch.randn(2, 4, 64, device=DEVICE).half(), cache)
