"""rmsnorm, gemma_rmsnorm, fused_add_rmsnorm, gemma_fused_add_rmsnorm (FlashInfer's RMSNorm family).

pytest: both backends against the fp32 reference over FlashInfer's grid (trimmed on the CPU), outputs
poisoned first; QK-norm on q/k views of a packed qkv buffer; the chunked path; the unrounded fused sum;
Gemma's +1; eps's default; one test per bad-input rule; torch.compile and graph capture.
CLI (``python op_tests/test_norm.py [--quick]``): the benchmark, beside FlashInfer when it is installed.

bf16 on the CPU: the Triton interpreter casts fp32 to bf16 by truncation (the GPU rounds to nearest
even), so bf16 results there may sit one bf16 ulp from the reference; the bf16 tolerance (rtol 1e-2,
above bf16's relative ulp of 2^-7) absorbs that. Exact comparisons use fp16.
"""

from __future__ import annotations

import inspect
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import DEVICE, FULL_GRID, backend_params, grid  # noqa: E402

from aiter_ext.core.testing import assert_close, poisoned_like  # noqa: E402
from aiter_ext.ops import norm  # noqa: E402
from aiter_ext.ops.norm import kernels  # noqa: E402
from aiter_ext.ops.norm.backends import RMSNORM  # noqa: E402
from aiter_ext.ops.norm.reference import fused_add_rmsnorm_ref, rmsnorm_ref  # noqa: E402

BACKENDS = backend_params(RMSNORM, ("torch", "triton"))
DTYPES = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]
GEMMA = [pytest.param(False, id="llama"), pytest.param(True, id="gemma")]
FULL_BATCH, FULL_HIDDEN = (1, 19, 99, 989), (111, 500, 1024, 3072, 3584, 4096, 8192, 16384)
# CPU: a non-power-of-two hidden (111, 500, 3584), a power of two, and a chunked one (20000 > 16384, ragged).
BATCH_HIDDEN = grid([(1, 111), (19, 500), (3, 3584), (2, 4096), (2, 20000)],
                    [(b, h) for b in FULL_BATCH for h in FULL_HIDDEN] + [(3, 20000), (2, 32768)])
PAIR_IDS = [f"B{b}-H{h}" for b, h in BATCH_HIDDEN]


def rows_tensor(*shape, dtype, contiguous=True, scale=1.0):
    """Fresh N(0, scale^2) values; not contiguous: the first half of rows twice as wide (strided rows)."""
    if contiguous:
        return (torch.randn(*shape, device=DEVICE) * scale).to(dtype)
    wide = (torch.randn(*shape[:-1], 2 * shape[-1], device=DEVICE) * scale).to(dtype)
    return wide[..., : shape[-1]]


def norm_fn(gemma):
    return norm.gemma_rmsnorm if gemma else norm.rmsnorm


def fused_fn(gemma):
    return norm.gemma_fused_add_rmsnorm if gemma else norm.fused_add_rmsnorm


# --------------------------------------------------------------------------------------------------
# rmsnorm / gemma_rmsnorm


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gemma", GEMMA)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("specify_out", [True, False], ids=["out", "alloc"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
@pytest.mark.parametrize("batch,hidden", BATCH_HIDDEN, ids=PAIR_IDS)
def test_rmsnorm(backend, gemma, dtype, specify_out, contiguous, batch, hidden):
    x = rows_tensor(batch, hidden, dtype=dtype, contiguous=contiguous)
    w = torch.randn(hidden, device=DEVICE).to(dtype)
    ref = rmsnorm_ref(x, w, 1e-6, gemma)
    x_before = x.clone()
    if specify_out:  # any element left unwritten shows as NaN; strided inputs get a strided out too
        wide = torch.empty(batch, 2 * hidden, device=DEVICE, dtype=dtype)
        out = poisoned_like(ref) if contiguous else poisoned_like(wide)[:, :hidden]
        y = norm_fn(gemma)(x, w, out=out, backend=backend)
        assert y is out
    else:
        y = norm_fn(gemma)(x, w, backend=backend)
    assert_close(y, ref, name="out")
    assert torch.equal(x, x_before)  # the input is read only


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("specify_out", [True, False], ids=["out", "alloc"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "packed-qkv"])
@pytest.mark.parametrize("batch,num_heads,head_dim", grid(
    [(3, 4, 64), (5, 7, 128), (2, 16, 512)],
    [(b, h, d) for b in FULL_BATCH for h in (4, 7, 16) for d in (64, 128, 256, 512)]))
def test_qknorm(backend, dtype, specify_out, contiguous, batch, num_heads, head_dim):
    """[B, heads, D] with weight [D]: every (token, head) row normalised. Not contiguous: q and k are
    views of one packed [B, 3 * heads, D] qkv buffer (token stride 3 * heads * D)."""
    if contiguous:
        qs = [rows_tensor(batch, num_heads, head_dim, dtype=dtype)]
    else:
        qkv = rows_tensor(batch, 3 * num_heads, head_dim, dtype=dtype)
        qs = [qkv[:, :num_heads], qkv[:, num_heads:2 * num_heads]]
    w = torch.randn(head_dim, device=DEVICE).to(dtype)
    for q in qs:
        ref = rmsnorm_ref(q, w)
        out = poisoned_like(ref) if specify_out else None
        y = norm.rmsnorm(q, w, out=out, backend=backend)
        assert_close(y, ref, name="q/k")
        y = norm.gemma_rmsnorm(q, w, out=out, backend=backend)
        assert_close(y, rmsnorm_ref(q, w, gemma=True), name="gemma q/k")


# --------------------------------------------------------------------------------------------------
# fused_add_rmsnorm / gemma_fused_add_rmsnorm


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gemma", GEMMA)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
@pytest.mark.parametrize("batch,hidden", BATCH_HIDDEN, ids=PAIR_IDS)
def test_fused_add_rmsnorm(backend, gemma, dtype, contiguous, batch, hidden):
    x = rows_tensor(batch, hidden, dtype=dtype, contiguous=contiguous)
    r = torch.randn(batch, hidden, device=DEVICE).to(dtype)
    w = torch.randn(hidden, device=DEVICE).to(dtype)
    x_ref, r_ref = fused_add_rmsnorm_ref(x, r, w, 1e-6, gemma)
    fused_fn(gemma)(x, r, w, backend=backend)
    assert_close(x, x_ref, name="input (normed)")
    assert_close(r, r_ref, name="residual (sum)")
    if dtype == torch.float16:  # the stored sum is one rounding of an exact fp32 sum
        assert torch.equal(r, r_ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_add_qk_layout_and_strided_residual(backend):
    """The fused form on [B, heads, D] views (beyond FlashInfer, which takes 2-D only)."""
    x = rows_tensor(6, 2 * 4, 128, dtype=torch.float16)[:, :4]
    r = rows_tensor(6, 4, 128, dtype=torch.float16, contiguous=False)
    w = torch.randn(128, device=DEVICE).to(torch.float16)
    x_ref, r_ref = fused_add_rmsnorm_ref(x, r, w)
    norm.fused_add_rmsnorm(x, r, w, backend=backend)
    assert_close(x, x_ref, name="input")
    assert torch.equal(r, r_ref)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # the interpreter casting 80000 to fp16
@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_normalises_the_unrounded_sum(backend):
    """Some sums overflow fp16 (x = r = 40000: 80000 > 65504). The residual stores inf (its rounding),
    but the norm is taken of the fp32 sum, so the output stays finite; normalising the rounded residual
    instead would give NaN and inf, far beyond any tolerance."""
    hidden = 256
    x = torch.randn(4, hidden, device=DEVICE).to(torch.float16)
    r = torch.randn(4, hidden, device=DEVICE).to(torch.float16)
    x[:, :3], r[:, :3] = 40000.0, 40000.0
    w = torch.randn(hidden, device=DEVICE).to(torch.float16)
    x_ref, r_ref = fused_add_rmsnorm_ref(x, r, w)
    rounded_first = rmsnorm_ref(x + r, w)  # the common bug: normalise cast(x + r)
    assert torch.isinf(r_ref[:, :3]).all() and torch.isfinite(x_ref).all()
    assert not torch.isfinite(rounded_first).all()
    norm.fused_add_rmsnorm(x, r, w, backend=backend)
    assert torch.equal(r, r_ref)
    assert torch.isfinite(x).all()
    assert_close(x, x_ref, name="input (normed)")


# --------------------------------------------------------------------------------------------------
# The kernel's tilings, semantics details, and edge cases.


@pytest.mark.parametrize("fused", [False, True], ids=["norm", "fused"])
@pytest.mark.parametrize("gemma", GEMMA)
@pytest.mark.parametrize("shape,block_r,block_h", [
    ((5, 500), 1, 128),  # chunked, ragged last chunk
    ((4, 1024), 2, 256),  # chunked, even: no masks, two rows per program
    ((3, 111), 2, 32),  # chunked, ragged rows and columns
    ((7, 100), 4, 128),  # resident, several rows per program, ragged
    ((8, 64), 4, 64),  # resident, several rows per program, even
    ((5, 7, 64), 4, 64),  # QK layout: a program's rows span heads and tokens of a packed qkv view
    ((3, 5, 96), 8, 32),  # QK layout, chunked
], ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_forced_tiles(fused, gemma, shape, block_r, block_h):
    """Tiles the CPU grid does not reach by itself: launch_config picks several rows per program only
    from 1024 rows, and the chunked path above 16384 (those run on a GPU's full grid)."""
    if len(shape) == 3:  # q of a packed [B, 3 * heads, D] buffer
        x = rows_tensor(shape[0], 3 * shape[1], shape[2], dtype=torch.float16)[:, :shape[1]]
    else:
        x = rows_tensor(*shape, dtype=torch.float16, contiguous=False)
    r = torch.randn(*shape, device=DEVICE).to(torch.float16)
    w = torch.randn(shape[-1], device=DEVICE).to(torch.float16)
    config = {"BLOCK_R": block_r, "BLOCK_H": block_h, "num_warps": 2}
    if fused:
        x_ref, r_ref = fused_add_rmsnorm_ref(x, r, w, 1e-6, gemma)
        kernels.launch(x, r, w, x, 1e-6, gemma, config, "cpu")
        assert torch.equal(r, r_ref)
        assert_close(x, x_ref, name="input")
    else:
        out = poisoned_like(x.contiguous())
        kernels.launch(x, None, w, out, 1e-6, gemma, config, "cpu")
        assert_close(out, rmsnorm_ref(x, w, 1e-6, gemma), name="out")


def test_aot_specs_cover_every_amd_launch_config():
    """The AMD compile check must compile every tile the launcher can pick on gfx942/gfx950."""
    tiles = {tuple(sorted(cfg.items())) for _, cfg in kernels._aot_tiles("gfx942")}
    for arch in ("gfx942", "gfx950"):
        for hidden in [*range(1, 17000, 97), 16384, 16385, 65536]:
            for rows in (1, 600, 1100, 3000, 9000, 40000, 1 << 20):
                cfg = kernels.launch_config(rows, hidden, arch)
                assert tuple(sorted(cfg.items())) in tiles, (arch, rows, hidden, cfg)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gemma_weight_enters_as_one_plus_w(backend):
    x = torch.randn(3, 96, device=DEVICE).to(torch.float16)
    zeros = torch.zeros(96, device=DEVICE, dtype=torch.float16)
    ones = torch.ones_like(zeros)
    assert torch.equal(norm.gemma_rmsnorm(x, zeros, backend=backend), norm.rmsnorm(x, ones, backend=backend))
    assert torch.all(norm.gemma_rmsnorm(x, -ones, backend=backend) == 0)
    w = torch.randn(96, device=DEVICE).to(torch.float16)
    assert_close(norm.gemma_rmsnorm(x, w, backend=backend), rmsnorm_ref(x, w, gemma=True), name="gemma")
    r = torch.randn(3, 96, device=DEVICE).to(torch.float16)
    x2, r2 = x.clone(), r.clone()
    norm.gemma_fused_add_rmsnorm(x2, r2, zeros, backend=backend)
    assert_close(x2, rmsnorm_ref(x.float() + r.float(), ones.float()).half(), name="gemma fused, w = 0")


@pytest.mark.parametrize("backend", BACKENDS)
def test_eps_default_is_1e6(backend):
    for fn in (norm.rmsnorm, norm.gemma_rmsnorm, norm.fused_add_rmsnorm, norm.gemma_fused_add_rmsnorm):
        assert inspect.signature(fn).parameters["eps"].default == 1e-6
    x = (torch.randn(2, 256, device=DEVICE) * 1e-3).to(torch.float16)  # mean(x^2) ~ 1e-6: eps matters
    w = torch.ones(256, device=DEVICE, dtype=torch.float16)
    y = norm.rmsnorm(x, w, backend=backend)
    assert_close(y, rmsnorm_ref(x, w, eps=1e-6), name="eps 1e-6")
    assert (y.float() - rmsnorm_ref(x, w, eps=1e-5).float()).abs().max() > 0.1  # eps 1e-5 differs


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_and_in_place_out(backend):
    x = torch.randn(9, 300, device=DEVICE)
    w = torch.randn(300, device=DEVICE)
    ref = rmsnorm_ref(x, w)
    assert_close(norm.rmsnorm(x, w, out=x, backend=backend), ref, name="out=input", atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x = torch.empty(0, 64, device=DEVICE, dtype=torch.float16)
    w = torch.randn(64, device=DEVICE).to(torch.float16)
    assert norm.rmsnorm(x, w, backend=backend).shape == (0, 64)
    norm.fused_add_rmsnorm(x, torch.empty_like(x), w, backend=backend)


def test_enable_pdl_is_accepted_and_ignored():
    x, w = torch.randn(2, 64, device=DEVICE).half(), torch.randn(64, device=DEVICE).half()
    for pdl in (None, True, False):
        assert torch.equal(norm.rmsnorm(x, w, enable_pdl=pdl), norm.rmsnorm(x, w))


# --------------------------------------------------------------------------------------------------
# Bad input: an error naming the argument, before anything is written.


def _args(fused):
    x = torch.randn(4, 64, device=DEVICE).half()
    r = torch.randn(4, 64, device=DEVICE).half() if fused else None
    out = None if fused else torch.randn(4, 64, device=DEVICE).half()
    return x, r, torch.randn(64, device=DEVICE).half(), out


BAD_INPUTS = [  # (case, applies to the fused form, exception, message)
    ("weight shape", True, ValueError, r"weight must have shape \(64,\)"),
    ("weight ndim", True, ValueError, "weight must have 1 dimensions"),
    ("weight dtype", True, TypeError, "weight is bf16 but input is fp16"),
    ("weight device", True, ValueError, "weight is on meta"),
    ("input ndim", True, ValueError, "input must have 2 dimensions"),
    ("input dtype", True, TypeError, "input must be fp16, bf16, fp32"),
    ("input last dim", True, ValueError, "input must be contiguous in its last 1"),
    ("empty hidden", True, ValueError, "input has an empty hidden size"),
    ("eps type", True, TypeError, "eps must be a real number"),
    ("residual shape", True, ValueError, "residual must have shape"),
    ("residual dtype", True, TypeError, "residual is bf16 but input is fp16"),
    ("residual last dim", True, ValueError, "residual must be contiguous in its last 1"),
    ("residual missing", True, TypeError, "residual must be a torch.Tensor"),
    ("out shape", False, ValueError, "out must have shape"),
    ("out dtype", False, TypeError, "out is fp32 but input is fp16"),
    ("out last dim", False, ValueError, "out must be contiguous in its last 1"),
]


@pytest.mark.parametrize("gemma", GEMMA)
@pytest.mark.parametrize("case,fused,exc,match", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_names_the_argument_and_writes_nothing(case, fused, exc, match, gemma):
    x, r, w, out = _args(fused)
    eps = 1e-6
    if case == "weight shape":
        w = w[:32]
    elif case == "weight ndim":
        w = w[None]
    elif case == "weight dtype":
        w = w.bfloat16()
    elif case == "weight device":
        w = w.to("meta")
    elif case == "input ndim":
        x = x[None, None]
    elif case == "input dtype":
        x = x.to(torch.int16)
    elif case == "input last dim":
        x = x.t().contiguous().t()
    elif case == "empty hidden":
        x = x[:, :0]
    elif case == "eps type":
        eps = "1e-6"
    elif case == "residual shape":
        r = r[:3]
    elif case == "residual dtype":
        r = r.bfloat16()
    elif case == "residual last dim":
        r = r.t().contiguous().t()
    elif case == "residual missing":
        r = None
    elif case == "out shape":
        out = out[:, :32]
    elif case == "out dtype":
        out = out.float()
    elif case == "out last dim":
        out = out.t().contiguous().t()
    before = [t.clone() for t in (x, r, out) if isinstance(t, torch.Tensor) and t.device.type != "meta"]
    with pytest.raises(exc, match=match):
        if fused:
            fused_fn(gemma)(x, r, w, eps)
        else:
            norm_fn(gemma)(x, w, eps, out=out)
    after = [t for t in (x, r, out) if isinstance(t, torch.Tensor) and t.device.type != "meta"]
    assert all(torch.equal(a, b) for a, b in zip(after, before))


# --------------------------------------------------------------------------------------------------
# torch.compile and graph capture.


def test_torch_compile_fullgraph():
    x, r = torch.randn(2, 5, 128, device=DEVICE).half()
    w = torch.randn(128, device=DEVICE).half()

    def f(x, r, w):
        y = norm.gemma_rmsnorm(x, w)
        norm.fused_add_rmsnorm(y, r, w)
        return y, r

    y_ref = rmsnorm_ref(x, w, gemma=True)
    y_ref, r_ref = fused_add_rmsnorm_ref(y_ref, r, w)
    y, r_out = torch.compile(f, fullgraph=True, backend="aot_eager")(x, r.clone(), w)
    assert_close(y, y_ref, name="y")
    assert_close(r_out, r_ref, name="residual")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="graph capture needs a GPU (covered on the lent GPU)")
def test_cuda_graph_capture():
    x, r = torch.randn(2, 300, 4096, device=DEVICE).bfloat16()
    w = torch.randn(4096, device=DEVICE).bfloat16()
    x_ref, r_ref = fused_add_rmsnorm_ref(x, r, w, gemma=True)
    x_w, r_w = x.clone(), r.clone()
    norm.gemma_fused_add_rmsnorm(x_w, r_w, w, backend="triton")  # warm-up: compile
    x_w.copy_(x), r_w.copy_(r)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        norm.gemma_fused_add_rmsnorm(x_w, r_w, w, backend="triton")
    x_w.copy_(x), r_w.copy_(r)
    graph.replay()
    torch.cuda.synchronize()
    assert_close(x_w, x_ref, name="input")
    assert_close(r_w, r_ref, name="residual")


@pytest.mark.skipif(not FULL_GRID or not torch.cuda.is_available(), reason="needs a GPU with ~5 GB free")
def test_row_stride_above_int32():
    """Row stride 2^31 elements (FlashInfer's regression test for int32 offset overflow)."""
    if torch.cuda.mem_get_info()[0] < 5 << 30:
        pytest.skip("needs ~5 GB of free GPU memory")
    stride, hidden = 1 << 31, 128
    buf = torch.randn(stride + hidden, device=DEVICE, dtype=torch.bfloat16)
    x = torch.as_strided(buf, (2, hidden), (stride, 1))
    w = torch.randn(hidden, device=DEVICE, dtype=torch.bfloat16)
    assert_close(norm.rmsnorm(x, w, backend="triton"), rmsnorm_ref(x.contiguous(), w), name="out")


# --------------------------------------------------------------------------------------------------
# Benchmark CLI: python op_tests/test_norm.py [--quick] [--no-flashinfer]

BENCH_OPS = ("rmsnorm", "gemma_rmsnorm", "fused_add_rmsnorm", "gemma_fused_add_rmsnorm")


def _bench_case(op, rows, hidden, dtype, fi, copy_gbs):
    """One row: ours (triton) and FlashInfer's same-named function, both checked before timing.

    The fused forms work in place. They are timed on the live tensors, whose values drift from call to
    call (the residual accumulates, the input becomes its norm): only the time matters there, and the
    values stay finite (a normalised row is O(1) per element; the residual grows by it per call). The
    check runs first, on fresh copies.
    """
    from aiter_ext.core.bench import time_us
    from aiter_ext.core.testing import max_error

    gemma, fused = op.startswith("gemma"), "fused" in op
    x = torch.randn(rows, hidden, device="cuda").to(dtype)
    r = torch.randn(rows, hidden, device="cuda").to(dtype)
    w = torch.randn(hidden, device="cuda").to(dtype)
    ours = getattr(norm, op)
    theirs = getattr(fi.norm, op) if fi is not None else None
    esize = x.element_size()
    nbytes = (4 if fused else 2) * rows * hidden * esize + hidden * esize
    if fused:
        expected = fused_add_rmsnorm_ref(x, r, w, 1e-6, gemma)
        x_c, r_c = x.clone(), r.clone()
        ours(x_c, r_c, w, backend="triton")
        results = {"ours": (x_c, r_c)}
        if theirs is not None:
            x_f, r_f = x.clone(), r.clone()
            theirs(x_f, r_f, w)
            results["fi"] = (x_f, r_f)
        x_t, r_t = x.clone(), r.clone()  # the live tensors that timing drifts
        run_ours = lambda: ours(x_t, r_t, w, backend="triton")  # noqa: E731
        run_fi = (lambda: theirs(x_t, r_t, w)) if theirs is not None else None
    else:
        expected = (rmsnorm_ref(x, w, 1e-6, gemma),)
        out = torch.empty_like(x)
        results = {"ours": (ours(x, w, backend="triton"),)}
        if theirs is not None:
            results["fi"] = (theirs(x, w),)
        run_ours = lambda: ours(x, w, out=out, backend="triton")  # noqa: E731
        run_fi = (lambda: theirs(x, w, out=out)) if theirs is not None else None
    errs = {}
    for who, got in results.items():
        for g, ref in zip(got, expected):
            assert_close(g, ref, name=f"{op} {who} [{rows}, {hidden}]")
        errs[who] = max(max_error(g, ref) for g, ref in zip(got, expected))
    us, g_us = time_us(run_ours), time_us(run_ours, graph=True)
    fi_us = time_us(run_fi) if run_fi else None
    fi_g_us = time_us(run_fi, graph=True) if run_fi else None
    gbs = nbytes / us / 1e3
    return {"op": op, "shape": f"[{rows}, {hidden}]", "dtype": str(dtype).replace("torch.", ""), "us": us,
            "graph_us": g_us, "bytes": nbytes, "GB/s": gbs, "%copy_bw": 100 * gbs / copy_gbs,
            "fi_us": fi_us, "fi_graph_us": fi_g_us, "fi/ours": fi_us / us if fi_us else None,
            "fi/ours graph": fi_g_us / g_us if fi_g_us else None, "err": errs["ours"], "fi_err": errs.get("fi")}


def bench_main(argv=None) -> int:
    import argparse

    from aiter_ext.core.arch import device_info
    from aiter_ext.core.bench import benchmark_setup, copy_bandwidth_gbs, git_commit, markdown_table, warm_up_gpu

    parser = argparse.ArgumentParser(description="RMSNorm family benchmark (beside FlashInfer when installed)")
    parser.add_argument("--quick", action="store_true", help="rows 16 and 8192 at hidden 4096 only")
    parser.add_argument("--ops", nargs="*", default=list(BENCH_OPS), choices=BENCH_OPS)
    parser.add_argument("--no-flashinfer", action="store_true")
    args = parser.parse_args(argv)
    ok, fi = benchmark_setup(args.no_flashinfer)
    if not ok:
        return 2
    shapes = [(r, 4096) for r in ((16, 8192) if args.quick else (1, 16, 64, 256, 1024, 8192))]
    if not args.quick:
        shapes += [(8192, 8192), (32768, 4096)]
    warm_up_gpu()
    info = device_info()
    copy_gbs = copy_bandwidth_gbs()
    print(f"device {info.name} ({info.arch}, {info.cu_num} CUs), commit {git_commit()}, "
          f"FlashInfer {getattr(fi, '__version__', 'absent')}, measured copy bandwidth {copy_gbs:.0f} GB/s")
    print("us: median of triton.testing.do_bench (L2 cleared before each call), the public call with out=/in place;\n"
          "graph_us: median of CUDA-graph replays (no launch overhead); bytes: read + written once "
          "(2*M*H + H elements, fused 4*M*H + H); fused forms timed in place on drifting values (see _bench_case)")
    rows = [_bench_case(op, m, h, torch.bfloat16, fi, copy_gbs) for op in args.ops for m, h in shapes]
    print(markdown_table(rows))
    return 0


def host_profile() -> int:
    """Where an eager call's host time goes (an experiment, ``--host``): each piece is issued back to
    back without synchronizing, and every piece here is far faster on the GPU than on the host, so the
    wall time per call is the host's. The pieces: ours through the public call, through the launcher
    alone (config + Triton's ``kernel[grid]``), through the compiled handle (Triton's binder and cache
    lookup skipped: what a direct launcher would cost), and FlashInfer's public call."""
    import aiter_ext.ops.rope as rope_api
    from aiter_ext.core.arch import get_arch
    from aiter_ext.core.bench import benchmark_setup, host_time_us, markdown_table, warm_up_gpu

    ok, fi = benchmark_setup(False)
    if not ok:
        return 2
    warm_up_gpu()
    x = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(x)
    q = torch.randn(1, 32, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 8, 128, device="cuda", dtype=torch.bfloat16)
    pos = torch.zeros(1, device="cuda", dtype=torch.int32)
    arch = get_arch()
    compiled = kernels.rmsnorm_kernel[(1,)](
        x, x, w, out, 16, 1, 4096, 4096, 0, 4096, 0, 4096, 0, 1e-6,
        GEMMA=False, FUSED_ADD=False, CHUNKED=False, EVEN=True, BLOCK_R=16, BLOCK_H=4096, num_warps=8)
    handle_args = (x, x, w, out, 16, 1, 4096, 4096, 0, 4096, 0, 4096, 0, 1e-6, False, False, False, True, 16, 4096)
    pieces = {
        "torch.empty_like (a torch call, for scale)": lambda: torch.empty_like(x),
        "rmsnorm public, out= [16, 4096]": lambda: norm.rmsnorm(x, w, out=out),
        "rmsnorm kernels.launch (config + kernel[grid])": lambda: kernels.launch(x, None, w, out, 1e-6, False, {}, arch),
        "rmsnorm compiled handle": lambda: compiled[(1, 1, 1)](*handle_args),
        "apply_rope_pos_ids public, 1 token": lambda: rope_api.apply_rope_pos_ids(q, k, pos),
    }
    if fi is not None:
        pieces["FlashInfer rmsnorm, out="] = lambda: fi.norm.rmsnorm(x, w, out=out)
        pieces["FlashInfer apply_rope_pos_ids, 1 token"] = lambda: fi.rope.apply_rope_pos_ids(q, k, pos)
    rows = []
    for name, fn in pieces.items():
        try:
            host_us = host_time_us(fn, calls=2000)
        except Exception as e:  # an experiment: a piece this Triton does not support says so
            host_us = f"failed: {type(e).__name__}: {e}"[:120]
        rows.append({"piece": name, "host us per call": host_us})
        print(rows[-1], flush=True)
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(host_profile() if "--host" in sys.argv[1:] else bench_main())
