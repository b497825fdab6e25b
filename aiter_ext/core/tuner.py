"""``aiter-ext tune <op>``: measure every available backend and config over the op's untuned shapes
and write the winners to its tuned CSV.

An op takes part by registering a :class:`TuneTarget`: how to build inputs for one untuned row, how to
run one (backend, config) on them, and how to check the result against the reference. A candidate
whose output disagrees with the reference is rejected (recorded with ``err = inf``), never timed into a
row. Rows are written only from measurements on the device in hand; on the CPU (interpreter timings)
the tuner refuses unless ``--allow-cpu`` is given (the tuner's own tests use that, with a scratch CSV).
On a GPU a candidate is timed by CUDA-graph replays: its kernels' time. The host's cost of an eager call
is measured apart, by the op benchmarks.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .arch import device_info
from .backend import OPS, backend_status
from .bench import time_us
from .tuned import untuned_csv_path, write_rows


@dataclass
class TuneCase:
    """One untuned shape, ready to run: ``run(impl, config)`` launches (what is timed);
    ``check(impl, config)`` poisons the outputs, runs, and returns the max error against the reference;
    ``tolerance`` bounds it; ``nbytes`` / ``flops`` give bandwidth and throughput."""

    run: Callable[[object, dict], None]
    check: Callable[[object, dict], float]
    tolerance: float
    nbytes: int
    flops: int = 0


#: op name -> function(untuned row dict, device) -> TuneCase
TUNE_TARGETS: dict[str, Callable[[dict, str], TuneCase]] = {}


def register_tune_target(op: str, make_case: Callable[[dict, str], TuneCase]) -> None:
    TUNE_TARGETS[op] = make_case


def _read_untuned(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (int(v) if v.lstrip("-").isdigit() else v) for k, v in row.items()} for row in csv.DictReader(f)]


def _gpu_time_us(run: Callable[[], None], on_gpu: bool) -> float:
    """A candidate's time on the device: CUDA-graph replays where the call captures, so that a small
    shape's row is chosen by its kernels and not by the host cost of launching them (eager timings of
    16-row shapes were 30-150 us, most of it launch); eager where capture fails."""
    if on_gpu:
        try:
            return time_us(run, graph=True)
        except Exception:  # noqa: BLE001 (a backend that cannot be captured still has an eager time)
            pass
    return time_us(run)


#: A candidate must beat the heuristic's own tile (the ``{}`` config) by this fraction to take the row. A row naming
#: another tile needs its own code object (aot_specs add it), and a win of a few percent may be noise: on an H100
#: (2026-12-07) two runs of `aiter-ext tune paged_kv_append` picked different tiles for 4 of the 8 shapes both
#: timed, every winner within 1-3% of the heuristic.
HEURISTIC_MARGIN = 0.03


def tune(op_name: str, untuned: Path | None = None, out: Path | None = None, backends: list[str] | None = None,
         allow_cpu: bool = False, log=print, shard: tuple[int, int] = (0, 1), check_only: bool = False,
         margin: float = HEURISTIC_MARGIN) -> list[dict]:
    """Tune ``op_name`` over its untuned shapes (``shard`` = (k, n): every n-th shape from the k-th).
    ``check_only`` compiles and checks every candidate and times none (writes nothing): run one per shard
    in parallel processes first, and the timed run that follows finds every kernel compiled."""
    if op_name not in OPS or op_name not in TUNE_TARGETS:
        raise SystemExit(f"no tunable op {op_name!r} registered; tunable: {', '.join(sorted(TUNE_TARGETS))} "
                         "(ops register when imported: aiter-ext tune imports them all)")
    op, info = OPS[op_name], device_info()
    if not info.is_gpu and not allow_cpu:
        raise SystemExit("no GPU here: the tuner writes measured rows for the device in hand, and CPU "
                         "interpreter timings are not worth a row (pass --allow-cpu to try the plumbing)")
    device = "cuda" if info.is_gpu else "cpu"
    shapes = _read_untuned(untuned or untuned_csv_path(op_name))[shard[0]::shard[1]]
    candidates = [(impl, cfg) for name, impl in op.impls.items() if name != "torch"
                  and (backends is None or name in backends) and backend_status(name)[0] for cfg in impl.configs]
    log(f"tuning {op_name} on {info.arch} ({info.cu_num} CUs): {len(shapes)} shapes x {len(candidates)} candidates")
    rows = []
    try:
        _tune_shapes(op, info, shapes, candidates, device, check_only, rows, log, TUNE_TARGETS[op_name], margin)
    finally:  # stopped early too (a lent GPU call's time limit sends SIGINT): the rows measured are kept
        if rows:
            path = write_rows(op_name, op.shape_keys, rows, out)
            log(f"wrote {len(rows)} rows to {path}")
    return rows


def _tune_shapes(op, info, shapes, candidates, device, check_only, rows, log, make_case,
                 margin: float = HEURISTIC_MARGIN) -> None:
    """Each shape's candidates checked and timed; the fastest that passed (the heuristic's tile unless the fastest
    beats it by ``margin``) appended to ``rows`` as it is found."""
    for i, shape in enumerate(shapes, 1):
        case = make_case(shape, device)
        best = heuristic = None
        for impl, cfg in candidates:
            ok, reason = op.usable(impl.backend, {**shape, "device": device, "has_mask": False,
                                                  "contiguous": True, "varlen": False})
            label = f"{impl.backend} {json.dumps(cfg) if cfg else 'default'}"
            if not ok:
                log(f"  [{i}/{len(shapes)}] {label}: skipped ({reason})")
                continue
            try:
                err = case.check(impl, cfg)
            except Exception as exc:  # a config that cannot compile or launch is a rejected candidate
                log(f"  [{i}/{len(shapes)}] {label}: failed ({type(exc).__name__}: {exc})")
                continue
            if not err <= case.tolerance:
                log(f"  [{i}/{len(shapes)}] {label}: REJECTED, error {err:.3g} > {case.tolerance}")
                continue
            if check_only:
                log(f"  [{i}/{len(shapes)}] {shape} {label}: compiled, error {err:.3g}")
                continue
            us = _gpu_time_us(lambda: case.run(impl, cfg), info.is_gpu)
            log(f"  [{i}/{len(shapes)}] {shape} {label}: {us:.1f} us, {case.nbytes / us / 1e3:.0f} GB/s")
            row = {"arch": info.arch, "cu_num": info.cu_num, **{k: shape[k] for k in op.shape_keys},
                   "backend": impl.backend, "config": json.dumps(cfg, sort_keys=True), "us": round(us, 2),
                   "bw_gbs": round(case.nbytes / us / 1e3, 1), "tflops": round(case.flops / us / 1e6, 3),
                   "err": f"{err:.3g}"}
            if best is None or us < best["us"]:
                best = row
            if not cfg and impl.backend == "triton":
                heuristic = row
        if check_only:
            continue
        if best is None:
            log(f"  [{i}/{len(shapes)}] {shape}: no candidate passed; no row written")
            continue
        if heuristic is not None and best is not heuristic and best["us"] > heuristic["us"] * (1 - margin):
            # (no "us," here: a timed candidate's line is the only one that holds it, and tests count them)
            log(f"  [{i}/{len(shapes)}] {shape}: kept the heuristic ({heuristic['us']} us): the fastest, "
                f"{best['config']} ({best['us']} us), is not {margin:.0%} faster")
            best = heuristic
        rows.append(best)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiter-ext tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("op")
    parser.add_argument("-i", "--untuned", type=Path, help="shape list (default configs/tuned_csv/<op>_untuned.csv)")
    parser.add_argument("-o", "--out", type=Path, help="tuned CSV to merge rows into (default the op's)")
    parser.add_argument("--backend", action="append", help="only these backends (repeatable)")
    parser.add_argument("--allow-cpu", action="store_true", help="tune on the CPU interpreter (plumbing only)")
    parser.add_argument("--shard", default="0/1", help="K/N: every N-th untuned shape from the K-th (default 0/1)")
    parser.add_argument("--check-only", action="store_true",
                        help="compile and check every candidate, time none, write nothing (warms the kernel cache: "
                             "run one per shard in parallel before the timed run)")
    parser.add_argument("--margin", type=float, default=HEURISTIC_MARGIN,
                        help="how much faster (a fraction) a tile must be than the heuristic's to take the row "
                             f"(default {HEURISTIC_MARGIN})")
    args = parser.parse_args(argv)
    k, _, n = args.shard.partition("/")
    if not (k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        parser.error(f"--shard must be K/N with 0 <= K < N, got {args.shard!r}")
    rows = tune(args.op, args.untuned, args.out, args.backend, args.allow_cpu, shard=(int(k), int(n)),
                check_only=args.check_only, margin=args.margin)
    return 0 if rows or args.check_only else 1

