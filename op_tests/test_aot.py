"""Tests of the AMD compile check (aiter_ext.core.aot) on toy kernels, CPU only.

Triton's AMD backend compiles for gfx942/gfx950 without a GPU, so these tests compile real code
objects and read real AMDGCN text; nothing here needs an AMD GPU.

conftest.py sets TRITON_INTERPRET=1 on a CPU machine, under which ``@triton.jit`` returns interpreter
objects; the check then compiles in a subprocess without it, which costs a Python start-up per batch.
So the compiles the tests look at are made in one batch (the ``reports`` fixture).
"""

import json
from dataclasses import replace

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from aiter_ext.core import aot  # noqa: E402
from aiter_ext.core.aot import KernelReport, KernelSpec, compile_report, parse_amdgcn  # noqa: E402

ARCHS = ("gfx942", "gfx950")


@triton.jit
def _toy_add(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask).to(tl.float32)
    tl.store(out_ptr + offs, (x + y).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _toy_matmul(a_ptr, b_ptr, c_ptr, K, stride_am, stride_bk, stride_cm,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a_ptrs = a_ptr + rm[:, None] * stride_am + rk[None, :]
    b_ptrs = b_ptr + rk[:, None] * stride_bk + rn[None, :]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for _ in range(0, tl.cdiv(K, BK)):
        acc += tl.dot(tl.load(a_ptrs), tl.load(b_ptrs))
        a_ptrs += BK
        b_ptrs += BK * stride_bk
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], acc.to(c_ptr.dtype.element_ty))


@triton.jit
def _toy_transpose(x_ptr, y_ptr, ld, R: tl.constexpr, C: tl.constexpr):
    # The layout change of tl.trans goes through LDS: R*C*4 bytes for fp32, with few registers.
    r = tl.arange(0, R)
    c = tl.arange(0, C)
    tile = tl.load(x_ptr + r[:, None] * ld + c[None, :])
    tl.store(y_ptr + c[:, None] * ld + r[None, :], tl.trans(tile))


@triton.heuristics({"EVEN": lambda args: args["n"] % args["BLOCK"] == 0})
@triton.jit
def _toy_scale(x_ptr, n, BLOCK: tl.constexpr, EVEN: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if EVEN:
        tl.store(x_ptr + offs, tl.load(x_ptr + offs) * 2)
    else:
        tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * 2, mask=offs < n)


ADD_SIG = {"x_ptr": "*bf16", "y_ptr": "*bf16", "out_ptr": "*bf16", "n": "i32"}
MM_SIG = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*bf16", "K": "i32",
          "stride_am": "i32", "stride_bk": "i32", "stride_cm": "i32"}
TR_SIG = {"x_ptr": "*fp32", "y_ptr": "*fp32", "ld": "i32"}


def add_spec(**kw):
    args = dict(name="toy_add", fn=_toy_add, signature=ADD_SIG, constexprs={"BLOCK": 1024},
                options={"num_warps": 4})
    return KernelSpec(**{**args, **kw})


def mm_spec(bm, bn, bk, num_warps=4, num_stages=2):
    return KernelSpec("toy_matmul", _toy_matmul, MM_SIG, {"BM": bm, "BN": bn, "BK": bk},
                      {"num_warps": num_warps, "num_stages": num_stages},
                      config_label=f"{bm}x{bn}x{bk}_w{num_warps}_s{num_stages}", uses_dot=True)


# 256x128 fp32 through LDS = 128 KiB: above gfx942's 64 KiB, within gfx950's 160 KiB; 16 warps keep
# the registers low. Triton 3.9 stages the whole tile for both archs, so on gfx942 LDS is the only thing
# wrong with it; Triton 3.4 cuts the gfx942 conversion into pieces that fit (33 KiB).
TRANSPOSE_128K = KernelSpec("toy_transpose", _toy_transpose, TR_SIG, {"R": 256, "C": 128},
                            {"num_warps": 16}, config_label="256x128_fp32")


# Every compile the tests below look at, made in one batch.
JOBS = {
    **{("add", arch): (add_spec(), arch) for arch in ARCHS},
    **{("mm64", arch): (mm_spec(64, 64, 32), arch) for arch in ARCHS},
    **{("transpose", arch): (TRANSPOSE_128K, arch) for arch in ARCHS},
    # A 256x256 bf16 tile with BK=256 asks gfx942 for 128 KiB of LDS (twice the chip) and spills.
    ("mm256", "gfx942"): (mm_spec(256, 256, 256, num_warps=8, num_stages=2), "gfx942"),
    ("add_as_dot", "gfx942"): (add_spec(uses_dot=True), "gfx942"),
    ("typo", "gfx942"): (add_spec(options={"num_warps": 4, "waves_per_euu": 2}), "gfx942"),
    ("untyped", "gfx942"): (add_spec(signature={"x_ptr": "*bf16"}), "gfx942"),  # 3 params untyped
    # A kernel under @triton.heuristics; the spec gives the constexpr the heuristic would derive.
    ("heuristics", "gfx950"): (KernelSpec("toy_scale", _toy_scale, {"x_ptr": "*fp32", "n": "i32"},
                                          {"BLOCK": 256, "EVEN": False}, {"num_warps": 4}), "gfx950"),
}


@pytest.fixture(scope="module")
def reports():
    return dict(zip(JOBS, aot.compile_reports(JOBS.values())))


@pytest.mark.parametrize("arch", ARCHS)
def test_elementwise_compiles_clean(reports, arch):
    r = reports["add", arch]
    assert (r.kernel, r.config_label, r.arch) == ("toy_add", "default", arch)
    assert r.compiled and r.error is None, r.error
    assert r.ok and r.verdict == "PASS", r.reasons
    assert r.vgprs is not None and 0 < r.vgprs < 64
    assert r.sgprs is not None and r.sgprs > 0
    assert (r.vgpr_spills, r.sgpr_spills, r.scratch_bytes) == (0, 0, 0)
    assert r.lds_bytes == 0 and r.lds_limit == {"gfx942": 65536, "gfx950": 163840}[arch]
    assert r.mfma_count == 0
    assert r.occupancy is not None and 1 <= r.occupancy <= 8
    assert r.num_warps == 4


@pytest.mark.parametrize("arch", ARCHS)
def test_dot_lowers_to_mfma(reports, arch):
    r = reports["mm64", arch]
    assert r.ok, r.reasons
    assert r.mfma_count and r.mfma_count > 0
    assert 0 < r.lds_bytes <= r.lds_limit
    assert (r.vgpr_spills, r.sgpr_spills, r.scratch_bytes) == (0, 0, 0)


def test_uses_dot_without_mfma_fails(reports):
    r = reports["add_as_dot", "gfx942"]
    assert r.compiled and not r.ok
    assert r.reasons == ["uses_dot but no v_mfma instruction"]


def test_huge_bf16_dot_fails_on_gfx942(reports):
    r = reports["mm256", "gfx942"]
    assert r.compiled, r.error
    assert not r.ok and r.verdict == "FAIL"
    assert r.mfma_count > 0
    assert r.lds_bytes == 128 * 1024
    assert "LDS 131072 B > gfx942 limit 65536 B" in r.reasons
    assert r.vgpr_spills > 0 and r.scratch_bytes > 0
    assert f"{r.vgpr_spills} VGPRs spilled" in r.reasons
    assert r.occupancy == 0  # no workgroup of it fits in one CU's LDS


def test_lds_limit_is_per_arch(reports):
    r942, r950 = reports["transpose", "gfx942"], reports["transpose", "gfx950"]
    assert 65536 < r950.lds_bytes <= 163840
    assert r950.ok, r950.reasons
    # The same LDS judged against gfx942's limit fails, for that reason alone.
    assert aot.verdict_reasons(replace(r950, arch="gfx942", lds_limit=65536)) == [
        f"LDS {r950.lds_bytes} B > gfx942 limit 65536 B"]
    if r942.lds_bytes > 65536:  # Triton 3.9
        assert r942.reasons == [f"LDS {r942.lds_bytes} B > gfx942 limit 65536 B"]
    else:  # Triton 3.4 fits the transpose into gfx942's LDS
        assert r942.ok, r942.reasons


def test_misspelt_option_fails(reports):
    r = reports["typo", "gfx942"]
    assert r.compiled and not r.ok
    assert len(r.reasons) == 1 and "waves_per_euu" in r.reasons[0]


def test_compile_error_is_captured(reports):
    r = reports["untyped", "gfx942"]
    assert not r.compiled and not r.ok
    assert r.error and r.reasons[0].startswith("compile failed")
    assert r.vgprs is None and r.mfma_count is None


def test_wrapped_kernel_compiles(reports):
    r = reports["heuristics", "gfx950"]
    assert r.ok, r.reasons
    assert r.vgprs > 0 and r.mfma_count == 0


def test_single_compile_report_matches_batch(reports):
    assert compile_report(add_spec(), "gfx950") == reports["add", "gfx950"]


SYNTHETIC_SPILLING = """\
\t.text
my_kernel:
\tv_mfma_f32_32x32x8_bf16 a[0:15], v[2:3], v[4:5], a[0:15]
\tbuffer_store_dword v7, off, s[0:3], 0 offset:16 ; 4-byte Folded Spill
\tv_mfma_f32_32x32x8_bf16 a[16:31], v[2:3], v[6:7], a[16:31]
\ts_endpgm
; NumSgprs: 88
; NumVgprs: 256
; NumAgprs: 252
; TotalNumVgprs: 508
; ScratchSize: 260
; Occupancy: 1
\t.amdgpu_metadata
  - .agpr_count:     252
    .sgpr_count:     88
    .sgpr_spill_count: 12
    .vgpr_count:     508
    .vgpr_spill_count: 496
"""


def test_parse_amdgcn_synthetic_spills():
    got = parse_amdgcn(SYNTHETIC_SPILLING)
    assert got == {"vgprs": 508, "agprs": 252, "sgprs": 88, "scratch_bytes": 260, "occupancy": 1,
                   "vgpr_spills": 496, "sgpr_spills": 12, "mfma_count": 2}
    r = KernelReport("k", "cfg", "gfx942", compiled=True, lds_limit=65536, lds_bytes=1024, **got)
    reasons = aot.verdict_reasons(r)
    assert reasons[:3] == ["496 VGPRs spilled", "12 SGPRs spilled", "260 B scratch per lane"]
    assert len(reasons) == 4 and reasons[3].startswith("1 wave(s)/SIMD (< 2)")  # and one wave per SIMD
    # SGPR spills with no scratch went to VGPR lanes; they fail all the same, saying so.
    r = KernelReport("k", "cfg", "gfx942", compiled=True, lds_limit=65536, lds_bytes=0, scratch_bytes=0,
                     vgpr_spills=0, sgpr_spills=42)
    assert aot.verdict_reasons(r) == ["42 SGPRs spilled (to VGPR lanes, no scratch)"]


def test_parse_amdgcn_missing_fields_are_unknown():
    got = parse_amdgcn("\ts_endpgm\n; TotalNumSgprs: 21\n    .vgpr_count:     12\n")
    assert got["sgprs"] == 21 and got["vgprs"] == 12
    assert got["scratch_bytes"] is None and got["occupancy"] is None
    assert got["vgpr_spills"] is None and got["sgpr_spills"] is None
    r = KernelReport("k", "cfg", "gfx942", compiled=True, **got)
    assert aot.verdict_reasons(r) == ["no scratch or spill figures in the AMDGCN text"]


def test_ast_source_keyword_follows_triton(monkeypatch):
    import triton.compiler

    seen = {}

    class OldASTSource:  # Triton before `constexprs`
        def __init__(self, fn, signature, constants=None, attrs=None):
            seen.update(constants=constants)

    monkeypatch.setattr(triton.compiler, "ASTSource", OldASTSource)
    aot._ast_source(add_spec())
    assert seen == {"constants": {"BLOCK": 1024}}


@pytest.fixture
def registry(monkeypatch):
    """An empty registry (core lists what is registered and imports no op)."""
    monkeypatch.setattr(aot, "_REGISTRY", {})
    return aot._REGISTRY


def test_cli_fails_when_nothing_registered(registry, capsys):
    assert aot.cli(["--check"]) == 1
    assert "no kernel spec registered" in capsys.readouterr().err


def test_cli_without_a_mode_says_why(registry, capsys):
    with pytest.raises(SystemExit) as exit_info:
        aot.cli([])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "--check" in err and "--build" in err
    with pytest.raises(SystemExit):
        aot.cli(["--check", "--arch", "sm_90"])  # NVIDIA targets are for --build only
    assert "sm_XY with --build" in capsys.readouterr().err


def test_cli_passes_and_fails(registry, capsys, tmp_path):
    aot.register_aot_specs("toy", lambda: [add_spec(), add_spec(name="toy_dotless", uses_dot=True)])
    assert [s.name for s in aot.registered_specs()] == ["toy_add", "toy_dotless"]

    # One failing kernel fails the run; the tables say which kernel and why, the JSON has the figures.
    path = tmp_path / "aot.json"
    assert aot.cli(["--check", "--json", str(path)]) == 1
    out = capsys.readouterr().out
    assert "== gfx942 (LDS limit 65536 B)" in out and "== gfx950 (LDS limit 163840 B)" in out
    assert out.count("FAIL toy_dotless [default]: uses_dot but no v_mfma instruction") == 2
    assert "2 kernel configs x 2 archs: 2 passed, 2 failed" in out
    dump = json.loads(path.read_text())
    assert dump["triton_version"] == triton.__version__
    assert sorted((r["kernel"], r["arch"], r["ok"]) for r in dump["reports"]) == [
        ("toy_add", "gfx942", True), ("toy_add", "gfx950", True),
        ("toy_dotless", "gfx942", False), ("toy_dotless", "gfx950", False)]
    assert all(r["vgprs"] > 0 for r in dump["reports"])

    # --kernel narrows to the passing one; a filter matching nothing is an error.
    assert aot.cli(["--check", "--arch", "gfx942", "--kernel", "add"]) == 0
    out = capsys.readouterr().out
    assert "== gfx950" not in out and "1 kernel configs x 1 archs: 1 passed, 0 failed" in out
    assert aot.cli(["--check", "--kernel", "no_such_kernel"]) == 1


def test_table_format():
    r = KernelReport("k", "cfg", "gfx942", compiled=True, vgprs=508, sgprs=106, lds_bytes=131072,
                     lds_limit=65536, scratch_bytes=260, vgpr_spills=496, sgpr_spills=None, occupancy=0,
                     mfma_count=128)
    r.reasons = aot.verdict_reasons(r)
    lines = aot.format_table([r], "gfx942").splitlines()
    assert lines[0] == "== gfx942 (LDS limit 65536 B)"
    assert lines[3].split() == ["k", "cfg", "508", "106", "131072", "(200%)", "260", "496/?", "0", "128", "FAIL"]
    assert lines[4] == "  FAIL k [cfg]: LDS 131072 B > gfx942 limit 65536 B; 496 VGPRs spilled; 260 B scratch per lane"


def test_low_occupancy_fails_unless_a_reason_is_given():
    """Under 2 waves/SIMD a config fails, unless its spec says why; then it passes, flagged LOW."""
    r = KernelReport("k", "cfg", "gfx942", compiled=True, vgprs=274, sgprs=42, lds_bytes=0, lds_limit=65536,
                     scratch_bytes=0, vgpr_spills=0, sgpr_spills=0, occupancy=1, mfma_count=0)
    r.reasons = aot.verdict_reasons(r)
    assert not r.ok and "1 wave(s)/SIMD" in r.reasons[0]
    r = replace(r, low_occupancy_reason="a tuner candidate")
    r.reasons = aot.verdict_reasons(r)
    assert r.ok
    table = aot.format_table([r], "gfx942").splitlines()
    assert table[3].split()[-4:-2] == ["1", "LOW"]
    assert table[4] == "  LOW  k [cfg]: 1 wave(s)/SIMD, accepted: a tuner candidate"
    two = replace(r, occupancy=2, low_occupancy_reason="")
    assert aot.verdict_reasons(two) == []


def test_registered_specs_rejects_non_specs(registry):
    aot.register_aot_specs("toy", lambda: ["not a spec"])
    with pytest.raises(TypeError, match="toy"):
        list(aot.registered_specs())


def test_a_compile_listed_twice_is_registered_once(registry):
    """Tuned rows of several shapes often name one tile: the same compile is one spec (one object, one manifest
    row), under the same name or another, from one provider or two."""
    aot.register_aot_specs("toy", lambda: [add_spec(), add_spec(config_label="tuned"), add_spec(name="toy_add2"),
                                           add_spec(name="toy_add3", options={"num_warps": 8})])
    aot.register_aot_specs("toy", lambda: [add_spec()])
    # toy_add2 is toy_add's compile under another name: listed once, under the first
    assert [s.name for s in aot.registered_specs()] == ["toy_add", "toy_add3"]


@pytest.mark.parametrize("change", [{"constexprs": {"BLOCK": 512}}, {"options": {"num_warps": 8}},
                                    {"signature": {**ADD_SIG, "n": "i64"}}, {"divisible_by_16": ("x_ptr",)},
                                    {"fn": _toy_transpose}])
def test_two_compiles_under_one_name_are_an_error(registry, change):
    aot.register_aot_specs("toy", lambda: [add_spec(), add_spec(**change)])
    with pytest.raises(ValueError, match="toy_add"):
        list(aot.registered_specs())


def test_every_op_module_is_imported():
    # An op registers its specs where its kernels live (ops/<op>/kernels.py), not in its __init__: the CLI
    # loads every op module first, and core imports none (issue 18: core stays below the ops).
    import pkgutil
    import sys

    import aiter_ext.ops

    aiter_ext.ops.load_kernel_modules()
    names = [m.name for m in pkgutil.walk_packages(aiter_ext.ops.__path__, "aiter_ext.ops.")]
    assert [n for n in names if n not in sys.modules] == []


def test_core_imports_no_op():
    """Core stays below the ops: no module of aiter_ext.core names aiter_ext.ops, nor the package face
    (``import aiter_ext``, whose __init__ imports the ops); the version comes from aiter_ext._version."""
    import ast
    from pathlib import Path

    import aiter_ext.core

    offenders = []
    for path in Path(aiter_ext.core.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Constant) and str(node.value).startswith("aiter_ext.ops"):
                names = [node.value]
            offenders += [f"{path.name}: {n}" for n in names if n == "aiter_ext" or n.startswith("aiter_ext.ops")]
    assert offenders == []


def test_one_name_per_op():
    """The compile check, the code objects (hsa/<arch>/<op>/) and the dispatcher name an op alike: every group
    of kernel specs is registered under a dispatcher op's name."""
    import aiter_ext.ops
    from aiter_ext.core.backend import OPS

    aiter_ext.ops.load_kernel_modules()
    assert sorted(set(aot.registered_specs_by_op()) - set(OPS)) == []


# The forked workers (``workers``) must give the serial compile's reports and binaries. Under TRITON_INTERPRET=1
# compile_reports compiles serially in a subprocess, so both compiles are made in a Python without it, each
# from scratch (TRITON_ALWAYS_COMPILE: the second must not read what the first put in Triton's cache).
PARALLEL_SCRIPT = """
import json, multiprocessing
from dataclasses import fields
from aiter_ext.core import aot
from aiter_ext.ops import load_kernel_modules

load_kernel_modules()
jobs = [(s, "gfx942") for s in aot.registered_specs("gfx942") if "merge_pair[" in s.name][:5]
forks, get_context = [], multiprocessing.get_context
multiprocessing.get_context = lambda method=None: forks.append(method) or get_context(method)
serial = aot.compile_reports(jobs, keep_binary=True, workers=1)
parallel = aot.compile_reports(jobs, keep_binary=True, workers=2)
import torch
torch.cuda.is_initialized = lambda: True  # with CUDA on, the workers would inherit a broken CUDA: no fork
after_cuda = aot.compile_reports(jobs[:2], keep_binary=True, workers=2)
print(json.dumps({
    "forks": forks, "after_cuda": after_cuda == serial[:2], "jobs": [s.name for s, _ in jobs],
    "serial": [r.kernel for r in serial], "parallel": [r.kernel for r in parallel],
    "compiled": [bool(r.ok and r.binary) for r in serial],
    "differ": [[f.name for f in fields(r) if getattr(r, f.name) != getattr(p, f.name)]
               for r, p in zip(serial, parallel)]}))
"""


def test_parallel_compile_matches_serial(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=os.pathsep.join(p for p in sys.path if p), TRITON_ALWAYS_COMPILE="1",
               TRITON_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", PARALLEL_SCRIPT], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["forks"] == ["fork"]  # the second compile went through the pool, the third (CUDA "on") not
    assert got["after_cuda"]
    assert len(got["jobs"]) == 5 and got["serial"] == got["parallel"] == got["jobs"]  # in the jobs' order
    assert all(got["compiled"])
    assert got["differ"] == [[]] * 5  # every field equal, the code objects' bytes too


def test_every_tuned_tile_has_a_spec_on_the_arch_it_was_measured_on():
    """A tuned row picks a tile the heuristic would not: without its spec no object is built for it, and the
    call it serves compiles with Triton at start-up (what the cold-start benchmark found on the H100)."""
    from aiter_ext.core.tuned import load_rows
    from aiter_ext.ops.norm import kernels as norm
    from aiter_ext.ops.rope import kernels as rope

    rows = [r for r in load_rows("rmsnorm") if r["backend"] == "triton"]
    assert {r["arch"] for r in rows} >= {"sm_90"}
    for r in rows:
        cfg = {**norm.launch_config(int(r["num_rows"]), int(r["hidden"]), r["arch"]), **json.loads(r["config"])}
        assert f"rmsnorm[{r['dtype']}-r{cfg['BLOCK_R']}b{cfg['BLOCK_H']}w{cfg['num_warps']}-even]" in {
            s.name for s in norm.aot_specs(r["arch"])}, r
    rows = [r for r in load_rows("rope") if r["backend"] == "triton" and json.loads(r["config"])]
    assert rows
    for r in rows:
        c, d = json.loads(r["config"]), r["head_dim"]
        names = {s.name for s in rope.aot_specs(r["arch"])}
        for variant in ("rope", "llama31", "llama31_pos_ids", "cos_sin_cache"):
            assert f"rope[{variant}-{r['dtype']}-d{d}-r{d}-t{c['BLOCK_T']}h{c['BLOCK_H']}w{c['num_warps']}]" in names, r
    from aiter_ext.ops.paged_kv import kernels as paged_kv
    from aiter_ext.ops.sampling import logits_kernels, renorm_kernels

    for op, provider, tile_keys in (("paged_kv_append", paged_kv.aot_specs, ("BLOCK_R",)),
                                    ("renorm", renorm_kernels.aot_specs, ("BLOCK",)),
                                    ("softmax", logits_kernels.softmax_specs, ("BLOCK",))):
        rows = [r for r in load_rows(op) if r["backend"] == "triton" and json.loads(r["config"]).get("num_warps")]
        assert rows, op
        for r in rows:
            c = json.loads(r["config"])
            assert any(all(s.constexprs.get(k) == c[k] for k in tile_keys) and s.options["num_warps"] == c["num_warps"]
                       for s in provider(r["arch"])), (op, r)


def test_a_tuned_fp4_tile_gets_its_specs_on_its_arch_only(tmp_path, monkeypatch):
    """A row written here (AITER_EXT_TUNED_CSV_NORM_FP4, in place of the measured ones) must add its tile, in
    every format and form, to sm_90's specs and to no other arch's."""
    from aiter_ext.ops.norm_fp4 import kernels as fp4

    before = {s.name for s in fp4.aot_specs("sm_90")}
    table = tmp_path / "norm_fp4_tuned.csv"
    table.write_text('arch,cu_num,num_tokens,hidden,dtype,backend,config,us,bw_gbs,tflops,err\n'
                     'sm_90,132,8192,4096,bf16,triton,"{""ROWS"": 2, ""num_warps"": 16}",40.0,0,0,0\n')
    monkeypatch.setenv("AITER_EXT_TUNED_CSV_NORM_FP4", str(table))
    added = {s.name for s in fp4.aot_specs("sm_90")} - before
    assert len(added) == 6 * 3 and all("-h4096-r2b4096w16]" in n and "-bf16-" in n for n in added), sorted(added)
    assert {s.name for s in fp4.aot_specs("gfx942")} == {s.name for s in fp4.aot_specs("gfx950")}
    assert not any("-h4096-r2b4096w16]" in s.name for s in fp4.aot_specs("gfx942"))


def test_a_tuned_attention_tile_gets_its_specs_on_its_arch_only(tmp_path, monkeypatch):
    """A tuned attention row (ops/attention/tuning.py) adds its tile, causal or not, split or direct, to the specs
    of the arch it was measured on and to no other's."""
    from aiter_ext.ops.attention import kernels as attention

    head = ("arch,cu_num,num_qo_heads,num_kv_heads,head_dim,dtype,kv_dtype,packed_rows,kv_len,backend,"
            "config,us,bw_gbs,tflops,err\n")
    (tmp_path / "none.csv").write_text(head)  # first no rows (the committed table's rows add sm_90 specs too)
    monkeypatch.setenv("AITER_EXT_TUNED_CSV_ATTENTION", str(tmp_path / "none.csv"))
    before = {s.name: s for s in attention.aot_specs("sm_90")}
    before_amd = {s.name for s in attention.aot_specs("gfx942")}
    table = tmp_path / "attention_tuned.csv"
    table.write_text(head +
                     'sm_90,132,32,8,128,bf16,bf16,4,1024,triton,"{""BLOCK_N"": 32, ""num_warps"": 8, '
                     '""num_stages"": 2, ""prefetch_pages"": true}",20.0,0,0,0\n')
    monkeypatch.setenv("AITER_EXT_TUNED_CSV_ATTENTION", str(table))
    after = {s.name: s for s in attention.aot_specs("sm_90")}
    added = [after[n] for n in after.keys() - before.keys()]
    assert len(added) == 4, sorted(after.keys() - before.keys())
    for spec in added:
        assert spec.constexprs["BLOCK_N"] == 32 and spec.constexprs["PREFETCH_PAGES"] is True
        assert spec.constexprs["BLOCK_M"] == 16 and spec.constexprs["GROUP"] == 4 and spec.constexprs["HEAD_DIM"] == 128
        assert spec.options == {"num_warps": 8, "num_stages": 2}
    assert {(s.constexprs["CAUSAL"], s.constexprs["SPLIT"]) for s in added} == {(c, p) for c in (True, False)
                                                                                  for p in (True, False)}
    assert {s.name for s in attention.aot_specs("gfx942")} == before_amd  # not another arch's


def test_tuned_append_renorm_and_softmax_tiles_get_their_specs_on_their_arch_only(tmp_path, monkeypatch):
    """Rows of the three newer tune targets (paged_kv_append, renorm, softmax: row kernel and chunked) add their
    tiles to the specs of the arch they were measured on and to no other's."""
    from aiter_ext.ops.paged_kv import kernels as paged_kv
    from aiter_ext.ops.sampling import logits_kernels, renorm_kernels

    def names(provider, arch):
        return {s.name: s for s in provider(arch)}

    head = "arch,cu_num,{keys},backend,config,us,bw_gbs,tflops,err\n"
    tables = {
        "PAGED_KV_APPEND": (head.format(keys="num_tokens,num_kv_heads,head_dim,dtype")
                            + 'sm_90,132,8192,8,128,bf16,triton,"{""BLOCK_R"": 64, ""num_warps"": 8}",9.0,0,0,0\n'),
        "RENORM": (head.format(keys="rows,vocab,dtype")
                   + 'sm_90,132,16,128256,fp32,triton,"{""BLOCK"": 8192, ""num_warps"": 16}",50.0,0,0,0\n'),
        "SOFTMAX": (head.format(keys="rows,vocab,dtype")
                    + 'sm_90,132,64,32000,fp32,triton,"{""chunked"": false, ""BLOCK"": 8192, ""num_warps"": 16}",9,0,0,0\n'
                    + 'sm_90,132,1,256000,fp32,triton,"{""chunked"": true, ""BLOCK"": 2048, ""num_warps"": 4}",9,0,0,0\n'),
    }
    providers = (paged_kv.aot_specs, renorm_kernels.aot_specs, logits_kernels.softmax_specs)
    for op, text in tables.items():  # first no rows (the committed tables' rows may hold these tiles), then the row
        (tmp_path / f"{op}-none.csv").write_text(text.splitlines()[0] + "\n")
        monkeypatch.setenv(f"AITER_EXT_TUNED_CSV_{op}", str(tmp_path / f"{op}-none.csv"))
    before = [names(p, "sm_90") for p in providers]
    for op, text in tables.items():
        (tmp_path / f"{op}.csv").write_text(text)
        monkeypatch.setenv(f"AITER_EXT_TUNED_CSV_{op}", str(tmp_path / f"{op}.csv"))
    added = [{n: s for n, s in names(p, "sm_90").items() if n not in b} for p, b in zip(providers, before)]
    appends, renorms, softmaxes = added
    # the row's dtype only (the fp8 cache's 1-byte tile is another), at its dim
    assert [(s.constexprs["BLOCK_R"], s.constexprs["BLOCK_D"], s.options["num_warps"]) for s in appends.values()] \
        == [(64, 128, 8)], sorted(appends)
    # the three modes, each with its threshold per row (2) or scalar (1), at the tile's width and warps, one row per
    # program at this width
    assert sorted((s.constexprs["MODE"], s.constexprs["PARAM"]) for s in renorms.values()) == [
        (0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)], sorted(renorms)
    assert all((s.constexprs["BLOCK"], s.constexprs["ROWS"], s.options["num_warps"]) == (8192, 1, 16)
               for s in renorms.values())
    # the row kernel's tile for the first softmax row; the chunked path's two passes (125 chunks of 2048) for the other
    kinds = sorted((s.name.split("[")[0], s.constexprs["BLOCK"], s.options["num_warps"]) for s in softmaxes.values())
    assert kinds == [("chunk_stats", 2048, 4), ("softmax", 8192, 16), ("softmax_chunk", 2048, 4)], sorted(softmaxes)
    assert all(s.constexprs["NCHUNKS"] == 128 for s in softmaxes.values() if "chunk" in s.name)
    for provider, extra in zip(providers, added):  # not another arch's
        assert not set(names(provider, "gfx942")) & set(extra)


def test_a_tuned_sampling_tile_gets_its_specs_for_its_filter_on_its_arch_only(tmp_path, monkeypatch):
    """A tuned ``sampling`` row (``aiter-ext tune sampling``) adds the row kernel at its tile for its own filter,
    each threshold scalar or per row, to the specs of the arch it was measured on; a row of the policy's own
    choice (``{}``) adds none."""
    from aiter_ext.ops.sampling import kernels as sampling

    head = "arch,cu_num,rows,vocab,dtype,filter,backend,config,us,bw_gbs,tflops,err\n"
    (tmp_path / "none.csv").write_text(head)
    monkeypatch.setenv("AITER_EXT_TUNED_CSV_SAMPLING", str(tmp_path / "none.csv"))
    before = {s.name for s in sampling.aot_specs("sm_90")}
    before_amd = {s.name for s in sampling.aot_specs("gfx942")}
    tile = '"{""split"": false, ""chunked"": false, ""ROWS"": 1, ""BLOCK"": 2048, ""num_warps"": 16}"'
    (tmp_path / "rows.csv").write_text(head + f"sm_90,132,64,128256,fp32,top_k_top_p,triton,{tile},9,0,0,0\n"
                                       f"sm_90,132,1,32000,fp32,plain,triton,{tile},9,0,0,0\n"
                                       "sm_90,132,256,128256,fp32,min_p,triton,{},9,0,0,0\n")
    monkeypatch.setenv("AITER_EXT_TUNED_CSV_SAMPLING", str(tmp_path / "rows.csv"))
    added = [s for s in sampling.aot_specs("sm_90") if s.name not in before]
    assert sorted((s.constexprs["TOP_K"], s.constexprs["TOP_P"], s.constexprs["MIN_P"]) for s in added) == [
        (0, 0, 0), (1, 1, 0), (2, 2, 0)], [s.name for s in added]
    assert all(s.constexprs["BLOCK"] == 2048 and s.constexprs["ROWS"] == 1 and s.options == {"num_warps": 16}
               for s in added)
    assert {s.name for s in sampling.aot_specs("gfx942")} == before_amd
