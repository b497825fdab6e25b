"""Cold start (issue 18): an op's first call in a fresh process, from code objects against a Triton compile.

    python op_tests/bench_cold_start.py [--objects DIR] [--profile]

Per case and kind of process (a fresh Python, where the clock takes Triton's import too, and one that imported
Triton first, as vLLM's and SGLang's do), three fresh processes, each timing its first call (inputs made, CUDA and the launcher
extension ready before the clock starts; the clock stops after a synchronize):

- ``jit``: no code objects and an empty Triton cache: Triton compiles the kernel;
- ``cache``: no code objects, Triton's cache filled by the ``jit`` process: Triton loads its own cache;
- ``objects``: ``AITER_EXT_LAUNCH=asm`` with the objects under DIR (built first, for this GPU's arch, with
  ``aiter-ext aot --build --arch sm_XY --kernel ...`` unless ``--objects`` names a folder already built), and
  an empty Triton cache: a launch that no object fits raises, and the row says so.

The issue's target: ``objects`` at least 10x faster than ``jit``. The last column says whether the ``objects``
child had imported Triton when its first call returned (core/lazy_triton.py: it should not have, in a fresh Python). ``--profile``: the ``objects`` child's first
call under cProfile, its top functions by cumulative time printed after the table (where a first call's time
goes when it is not the compile).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

#: (name, the --kernel filter that builds its objects, the call, as code run in the child)
CASES = [
    ("rmsnorm [16, 4096] bf16", "rmsnorm[bf16-r1b4096", "aiter_ext.rmsnorm(x16, w)"),  # every warp count: tuned
    ("apply_llama31_rope 8192 tokens", "rope[llama31-bf16-d128", "aiter_ext.apply_llama31_rope(q, k, indptr, offsets)"),
    ("merge_state 64 x 32 x 128", "merge_pair[bf16-d128", "aiter_ext.merge_state(va, sa, vb, sb)"),
]

_CHILD = """
import json, sys, time, torch
import aiter_ext
from aiter_ext.core import thin
dev, bf16 = "cuda", torch.bfloat16
r = lambda *s: torch.randn(*s, device=dev).to(bf16)
x16, w = r(16, 4096), r(4096)
q, k = r(8192, 32, 128), r(8192, 8, 128)
indptr = torch.tensor([0, 8192], dtype=torch.int32, device=dev)
offsets = torch.zeros(1, dtype=torch.int32, device=dev)
va, vb = r(64, 32, 128), r(64, 32, 128)
sa, sb = torch.randn(64, 32, device=dev), torch.randn(64, 32, device=dev)
thin.launcher()  # the extension built and the driver open: not part of the kernel's cold start
import os
if os.environ.get("COLD_START_IMPORT_TRITON") == "1":  # as in a serving process (vLLM and SGLang import Triton)
    import triton, triton.language  # noqa: E401,F401
torch.cuda.synchronize()
profile = None
if os.environ.get("COLD_START_PROFILE") == "1":
    import cProfile
    profile = cProfile.Profile()
    profile.enable()
start = time.perf_counter()
try:
    CALL
    torch.cuda.synchronize()
    ms = (time.perf_counter() - start) * 1e3
    print(json.dumps({"ms": ms, "triton": "triton" in sys.modules}))
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {str(exc)[:160]}"}))
if profile is not None:
    import pstats
    profile.disable()
    pstats.Stats(profile, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
"""


def _child(call: str, env: dict, profiles: list | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD.replace("CALL", call)], env=env, capture_output=True, text=True,
                          timeout=600)
    if profiles is not None:
        profiles.append(done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": (done.stderr or "no output").strip().splitlines()[-1][:160]}


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("needs a GPU")
        return 1
    major, minor = torch.cuda.get_device_capability()
    arch = f"sm_{major}{minor}"
    objects = sys.argv[sys.argv.index("--objects") + 1] if "--objects" in sys.argv else None
    if objects is None:
        objects = tempfile.mkdtemp(prefix="aiter_ext_hsa_")
        for _, kernel_filter, _ in CASES:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "aiter_ext", "aot", "--build", "--arch", arch,
                            "--kernel", kernel_filter, "--out", objects], check=False, capture_output=True)
            print(f"built {arch} objects matching {kernel_filter!r} in {time.perf_counter() - start:.0f} s", flush=True)
    print(f"{torch.cuda.get_device_name()}, objects under {objects}")
    profiles: list[str] = []
    print("| op | process | jit ms | cache ms | objects ms | jit / objects | Triton imported after the objects' call |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, _, call in CASES:
        # a fresh Python (the clock takes Triton's import too), and a serving process's, where Triton is imported
        for where, import_triton in (("fresh", "0"), ("Triton imported", "1")):
            cache = tempfile.mkdtemp(prefix="triton_cache_")
            base = {**os.environ, "TRITON_CACHE_DIR": cache, "AITER_EXT_LAUNCH": "thin",
                    "COLD_START_IMPORT_TRITON": import_triton}
            base.pop("AITER_EXT_HSA_DIR", None)
            jit = _child(call, base)
            cached = _child(call, base)
            profile = {"COLD_START_PROFILE": "1"} if "--profile" in sys.argv else {}
            from_objects = _child(call, {**base, "TRITON_CACHE_DIR": tempfile.mkdtemp(prefix="triton_cache_"),
                                         "AITER_EXT_LAUNCH": "asm", "AITER_EXT_HSA_DIR": objects, **profile},
                                  profiles if profile else None)
            cells = [r.get("ms") for r in (jit, cached, from_objects)]
            text = [f"{c:.1f}" if c is not None else r["error"] for c, r in zip(cells, (jit, cached, from_objects))]
            ratio = f"{cells[0] / cells[2]:.0f}x" if cells[0] and cells[2] else "-"
            print(f"| {name} | {where} | {' | '.join(text)} | {ratio} | {from_objects.get('triton', '-')} |", flush=True)
    labels = [f"{name}, {where}" for name, _, _ in CASES for where in ("fresh", "Triton imported")]
    for label, text in zip(labels, profiles):
        print(f"\n== {label}: the objects child's first call, by cumulative time\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
