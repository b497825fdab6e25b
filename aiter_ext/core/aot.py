"""The AMD compile check: compile every registered Triton kernel for gfx942/gfx950 without a GPU.

No machine of ours has an AMD GPU, but Triton's AMD backend compiles on the CPU. From the AMDGCN text
and the kernel metadata this module reads what the hardware will see: VGPRs, SGPRs, LDS, scratch,
spills, occupancy and the number of MFMA instructions, and fails a kernel that would not run well
(spills, scratch, LDS above the chip's limit, a dot that did not lower to MFMA). The compiler itself
does not refuse a kernel that asks for more LDS than the chip has.

Op modules describe the concrete compilations they ship (one ``KernelSpec`` per kernel and config) and
register a provider at import::

    register_aot_specs("merge_state", lambda: [KernelSpec("merge_state_kernel", kernel, sig, consts,
                                                          {"num_warps": 4})])

``aiter-ext aot --check`` then prints one table per arch (see ``cli``).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import multiprocessing
import os
import pickle
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterable

from .arch import ARCH_TABLE

DEFAULT_ARCHS = ("gfx942", "gfx950")


@dataclass
class KernelSpec:
    """One concrete compilation of a ``@triton.jit`` kernel.

    ``signature`` maps every non-constexpr parameter to a Triton type string (``"*bf16"``, ``"*fp32"``,
    ``"*u8"``, ``"i32"``, ``"i64"``, ``"fp32"``); ``constexprs`` gives the constexpr parameters;
    ``options`` are launch options (``num_warps``, ``num_stages`` and the AMD ones ``waves_per_eu``,
    ``matrix_instr_nonkdim``, ``kpack``). ``uses_dot`` says the kernel has a ``tl.dot`` that must
    lower to MFMA instructions. ``fn`` may be wrapped in ``@triton.autotune``/``@triton.heuristics``;
    the constexprs those would supply must then be given here.
    """

    name: str
    fn: object
    signature: dict[str, str]
    constexprs: dict[str, object]
    options: dict
    config_label: str = "default"
    uses_dot: bool = False
    #: Parameters the launcher would mark divisible by 16 (pointers of 16-byte aligned tensors, ints
    #: that are multiples of 16). Triton derives this at every launch and vectorizes memory accesses
    #: with it, so a spec without it compiles slower code than the one that will run.
    divisible_by_16: tuple[str, ...] = ()
    #: Why this config may run under MIN_WAVES_PER_SIMD waves per SIMD (say so in the kernel's comments
    #: too); without a reason, such a config fails the check.
    low_occupancy_reason: str = ""


#: Below this many waves per SIMD a CU has little to switch to while one wave waits on memory.
MIN_WAVES_PER_SIMD = 2


@dataclass
class KernelReport:
    """What one compile for one arch showed. ``None`` means the field was not found (unknown)."""

    kernel: str
    config_label: str
    arch: str
    compiled: bool
    error: str | None = None
    vgprs: int | None = None  # arch VGPRs + AGPRs (the unified file a wave allocates from)
    agprs: int | None = None
    sgprs: int | None = None
    lds_bytes: int | None = None
    lds_limit: int | None = None
    scratch_bytes: int | None = None
    vgpr_spills: int | None = None
    sgpr_spills: int | None = None
    occupancy: int | None = None  # waves per SIMD: the compiler's figure, lowered further by LDS
    mfma_count: int | None = None
    num_warps: int | None = None
    reasons: list[str] = field(default_factory=list)
    low_occupancy_reason: str = ""  # from the spec: why an occupancy under MIN_WAVES_PER_SIMD is accepted
    # kept only for `aiter-ext aot --build` (core/objects.py): the code object, its symbol and Triton's hash
    binary: bytes | None = field(default=None, repr=False)
    symbol: str | None = None
    object_hash: str = ""

    @property
    def ok(self) -> bool:
        return self.compiled and not self.reasons

    @property
    def verdict(self) -> str:
        return "PASS" if self.ok else "FAIL"


# --- registry -----------------------------------------------------------------------------------

_REGISTRY: dict[str, list[Callable[[], Iterable[KernelSpec]]]] = {}


def register_aot_specs(op_name: str, provider: Callable[[], Iterable[KernelSpec]]) -> None:
    """Register a callable that yields the ``KernelSpec``s of one op; called lazily by the check."""
    providers = _REGISTRY.setdefault(op_name, [])
    if provider not in providers:
        providers.append(provider)


def _specs_of(provider: Callable, arch: str) -> Iterable[KernelSpec]:
    """A provider's specs for ``arch``: one that takes an argument is given the arch (its tiles depend on the
    GPU, such as warps sized for a 64-lane wave); one that takes none lists the same specs everywhere."""
    try:
        takes_arch = bool(inspect.signature(provider).parameters)
    except (TypeError, ValueError):
        takes_arch = False
    return provider(arch) if takes_arch else provider()


def registered_specs_by_op(arch: str = "gfx942") -> dict[str, list[KernelSpec]]:
    """Every spec registered so far for ``arch`` (gfx942/gfx950, or sm_XY when objects are built for an NVIDIA
    GPU), by op name. Ops register when their kernel modules are imported: ``aiter_ext.ops.load_kernel_modules``
    imports them all (the CLI calls it first)."""
    by_op: dict[str, list[KernelSpec]] = {}
    for op_name, providers in list(_REGISTRY.items()):
        names: dict[str, KernelSpec] = {}
        compiles: set = set()
        for provider in providers:
            for spec in _specs_of(provider, arch):
                if not isinstance(spec, KernelSpec):
                    raise TypeError(f"AOT provider of {op_name!r} yielded {type(spec).__name__}, not KernelSpec")
                # Tuned rows of several shapes often name one tile, a default may be a tuned tile too, and two
                # families of specs may meet in one form: each compile is listed once (the first name it is given).
                # A name is an object's identity, so two different compiles under one name are a provider's bug.
                first = names.setdefault(spec.name, spec)
                if first is not spec:
                    if not _same_compile(first, spec):
                        raise ValueError(f"AOT specs of {op_name!r} name two different compiles {spec.name!r}")
                    continue
                if (spec.fn, _settings(spec)) in compiles:
                    continue
                compiles.add((spec.fn, _settings(spec)))
                by_op.setdefault(op_name, []).append(spec)
    return by_op


def _settings(spec: KernelSpec) -> tuple:
    """What a spec's compile depends on besides its kernel, and what the compile check asks of it (MFMA use);
    its name and labels aside."""
    return (tuple(spec.signature.items()), tuple(sorted(spec.constexprs.items(), key=str)),
            tuple(sorted(spec.options.items())), tuple(sorted(spec.divisible_by_16)), spec.uses_dot)


def _same_compile(a: KernelSpec, b: KernelSpec) -> bool:
    """Whether two specs compile the same. The kernels are unwrapped only when their objects differ: unwrapping a
    kernel loads Triton (core/lazy_triton.py), which listing specs need not."""
    return _settings(a) == _settings(b) and (a.fn is b.fn or _kernel_of(a.fn) is _kernel_of(b.fn))


def registered_specs(arch: str = "gfx942") -> Iterable[KernelSpec]:
    """Every spec registered so far for ``arch`` (see :func:`registered_specs_by_op`)."""
    for specs in registered_specs_by_op(arch).values():
        yield from specs


# --- reading the AMDGCN text --------------------------------------------------------------------

# Each field: patterns tried in order, first the "; Name: N" comment block LLVM prints after the
# function, then the YAML kernel metadata (".name: N") as a fallback. Older LLVMs print NumSgprs.
_AMDGCN_FIELDS = {
    "vgprs": (r"^\s*;\s*TotalNumVgprs:\s*(\d+)", r"^\s*;\s*NumVgprs:\s*(\d+)", r"^\s*\.vgpr_count:\s*(\d+)"),
    "agprs": (r"^\s*;\s*NumAgprs:\s*(\d+)", r"\.agpr_count:\s*(\d+)"),
    "sgprs": (r"^\s*;\s*TotalNumSgprs:\s*(\d+)", r"^\s*;\s*NumSgprs:\s*(\d+)", r"^\s*\.sgpr_count:\s*(\d+)"),
    "scratch_bytes": (r"^\s*;\s*ScratchSize:\s*(\d+)", r"^\s*\.private_segment_fixed_size:\s*(\d+)"),
    "occupancy": (r"^\s*;\s*Occupancy:\s*(\d+)",),
    "vgpr_spills": (r"^\s*\.vgpr_spill_count:\s*(\d+)",),
    "sgpr_spills": (r"^\s*\.sgpr_spill_count:\s*(\d+)",),
}
_MFMA = re.compile(r"^\s*v_mfma\w*", re.M)


def parse_amdgcn(text: str) -> dict[str, int | None]:
    """Register, scratch, spill, occupancy and MFMA figures of one kernel's AMDGCN text.

    A field the text does not carry is ``None`` (unknown), never 0. ``mfma_count`` counts
    ``v_mfma*`` instruction lines (comments and metadata do not start with ``v_mfma``).
    """
    out: dict[str, int | None] = {}
    for name, patterns in _AMDGCN_FIELDS.items():
        out[name] = None
        for pattern in patterns:
            m = re.search(pattern, text, re.M)
            if m:
                out[name] = int(m.group(1))
                break
    out["mfma_count"] = len(_MFMA.findall(text))
    return out


# --- compiling ----------------------------------------------------------------------------------


def _ast_source(spec: KernelSpec):
    """``ASTSource`` for the spec; its constexpr keyword is ``constexprs`` now, ``constants`` before."""
    from triton.compiler import ASTSource

    params = inspect.signature(ASTSource.__init__).parameters
    keyword = "constexprs" if "constexprs" in params else "constants"
    kernel = _kernel_of(spec.fn)
    kwargs = {keyword: dict(spec.constexprs)}
    if spec.divisible_by_16:
        # The launcher's own form: {(index of the parameter,): [["tt.divisibility", 16]]}.
        unknown = set(spec.divisible_by_16) - set(kernel.arg_names)
        if unknown:
            raise ValueError(f"{spec.name}: divisible_by_16 names unknown parameters {sorted(unknown)}")
        kwargs["attrs"] = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in spec.divisible_by_16}
    return ASTSource(kernel, dict(spec.signature), **kwargs)


def _kernel_of(fn):
    """The JITFunction (or interpreter object) under any @triton.autotune/@triton.heuristics."""
    from triton.runtime.jit import JITFunction

    while not isinstance(fn, JITFunction) and not _interpreted(fn) and hasattr(fn, "fn"):
        fn = fn.fn
    return fn


def _lds_occupancy(lds: int, limit: int, num_warps: int) -> int:
    """Waves per SIMD that LDS allows: workgroups per CU times their waves, over the CU's 4 SIMDs."""
    if lds <= 0:
        return sys.maxsize
    return math.ceil((limit // lds) * num_warps / 4)


def verdict_reasons(r: KernelReport) -> list[str]:
    """Why a compiled report fails (empty when it passes); the rules of the compile check."""
    reasons = []
    if r.lds_bytes is not None and r.lds_limit is not None and r.lds_bytes > r.lds_limit:
        reasons.append(f"LDS {r.lds_bytes} B > {r.arch} limit {r.lds_limit} B")
    if r.vgpr_spills:
        reasons.append(f"{r.vgpr_spills} VGPRs spilled")
    if r.sgpr_spills:  # with no scratch they all went to VGPR lanes (v_writelane), not to memory
        where = " (to VGPR lanes, no scratch)" if r.scratch_bytes == 0 else ""
        reasons.append(f"{r.sgpr_spills} SGPRs spilled{where}")
    if r.scratch_bytes:
        reasons.append(f"{r.scratch_bytes} B scratch per lane")
    if r.scratch_bytes is None and r.vgpr_spills is None and r.sgpr_spills is None:
        reasons.append("no scratch or spill figures in the AMDGCN text")
    if _low(r) and not r.low_occupancy_reason:  # (0 waves: LDS over the limit, reported above)
        reasons.append(f"{r.occupancy} wave(s)/SIMD (< {MIN_WAVES_PER_SIMD}): raise the occupancy, or give the "
                       "spec a low_occupancy_reason (and say why in the kernel's comments)")
    return reasons


def compile_reports(jobs: Iterable[tuple[KernelSpec, str]], keep_binary: bool = False,
                    workers: int | None = None) -> list[KernelReport]:
    """``compile_report`` for each (spec, arch), in order; under TRITON_INTERPRET=1 in one subprocess.
    ``keep_binary``: the reports carry the code objects (``aiter-ext aot --build``). ``workers``: how many
    forked processes compile (default one per CPU, at most one per job); 1 compiles here, one after another."""
    jobs = list(jobs)
    if jobs and _interpreter_on([spec for spec, _ in jobs]):
        return _compile_in_child(jobs, keep_binary)
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    # A process forked after CUDA is initialised cannot use CUDA, and may hang in the driver's state it
    # inherited: compile here then. (The CLI initialises none; a caller such as a test session may have.)
    torch = sys.modules.get("torch")
    if workers > 1 and not (torch is not None and torch.cuda.is_initialized()):
        return _compile_forked(jobs, keep_binary, workers)
    return [_compile(spec, arch, keep_binary) for spec, arch in jobs]


# The forked workers' jobs. A spec holds a JITFunction, which need not pickle (a closure, an autotuner):
# the workers inherit the list in the fork and are sent indices; the reports they return pickle.
_FORKED_JOBS: list[tuple[KernelSpec, str, bool]] = []


def _compile_forked(jobs: list[tuple[KernelSpec, str]], keep_binary: bool, workers: int) -> list[KernelReport]:
    from concurrent.futures import ProcessPoolExecutor

    global _FORKED_JOBS
    _FORKED_JOBS = [(spec, arch, keep_binary) for spec, arch in jobs]
    try:  # (a worker that dies, as in a crash of the compiler, raises BrokenProcessPool here rather than hang)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(_compile_forked_job, range(len(jobs)),
                                 chunksize=max(1, len(jobs) // (4 * workers))))
    finally:
        _FORKED_JOBS = []


def _compile_forked_job(index: int) -> KernelReport:
    return _compile(*_FORKED_JOBS[index])


def compile_report(spec: KernelSpec, arch: str) -> KernelReport:
    """Compile ``spec`` for ``arch`` with Triton's AMD backend and judge it; never raises for the kernel."""
    return compile_reports([(spec, arch)])[0]


def _compile(spec: KernelSpec, arch: str, keep_binary: bool = False) -> KernelReport:
    report = KernelReport(spec.name, spec.config_label, arch, compiled=False,
                          low_occupancy_reason=spec.low_occupancy_reason)
    cuda = re.fullmatch(r"sm_(\d+)", arch)  # an NVIDIA build (objects for the lent GPU): no AMD figures to judge
    target = ARCH_TABLE.get(arch)
    if target is None and not cuda:
        return _failed(report, f"unknown arch {arch!r} (known: {', '.join(ARCH_TABLE)}, sm_XY)")
    try:
        import triton
        from triton.backends.compiler import GPUTarget

        gpu = GPUTarget("cuda", int(cuda[1]), 32) if cuda else GPUTarget("hip", arch, target.wave_size)
        kernel = triton.compile(_ast_source(spec), target=gpu, options=dict(spec.options))
        binary = kernel.asm["cubin" if cuda else "hsaco"]
    except Exception as e:  # the report carries the failure
        return _failed(report, f"{type(e).__name__}: {e}".strip())
    report.compiled = True
    meta = kernel.metadata
    report.lds_bytes = getattr(meta, "shared", None)
    report.num_warps = getattr(meta, "num_warps", spec.options.get("num_warps"))
    if keep_binary:
        report.binary, report.symbol, report.object_hash = binary, meta.name, kernel.hash
    if cuda:
        return report
    report.lds_limit = target.lds_bytes
    for name, value in parse_amdgcn(kernel.asm["amdgcn"]).items():
        setattr(report, name, value)
    if report.occupancy is not None and report.lds_bytes is not None and report.num_warps:
        report.occupancy = min(report.occupancy, _lds_occupancy(report.lds_bytes, target.lds_bytes,
                                                                report.num_warps))
    report.reasons = verdict_reasons(report)
    # Triton drops option names it does not know without a word: a misspelt or retired option
    # would silently compile another kernel than the one tuned.
    ignored = sorted(k for k in spec.options if not hasattr(meta, k))
    if ignored:
        report.reasons.append(f"options not known to Triton {triton.__version__}'s AMD backend: {ignored}")
    if spec.uses_dot and not report.mfma_count:
        report.reasons.append("uses_dot but no v_mfma instruction")
    return report


def _failed(report: KernelReport, message: str) -> KernelReport:
    """Mark ``report`` as not compiled; the reason keeps the first and last line (a CompilationError
    says where on its first line and what on its last)."""
    lines = [line for line in message.splitlines() if line.strip()] or ["?"]
    report.error = message
    report.reasons.append("compile failed: " + (lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"))
    return report


# --- under TRITON_INTERPRET=1 -------------------------------------------------------------------
# There ``@triton.jit`` returns interpreter objects (Triton's own tl.cdiv etc. too, as soon as Triton
# is imported), and the compiler cannot take them: calling one even patches triton.language for the
# rest of the process. The test suite sets TRITON_INTERPRET=1 on a CPU machine, so the compile then
# runs in a fresh Python without it, which imports each kernel by module and qualified name.


def _interpreted(fn) -> bool:
    return type(fn).__name__ == "InterpretedFunction"


def _interpreter_on(specs: list[KernelSpec]) -> bool:
    import triton.language as tl

    return _interpreted(getattr(tl, "cdiv", None)) or any(_interpreted(_kernel_of(s.fn)) for s in specs)


def _compile_in_child(jobs: list[tuple[KernelSpec, str]], keep_binary: bool = False) -> list[KernelReport]:
    raw = [_kernel_of(s.fn).fn for s, _ in jobs]  # the Python function under the Triton objects
    payload = [(replace(s, fn=(f.__module__, f.__qualname__)), a) for f, (s, a) in zip(raw, jobs)]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "jobs.pkl"), os.path.join(tmp, "reports.pkl")
        with open(src, "wb") as f:
            pickle.dump((payload, keep_binary), f)
        code = "import sys; from aiter_ext.core.aot import _child_main; _child_main(sys.argv[1], sys.argv[2])"
        proc = subprocess.run([sys.executable, "-c", code, src, dst], env=env, capture_output=True, text=True)
        if proc.returncode == 0:
            with open(dst, "rb") as f:
                return pickle.load(f)
    why = f"compile subprocess exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}"
    return [_failed(KernelReport(s.name, s.config_label, a, compiled=False), why) for s, a in jobs]


def _child_main(src: str, dst: str) -> None:
    with open(src, "rb") as f:
        jobs, keep_binary = pickle.load(f)
    reports = []
    for spec, arch in jobs:
        module, qualname = spec.fn
        try:
            fn = importlib.import_module(module)
            for part in qualname.split("."):
                fn = getattr(fn, part)
            if _interpreter_on([replace(spec, fn=fn)]):
                raise RuntimeError("TRITON_INTERPRET is still in effect")
        except Exception as e:
            report = KernelReport(spec.name, spec.config_label, arch, compiled=False)
            reports.append(_failed(report, f"cannot import kernel {module}.{qualname} for compiling: {e!r}"))
            continue
        reports.append(_compile(replace(spec, fn=fn), arch, keep_binary))
    with open(dst, "wb") as f:
        pickle.dump(reports, f)


def check(archs: Iterable[str] = DEFAULT_ARCHS, name_filter: str | None = None,
          progress: Callable[[str, list[KernelReport], float], None] | None = None,
          workers: int | None = None) -> tuple[list[KernelReport], bool]:
    """Compile every registered spec (whose name contains ``name_filter``) for each arch, one op at a
    time, in ``workers`` processes (``compile_reports``); ``progress(op, its reports, seconds)`` is called
    after each op.

    Returns the reports and whether all passed; ``ok`` is False when no spec was checked at all.
    """
    import time

    archs = tuple(archs)
    reports: list[KernelReport] = []
    for op_name, specs in registered_specs_by_op().items():
        specs = [s for s in specs if not name_filter or name_filter in s.name]
        if not specs:
            continue
        start = time.monotonic()
        done = compile_reports(((spec, arch) for arch in archs for spec in specs), workers=workers)
        reports += done
        if progress is not None:
            progress(op_name, done, time.monotonic() - start)
    return reports, bool(reports) and all(r.ok for r in reports)


# --- printing -----------------------------------------------------------------------------------


def _fmt(value) -> str:
    return "?" if value is None else str(value)


def format_table(reports: list[KernelReport], arch: str) -> str:
    """One arch's reports as a plain-text table, with the reasons of each failure below it."""
    limit = ARCH_TABLE[arch].lds_bytes if arch in ARCH_TABLE else None
    header = ("kernel", "config", "VGPRs", "SGPRs", "LDS B (% limit)", "scratch", "spills v/s",
              "waves/SIMD", "MFMA", "verdict")
    rows = []
    for r in reports:
        lds = _fmt(r.lds_bytes)
        if r.lds_bytes is not None and limit:
            lds += f" ({100 * r.lds_bytes / limit:.0f}%)"
        rows.append((r.kernel, r.config_label, _fmt(r.vgprs), _fmt(r.sgprs), lds, _fmt(r.scratch_bytes),
                     f"{_fmt(r.vgpr_spills)}/{_fmt(r.sgpr_spills)}", _occupancy(r),
                     _fmt(r.mfma_count), r.verdict))
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    line = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    limit_text = f"LDS limit {limit} B" if limit else "unknown arch"
    out = [f"== {arch} ({limit_text})", line(header), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    for r in reports:
        if not r.ok:
            out.append(f"  FAIL {r.kernel} [{r.config_label}]: " + "; ".join(r.reasons))
    for r in reports:
        if r.ok and _low(r):
            out.append(f"  LOW  {r.kernel} [{r.config_label}]: {r.occupancy} wave(s)/SIMD, accepted: "
                       f"{r.low_occupancy_reason}")
    return "\n".join(out)


def _low(r: KernelReport) -> bool:
    """Runs, but under MIN_WAVES_PER_SIMD waves per SIMD (0 means it cannot run: LDS over the limit)."""
    return r.occupancy is not None and 0 < r.occupancy < MIN_WAVES_PER_SIMD


def _occupancy(r: KernelReport) -> str:
    """Waves per SIMD, flagged when under MIN_WAVES_PER_SIMD."""
    return _fmt(r.occupancy) + (" LOW" if _low(r) else "")


def _dump_json(path: str, reports: list[KernelReport]) -> None:
    import triton

    rows = [dict(asdict(r), ok=r.ok, verdict=r.verdict) for r in reports]
    with open(path, "w") as f:
        json.dump({"triton_version": triton.__version__, "reports": rows}, f, indent=2)


def _build_cli(archs: tuple[str, ...], name_filter: str | None, out: str | None, check: bool,
               workers: int | None = None) -> int:
    """``--build``: write the objects, read them back through the lookup (``objects.verify``), and with
    ``--check`` also judge the AMD ones as ``--check`` alone does (one compile serves both)."""
    from pathlib import Path

    from . import objects
    from .arch import REPO_ROOT

    root = Path(out) if out else Path(REPO_ROOT) / "hsa"
    print(f"writing code objects for {', '.join(archs)} under {root}", flush=True)
    reports: list[KernelReport] = []
    written, failures = objects.build(archs, name_filter, root, lambda op, asked, done: print(
        f"  {op}: {done} of {asked} written", flush=True), reports, workers)
    for failure in failures:
        print(f"  FAILED {failure}", file=sys.stderr)
    problems = objects.verify(root, archs, name_filter)
    for problem in problems:
        print(f"  MANIFEST {problem}", file=sys.stderr)
    print(f"{written} code objects written, {len(failures)} failed; manifests read back: "
          f"{len(problems)} problem(s)")
    ok = bool(written) and not failures and not problems
    if check:
        amd = [r for r in reports if r.arch in ARCH_TABLE]
        for arch in archs:
            if arch in ARCH_TABLE:
                print(format_table([r for r in amd if r.arch == arch], arch) + "\n")
        failed = sum(not r.ok for r in amd)
        print(f"AMD compile check: {len(amd) - failed} passed, {failed} failed")
        ok = ok and bool(amd) and not failed
    return 0 if ok else 1


def cli(argv: list[str] | None = None) -> int:
    """``aiter-ext aot --check [--arch A]... [--kernel SUBSTRING] [--json PATH] [--jobs N]``; returns the exit
    code."""
    parser = argparse.ArgumentParser(
        prog="aiter-ext aot",
        description="Compile every registered Triton kernel for AMD targets without a GPU and check "
        "registers, LDS, scratch, spills and MFMA use.")
    parser.add_argument("--check", action="store_true", help="compile and check for AMD")
    parser.add_argument("--build", action="store_true",
                        help="compile and write the code objects with their manifests (core/objects.py)")
    parser.add_argument("--out", metavar="DIR", help="--build: where to write (default: the data root's hsa/)")
    parser.add_argument("--arch", action="append", metavar="ARCH",
                        help="target arch, repeatable: gfx942, gfx950, or (--build only) sm_XY (default: gfx942 and "
                        "gfx950)")
    parser.add_argument("--kernel", metavar="SUBSTRING", help="only kernels whose name contains this")
    parser.add_argument("--json", metavar="PATH", help="also write the reports to this JSON file")
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="compile in N processes (default: one per CPU; 1 compiles in this process)")
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be at least 1")
    archs = tuple(dict.fromkeys(args.arch or DEFAULT_ARCHS))
    bad = [a for a in archs if a not in ARCH_TABLE and not (args.build and re.fullmatch(r"sm_\d+", a))]
    if bad:
        parser.error(f"unknown arch {bad} (known: {', '.join(ARCH_TABLE)}; sm_XY with --build)")
    if args.build:
        return _build_cli(archs, args.kernel, args.out, args.check, args.jobs)
    if not args.check:
        parser.error("say --check (compile and judge for AMD) or --build (write code objects)")

    def progress(op_name: str, done: list[KernelReport], seconds: float) -> None:
        failed = sum(not r.ok for r in done)
        low = sum(r.ok and _low(r) for r in done)
        print(f"  {op_name}: {len(done)} compiles ({', '.join(archs)}), {len(done) - failed} passed, {failed} failed"
              + (f", {low} under {MIN_WAVES_PER_SIMD} waves/SIMD (justified)" if low else "") + f" [{seconds:.0f} s]",
              flush=True)

    print(f"compiling every registered kernel config for {', '.join(archs)}, one op at a time", flush=True)
    try:
        reports, ok = check(archs, args.kernel, progress, args.jobs)
    except Exception as e:  # a broken spec provider
        print(f"aiter-ext aot: {e}", file=sys.stderr)
        return 1
    if not reports:
        what = f" matching {args.kernel!r}" if args.kernel else ""
        print(f"aiter-ext aot: no kernel spec registered{what}; nothing was checked.", file=sys.stderr)
        return 1
    for arch in archs:
        print(format_table([r for r in reports if r.arch == arch], arch) + "\n")
    failed = sum(not r.ok for r in reports)
    low = sum(r.ok and _low(r) for r in reports)
    print(f"{len(reports) // len(archs)} kernel configs x {len(archs)} archs: "
          f"{len(reports) - failed} passed, {failed} failed"
          + (f"; {low} pass under {MIN_WAVES_PER_SIMD} waves/SIMD with a stated reason" if low else ""))
    if args.json:
        _dump_json(args.json, reports)
    return 0 if ok else 1
