"""Tests of ``compile_ops`` (aiter_ext/core/jit.py): build, cache, lock, binding and errors.

All of it runs on a CPU-only machine: the host module ``module_jit_selftest`` goes through the
whole path (spec, compiler, cache, lock, ctypes, error strings); ``merge_state.cu`` is compiled for
sm_90 with nvcc (without a GPU) so C++ errors in it fail CI, and its host-side argument checks are
called through ctypes, which needs no GPU since they return before any CUDA call. The kernel's
results are checked against a reference on a GPU (``test_merge_state_kernel_on_gpu``).
"""

import ctypes
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import torch

from aiter_ext.core import arch, jit
from aiter_ext.core.jit import JitBuildError, build_module, compile_ops, module_status

REPO = Path(__file__).resolve().parents[1]
CXX = shutil.which("c++")
needs_cxx = pytest.mark.skipif(CXX is None, reason="no host C++ compiler (c++) on PATH")


@pytest.fixture
def jit_dir(tmp_path, monkeypatch):
    """A fresh, empty JIT cache for this test, and no compiler or rebuild overrides."""
    for var in ("AITER_EXT_REBUILD", "AITER_EXT_CXX", "AITER_EXT_NVCC", "AITER_EXT_HIPCC"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "jit"
    monkeypatch.setenv("AITER_EXT_JIT_DIR", str(root))
    return root


def counting_cxx(tmp_path: Path, delay: float = 0.0) -> tuple[Path, Path]:
    """A compiler wrapper that logs each run (across processes too), so tests can count builds."""
    log, script = tmp_path / "cxx.log", tmp_path / "counting-c++"
    script.write_text(f'#!/bin/sh\necho run >> "{log}"\nsleep {delay}\nexec "{CXX}" "$@"\n')
    script.chmod(0o755)
    return script, log


def builds(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def libraries(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


@needs_cxx
def test_selftest_matches_torch(jit_dir):
    from aiter_ext.core.jit_selftest import axpy_, jit_selftest_axpy

    for n in (1, 1000, 65537):
        y, x, a = torch.randn(n), torch.randn(n), float(torch.randn(()))
        expected = (y.double() + a * x.double()).float()
        axpy_(y, x, a)
        torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    # Keyword arguments bind like Python's; errors from C carry its message.
    y = torch.zeros(4)
    jit_selftest_axpy(y, x=torch.ones(4), a=2.0, n=3)
    assert y.tolist() == [2.0, 2.0, 2.0, 0.0]
    with pytest.raises(RuntimeError, match="n must be >= 0, got -5"):
        jit_selftest_axpy(y, y, 1.0, -5)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        jit_selftest_axpy([1.0], y, 1.0, 1)
    assert jit_selftest_axpy.module_name == "module_jit_selftest"


@needs_cxx
def test_cache_reused_and_rebuild_forced(jit_dir, tmp_path, monkeypatch):
    cxx, log = counting_cxx(tmp_path)
    monkeypatch.setenv("AITER_EXT_CXX", str(cxx))
    first = build_module("module_jit_selftest")
    import aiter_ext

    assert first.parent == jit_dir / aiter_ext.__version__ / arch.device_info().arch
    assert build_module("module_jit_selftest") == first and builds(log) == 1
    ok, reason = module_status("module_jit_selftest")
    assert ok, reason

    monkeypatch.setenv("AITER_EXT_REBUILD", "1")
    stamp = first.stat().st_mtime_ns
    time.sleep(0.01)
    assert build_module("module_jit_selftest") == first and builds(log) == 2
    assert first.stat().st_mtime_ns != stamp
    assert libraries(jit_dir) == [first.name]  # no temp files left behind


@needs_cxx
def test_cache_key_follows_sources_headers_and_flags(jit_dir, tmp_path, monkeypatch):
    root = tmp_path / "repo"
    shutil.copytree(REPO / "csrc" / "ck_kernels", root / "csrc" / "ck_kernels")
    monkeypatch.setattr(arch, "REPO_ROOT", root)
    csrc = root / "csrc" / "ck_kernels"
    paths = [build_module("module_jit_selftest")]

    specs = json.loads((csrc / "modules.json").read_text())
    specs["module_jit_selftest"]["flags"] = ["-DAITER_EXT_TEST_FLAG=1"]
    (csrc / "modules.json").write_text(json.dumps(specs))
    paths.append(build_module("module_jit_selftest"))
    paths.append(build_module("module_jit_selftest", extra_flags=["-g0"]))
    with open(csrc / "jit_selftest.cpp", "a") as f:
        f.write("\n// an edit\n")
    paths.append(build_module("module_jit_selftest"))
    with open(csrc / "include" / "aiter_ext_host.h", "a") as f:
        f.write("\n// an edit\n")
    paths.append(build_module("module_jit_selftest"))

    assert len(set(paths)) == len(paths) and all(p.is_file() for p in paths)
    assert build_module("module_jit_selftest") == paths[-1]  # unchanged inputs: same library

    # A failed compile names the command and shows the compiler's error; it leaves no file behind.
    with open(csrc / "jit_selftest.cpp", "a") as f:
        f.write("\nthis is not C++;\n")
    with pytest.raises(JitBuildError) as failure:
        build_module("module_jit_selftest")
    assert "jit_selftest.cpp" in str(failure.value) and "error" in str(failure.value)
    assert CXX in str(failure.value) or "c++" in str(failure.value)
    assert len(libraries(jit_dir)) == len(paths)


@needs_cxx
def test_two_processes_build_once(jit_dir, tmp_path):
    # The compiler sleeps, so the second process meets the first one's lock and must wait for it.
    cxx, log = counting_cxx(tmp_path, delay=1.5)
    env = {**os.environ, "AITER_EXT_JIT_DIR": str(jit_dir), "AITER_EXT_CXX": str(cxx),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    code = "from aiter_ext.core.jit import build_module; print(build_module('module_jit_selftest'))"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    outs = {out.strip() for out, _ in results}
    assert len(outs) == 1 and Path(outs.pop()).is_file()
    assert builds(log) == 1
    assert len(libraries(jit_dir)) == 1


def test_missing_compiler_is_named(jit_dir, monkeypatch):
    monkeypatch.setattr(jit, "_libs", {})  # as in a fresh process: module_status answers "loaded" otherwise
    monkeypatch.setenv("AITER_EXT_CXX", "/nonexistent/c++")
    with pytest.raises(JitBuildError, match=r"AITER_EXT_CXX=/nonexistent/c\+\+"):
        build_module("module_jit_selftest")
    ok, reason = module_status("module_jit_selftest")
    assert not ok and "/nonexistent/c++" in reason
    # Device code for an explicit arch needs no GPU, but does need its compiler.
    monkeypatch.setenv("AITER_EXT_NVCC", "/nonexistent/nvcc")
    with pytest.raises(JitBuildError, match="AITER_EXT_NVCC=/nonexistent/nvcc"):
        build_module("module_merge_state", arch="sm_90")
    assert not jit_dir.exists()  # nothing was built or even created


def test_module_status_unknown_module():
    ok, reason = module_status("module_does_not_exist")
    assert not ok and "unknown module" in reason and "module_merge_state" in reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the GPU-less answer")
def test_module_status_without_gpu():
    ok, reason = module_status("module_merge_state")
    assert not ok and "GPU" in reason
    with pytest.raises(JitBuildError, match="no GPU"):
        build_module("module_merge_state")


def _stub_with(annotation):
    def stub(x, n: int) -> None: ...

    stub.__annotations__["x"] = annotation
    return stub


@pytest.mark.parametrize("annotation", [str, Optional[int], list, "torch.Tensor | int"], ids=str)
def test_unsupported_annotation_rejected_at_decoration(annotation):
    with pytest.raises(TypeError, match="parameter 'x' has annotation"):
        compile_ops("module_jit_selftest")(_stub_with(annotation))


def test_stub_shape_rejected_at_decoration():
    def unannotated(x, n: int) -> None: ...

    def returns_int(n: int) -> int: ...

    def variadic(*xs: int) -> None: ...

    with pytest.raises(TypeError, match="no annotation"):
        compile_ops("module_jit_selftest")(unannotated)
    with pytest.raises(TypeError, match="must return None"):
        compile_ops("module_jit_selftest")(returns_int)
    with pytest.raises(TypeError, match="must be positional"):
        compile_ops("module_jit_selftest")(variadic)


def _nvcc_or_skip() -> str:
    try:
        return jit._find_compiler("module_merge_state", "the CUDA compiler", "AITER_EXT_NVCC", "CUDA_HOME", "nvcc")
    except JitBuildError as e:
        pytest.skip(f"nvcc is not installed here, so merge_state.cu is not compile-checked: {e}")


def test_merge_state_compiles_for_sm90(jit_dir):
    _nvcc_or_skip()
    # Spills or any local memory fail the build here (and only here: a user's build never fails for it).
    lib_path = build_module("module_merge_state", arch="sm_90",
                            extra_flags=["-Xptxas=--warn-on-spills,--warn-on-local-memory-usage,--warning-as-error"])
    assert lib_path.parent.name == "sm_90"

    # The cudart runtime is linked statically and loads libcuda lazily, so the library loads here
    # and its argument checks, which return before any CUDA call, can run without a GPU.
    lib = ctypes.CDLL(str(lib_path))
    fn = lib.merge_state_pair
    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 4 + [ctypes.c_void_p]
    err = lib.aiter_ext_error_string
    err.restype, err.argtypes = ctypes.c_char_p, [ctypes.c_int]
    ptrs = [256] * 6  # aligned, never dereferenced: every call below fails or returns before launching

    def call(tokens, heads, dim, dtype_code, v_a=256):
        rc = fn(v_a, *ptrs[1:], None, tokens, heads, dim, dtype_code, None)
        return rc, err(rc).decode()

    assert call(0, 32, 128, 1) == (0, "success")  # empty: nothing to launch
    for dim, code in ((100, 0), (520, 1), (0, 0), (6, 2)):
        rc, msg = call(4, 2, dim, code)
        assert rc < 0 and "head_dim" in msg and str(dim) in msg
    rc, msg = call(4, 2, 128, 7)
    assert rc < 0 and "dtype_code" in msg
    rc, msg = call(4, 2, 128, 1, v_a=264)
    assert rc < 0 and "16-byte aligned" in msg
    rc, msg = call(-1, 2, 128, 1)
    assert rc < 0 and "negative" in msg


# -- on a GPU: the merge kernel against an fp32 reference -----------------------------------------


def _merge_ref(v_a, s_a, v_b, s_b):
    """FlashInfer's merge in fp32, with both-empty -> (0, -inf) and a zero weight dropping its operand."""
    m = torch.maximum(s_a, s_b)
    safe_m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    wa, wb = torch.exp2(s_a - safe_m), torch.exp2(s_b - safe_m)
    total = wa + wb
    va = torch.where((wa > 0)[..., None], v_a.float(), 0.0)
    vb = torch.where((wb > 0)[..., None], v_b.float(), 0.0)
    v = (wa[..., None] * va + wb[..., None] * vb) / torch.where(total > 0, total, 1.0)[..., None]
    s = torch.where(total > 0, safe_m + torch.log2(total), float("-inf"))
    return v, s


@pytest.mark.skipif(not torch.cuda.is_available(), reason="runs the CUDA/HIP kernel (checked on the lent GPU)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim", [8, 64, 128, 136, 256, 512])
def test_merge_state_kernel_on_gpu(dtype, head_dim):
    from aiter_ext.ops.merge_state.ck import DTYPE_CODES, merge_state_pair

    tokens, heads = 301, 5  # a partial last tile
    v_a, v_b = (torch.randn(tokens, heads, head_dim, device="cuda", dtype=dtype) for _ in range(2))
    s_a, s_b = (torch.randn(tokens, heads, device="cuda") * 8 for _ in range(2))
    s_a[0], s_b[0] = float("-inf"), float("-inf")  # both empty
    s_a[1] = float("-inf")  # a copies b
    s_b[2] = float("-inf")  # b copies a
    v_a[1] = float("nan")  # an empty state's v is never read
    v_ref, s_ref = _merge_ref(v_a, s_a, v_b, s_b)
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}[dtype]

    v_out, s_out = torch.full_like(v_a, float("nan")), torch.full_like(s_a, float("nan"))
    merge_state_pair(v_a, s_a, v_b, s_b, v_out, s_out, None, tokens, heads, head_dim, DTYPE_CODES[dtype])
    torch.testing.assert_close(v_out.float(), v_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(s_out, s_ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(v_out[1], v_b[1]) and torch.equal(v_out[2], v_a[2])
    assert (v_out[0] == 0).all() and torch.isneginf(s_out[0]).all()

    # In place, with a mask: masked tokens keep their old v and s exactly.
    mask = torch.rand(tokens, device="cuda") < 0.5
    v_old = v_a.nan_to_num()  # NaN != NaN would defeat the exact comparison below
    v_in, s_in = v_old.clone(), s_a.clone()
    merge_state_pair(v_in, s_in, v_b, s_b, v_in, s_in, mask, tokens, heads, head_dim, DTYPE_CODES[dtype])
    torch.testing.assert_close(v_in[mask].float(), v_ref[mask], rtol=tol, atol=tol)
    torch.testing.assert_close(s_in[mask], s_ref[mask], rtol=1e-5, atol=1e-5)
    assert torch.equal(v_in[~mask], v_old[~mask]) and torch.equal(s_in[~mask], s_a[~mask])

    # Captured in a CUDA graph: no host sync, no allocation on the call path.
    graph, v_g, s_g = torch.cuda.CUDAGraph(), torch.empty_like(v_a), torch.empty_like(s_a)
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        merge_state_pair(v_a, s_a, v_b, s_b, v_g, s_g, None, tokens, heads, head_dim, DTYPE_CODES[dtype])
    graph.replay()
    torch.testing.assert_close(v_g, v_out, rtol=0, atol=0)
