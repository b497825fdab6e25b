"""The ``aiter-ext`` command: info, gap, bench, tune, aot."""

from __future__ import annotations

import argparse
import importlib
import os
import runpy
import sys


def _use_interpreter_without_gpu() -> bool:
    """With no GPU, run Triton kernels through the interpreter when Triton is installed (else the ops
    run their torch backends). Must happen before kernels are imported."""
    import importlib.util

    import torch

    if torch.cuda.is_available() or "TRITON_INTERPRET" in os.environ or importlib.util.find_spec("triton") is None:
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    return True


def cmd_info(args) -> int:
    import torch

    import aiter_ext
    from aiter_ext.core.arch import device_info
    from aiter_ext.core.backend import BACKEND_NAMES, OPS, backend_status

    info = device_info()
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    print(f"aiter_ext {aiter_ext.__version__}  torch {torch.__version__}  triton {triton_version}")
    print(f"device: {info.name}  arch: {info.arch}  compute units: {info.cu_num}  platform: {info.platform}")
    print("backends:")
    for name in BACKEND_NAMES:
        ok, reason = backend_status(name)
        print(f"  {name:7s} {'usable' if ok else 'not usable'}: {reason}")
    from aiter_ext.core.arch import REPO_ROOT
    from aiter_ext.core.data import describe

    print(f"data (tuned tables, C++ sources, gap matrix, benchmarks): {describe(REPO_ROOT)}")
    print("ops (backends -> what an automatic call runs on here, before tuned tables and per-call limits):")
    for name, op in OPS.items():
        here = next((b for b in BACKEND_NAMES if b in op.impls and b != "torch" and backend_status(b)[0]), "torch")
        print(f"  {name}: {', '.join(op.impls)} -> {here}")
    if not info.is_gpu:
        print("no GPU: ops marked 'torch' run their fp32 reference (correct, not fast); install triton and set "
              "TRITON_INTERPRET=1 to run the Triton kernels through the interpreter instead")
    return 0


def cmd_gap(args) -> int:
    import yaml

    from aiter_ext.core.arch import REPO_ROOT, device_info
    from aiter_ext.core.data import data_path

    _use_interpreter_without_gpu()
    from aiter_ext.core.backend import backend_status

    interpreted = os.environ.get("TRITON_INTERPRET") == "1" and backend_status("triton")[0]
    with open(data_path(REPO_ROOT, "gap_matrix.yaml", what="feature matrix (gap_matrix.yaml)")) as f:
        features = yaml.safe_load(f)["features"]
    info = device_info()
    where = f"{info.arch} ({info.name})" + (", Triton through the interpreter" if interpreted else "")
    print(f"aiter_ext gap matrix, verified on {where}\n")
    rows, failures = [], 0
    for feat in features:
        verified = "-"
        if feat.get("verify"):
            module, func = feat["verify"].split(":")
            results = getattr(importlib.import_module(module), func)()
            passed = [r for r in results if r[2]]
            failed = [r for r in results if not r[2]]
            failures += len(failed)
            backends = sorted({r[1] for r in passed})
            verified = f"{len(passed)}/{len(results)} cases pass ({', '.join(backends)})"
            for case, backend, _, detail in failed:
                print(f"FAILED {feat['name']}: {case} on {backend}: {detail}")
            if args.verbose:
                for case, backend, ok, detail in results:
                    print(f"  {'ok  ' if ok else 'FAIL'} {feat['name']}: {case} [{backend}] {detail}")
        rows.append({"feature": feat["name"], "status": feat["status"], "aiter_ext": feat["aiter_ext_api"],
                     "backends": ", ".join(feat.get("backends") or []) or "-", "AITER today": feat["aiter_status"],
                     "verified here": verified})
    from aiter_ext.core.bench import markdown_table

    print(markdown_table(rows))
    implemented = sum(f["status"] == "implemented" for f in features)
    print(f"\n{implemented} of {len(features)} features implemented; {failures} verification failure(s) here")
    return 1 if failures else 0


def cmd_bench(args) -> int:
    import importlib.util

    from aiter_ext.core.arch import REPO_ROOT
    from aiter_ext.core.data import data_path

    script = data_path(REPO_ROOT, "op_tests", what="benchmarks (op_tests/)") / f"test_{args.op}.py"
    if not script.exists():
        print(f"no benchmark for {args.op!r}: {script} does not exist", file=sys.stderr)
        return 2
    if importlib.util.find_spec("pytest") is None:  # the benchmarks live in the test files
        print("aiter-ext bench needs pytest (the benchmarks are op_tests/ scripts): pip install 'aiter-ext[test]'",
              file=sys.stderr)
        return 2
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiter-ext", description="aiter_ext: FlashInfer's serving kernels for AMD GPUs")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="the device, and which backends can run here (and why not)")
    gap = sub.add_parser("gap", help="the feature matrix, with each implemented feature verified on this device")
    gap.add_argument("-v", "--verbose", action="store_true", help="print every verified case")
    bench = sub.add_parser("bench", help="run op_tests/test_<op>.py as a benchmark")
    bench.add_argument("op")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    sub.add_parser("tune", help="measure backends and configs, write the tuned CSV", add_help=False)
    sub.add_parser("aot", help="AMD compile check of every Triton kernel (aot --check)", add_help=False)

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("tune", "aot"):
        module = importlib.import_module("aiter_ext.core.tuner" if argv[0] == "tune" else "aiter_ext.core.aot")
        from aiter_ext.ops import load_kernel_modules

        try:  # every op registers itself (backends, tune targets, kernel specs) as its modules are imported
            load_kernel_modules()
        except RuntimeError as exc:  # a broken op package
            print(f"aiter-ext {argv[0]}: {exc}", file=sys.stderr)
            return 1
        return module.cli(argv[1:])
    args = parser.parse_args(argv)
    handlers = {"info": cmd_info, "gap": cmd_gap, "bench": cmd_bench}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
