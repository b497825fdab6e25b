"""Issue 18: every launch a serving call makes on an AMD GPU is served by a code object built from the registered
specs (core/aot.py), so that no first call compiles where objects ship. Each call here runs on the CPU with its
launches recorded, not made (the Triton backend and gfx942's routes forced), and each launch's key (kernel,
constexprs, options, pointer and scalar types, alignment; what core/objects.find matches) must equal a spec's.
A spec typed unlike its launch (an i64 stride where launches pass i32, a stand-in pointer's dtype, a constexpr
no spec sets) shows here; before these tests the sampling, attention decode, fused norm, merge_states and
int32-position RoPE launches found no object."""

import pytest
import torch

import aiter_ext as A

bf16 = torch.bfloat16


def _spec_serves(spec, key) -> bool:
    """Whether an object built from ``spec`` would serve a launch of ``key`` (ThinKernel.object_key): the test
    core/objects.find makes of a manifest row (objects.fits)."""
    from aiter_ext.core.objects import fits, kernel_id

    kernel, *launch = key
    fields = {"constexprs": dict(spec.constexprs), "options": dict(spec.options), "signature": dict(spec.signature),
              "divisible_by_16": set(spec.divisible_by_16)}
    return kernel_id(spec.fn) == kernel and fits(fields, *launch)


#: Sampling calls at serving shapes, each as a serving engine makes it (FlashInfer's call forms): every launch
#: they make on an AMD GPU must have a registered spec, else no shipped object serves it and the first call
#: compiles (issue 18). Vocabularies 1024 and 128256 at 1 and 256 rows take the row and chunked routes there.
_SAMPLING_CALLS = {
    "sampling_from_probs": lambda S, p, l: S.sampling_from_probs(p),
    "top_k per row": lambda S, p, l: S.top_k_sampling_from_probs(p, torch.full((p.shape[0],), 50, dtype=torch.int32)),
    "top_k scalar": lambda S, p, l: S.top_k_sampling_from_probs(p, 50),
    "top_p per row": lambda S, p, l: S.top_p_sampling_from_probs(p, torch.full((p.shape[0],), 0.9)),
    "top_p scalar": lambda S, p, l: S.top_p_sampling_from_probs(p, 0.9),
    "min_p per row": lambda S, p, l: S.min_p_sampling_from_probs(p, torch.full((p.shape[0],), 0.1)),
    "min_p scalar": lambda S, p, l: S.min_p_sampling_from_probs(p, 0.1),
    "top_k_top_p": lambda S, p, l: S.top_k_top_p_sampling_from_probs(
        p, torch.full((p.shape[0],), 50, dtype=torch.int32), torch.full((p.shape[0],), 0.9)),
    "sampling_from_logits": lambda S, p, l: S.sampling_from_logits(l),
    "softmax": lambda S, p, l: S.softmax(l),
    "softmax temperature per row": lambda S, p, l: S.softmax(l, torch.full((l.shape[0],), 0.7)),
    "top_k_renorm_probs": lambda S, p, l: S.top_k_renorm_probs(p, 50),
    "top_p_renorm_probs": lambda S, p, l: S.top_p_renorm_probs(p, 0.9),
    "top_k_mask_logits": lambda S, p, l: S.top_k_mask_logits(l, 50),
    "chain_speculative_sampling": lambda S, p, l: S.chain_speculative_sampling(
        p[:, None].expand(-1, 2, -1).contiguous(), torch.zeros(p.shape[0], 2, dtype=torch.int32),
        p[:, None].expand(-1, 3, -1).contiguous()),
}


def _assert_launches_served(call, monkeypatch, arch: str = "gfx942", keys: bool = False) -> list:
    """Run ``call()`` with its launches recorded, not made (the Triton backend and ``arch``'s routes forced on the
    CPU), and assert that a registered spec of ``arch`` serves each exactly (kernel, constexprs, options, pointer
    and scalar types, alignment assumed): an object built from the specs serves it. Returns the kernels' names
    (with ``keys``: ``(name, key)`` pairs)."""
    from aiter_ext.core import aot, backend, lazy_triton, thin
    from aiter_ext.ops import load_kernel_modules

    load_kernel_modules()
    # Triton loaded now, as this machine runs kernels (the interpreter on the CPU): loaded below, with
    # TRITON_INTERPRET unset for gfx942's routes, every kernel would become a compiled one for the later tests
    lazy_triton.load()
    monkeypatch.setattr(backend, "_device_ok", lambda b, device: (True, ""))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("AITER_EXT_ARCH", arch)
    monkeypatch.setitem(backend._STATUS_PROBES, "triton", lambda: (True, "the test's stand-in"))
    backend._cached_status.cache_clear()
    launched = []
    monkeypatch.setattr(thin.ThinKernel, "__getitem__",
                        lambda self, grid: lambda *a, **k: launched.append((self.__name__, self.object_key(a, k))))
    try:
        call()
    finally:
        backend._cached_status.cache_clear()
    assert launched, "no launch recorded"
    specs = list(aot.registered_specs(arch))
    for kernel, key in launched:
        assert key is not None, f"{kernel}: a launch no object can serve (an argument Triton folds)"
        assert any(_spec_serves(s, key) for s in specs), f"{kernel}: no {arch} spec serves it; {_nearest(specs, key)}"
    return launched if keys else [kernel for kernel, _ in launched]


@pytest.mark.parametrize("vocab", [1024, 128256])
@pytest.mark.parametrize("rows", [1, 256])
@pytest.mark.parametrize("name", list(_SAMPLING_CALLS))
def test_every_sampling_launch_on_an_amd_gpu_has_a_spec(name, rows, vocab, monkeypatch):
    """Each launch a sampling call makes on gfx942 is served by an object built from the registered specs."""
    from aiter_ext.ops import sampling as S

    probs, logits = torch.softmax(torch.randn(rows, vocab), -1), torch.randn(rows, vocab)
    _assert_launches_served(lambda: _SAMPLING_CALLS[name](S, probs, logits), monkeypatch)


def test_tuned_logits_and_speculative_rows_are_served_by_their_specs(tmp_path, monkeypatch):
    """A tuned row of `aiter-ext tune sampling_from_logits` (each route forced) or `chain_speculative_sampling`
    measured on an arch adds the specs its launches need there: with the rows in place, each call's launches are
    served, and they are not the defaults' (the tile is the row's)."""
    from aiter_ext.ops import sampling as S
    from aiter_ext.ops.sampling import backends

    head = "arch,cu_num,rows,vocab,dtype,backend,config,us,bw_gbs,tflops,err\n"
    tiles = {"SAMPLING_FROM_LOGITS": ['"{""chunked"": false, ""BLOCK"": 2048, ""num_warps"": 16}"',
                                      '"{""chunked"": true, ""BLOCK"": 2048, ""num_warps"": 8}"'],
             "CHAIN_SPECULATIVE_SAMPLING": ['"{""BLOCK"": 2048, ""num_warps"": 8}"']}
    for route in range(2):
        for op, configs in tiles.items():
            path = tmp_path / f"{op}-{route}.csv"
            path.write_text(head + f"gfx942,304,64,128256,fp32,triton,{configs[route % len(configs)]},9,0,0,0\n")
            monkeypatch.setenv(f"AITER_EXT_TUNED_CSV_{op}", str(path))
        for op in (backends.SAMPLING_FROM_LOGITS, backends.CHAIN_SPECULATIVE):
            monkeypatch.setattr(op, "_cache", {})  # the choices made under the other route's rows
        logits = torch.randn(64, 128256)
        probs = torch.softmax(logits, -1)
        drafts = torch.zeros(64, 2, dtype=torch.int32)
        kernels = _assert_launches_served(lambda: S.sampling_from_logits(logits), monkeypatch)
        assert kernels == (["gumbel_max_kernel"] if route == 0 else ["chunk_stats_kernel", "chunk_draw_kernel"])
        kernels = _assert_launches_served(lambda: S.chain_speculative_sampling(
            probs[:, None].expand(-1, 2, -1).contiguous(), drafts, probs[:, None].expand(-1, 3, -1).contiguous()),
            monkeypatch)
        assert kernels == ["speculative_chunk_stats_kernel", "chain_speculative_kernel"]


def test_tuned_merge_states_rows_are_served_by_their_specs(tmp_path, monkeypatch):
    """A tuned row of `aiter-ext tune merge_states` adds the specs of every form its dtype serves: an fp32 row split
    attention's and cascade's merge of fp32 partial states into a bf16 or fp16 output and fp32 merges, a 16-bit
    row the public merge_states at each state count and by indptr. The rows' tile (8 warps) is not the default's
    (4), so these launches are served by the rows' specs only."""
    from aiter_ext.ops.merge_state import backends
    from aiter_ext.ops.merge_state.api import _merge_many_out

    path = tmp_path / "merge_states.csv"
    path.write_text("arch,cu_num,num_tokens,num_heads,head_dim,dtype,backend,config,us,bw_gbs,tflops,err\n"
                    'sm_90,132,64,32,128,fp32,triton,"{""BLOCK_R"": 8, ""num_warps"": 8}",9,0,0,0\n'
                    'sm_90,132,64,32,128,bf16,triton,"{""BLOCK_R"": 32, ""num_warps"": 8}",9,0,0,0\n'
                    'gfx942,304,64,32,128,fp32,triton,"{""BLOCK_R"": 8, ""num_warps"": 8}",9,0,0,0\n'
                    'gfx942,304,64,32,128,bf16,triton,"{""BLOCK_R"": 32, ""num_warps"": 8}",9,0,0,0\n')
    monkeypatch.setenv("AITER_EXT_TUNED_CSV_MERGE_STATES", str(path))
    monkeypatch.setattr(backends.MERGE_STATES, "_cache", {})
    n, h, d = 5, 32, 128
    partials, lse = torch.randn(n * 3, h, d), torch.randn(n * 3, h)
    indptr = torch.tensor([0, 3, 6, 9, 12, 15], dtype=torch.int32)
    calls = [lambda out_dtype=out_dtype: _merge_many_out(partials, lse, indptr,
                                                         torch.empty(n, h, d, dtype=out_dtype), torch.empty(n, h), None)
             for out_dtype in (bf16, torch.float16)]
    v, s = torch.randn(n, 3, h, d).to(bf16), torch.randn(n, 3, h)
    calls += [lambda: A.merge_states(v, s), lambda: A.merge_states(v[:, :1].contiguous(), s[:, :1].contiguous()),
              lambda: A.variable_length_merge_states(partials.to(bf16), lse, indptr),
              lambda: A.merge_states(v.float(), s), lambda: A.variable_length_merge_states(partials, lse, indptr)]
    for arch in ("gfx942", "sm_90"):
        monkeypatch.setattr(backends.MERGE_STATES, "_cache", {})
        for call in calls:
            (launch,) = _assert_launches_served(call, monkeypatch, arch, keys=True)
            assert launch[0] == "merge_many_kernel" and launch[1][2]["num_warps"] == 8, launch


def _nearest(specs, key) -> str:
    """How the launch ``key`` differs from the closest spec of its kernel (the assertion's message)."""
    from aiter_ext.core.objects import kernel_id

    kernel, constexprs, options, signature, divisible = key
    own = [s for s in specs if kernel_id(s.fn) == kernel]
    if not own:
        return "its kernel has no spec"

    def differences(spec):
        out = [f"{n}={v!r} (spec {dict(spec.constexprs).get(n)!r})" for n, v in constexprs.items()
               if dict(spec.constexprs).get(n) != v]
        out += [f"{n}: {t} (spec {dict(spec.signature).get(n)})" for n, t in signature.items()
                if dict(spec.signature).get(n) != t]
        out += [f"options {options} (spec {dict(spec.options)})"] if dict(spec.options) != options else []
        out += [f"assumes {sorted(set(spec.divisible_by_16) - divisible)} aligned"] if not (
            set(spec.divisible_by_16) <= divisible) else []
        return out

    best = min(own, key=lambda s: len(differences(s)))
    return f"nearest {best.name}: " + ", ".join(differences(best))



def _llama31_rope():
    q, k = torch.randn(8192, 32, 128, dtype=bf16), torch.randn(8192, 8, 128, dtype=bf16)
    return A.apply_llama31_rope(q, k, torch.tensor([0, 8192], dtype=torch.int32), torch.zeros(1, dtype=torch.int32))


def _rope_pos_ids(pos_dtype):
    def call():
        q, k = torch.randn(64, 32, 128, dtype=bf16), torch.randn(64, 8, 128, dtype=bf16)
        return A.apply_llama31_rope_pos_ids(q, k, torch.arange(64, dtype=pos_dtype))
    return call


def _norm(fn, rows, hidden, fused, dtype=bf16):
    def call():
        x, w = torch.randn(rows, hidden, dtype=dtype), torch.randn(hidden, dtype=dtype)
        return fn(x, torch.randn(rows, hidden, dtype=dtype), w) if fused else fn(x, w)
    return call


def _decode_wrapper(group, head_dim=128, batch=64, page=16, pages_per_request=8):
    def call():
        kv_heads = 8
        indptr = torch.arange(batch + 1, dtype=torch.int32) * pages_per_request
        cache = torch.randn(batch * pages_per_request, 2, page, kv_heads, head_dim, dtype=bf16)
        w = A.BatchDecodeWithPagedKVCacheWrapper(torch.empty(128 << 20, dtype=torch.int8))
        w.plan(indptr, torch.arange(batch * pages_per_request, dtype=torch.int32),
               torch.full((batch,), page, dtype=torch.int32), kv_heads * group, kv_heads, head_dim, page,
               q_data_type=bf16)
        w.run(torch.randn(batch, kv_heads * group, head_dim, dtype=bf16), cache)
    return call


def _append_paged_kv(batch=64, page=16, kv_heads=8, head_dim=128, pages_per_request=8):
    def call():
        indptr = torch.arange(batch + 1, dtype=torch.int32) * pages_per_request
        cache = torch.randn(batch * pages_per_request, 2, page, kv_heads, head_dim, dtype=bf16)
        positions = torch.full((batch,), pages_per_request * page - 1, dtype=torch.int32)
        A.append_paged_kv_cache(torch.randn(batch, kv_heads, head_dim, dtype=bf16),
                                torch.randn(batch, kv_heads, head_dim, dtype=bf16), torch.arange(batch, dtype=torch.int32),
                                positions, cache, torch.arange(batch * pages_per_request, dtype=torch.int32), indptr,
                                torch.full((batch,), page, dtype=torch.int32))
    return call


def _prefill_wrapper(batch=8, tokens=512, group=4, kv_heads=8, head_dim=128, page=16):
    def call():
        pages = tokens // page
        kv_indptr = torch.arange(batch + 1, dtype=torch.int32) * pages
        qo_indptr = torch.arange(batch + 1, dtype=torch.int32) * tokens
        cache = torch.randn(batch * pages, 2, page, kv_heads, head_dim, dtype=bf16)
        w = A.BatchPrefillWithPagedKVCacheWrapper(torch.empty(128 << 20, dtype=torch.int8))
        w.plan(qo_indptr, kv_indptr, torch.arange(batch * pages, dtype=torch.int32),
               torch.full((batch,), page, dtype=torch.int32), kv_heads * group, kv_heads, head_dim, page, causal=True,
               q_data_type=bf16)
        w.run(torch.randn(batch * tokens, kv_heads * group, head_dim, dtype=bf16), cache)
    return call


def _segment_gemm(rows=512, d_in=4096, d_out=16, segments=8):
    def call():
        seg_lens = torch.full((segments,), rows // segments, dtype=torch.int64)
        A.segment_gemm(torch.randn(rows, d_in, dtype=bf16), torch.randn(segments, d_in, d_out, dtype=bf16), segments,
                       False, seg_lens=seg_lens)
    return call


def _cascade(batch=64, shared_pages=256, unique_pages=4, group=4, kv_heads=8, head_dim=128, page=16):
    """A two-level cascade decode: one shared prefix for the whole batch, then each request's own pages."""
    def call():
        pages = shared_pages + batch * unique_pages
        cache = torch.randn(pages, 2, page, kv_heads, head_dim, dtype=bf16)
        i32 = torch.int32
        w = A.MultiLevelCascadeAttentionWrapper(2, torch.empty(128 << 20, dtype=torch.int8))
        w.plan([torch.tensor([0, batch], dtype=i32), torch.arange(batch + 1, dtype=i32)],
               [torch.tensor([0, shared_pages], dtype=i32), torch.arange(batch + 1, dtype=i32) * unique_pages],
               [torch.arange(shared_pages, dtype=i32), torch.arange(shared_pages, pages, dtype=i32)],
               [torch.tensor([page], dtype=i32), torch.full((batch,), page, dtype=i32)],
               kv_heads * group, kv_heads, head_dim, page, q_data_type=bf16)
        w.run(torch.randn(batch, kv_heads * group, head_dim, dtype=bf16), cache)
    return call


def _rope_cos_sin_cache(tokens=512, q_heads=32, k_heads=8, head_dim=128):
    """vLLM's form: int64 positions, q and k flattened over heads, an fp32 cos/sin cache."""
    def call():
        cache = torch.randn(4096, head_dim, dtype=torch.float32)
        A.apply_rope_with_cos_sin_cache(torch.arange(tokens, dtype=torch.int64),
                                        torch.randn(tokens, q_heads * head_dim, dtype=bf16),
                                        torch.randn(tokens, k_heads * head_dim, dtype=bf16), head_dim, cache)
    return call


def _sinks_wrapper(batch=8, tokens=128, heads=64, kv_heads=8, head_dim=64, page=16):
    """gpt-oss's attention with sinks (head dim 64, 64 query heads over 8), a prefill with paged KV."""
    def call():
        pages = tokens // page
        i32 = torch.int32
        cache = torch.randn(batch * pages, 2, page, kv_heads, head_dim, dtype=bf16)
        w = A.BatchAttentionWithAttentionSinkWrapper(torch.empty(128 << 20, dtype=torch.int8), q_data_type=bf16,
                                                     kv_data_type=bf16, head_dim_qk=head_dim, head_dim_vo=head_dim,
                                                     window_left=-1)
        w.plan(torch.arange(batch + 1, dtype=i32) * tokens, torch.arange(batch + 1, dtype=i32) * pages,
               torch.arange(batch * pages, dtype=i32), torch.full((batch,), page, dtype=i32), heads, kv_heads,
               head_dim, page, causal=True)
        w.run(torch.randn(batch * tokens, heads, head_dim, dtype=bf16), cache, torch.randn(heads), 0.125)
    return call


#: Serving calls of the other ops, at the shapes of common models (Llama-3 8B/70B: hidden 4096/8192, 32 or 64 query
#: heads over 8 KV heads, head dim 128)
_SERVING_CALLS = {
    "rmsnorm 16 x 4096": _norm(A.rmsnorm, 16, 4096, False),
    "rmsnorm 256 x 8192": _norm(A.rmsnorm, 256, 8192, False),
    "fused_add_rmsnorm 16 x 4096": _norm(A.fused_add_rmsnorm, 16, 4096, True),
    "fused_add_rmsnorm 256 x 5120": _norm(A.fused_add_rmsnorm, 256, 5120, True),
    "gemma_rmsnorm 16 x 3072": _norm(A.gemma_rmsnorm, 16, 3072, False),
    "gemma_fused_add_rmsnorm 16 x 3072": _norm(A.gemma_fused_add_rmsnorm, 16, 3072, True),
    "rmsnorm fp16 16 x 4096": _norm(A.rmsnorm, 16, 4096, False, torch.float16),
    "q/k norm 4096 x 128": _norm(A.rmsnorm, 4096, 128, False),
    "apply_llama31_rope 8192": _llama31_rope,
    "apply_llama31_rope_pos_ids int32": _rope_pos_ids(torch.int32),
    "apply_llama31_rope_pos_ids int64": _rope_pos_ids(torch.int64),
    "merge_state 64 x 32 x 128": lambda: A.merge_state(torch.randn(64, 32, 128, dtype=bf16), torch.randn(64, 32),
                                                       torch.randn(64, 32, 128, dtype=bf16), torch.randn(64, 32)),
    **{f"merge_states {n} states": (lambda n=n: A.merge_states(torch.randn(64, n, 32, 128, dtype=bf16),
                                                               torch.randn(64, n, 32))) for n in (2, 3, 4, 8, 12)},
    "rmsnorm_fp4quant 256 x 4096": lambda: A.rmsnorm_fp4quant(torch.randn(256, 4096, dtype=bf16),
                                                              torch.randn(4096, dtype=bf16)),
    **{f"single_decode group {g}": (lambda g=g: A.single_decode_with_kv_cache(
        torch.randn(8 * g, 128, dtype=bf16), torch.randn(4096, 8, 128, dtype=bf16),
        torch.randn(4096, 8, 128, dtype=bf16))) for g in (1, 4, 8)},
    "single_prefill causal": lambda: A.single_prefill_with_kv_cache(
        torch.randn(512, 32, 128, dtype=bf16), torch.randn(512, 8, 128, dtype=bf16),
        torch.randn(512, 8, 128, dtype=bf16), causal=True),
    **{f"BatchDecode group {g}": _decode_wrapper(g) for g in (4, 8)},
    "BatchPrefill paged causal": _prefill_wrapper(),
    "append_paged_kv_cache": _append_paged_kv(),
    "segment_gemm (LoRA shrink)": _segment_gemm(),
    "segment_gemm (LoRA expand)": _segment_gemm(d_in=16, d_out=4096),
    "cascade decode, 2 levels": _cascade(),
    "apply_rope_with_cos_sin_cache (vLLM)": _rope_cos_sin_cache(),
    "attention sinks (gpt-oss)": _sinks_wrapper(),
    "add_rmsnorm_fp4quant 256 x 4096": lambda: A.add_rmsnorm_fp4quant(
        torch.randn(256, 4096, dtype=bf16), torch.randn(256, 4096, dtype=bf16), torch.randn(4096, dtype=bf16)),
    "rmsnorm_mxfp4_quant 256 x 4096": lambda: A.rmsnorm_mxfp4_quant(torch.randn(256, 4096, dtype=bf16),
                                                                    torch.randn(4096, dtype=bf16)),
}


@pytest.mark.parametrize("name", list(_SERVING_CALLS))
def test_every_serving_launch_on_an_amd_gpu_has_a_spec(name, monkeypatch):
    """Each launch of a norm, RoPE, merge, FP4 or attention call as a serving engine makes it on gfx942 is served
    by an object built from the registered specs."""
    _assert_launches_served(_SERVING_CALLS[name], monkeypatch)
