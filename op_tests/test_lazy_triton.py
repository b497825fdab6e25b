"""Kernel modules defer Triton's import (core/lazy_triton.py; issue 18's cold start).

Each check that needs a process without Triton runs in a fresh Python (this one has imported it). The
GPU side, a first call served by code objects in a fresh process, is op_tests/bench_cold_start.py's.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _fresh_python(code: str) -> dict:
    """Run ``code`` in a fresh Python without the interpreter's variable; it prints one JSON line last."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "AITER_EXT_LAUNCH")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kernel_modules_and_their_specs_import_no_triton():
    """Every kernel module imports, every arch's specs are listed and every thin kernel's manifest name read, with
    Triton still unimported."""
    out = _fresh_python("""
        import json, sys
        import aiter_ext
        from aiter_ext import ops
        from aiter_ext.core import aot
        ops.load_kernel_modules()
        specs = {arch: len(list(aot.registered_specs(arch))) for arch in ("gfx942", "gfx950", "sm_90")}
        kernels = [m for m in sys.modules if m.startswith("aiter_ext.ops.") and m.endswith("kernels")]
        from aiter_ext.core import objects, thin  # the object lookup's kernel names, as thin.py reads them
        ids = [objects.kernel_id(v._kernel) for m in kernels for v in vars(sys.modules[m]).values()
               if isinstance(v, thin.ThinKernel)]
        assert all(":" in i and "kernel" in i for i in ids) and len(ids) >= 20, ids
        print(json.dumps({"modules": len(kernels), "specs": specs,
                          "triton": sorted(m for m in sys.modules if m == "triton" or m.startswith("triton."))}))
    """)
    assert out["triton"] == [], out["triton"][:5]
    assert out["modules"] >= 13 and all(n > 100 for n in out["specs"].values()), out


def test_public_calls_reach_their_launch_without_triton():
    """One public call of every op family (the cold-start benchmark's rmsnorm, RoPE and merge_state first) runs
    validation, dispatch and its launch set-up up to the kernels' launches with Triton unimported, as a process
    whose launches all come from code objects does. The launches are recorded, not made (CPU tensors, the
    dispatcher told that the triton backend runs here)."""
    out = _fresh_python("""
        import json, sys, torch
        import aiter_ext
        from aiter_ext.core import backend, thin
        backend._STATUS_PROBES["triton"] = lambda: (True, "the test's stand-in")
        backend._device_ok = lambda name, device: (True, "")
        launched = []
        thin.ThinKernel.__getitem__ = lambda self, grid: (lambda *a, **k: launched.append(self.__name__))
        bf16, i32 = torch.bfloat16, torch.int32
        r = lambda *s: torch.randn(*s).to(bf16)
        probs = lambda: torch.softmax(torch.randn(2, 32000), -1)
        cache = lambda: r(4, 2, 16, 8, 128)  # pages, K/V, page size, kv heads, head_dim

        def decode_wrapper():
            wrapper = aiter_ext.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1 << 20, dtype=torch.uint8))
            wrapper.plan(torch.tensor([0, 2, 4], dtype=i32), torch.tensor([0, 1, 2, 3], dtype=i32),
                         torch.tensor([5, 16], dtype=i32), 32, 8, 128, 16, q_data_type=bf16)
            wrapper.run(r(2, 32, 128), cache())

        calls = {
            "rmsnorm": lambda: aiter_ext.rmsnorm(r(16, 4096), r(4096)),
            "apply_llama31_rope": lambda: aiter_ext.apply_llama31_rope(
                r(64, 32, 128), r(64, 8, 128), torch.tensor([0, 64], dtype=i32), torch.zeros(1, dtype=i32)),
            "merge_state": lambda: aiter_ext.merge_state(r(8, 4, 128), torch.randn(8, 4), r(8, 4, 128),
                                                         torch.randn(8, 4)),
            "merge_states": lambda: aiter_ext.merge_states(r(8, 3, 4, 128), torch.randn(8, 3, 4)),
            "fused_add_rmsnorm": lambda: aiter_ext.fused_add_rmsnorm(r(4, 4096), r(4, 4096), r(4096)),
            "apply_rope_pos_ids": lambda: aiter_ext.apply_rope_pos_ids(r(3, 32, 128), r(3, 8, 128),
                                                                       torch.arange(3, dtype=i32)),
            "rmsnorm_fp4quant": lambda: aiter_ext.rmsnorm_fp4quant(r(16, 4096), r(4096)),
            "append_paged_kv_cache": lambda: aiter_ext.append_paged_kv_cache(
                r(5, 8, 128), r(5, 8, 128), torch.zeros(5, dtype=i32), torch.arange(5, dtype=i32), cache(),
                torch.tensor([2, 0], dtype=i32), torch.tensor([0, 2], dtype=i32), torch.tensor([5], dtype=i32)),
            "single_prefill_with_kv_cache": lambda: aiter_ext.single_prefill_with_kv_cache(
                r(16, 32, 128), r(64, 8, 128), r(64, 8, 128), causal=True),
            "BatchDecodeWithPagedKVCacheWrapper": decode_wrapper,
            "top_p_sampling_from_probs": lambda: aiter_ext.top_p_sampling_from_probs(probs(), 0.5),
            "min_p_sampling_from_probs": lambda: aiter_ext.min_p_sampling_from_probs(probs(), 0.1),
            "sampling_from_logits": lambda: aiter_ext.sampling_from_logits(torch.randn(2, 32000)),
            "softmax": lambda: aiter_ext.softmax(torch.randn(2, 32000), 0.7),
            "top_p_renorm_probs": lambda: aiter_ext.top_p_renorm_probs(probs(), 0.5),
            "chain_speculative_sampling": lambda: aiter_ext.chain_speculative_sampling(
                torch.softmax(torch.randn(2, 3, 500), -1), torch.randint(0, 500, (2, 3), dtype=i32),
                torch.softmax(torch.randn(2, 4, 500), -1)),
            "segment_gemm": lambda: aiter_ext.segment_gemm(r(16, 256), r(2, 256, 128), 2, False,
                                                           seg_lens=torch.tensor([8, 8])),
        }
        result = {}
        for name, call in calls.items():
            before = len(launched)
            call()
            result[name] = [launched[before:], "triton" in sys.modules]
        print(json.dumps(result))
    """)
    imported = [name for name, (_, triton) in out.items() if triton]
    assert not imported, f"Triton imported by the first of these calls: {imported}"
    assert all(kernels for kernels, _ in out.values()), {n: k for n, (k, _) in out.items() if not k}
    assert [out[n][0] for n in ("rmsnorm", "apply_llama31_rope", "merge_state")] == [
        ["rmsnorm_kernel"], ["rope_kernel"], ["merge_pair_kernel"]]
    assert len(out) == 17


def test_load_makes_every_deferred_kernel_and_constant_real_in_every_module():
    """After load(): no stand-in is left in any aiter_ext module (a kernel compiled from a module holding
    one would fail, or read a helper of another module through it), the jit's options are kept (RoPE's
    do_not_specialize), and the parameters the thin path read before loading are Triton's own."""
    out = _fresh_python("""
        import json, sys
        import aiter_ext
        from aiter_ext import ops
        from aiter_ext.core import lazy_triton, thin
        ops.load_kernel_modules()
        before = {}
        for name, module in list(sys.modules.items()):
            if name.startswith("aiter_ext.ops.") and name.endswith("kernels"):
                for key, value in vars(module).items():
                    if isinstance(value, thin.ThinKernel):
                        before[f"{name}.{key}"] = [[p.name, p.is_constexpr, repr(p.default)] for p in value._params]
        assert "triton" not in sys.modules
        lazy_triton.load()
        import triton, triton.language as tl
        from triton.runtime.jit import JITFunction
        left, constants, params = [], 0, {}
        for name, module in list(sys.modules.items()):
            if not name.startswith("aiter_ext.") or name == lazy_triton.__name__:
                continue
            for key, value in vars(module).items():
                if isinstance(value, (lazy_triton.LazyKernel, lazy_triton.LazyConstexpr, lazy_triton._Facade)):
                    left.append(f"{name}.{key}")
                constants += isinstance(value, tl.constexpr)
                if isinstance(value, thin.ThinKernel):
                    assert isinstance(value.fn, JITFunction), (name, key)
                    params[f"{name}.{key}"] = [[p.name, p.is_constexpr, repr(p.default)] for p in value.fn.params]
        from aiter_ext.ops.rope import kernels as rope
        from aiter_ext.ops.sampling import kernels as sampling, speculative_kernels as speculative
        print(json.dumps({"left": left, "constants": constants, "same_params": params == before,
                          "kernels": len(params), "rope_dns": sorted(rope.rope_kernel.fn.do_not_specialize),
                          "shared_helper": speculative.load_chunk is sampling.load_chunk,
                          "round_bits": speculative.ROUND_BITS.value}))
    """)
    assert out["left"] == [], out["left"][:10]
    assert out["same_params"] and out["kernels"] >= 20, out
    assert out["constants"] >= 10
    assert out["shared_helper"] and out["round_bits"] == 20
    assert len(out["rope_dns"]) == 4, out["rope_dns"]


def test_kernel_params_read_constexpr_as_triton_does():
    from aiter_ext.core.lazy_triton import kernel_params

    def kernel(x, n, BLOCK: "tl.constexpr", EVEN: "tl.constexpr" = True, y=None):  # noqa: F821
        pass

    assert kernel_params(kernel) == [("x", False, inspect.Parameter.empty), ("n", False, inspect.Parameter.empty),
                                     ("BLOCK", True, inspect.Parameter.empty), ("EVEN", True, True),
                                     ("y", False, None)]


def test_after_load_the_module_gives_the_real_triton():
    """A kernel module imported after load() gets the real ``tl`` and ``triton`` at once (nothing swaps them
    in later). The ops' suites run every kernel through load() already."""
    from aiter_ext.core import lazy_triton

    lazy_triton.load()
    from aiter_ext.core.lazy_triton import tl, triton

    assert not isinstance(tl, lazy_triton._Facade) and not isinstance(triton, lazy_triton._Facade)
