"""Timing shared by the op benchmarks and the tuner.

Discipline (performance-anchors.md, METHOD.md): warm up so compilation stays out; time with device
events and take the median; keep caches cold; measure the copy-bandwidth ceiling in the same run.
On a GPU, ``triton.testing.do_bench`` does this: it clears the L2 with a 256 MB write before every
timed call (cold caches, as FlashInfer's figures were taken) and returns the median. ``graph=True``
times CUDA/HIP-graph replays instead, which leaves out the host's launch overhead. On the CPU the
numbers are host wall-clock times of the interpreter: fine for the tuner's plumbing tests, never a
performance figure.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from typing import Callable

import torch

from .arch import REPO_ROOT


def time_us(fn: Callable[[], object], *, warmup_ms: float = 25, rep_ms: float = 100, graph: bool = False) -> float:
    """Median time of ``fn()`` in microseconds (see the module docstring for how)."""
    if torch.cuda.is_available():
        import triton.testing

        if graph:
            return 1e3 * triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")
        return 1e3 * triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    fn()  # compile / first-use work
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(samples)


def as_timed(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` as ``time_us(fn, graph=True)`` runs it on a GPU: a CUDA graph's replay (a call may take another route
    inside a capture), captured once after a first call outside it; ``fn`` itself where the call does not capture,
    and on the CPU. For a check that must judge what the tuner times (a sampler's draws)."""
    if not torch.cuda.is_available():
        return fn
    try:
        fn()  # compiles and allocates outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except Exception:  # noqa: BLE001 (the tuner then times it eagerly too)
        return fn
    return graph.replay


def host_time_us(fn: Callable[[], object], calls: int = 500, warmup: int = 200, repeats: int = 5) -> float:
    """Wall time per call of ``fn()`` issued back to back with no synchronization in between: for a call
    far faster on the GPU than on the host, the host's cost of one eager call. The median of ``repeats`` runs
    of ``calls`` calls: single runs of 500 on the H100 host gave outliers (the thin path, the same code, read 36 us
    a call for rmsnorm at 16 rows and 92 at 256; min-p's plan read 116 there against 39 in a loop of 5000)."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - t0) / calls * 1e6)
    torch.cuda.synchronize()
    return statistics.median(runs)


def copy_time_us(nbytes_moved: int) -> float:
    """Time of a device-to-device copy that moves ``nbytes_moved`` bytes (half read, half written)."""
    src = torch.empty(max(1, nbytes_moved // 4), dtype=torch.bfloat16, device="cuda").uniform_()
    dst = torch.empty_like(src)
    return time_us(lambda: dst.copy_(src))


def copy_bandwidth_gbs(nbytes_moved: int = 2 << 30) -> float:
    """Measured device-to-device copy bandwidth, GB/s counting bytes read plus written (the ceiling
    a memory-bound kernel is judged against; 2 GiB moved by default, far above any cache)."""
    if not torch.cuda.is_available():
        return float("nan")
    return nbytes_moved / copy_time_us(nbytes_moved) / 1e3


def warm_up_gpu(seconds: float = 0.5) -> None:
    """Keep the GPU busy for a moment so its clocks are up before timing (an idle GPU, e.g. after a
    long JIT build, down-clocks, and the first timed case then reads slow)."""
    if not torch.cuda.is_available():
        return
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()


def benchmark_setup(skip_flashinfer: bool = False):
    """What every op benchmark starts with: ``(ok, flashinfer_module_or_None)``. ``ok`` is False (and the
    reason printed) without a GPU: interpreter timings are not performance figures."""
    import sys

    if not torch.cuda.is_available():
        print("the benchmark needs a GPU: CPU (interpreter) timings are not performance figures", file=sys.stderr)
        return False, None
    if skip_flashinfer:
        return True, None
    try:
        import flashinfer
    except ImportError as exc:
        print(f"FlashInfer not importable ({exc}); its columns stay empty")
        return True, None
    return True, flashinfer


def beside_flashinfer(us: float, fi_us) -> dict:
    """The two columns every op benchmark prints beside its own time."""
    return {"fi us": fi_us, "vs fi": fi_us / us if fi_us and us else None}


def print_report(rows: list[dict], header: str) -> int:
    """The closing table of a benchmark (each row was printed as it was measured): exit status 0."""
    print(f"\n{header}")
    print(markdown_table(rows))
    return 0


def git_commit() -> str:
    """The checkout's commit, and the hash of the package's sources (``objects.source_hash``): a copy of the tree
    may carry a stale ``.git`` (the lent GPU's printed a commit a day old), while the sources' hash says what ran
    (compare it with ``source_hash()`` at a commit here)."""
    from .objects import source_hash

    if os.environ.get("AITER_EXT_COMMIT"):  # copies of the tree without .git (the lent GPU) pass it in
        commit = os.environ["AITER_EXT_COMMIT"]
    else:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                    text=True, timeout=10).stdout.strip() or "unknown"
        except (OSError, subprocess.SubprocessError):
            commit = "unknown"
    return f"{commit} (sources {source_hash()})"


def markdown_table(rows: list[dict]) -> str:
    """A plain markdown table (no pandas needed on the GPU machine)."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    for row in rows[1:]:
        cols += [c for c in row if c not in cols]

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in cols) + " |" for row in rows]
    return "\n".join(lines)
