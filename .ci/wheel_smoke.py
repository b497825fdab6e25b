"""One call of each op family through the installed package (CI runs this from outside the checkout,
in a fresh virtual environment holding only the built wheel and its dependencies).

Each result is compared with the fp32 reference or, for sampling, checked to lie in the kept set. On a
machine without a GPU and without Triton, the ops run their torch backend; with TRITON_INTERPRET=1 and
Triton installed, the interpreter. Exits non-zero on the first failure.
"""

import sys
from pathlib import Path

import torch

import aiter_ext
from aiter_ext.core.arch import REPO_ROOT

here = Path.cwd().resolve()
package = Path(aiter_ext.__file__).resolve().parent
assert "site-packages" in str(package), f"aiter_ext imported from {package}, not from an installed wheel"
assert (REPO_ROOT / "gap_matrix.yaml").is_file() and (REPO_ROOT / "configs" / "tuned_csv").is_dir(), REPO_ROOT
from aiter_ext.core.backend import backend_status  # noqa: E402

triton_ok, why = backend_status("triton")
print(f"aiter_ext from {package}; data root {REPO_ROOT}; cwd {here}")
print(f"kernels: {'triton' if triton_ok else 'torch (the reference)'}: {why}")
torch.manual_seed(0)


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")
    if not ok:
        sys.exit(1)


# merge_state
from aiter_ext.ops.merge_state.reference import merge_state_ref  # noqa: E402

va, vb = torch.randn(5, 2, 16), torch.randn(5, 2, 16)
sa, sb = torch.randn(5, 2), torch.randn(5, 2)
v, s = aiter_ext.merge_state(va, sa, vb, sb)
rv, rs = merge_state_ref(va, sa, vb, sb)
check("merge_state", torch.allclose(v, rv, atol=1e-5) and torch.allclose(s, rs, atol=1e-5))

# attention (single prefill) and the paged KV layer
from aiter_ext.ops.attention.reference import single_attention_ref  # noqa: E402

q, k, v = torch.randn(4, 4, 32).half(), torch.randn(9, 2, 32).half(), torch.randn(9, 2, 32).half()
out = aiter_ext.single_prefill_with_kv_cache(q, k, v, causal=True)
ref = single_attention_ref(q, k, v, causal=True)[0]
check("single_prefill_with_kv_cache", (out.float() - ref.float()).abs().max() < 2e-3)
cache = torch.zeros(3, 2, 4, 2, 32, dtype=torch.float16)
aiter_ext.append_paged_kv_cache(k[:5], v[:5], torch.zeros(5, dtype=torch.int32), torch.arange(5, dtype=torch.int32),
                                cache, torch.tensor([2, 0], dtype=torch.int32), torch.tensor([0, 2], dtype=torch.int32),
                                torch.tensor([1], dtype=torch.int32))
check("append_paged_kv_cache", torch.equal(cache[2, 0], k[:4]) and torch.equal(cache[0, 0, 0], k[4]))

# norms, RoPE, FP4
x, w = torch.randn(3, 64).half(), torch.randn(64).half()
y = aiter_ext.gemma_rmsnorm(x, w)
ref = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + w.float()))
check("gemma_rmsnorm", (y.float() - ref).abs().max() < 1e-2)
qr, kr = aiter_ext.apply_rope_pos_ids(torch.randn(3, 2, 64).half(), torch.randn(3, 1, 64).half(),
                                      torch.arange(3, dtype=torch.int32))
check("apply_rope_pos_ids", qr.shape == (3, 2, 64) and bool(torch.isfinite(qr).all()))
fp4, scales, _ = aiter_ext.rmsnorm_mxfp4_quant(torch.randn(4, 64).half(), w, 1e-6, residual=None)
check("rmsnorm_mxfp4_quant", fp4.shape == (4, 32) and fp4.dtype == torch.uint8)

# sampling, chain speculative sampling, LogitsPipe
probs = torch.softmax(torch.randn(2, 100), -1)
tokens = aiter_ext.top_p_sampling_from_probs(probs, 0.5, indices=torch.zeros(500, dtype=torch.int32), seed=1,
                                             offset=0)
from aiter_ext.ops.sampling.reference import top_p_distribution  # noqa: E402

check("top_p_sampling_from_probs", bool((top_p_distribution(probs, 0.5)[0][tokens.long()] > 0).all()))
qd, pt = torch.softmax(torch.randn(2, 3, 50), -1), torch.softmax(torch.randn(2, 4, 50), -1)
ids = torch.multinomial(qd.view(-1, 50), 1).view(2, 3).int()
out, accepted, emitted = aiter_ext.chain_speculative_sampling(qd, ids, pt, seed=0, offset=0)
check("chain_speculative_sampling", bool(((out >= 0).sum(1) == emitted + 1).all()))
from aiter_ext.logits_processor import LogitsPipe, Sample, Softmax, Temperature, TopK  # noqa: E402

logits = torch.randn(2, 100)
tokens = LogitsPipe([Temperature(), Softmax(), TopK(), Sample()])(logits, temperature=0.5, top_k=1, seed=0, offset=0)
check("LogitsPipe", torch.equal(tokens.long(), logits.argmax(-1)))
print("every op family ran from the installed wheel")
