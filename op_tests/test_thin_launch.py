"""The thin launch path (aiter_ext/core/thin.py).

On the CPU: the launch signature's classes, the mapping of a call form onto the kernel's parameters, the
pass-through to Triton under the interpreter, and the C launcher's build (its driver is absent here, which
must say so). On the GPU: every op of the issue-18 table run through both paths, bit for bit equal, the
thin path really taken (a launch record per kernel), and a CUDA graph captured through it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import aiter_ext
from aiter_ext.core import thin

ON_GPU = torch.cuda.is_available()
gpu_only = pytest.mark.skipif(not ON_GPU, reason="launches compiled kernels (the lent GPU)")


def _needs_the_extension():
    import shutil

    if shutil.which("c++") is None:
        pytest.skip("no host C++ compiler to build the launcher extension")


def test_signature_separates_what_triton_specialises_on():
    _needs_the_extension()
    a = torch.zeros(64, dtype=torch.float16)
    sig = thin.signature_of
    assert sig([a]) == sig([torch.zeros(64, dtype=torch.float16)])  # another tensor of the same class
    assert sig([a]) != sig([a.float()])  # dtype
    assert sig([a]) != sig([a[1:]])  # a 2-byte offset: not 16-byte aligned
    assert sig([a[8:]]) == sig([a])  # 16 bytes in: aligned again
    assert sig([16]) == sig([4096]) != sig([17])  # divisibility by 16
    assert sig([1]) != sig([17])  # 1, which older Tritons specialise on
    assert sig([2 ** 31]) != sig([2 ** 31 - 16])  # int64 against int32
    assert sig([0.5]) == sig([2.0]) != sig([2])  # fp32 against an int
    assert sig([None]) != sig([0])
    assert sig([True]) != sig([1]) and sig([True]) != sig([False])
    assert sig([torch.nn.Parameter(a)]) == sig([a])  # vLLM's weights are Parameters: the same class
    assert sig([a, 16]) != sig([16, a])

    class OnDevice:  # what signature reads of a tensor, on a GPU of our choosing
        def __init__(self, device):
            self.dtype, self.device = torch.float16, device

        def data_ptr(self):
            return 1 << 20

        def get_device(self):
            return self.device

    # a kernel's handle belongs to one device: a launch on another must not reuse its record
    assert sig([OnDevice(0)]) == sig([OnDevice(0)]) != sig([OnDevice(1)])


class _FakeJit:
    """What ThinKernel reads from a JITFunction: params (name, is_constexpr) and ``[grid]``."""

    class _Param:
        def __init__(self, name, is_constexpr):
            self.name, self.is_constexpr = name, is_constexpr

    def __init__(self):
        self.params = [self._Param(n, c) for n, c in (("x", False), ("n", False), ("BLOCK", True), ("y", False),
                                                      ("FLAG", True))]
        self.launched = []

    def __getitem__(self, grid):
        return lambda *a, **k: self.launched.append((grid, a, k))


def test_call_forms_map_onto_runtime_parameters():
    k = thin.ThinKernel(_FakeJit())
    plain = k._layout(2, ("BLOCK", "y", "FLAG"))  # y is a runtime parameter passed by keyword
    assert plain.runtime_positional is None and plain.runtime_keywords == ("y",)
    assert plain.constexpr_keywords == ("BLOCK", "FLAG")
    mixed = k._layout(4, ("FLAG",))  # BLOCK passed positionally
    assert mixed.runtime_positional == (0, 1, 3) and mixed.runtime_keywords == ()


def test_each_constexpr_value_and_call_form_gets_its_own_record(monkeypatch):
    """A record serves one compiled kernel: a constexpr passed by position or by keyword, with another value,
    or under another name, must not reuse it (the launch itself is stubbed: no GPU here)."""
    _needs_the_extension()
    import types

    k = thin.ThinKernel(_FakeJit())
    made = []
    monkeypatch.setattr(k, "_record", lambda grid, args, kwargs, runtime: made.append((args, kwargs)) or
                        thin._Record(1, 32, 0, b"pip", (), 0, None))
    monkeypatch.setattr(thin, "launcher", lambda: types.SimpleNamespace(launch=lambda *a: None))
    monkeypatch.setattr(thin, "native_ready", lambda: True)
    monkeypatch.setattr(thin, "_SIGNATURE", thin.native().signature)
    monkeypatch.setattr(thin, "current_stream", lambda device: 0)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.zeros(4)
    k[(1,)](x, 8, 16, x, FLAG=True)  # BLOCK by position
    k[(1,)](x, 8, 16, x, FLAG=True)  # the same: reused
    k[(1,)](x, 8, 32, x, FLAG=True)  # another BLOCK by position
    k[(1,)](x, 8, BLOCK=32, y=x, FLAG=True)  # the same values through another call form
    k[(1,)](x, 8, BLOCK=32, y=x, FLAG=False)
    assert len(made) == 4


def test_interpreter_and_triton_mode_pass_through(monkeypatch):
    fake = _FakeJit()
    k = thin.ThinKernel(fake)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    k[(3,)](1, 2, BLOCK=4, y=5, FLAG=True)
    assert fake.launched == [((3,), (1, 2), {"BLOCK": 4, "y": 5, "FLAG": True})]
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    previous = thin.set_mode("triton")
    try:
        k[(2, 2)](1, 2, BLOCK=4, y=5, FLAG=False)
    finally:
        thin.set_mode(previous)
    assert len(fake.launched) == 2 and not thin.records_of(k)
    with pytest.raises(ValueError, match="mode must be"):
        thin.set_mode("fast")


def _interpreted_kernel(x, n, BLOCK: "tl.constexpr"):  # noqa: F821 (a string annotation, as the kernel modules')
    pass


def test_a_kernel_made_under_the_interpreter_keeps_its_parameters():
    """A kernel module imported after Triton was loaded under TRITON_INTERPRET wraps Triton's interpreter object,
    which has no ``params``: the wrapper reads them off its Python function, so a launch's key still tells its
    constexprs from its runtime arguments and options (test_object_coverage failed after test_merge_state
    without it: every constexpr was taken for an option)."""
    pytest.importorskip("triton")
    from triton.runtime.interpreter import InterpretedFunction

    wrapped = thin.thin(InterpretedFunction(_interpreted_kernel))
    assert wrapped._names == ["x", "n", "BLOCK"] and wrapped._constexpr == {"BLOCK"}
    key = wrapped.object_key((torch.zeros(8), 32), {"BLOCK": 16, "num_warps": 4})
    assert key[1:] == ({"BLOCK": 16}, {"num_warps": 4}, {"x": "*fp32", "n": "i32"}, {"x", "n"})


def test_every_launched_kernel_is_wrapped():
    """A kernel launched from Python without the wrapper would keep Triton's launcher: all are wrapped."""
    import re
    from pathlib import Path

    root = Path(aiter_ext.__file__).parent / "ops"
    launched = set()
    for path in root.rglob("*.py"):
        launched |= set(re.findall(r"\b([a-z_0-9]+_kernel)\[", path.read_text()))
    wrapped = set()
    for path in root.rglob("*.py"):
        wrapped |= set(re.findall(r"@thin\n@triton\.jit(?:\([^)]*\))?\ndef ([a-z_0-9]+)\(", path.read_text()))
    assert launched and launched <= wrapped, sorted(launched - wrapped)


def test_the_c_launcher_builds_and_names_a_missing_driver():
    _needs_the_extension()
    thin.launcher.cache_clear()
    try:
        module = thin.launcher()
    except RuntimeError as exc:  # built, then init() found no driver: the message names it
        assert "cannot open the" in str(exc) and "driver" in str(exc)
        assert not ON_GPU
    else:
        assert ON_GPU and callable(module.launch)
    finally:
        thin.launcher.cache_clear()


def test_the_launcher_finds_a_library_already_in_the_process_by_its_file_name():
    # init() opens the HIP runtime already mapped (torch's own, on ROCm) by this search, before any by name: a
    # second runtime opened by name would own modules and streams that torch's does not know
    _needs_the_extension()
    module = thin.native()
    own = Path(module.__file__).resolve()
    found = module.loaded_library(own.name[:12])
    assert found and Path(found).resolve() == own
    assert Path(module.loaded_library("libc.so")).name.startswith("libc.so")
    assert module.loaded_library("no_library_is_named_this") == ""


# --------------------------------------------------------------------------------------------------
# GPU: the same results through both paths.


def _cases():
    """(name, fn returning the outputs) for the issue-18 table's ops and the other op families."""
    dev, bf16 = "cuda", torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(5)
    r = lambda *s, dtype=bf16: torch.randn(*s, device=dev, generator=gen).to(dtype)  # noqa: E731
    x16, x256, w = r(16, 4096), r(256, 4096), r(4096)
    res = r(256, 4096)
    q, k = r(8192, 32, 128), r(8192, 8, 128)
    indptr = torch.tensor([0, 8192], dtype=torch.int32, device=dev)
    offsets = torch.zeros(1, dtype=torch.int32, device=dev)
    probs = torch.softmax(r(4, 128256, dtype=torch.float32), -1)
    va, vb, sa, sb = r(512, 32, 128), r(512, 32, 128), r(512, 32, dtype=torch.float32), r(512, 32, dtype=torch.float32)

    def fused():
        a, b = x256.clone(), res.clone()
        aiter_ext.fused_add_rmsnorm(a, b, w)
        return a, b

    return [
        ("rmsnorm 16x4096", lambda: aiter_ext.rmsnorm(x16, w)),
        ("rmsnorm 256x4096", lambda: aiter_ext.rmsnorm(x256, w)),
        ("gemma fused_add_rmsnorm", fused),
        ("apply_llama31_rope", lambda: aiter_ext.apply_llama31_rope(q, k, indptr, offsets)),
        ("rmsnorm_fp4quant", lambda: aiter_ext.rmsnorm_fp4quant(x256, w)),
        ("min_p_sampling_from_probs", lambda: aiter_ext.min_p_sampling_from_probs(
            probs, 0.05, generator=torch.Generator(device=dev).manual_seed(11))),
        ("merge_state", lambda: aiter_ext.merge_state(va, sa, vb, sb)),
        ("decode batch 64", _decode_case(r)),
    ]


def _decode_case(r):
    dev, page, pages_per = "cuda", 16, 32
    batch = 64
    cache = r(batch * pages_per, 2, page, 8, 128)
    indptr = torch.arange(0, batch * pages_per + 1, pages_per, dtype=torch.int32, device=dev)
    indices = torch.randperm(batch * pages_per, device=dev).int()
    last = torch.full((batch,), 7, dtype=torch.int32, device=dev)
    wrapper = aiter_ext.BatchDecodeWithPagedKVCacheWrapper(torch.empty(64 << 20, dtype=torch.uint8, device=dev), "NHD")
    wrapper.plan(indptr, indices, last, 32, 8, 128, page, q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
    qd = r(batch, 32, 128)
    return lambda: wrapper.run(qd, cache)


def _flat(out):
    return [t for t in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(t, torch.Tensor)]


@gpu_only
def test_thin_and_triton_launches_agree_bit_for_bit():
    from aiter_ext.ops.norm import kernels as norm_kernels

    previous = thin.set_mode("thin")
    try:
        for name, fn in _cases():
            thin.set_mode("triton")
            want = [t.clone() for t in _flat(fn())]
            thin.set_mode("thin")
            got = _flat(fn())
            torch.cuda.synchronize()
            assert len(got) == len(want), name
            for g, e in zip(got, want):
                assert g.dtype == e.dtype and g.shape == e.shape, name
                assert torch.equal(g.view(torch.uint8) if g.dtype.itemsize == 1 else g, e.view(torch.uint8)
                                   if e.dtype.itemsize == 1 else e), f"{name}: thin and Triton launches differ"
        records = [rec for rec in thin.records_of(norm_kernels.rmsnorm_kernel).values()]
        assert records and all(records), "rmsnorm did not take the thin path"
    finally:
        thin.set_mode(previous)


@gpu_only
def test_thin_launches_replay_in_a_cuda_graph():
    previous = thin.set_mode("thin")
    try:
        x = torch.randn(64, 4096, device="cuda").to(torch.bfloat16)
        w = torch.randn(4096, device="cuda").to(torch.bfloat16)
        out = torch.empty_like(x)
        aiter_ext.rmsnorm(x, w, out=out)  # records made outside the capture
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
            aiter_ext.rmsnorm(x, w, out=out)
        x.copy_(torch.randn_like(x))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        thin.set_mode("triton")
        assert torch.equal(out, aiter_ext.rmsnorm(x, w))
    finally:
        thin.set_mode(previous)


# --------------------------------------------------------------------------------------------------
# Code objects (core/objects.py): built on the CPU, found by what a launch passes.


def test_built_objects_are_found_only_by_launches_they_fit(tmp_path, monkeypatch):
    import json

    import aiter_ext.ops.norm.kernels  # noqa: F401 (registers its specs)
    from aiter_ext.core import objects

    # one tile, sized per arch: 8 warps of 32 lanes on an NVIDIA GPU, 4 waves of 64 on AMD (aot_specs(arch)); the
    # Gemma form, whose name no other spec's contains (objects.build's filter is a substring)
    name, amd_name = "gemma_rmsnorm[bf16-r1b4096w8-even]", "gemma_rmsnorm[bf16-r1b4096w4-even]"
    for arch, spec_name in (("sm_90", name), ("gfx942", amd_name)):
        written, failures = objects.build([arch], spec_name, tmp_path)
        assert written == 1 and not failures, failures
        assert objects.verify(tmp_path, [arch], spec_name) == []
    # not an NVIDIA tile: nothing to find (r1b4096w4 is one now, the tile of an sm_90 tuned row)
    assert objects.verify(tmp_path, ["sm_90"], "gemma_rmsnorm[bf16-r1b2048w2-even]") == []
    assert objects.verify(tmp_path, ["gfx950"], amd_name) == [f"gfx950 {amd_name} [default]: 0 manifest rows"]
    monkeypatch.setenv("AITER_EXT_HSA_DIR", str(tmp_path))
    objects._rows.cache_clear()
    try:
        rows = objects._rows("sm_90")["aiter_ext.ops.norm.kernels:rmsnorm_kernel"]
        assert len(rows) == 1 and (tmp_path / "sm_90" / "rmsnorm" / rows[0]["co_name"]).stat().st_size > 1000
        row = rows[0]
        assert row["spec"] == name and row["triton_version"] and row["source_hash"] == objects.source_hash()
        aligned = row["divisible_by_16"]
        call = (row["constexprs"], row["options"], row["signature"])
        kernel = "aiter_ext.ops.norm.kernels:rmsnorm_kernel"
        assert objects.find("sm_90", kernel, *call, aligned | {"num_rows"}) is row  # more alignment: fine
        assert objects.find("sm_90", kernel, *call, aligned - {"x"}) is None  # x not 16-byte aligned
        assert objects.find("sm_90", kernel, {**call[0], "GEMMA": False}, *call[1:], aligned) is None
        assert row["options"] == {"num_warps": 8}
        assert objects.find("sm_90", kernel, call[0], {"num_warps": 4}, call[2], aligned) is None
        assert objects.find("sm_90", kernel, call[0], call[1], {**call[2], "x": "*fp16"}, aligned) is None
        assert objects.find("gfx950", kernel, *call, aligned) is None  # not built for it
        gfx = objects._rows("gfx942")[kernel][0]
        assert gfx["spec"] == amd_name and gfx["options"] == {"num_warps": 4}
        assert gfx["vgprs"] and gfx["scratch_bytes"] == "0" and gfx["co_name"].endswith(".co")
        # an object of other sources is never used
        manifest = tmp_path / "sm_90" / "rmsnorm" / "manifest.csv"
        manifest.write_text(manifest.read_text().replace(objects.source_hash(), "0" * 16))
        objects._rows.cache_clear()
        assert objects.find("sm_90", kernel, *call, aligned) is None
        assert json.loads(json.dumps(row["constexprs"])) == row["constexprs"]
    finally:
        objects._rows.cache_clear()


def _public_rmsnorm_tile(rows: int, hidden: int, arch: str) -> dict:
    """The tile the public rmsnorm call takes on this GPU: the dispatcher's choice (a tuned row for this arch
    where there is one) over the heuristic's, as ``norm.kernels.launch`` merges them."""
    from aiter_ext.ops.norm import kernels as norm_kernels
    from aiter_ext.ops.norm.backends import RMSNORM

    choice = RMSNORM.select({"num_rows": rows, "hidden": hidden, "dtype": "bf16", "device": "cuda",
                             "fused_add": False, "gemma": False})
    assert choice.impl.backend == "triton"
    return {**norm_kernels.launch_config(rows, hidden, arch), **choice.config}


@gpu_only
def test_a_code_object_launches_and_agrees_with_triton_bit_for_bit(tmp_path, monkeypatch):
    """Built on this machine for its arch, then launched under AITER_EXT_LAUNCH=asm (objects only: a launch
    that no object fits raises), against Triton's own launch of the same kernel and config."""
    from aiter_ext.core import objects
    from aiter_ext.core.arch import get_arch
    from aiter_ext.ops.norm import kernels as norm_kernels

    arch = get_arch()
    config = _public_rmsnorm_tile(16, 4096, arch)
    written, failures = objects.build(
        [arch], f"rmsnorm[bf16-r{config['BLOCK_R']}b4096w{config['num_warps']}-even]", tmp_path)
    assert written == 1 and not failures, failures
    monkeypatch.setenv("AITER_EXT_HSA_DIR", str(tmp_path))
    objects._rows.cache_clear()
    x = torch.randn(16, 4096, device="cuda").to(torch.bfloat16)
    w = torch.randn(4096, device="cuda").to(torch.bfloat16)
    outs = {}
    previous = thin.mode()
    try:
        for mode in ("triton", "asm"):
            thin.set_mode(mode)
            norm_kernels.rmsnorm_kernel._records.clear()
            outs[mode] = torch.full_like(x, float("nan"))
            aiter_ext.rmsnorm(x, w, out=outs[mode])  # the public call, its tile chosen as for any user
        torch.cuda.synchronize()
        assert torch.equal(outs["asm"], outs["triton"])
        with pytest.raises(RuntimeError, match="no code object"):  # a tile that was not built
            norm_kernels.launch(x, None, w, outs["asm"], 1e-6, False, {**config, "num_warps": config["num_warps"] // 2},
                                arch)
    finally:
        thin.set_mode(previous)
        objects._rows.cache_clear()


def test_object_check_restores_inputs_and_catches_other_bytes(tmp_path, monkeypatch):
    """object_check.py on CPU tensors, with stand-in launches: an in-place launch agrees only if the inputs
    were restored between the two runs; a launch writing other bytes raises, its count written to the
    check's file at once (a run cut by its time limit keeps it); one whose own runs differ is counted
    nondeterministic."""
    import json

    from aiter_ext.core import object_check

    counts_file = tmp_path / "check.json"
    monkeypatch.setattr(object_check, "ENABLED", True)
    monkeypatch.setattr(object_check, "SETTING", str(counts_file))
    x, y = torch.randn(64), torch.randn(8)
    x0 = x.clone()
    object_check.COUNTS.clear()
    double = lambda: x.mul_(2)  # noqa: E731 (reads what it writes)
    object_check.launch_checked("k", "a", "k.cubin", double, double, (x, y, 3), {})
    assert torch.equal(x, x0 * 2) and object_check.summary() == {"k": {"checked": 1}}
    with pytest.raises(object_check.ObjectMismatch, match=r"k.cubin wrote 4 bytes .* tensor argument 0"):
        object_check.launch_checked("k", "b", "k.cubin", double, lambda: x.mul_(2).__setitem__(5, 0.5), (x, y), {})
    assert json.loads(counts_file.read_text())["object_check"]["k"] == {"checked": 1, "differed": 1}
    draws = iter(range(10))
    object_check.launch_checked("k", "c", "k.cubin", double, lambda: x.fill_(next(draws)), (x,), {})
    assert object_check.summary()["k"] == {"checked": 1, "differed": 1, "nondeterministic": 1}
    for _ in range(object_check.CHECKS_PER_RECORD - 1):
        object_check.launch_checked("k", "a", "k.cubin", double, double, (x,), {})
    before = x.clone()  # past the checks per record: the object's launch alone runs
    object_check.launch_checked("k", "a", "k.cubin", double, lambda: pytest.fail("checked"), (x,), {})
    assert torch.equal(x, before * 2)
    assert object_check.summary()["k"] == {"checked": object_check.CHECKS_PER_RECORD, "differed": 1,
                                           "nondeterministic": 1, "unchecked": 1}
    object_check._report(every=0.0)  # as at exit
    assert json.loads(counts_file.read_text())["object_check"] == object_check.summary()
    object_check.COUNTS.clear()


@gpu_only
def test_object_check_compares_a_served_launch_with_triton(tmp_path, monkeypatch):
    """AITER_EXT_OBJECT_CHECK on a real object: the public rmsnorm call is served by it and checked."""
    from aiter_ext.core import object_check, objects
    from aiter_ext.core.arch import get_arch
    from aiter_ext.ops.norm import kernels as norm_kernels

    config = _public_rmsnorm_tile(16, 4096, get_arch())
    written, failures = objects.build(
        [get_arch()], f"rmsnorm[bf16-r{config['BLOCK_R']}b4096w{config['num_warps']}-even]", tmp_path)
    assert written == 1 and not failures, failures
    monkeypatch.setenv("AITER_EXT_HSA_DIR", str(tmp_path))
    monkeypatch.setattr(thin, "_CHECK_OBJECTS", True)
    objects._rows.cache_clear()
    object_check.COUNTS.clear()
    norm_kernels.rmsnorm_kernel._records.clear()
    try:
        x = torch.randn(16, 4096, device="cuda").to(torch.bfloat16)
        w = torch.randn(4096, device="cuda").to(torch.bfloat16)
        out = aiter_ext.rmsnorm(x, w)
        torch.testing.assert_close(out.float(), torch.nn.functional.rms_norm(x.float(), (4096,), w.float(), 1e-6),
                                   atol=2e-2, rtol=2e-2)
        assert object_check.summary() == {"rmsnorm_kernel": {"signatures served": 1, "checked": 1}}
    finally:
        objects._rows.cache_clear()
        norm_kernels.rmsnorm_kernel._records.clear()
        object_check.COUNTS.clear()


def test_an_object_built_for_the_check_is_the_one_aot_build_writes(tmp_path, monkeypatch):
    """AITER_EXT_OBJECT_CHECK_BUILD: the object compiled for a launch that none serves is the same code object
    ``aiter-ext aot --build`` writes for a spec of that launch (cross-compiled for sm_90 here, no GPU needed)."""
    pytest.importorskip("triton")
    import csv

    import aiter_ext.ops.norm.kernels as norm_kernels
    from aiter_ext.core import object_check, objects

    # a cache of its own: an object embeds its source's path (line info), so one from Triton's cache compiled in
    # another checkout differs from this checkout's by those bytes
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))
    spec = next(s for s in norm_kernels.aot_specs("sm_90") if s.name == "gemma_rmsnorm[bf16-r1b4096w8-even]")
    written, failures = objects.build(["sm_90"], spec.name, tmp_path)
    assert written == 1 and not failures, failures
    with open(tmp_path / "sm_90" / "rmsnorm" / "manifest.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    object_check.COUNTS.clear()
    built = object_check.build_for_launch(spec.fn, "rmsnorm_kernel", "sm_90", spec.constexprs, spec.options,
                                          spec.signature, set(spec.divisible_by_16))
    assert built["image"] == (tmp_path / "sm_90" / "rmsnorm" / row["co_name"]).read_bytes()
    assert built["knl_name"] == row["knl_name"] and str(built["num_warps"]) == row["num_warps"]
    assert built["co_name"].startswith(object_check.BUILT)
    broken = object_check.build_for_launch(spec.fn, "rmsnorm_kernel", "sm_90", {}, spec.options, spec.signature,
                                           set())  # no constexprs: the compile fails, and is counted
    assert broken is None and object_check.summary() == {"rmsnorm_kernel": {"builds failed": 1}}
    object_check.COUNTS.clear()


@gpu_only
def test_object_check_builds_and_checks_a_launch_no_object_serves(monkeypatch):
    """AITER_EXT_OBJECT_CHECK_BUILD on the GPU: a merge_state shape no shipped spec covers is built for the
    check, launched through the C launcher, and compared byte for byte with Triton's launch."""
    from aiter_ext.core import object_check, objects
    from aiter_ext.ops.merge_state import kernels as merge_kernels

    monkeypatch.setattr(thin, "_CHECK_OBJECTS", True)
    monkeypatch.setattr(object_check, "BUILD", True)
    monkeypatch.setenv("AITER_EXT_HSA_DIR", "/nonexistent")
    objects._rows.cache_clear()
    object_check.COUNTS.clear()
    kernels = [k for k in vars(merge_kernels).values() if isinstance(k, thin.ThinKernel)]
    for k in kernels:
        k._records.clear()
    try:
        va, vb = (torch.randn(37, 5, 72, device="cuda").to(torch.float16) for _ in range(2))
        sa, sb = (torch.randn(37, 5, device="cuda") for _ in range(2))
        v, s = aiter_ext.merge_state(va, sa, vb, sb, backend="triton")
        counts = object_check.summary()
        assert sum(c.get("signatures built for the check", 0) for c in counts.values()) >= 1, counts
        assert sum(c.get("checked", 0) for c in counts.values()) >= 1, counts
        w = torch.softmax(torch.stack([sa, sb]) * 0.6931471805599453, 0)  # base-2 LSE weights
        torch.testing.assert_close(v.float(), (w[0, ..., None] * va.float() + w[1, ..., None] * vb.float()),
                                   atol=2e-3, rtol=2e-3)
    finally:
        objects._rows.cache_clear()
        for k in kernels:
            k._records.clear()
        object_check.COUNTS.clear()
