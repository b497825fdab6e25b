"""Code objects compiled ahead of time (``hsa/<arch>/<op>/``), and finding the one a launch can use.

``aiter-ext aot --build`` compiles every registered ``KernelSpec`` (the configs the AMD compile check
already lists) for each arch asked, gfx942/gfx950 with Triton's AMD backend and ``sm_XY`` with its NVIDIA
one, and writes per arch and op the objects and a ``manifest.csv`` (``hsa/README.md`` gives the columns).
The thin launch path (``core/thin.py``) looks a launch up here before it asks Triton for a compile: an
object whose constexprs, launch options and parameter types equal the call's, and whose divisibility
hints the call's arguments satisfy, is loaded and launched with no Triton compile.

What makes an object stale: a change to any kernel source. ``source_hash`` covers every ``.py`` under
``aiter_ext/ops`` and ``aiter_ext/core`` (coarse on purpose: a kernel's Triton helpers may live in another
module), so an edited checkout ignores its objects until they are built again, and a wheel's objects match
the sources beside them. The Triton version that built an object is recorded, not required: a code
object runs without Triton, and the launch passes the two scratch pointers any version since 3.3 appends.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import replace
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Optional

import torch

from .arch import REPO_ROOT

#: manifest.csv's columns, in order (hsa/README.md says what each holds).
COLUMNS = ("knl_name", "co_name", "spec", "config", "kernel", "signature", "constexprs", "options",
           "divisible_by_16", "num_warps", "lds_bytes", "vgprs", "sgprs", "scratch_bytes", "occupancy",
           "triton_version", "source_hash")
#: torch dtypes -> Triton's pointer element names (a tensor argument's signature entry is "*" + this).
TRITON_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
                 torch.int8: "i8", torch.int16: "i16", torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8",
                 torch.bool: "i1"}
for _name, _code in (("float8_e4m3fn", "fp8e4nv"), ("float8_e5m2", "fp8e5"), ("float8_e4m3fnuz", "fp8e4b8"),
                     ("float8_e5m2fnuz", "fp8e5b16")):
    if hasattr(torch, _name):
        TRITON_DTYPES[getattr(torch, _name)] = _code


@functools.cache
def source_hash() -> str:
    """First 16 hex digits of a hash over every kernel source (module docstring)."""
    package = Path(__file__).resolve().parent.parent
    # each file's name relative to the package, by slicing: Path.relative_to took ~0.2 ms a file on Python 3.12
    # (16 of a first call's 53 ms on the H100 host, issue 18's cold start)
    prefix = len(str(package)) + 1
    h = hashlib.sha256()
    for path in sorted([*(package / "ops").rglob("*.py"), *(package / "core").glob("*.py")]):
        h.update(str(path)[prefix:].encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def object_roots() -> list[Path]:
    """Where objects are looked for: the data root's ``hsa`` (the checkout's or the wheel's), then
    ``AITER_EXT_HSA_DIR`` (objects built on this machine by ``aiter-ext aot --build --out``)."""
    roots = [Path(REPO_ROOT) / "hsa"]
    if os.environ.get("AITER_EXT_HSA_DIR"):
        roots.append(Path(os.environ["AITER_EXT_HSA_DIR"]))
    return roots


# --------------------------------------------------------------------------------------------------
# Writing (aiter-ext aot --build).


def kernel_id(fn) -> str:
    """``module:qualname`` of the Python function under a kernel's wrappers (thin, autotune, jit)."""
    fn = getattr(fn, "python_fn", fn)  # a deferred kernel (core/lazy_triton.py) names its own without Triton
    while hasattr(fn, "fn"):
        fn = fn.fn
    return f"{fn.__module__}:{fn.__qualname__}"


def build(archs: Iterable[str], name_filter: Optional[str], out: Path, progress=None,
          reports_out: Optional[list] = None, workers: Optional[int] = None) -> tuple[int, list[str]]:
    """Compile and write every registered spec for each arch under ``out/<arch>/<op>/``; returns (objects
    written, failures as text). A spec that fails to compile is reported, not written. ``reports_out``
    receives every compile report (the AMD compile check's verdicts come with them). ``workers``: the
    compiling processes (``aot.compile_reports``)."""
    from . import aot

    import triton

    archs = tuple(archs)
    written, failures = 0, []
    specs_by_arch = {arch: aot.registered_specs_by_op(arch) for arch in archs}  # tiles may differ per arch
    for op_name in dict.fromkeys(op for specs in specs_by_arch.values() for op in specs):
        jobs = [(s, a) for a in archs for s in specs_by_arch[a].get(op_name, ())
                if not name_filter or name_filter in s.name]
        if not jobs:
            continue
        reports = aot.compile_reports(jobs, keep_binary=True, workers=workers)
        if reports_out is not None:
            reports_out += [replace(r, binary=None) for r in reports]
        by_arch: dict[str, list[dict]] = {}
        for (spec, arch), report in zip(jobs, reports):
            if not report.compiled or report.binary is None:
                failures.append(f"{arch} {spec.name}: {report.error or 'no binary'}")
                continue
            folder = out / arch / op_name
            folder.mkdir(parents=True, exist_ok=True)
            co_name = f"{report.symbol}_{report.object_hash[:8]}.{'co' if arch.startswith('gfx') else 'cubin'}"
            (folder / co_name).write_bytes(report.binary)
            by_arch.setdefault(arch, []).append({
                "knl_name": report.symbol, "co_name": co_name, "spec": spec.name, "config": spec.config_label,
                "kernel": kernel_id(spec.fn), "signature": json.dumps(spec.signature),
                "constexprs": json.dumps(spec.constexprs, sort_keys=True), "options": json.dumps(spec.options,
                                                                                                 sort_keys=True),
                "divisible_by_16": " ".join(spec.divisible_by_16), "num_warps": report.num_warps,
                "lds_bytes": report.lds_bytes, "vgprs": report.vgprs, "sgprs": report.sgprs,
                "scratch_bytes": report.scratch_bytes, "occupancy": report.occupancy,
                "triton_version": triton.__version__, "source_hash": source_hash()})
            written += 1
        for arch, rows in by_arch.items():
            with open(out / arch / op_name / "manifest.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
        if progress is not None:
            progress(op_name, len(jobs), sum(len(r) for r in by_arch.values()))
    return written, failures


# --------------------------------------------------------------------------------------------------
# Finding (the thin launch path).


@functools.cache
def _rows(arch: str) -> dict[str, list[dict]]:
    """Every current manifest row for ``arch``, by kernel id; rows of other sources are left out."""
    found: dict[str, list[dict]] = {}
    for root in object_roots():
        for manifest in sorted((root / arch).glob("*/manifest.csv")):
            with open(manifest, newline="") as f:
                for row in csv.DictReader(f):
                    if row["source_hash"] != source_hash():
                        continue
                    row["path"] = str(manifest.parent / row["co_name"])
                    row["signature"] = json.loads(row["signature"])
                    row["constexprs"] = json.loads(row["constexprs"])
                    row["options"] = json.loads(row["options"])
                    row["divisible_by_16"] = set(row["divisible_by_16"].split())
                    found.setdefault(row["kernel"], []).append(row)
    return found


def find(arch: str, kernel: str, constexprs: dict, options: dict, signature: dict, divisible: set) -> Optional[dict]:
    """The manifest row of an object that serves this launch, or None. ``signature`` maps each runtime
    parameter to its Triton type; ``divisible`` names those whose argument is 16-byte aligned (a pointer)
    or a multiple of 16 (an int). An object may assume less than the call gives, never more; of several,
    the one assuming most (the most specialised) is taken."""
    best = None
    for row in _rows(arch).get(kernel, ()):
        if not fits(row, constexprs, options, signature, divisible):
            continue
        if best is None or len(row["divisible_by_16"]) > len(best["divisible_by_16"]):
            best = row
    return best


def fits(row: dict, constexprs: dict, options: dict, signature: dict, divisible: set) -> bool:
    """Whether an object (a manifest row, or a spec's fields under the same keys) serves a launch: the same
    constexprs, options and parameter types, and no alignment the launch does not give."""
    return (row["signature"] == signature and row["constexprs"] == constexprs and row["options"] == options
            and set(row["divisible_by_16"]) <= divisible)


def verify(root: Path, archs: Iterable[str], name_filter: Optional[str] = None) -> list[str]:
    """What is wrong with the objects under ``root`` (empty: nothing): every registered spec (whose name
    contains ``name_filter``) must have a current manifest row per arch whose file exists, and the lookup
    must find an object for a launch made of the spec's own parameters."""
    from . import aot

    problems = []
    _rows.cache_clear()
    previous = os.environ.get("AITER_EXT_HSA_DIR")
    os.environ["AITER_EXT_HSA_DIR"] = str(root)
    try:
        for arch in archs:
            specs = [s for s in aot.registered_specs(arch) if not name_filter or name_filter in s.name]
            # (name, config label) names a spec; the same pair registered twice must have two rows
            copies = {}
            for spec in specs:
                copies[(spec.name, spec.config_label)] = copies.get((spec.name, spec.config_label), 0) + 1
            rows = _rows(arch)
            for spec in specs:
                kernel = kernel_id(spec.fn)
                own = [r for r in rows.get(kernel, ()) if (r["spec"], r["config"]) == (spec.name, spec.config_label)]
                if len(own) != copies[(spec.name, spec.config_label)]:
                    problems.append(f"{arch} {spec.name} [{spec.config_label}]: {len(own)} manifest rows")
                    continue
                if any(not Path(r["path"]).is_file() or Path(r["path"]).stat().st_size == 0 for r in own):
                    problems.append(f"{arch} {spec.name} [{spec.config_label}]: an object file missing or empty")
                found = find(arch, kernel, dict(spec.constexprs), dict(spec.options), dict(spec.signature),
                             set(spec.divisible_by_16))
                if found is None:
                    problems.append(f"{arch} {spec.name} [{spec.config_label}]: no object found for a launch with its "
                                    "own parameters")
    finally:
        if previous is None:
            os.environ.pop("AITER_EXT_HSA_DIR", None)
        else:
            os.environ["AITER_EXT_HSA_DIR"] = previous
        _rows.cache_clear()
    return problems
